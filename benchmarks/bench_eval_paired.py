"""One evaluation network eager against the same network under torch.compile, step by step, paired.

    python benchmarks/bench_eval_paired.py [--images 500] [--steps 12] [--dataset cifar10]

Two copies of the reference protocol's network (Conv width 128, same seed, Adam, one augmentation op
per step, batch ≤ 500) train on a random real subset (`bench_eval.subset`), their steps alternating in
one process (eager, compiled, eager, ...), so that a drift of this shared machine's speed hits both
alike. The compiled network's first step (the compilation) is reported apart and not counted.
Prints each pair's ms and, at the end, the median ms of each and the ratio compiled / eager pair by
pair (median, min, max). This is how `--compile auto` of the frepo protocol was decided.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_eval import subset  # noqa: E402

from frepo.base.compiler import torch_compile  # noqa: E402
from frepo.eval.augment import random_op, reference_ops  # noqa: E402
from frepo.method.krr import mse_loss  # noqa: E402
from frepo.method.optim import optax_adam  # noqa: E402
from frepo.models import build_model, eval_layout  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--dataset", default="cifar10")
    args = parser.parse_args()
    ds, _, _ = subset(args.images, args.dataset)
    layout = eval_layout(ds.images)
    images, targets = ds.images.contiguous(memory_format=layout), ds.targets()
    ops = reference_ops(ds.meta["mirror_invariant"])
    batch = min(len(images), 500)

    def network(compiled: bool):
        gen = torch.Generator().manual_seed(0)
        model = build_model("conv", tuple(images.shape[1:]), 10, generator=gen, width=128)
        model = model.to(memory_format=layout).train()
        forward = torch_compile(model, dynamic=False) if compiled else model
        return forward, optax_adam(model.parameters(), 3e-4), gen

    nets = {"eager": network(False), "compiled": network(True)}

    def step(name: str, t: int) -> float:
        forward, optimizer, gen = nets[name]
        idx = (t * batch + torch.arange(batch)) % len(images)
        loss = mse_loss(forward(random_op(images[idx], ops, gen)), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    start = time.perf_counter()
    step("compiled", 0)
    print(f"compiled network's first step (compilation): {time.perf_counter() - start:.1f} s", flush=True)
    step("eager", 0)
    times = {"eager": [], "compiled": []}
    for t in range(1, args.steps + 1):
        for name in times:
            start = time.perf_counter()
            step(name, t)
            times[name].append(time.perf_counter() - start)
        print(t, {k: round(v[-1] * 1000) for k, v in times.items()}, flush=True)
    ratios = [c / e for e, c in zip(times["eager"], times["compiled"])]
    print(
        f"{args.images} images, {args.steps} pairs: eager {statistics.median(times['eager']) * 1000:.0f} ms, "
        f"compiled {statistics.median(times['compiled']) * 1000:.0f} ms; compiled / eager median "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
