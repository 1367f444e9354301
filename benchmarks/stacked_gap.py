"""How far N networks trained together (`--together on`, stacked with vmap) end from the same networks trained one
after the other, parameter by parameter, against how far training moved each parameter.

    python benchmarks/stacked_gap.py SET [--archs conv,conv_in,convnet] [--steps 30] [--models 2] [--seed 0]

SET: a frepo set (a run directory or its distilled.safetensors). For each architecture, `--models` networks of
the frepo protocol are trained from the evaluation streams `eval/model{i}` of `--seed`, one after the other and
stacked, on the CPU; for each network the largest |stacked − sequential| / |movement| over its parameters is
printed, with the parameter that gives it. Float rounding of the batched kernels gives ~1e-6 where a
parameter's gradient is real; a parameter whose true gradient is zero (a bias just before a normalisation that
cancels it) has only rounding noise to follow, which Adam scales to full-size steps: there the ratio is ~1.
"""

from __future__ import annotations

import argparse

import torch

from frepo.base.rng import generator
from frepo.eval.augment import reference_ops
from frepo.eval.protocol import ReferenceTraining
from frepo.eval.protocols.frepo import train_reference_model
from frepo.eval.together import train_reference_models
from frepo.io.artifact import regression_targets
from frepo.jobs.evaluate import read_set
from frepo.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set")
    parser.add_argument("--archs", default="conv,conv_in,convnet")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ds = read_set(args.set)
    images, targets = ds.images.float(), regression_targets(ds.labels, ds.num_classes)
    streams = [f"eval/model{i}" for i in range(args.models)]
    print(f"set {args.set}: {len(images)} images; {args.models} networks × {args.steps} steps, seed {args.seed}")
    for arch in args.archs.split(","):
        training = ReferenceTraining(
            num_classes=ds.num_classes,
            steps=args.steps,
            ops=reference_ops(ds.mirror_invariant),
            device=torch.device("cpu"),
            arch=arch,
        )
        sequential = [train_reference_model(images, targets, training, generator(args.seed, s)) for s in streams]
        stacked = train_reference_models(images, targets, training, [generator(args.seed, s) for s in streams])
        for i, stream in enumerate(streams):
            start = build_model(
                arch, tuple(images.shape[1:]), ds.num_classes, generator=generator(args.seed, stream)
            ).state_dict()
            gaps = {}
            for name, param in sequential[i].named_parameters():
                moved = float((param.detach() - start[name]).norm())
                gaps[name] = (float((param.detach() - stacked.params[name][i]).norm()) / moved, moved)
            worst = max(gaps, key=lambda k: gaps[k][0])
            ratio, moved = gaps[worst]
            print(f"{arch} network {i}: largest gap / movement {ratio:.3g} ({worst}, moved {moved:.3g})")


if __name__ == "__main__":
    main()
