"""Evaluation wall time: N networks trained one after the other against all N at once (stacked, vmap; or
one CUDA stream each).

    python benchmarks/bench_eval.py [--sizes 10,100,500] [--models 5] [--steps 100] [--dataset cifar10]
                                    [--device cpu] [--warmup 10] [--compile] [--kernels N] [--json OUT]

For each set size: a random real subset of `--dataset` ($FREPO_DATA_DIR/<dataset>.npz, a 10-class set:
cifar10, mnist, fashion_mnist; size/10 images per class, standardised); N networks trained with the
reference protocol (`frepo` protocol: Conv width 128, Adam, one augmentation op per network and step;
no flip on the digit sets) on `--device`, one after the other (`--together off`), then all
at once (`--together on`, `frepo.eval.together`), and on CUDA also one stream each (`--together streams`),
from the same seeds, and tested on the same 2 000 test images (every 5th: the file's test split is sorted
by class). Reports the training wall seconds, ms per step of all N networks, achieved GFLOP/s
(convolutions and matmuls of one step of the sequential path: the same useful work for all) against the
fp32 matmul peak measured in the same run, and the accuracies (stacked: equal up to float rounding;
streams: equal). `--steps` is per network: the reference table's 1000–5000 steps are hours on a 2-core
CPU, and the time per step does not change over a run. Each mode first trains `--warmup` steps (10)
untimed at each size: unwarmed, the first mode timed paid the device's first-use costs (on an H200, 10
images one after the other took 8.3 s, longer than 100 images). `--compile` adds a row per size: the
sequential path with each network under torch.compile (a trial; the warm-up pays most of its compile time). JSON
keys per row: images, models, steps, mode (sequential|together|streams|compiled), auto (the mode
`--together auto` picks for this set on this device: sequential|together|streams), seconds,
ms_per_step, gflops_per_step, achieved_gflops, peak_gflops, accuracies, mean, and with `--kernels N`
kernels (bench_step.py's `kernel_table` of 20 steps of every network); "environment" also holds the TF32
and bf16 matmul peaks on CUDA.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import count_flops, kernel_table, peak_matmul_gflops, print_kernels, sync  # noqa: E402

from frepo.base.device import deterministic_kernels  # noqa: E402
from frepo.base.rng import generator  # noqa: E402
from frepo.data.preprocess import fit_preprocessing  # noqa: E402
from frepo.eval import EvalConfig  # noqa: E402
from frepo.eval.augment import reference_ops  # noqa: E402
from frepo.eval.protocol import ReferenceTraining, accuracy  # noqa: E402
from frepo.eval.protocols.frepo import train_reference_model, train_reference_models_on_streams  # noqa: E402
from frepo.eval.together import train_reference_models  # noqa: E402
from frepo.io.artifact import DistilledSet  # noqa: E402
from frepo.method.krr import centered_one_hot  # noqa: E402


def subset(size: int, dataset: str = "cifar10", seed: int = 0):
    data = np.load(Path(os.environ.get("FREPO_DATA_DIR", "../shared/data")) / f"{dataset}.npz")
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(data["y_train"] == c), size // 10, replace=False) for c in range(10)]
    )
    pre = fit_preprocessing(data["x_train"][::10], "standard")
    meta = {"dataset": dataset, "classes": [str(c) for c in range(10)], "mirror_invariant": dataset == "cifar10"}
    labels = torch.from_numpy(data["y_train"][idx]).long()
    ds = DistilledSet(pre(data["x_train"][idx]), labels, pre, meta)
    # Every 5th test image: the file's test split is sorted by class.
    return ds, pre(data["x_test"][::5]), torch.from_numpy(data["y_test"][::5]).long()


def step_flops(ds: DistilledSet, models: int, device: torch.device) -> int:
    """FLOPs of one training step of `models` networks, forward and backward, as the sequential path
    dispatches them (the stacked path's batched kernels are counted as the same useful work)."""
    images, targets = ds.images.to(device), centered_one_hot(ds.labels, 10).to(device)
    training = ReferenceTraining(num_classes=10, steps=1, ops=(), device=device, batch_size=500)
    gens = [generator(0, f"eval/model{i}") for i in range(models)]
    return sum(count_flops(lambda g=g: train_reference_model(images, targets, training, g)) for g in gens)


def train_networks(mode: str, images, targets, streams: list[str], training: ReferenceTraining):
    """The networks of `streams` trained as `mode` says: stacked (`together`, one `Stacked`), one CUDA stream
    each (`streams`, a list), or one after the other (`sequential`, or `compiled`: each under torch.compile,
    the protocol's `--compile on`). With deterministic cuDNN kernels, as `frepo evaluate` trains them."""
    gens = [generator(0, s) for s in streams]
    with deterministic_kernels(images.device):
        if mode == "together":
            return train_reference_models(images, targets, training, gens)
        if mode == "streams":
            return train_reference_models_on_streams(images, targets, training, gens)
        compiled = replace(training, compile=mode == "compiled")
        return [train_reference_model(images, targets, compiled, g) for g in gens]


def elapsed(start: float, device: torch.device) -> float:
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,500")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--steps", default="100", help="steps per network: one value, or one per size")
    parser.add_argument("--dataset", default="cifar10", help="cifar10, mnist or fashion_mnist")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    parser.add_argument(
        "--warmup",
        type=int,
        default=10,
        help="steps each mode trains untimed before its timed run, at each size (0: none)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time the sequential path with torch.compile(model) (a trial)"
    )
    parser.add_argument(
        "--kernels",
        type=int,
        default=0,
        metavar="N",
        help="also profile 20 steps of each mode (after the timed run) and list its N costliest kernels",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    steps = steps * len(sizes) if len(steps) == 1 else steps
    device = torch.device(args.device)
    peak = peak_matmul_gflops(device)
    rows = []
    for size, n_steps in zip(sizes, steps):
        ds, test_x, test_y = subset(size, args.dataset)
        images, targets = ds.images.to(device), ds.targets().to(device)
        training = ReferenceTraining(10, n_steps, reference_ops(ds.meta["mirror_invariant"]), device)
        streams = [f"eval/model{i}" for i in range(args.models)]
        how = EvalConfig.build(device=str(device)).together_mode(device, images)
        auto = {"stacked": "together", "streams": "streams", None: "sequential"}[how]
        modes = (
            ("sequential", "together") + (("streams",) if device.type == "cuda" else ()) + ("compiled",) * args.compile
        )
        flops = step_flops(ds, args.models, device)  # the useful work, the same for every mode
        for mode in modes:
            if args.warmup:  # first-use costs (cuDNN's plans, the allocator's blocks) out of the timed run
                train_networks(mode, images, targets, streams, replace(training, steps=args.warmup))
            sync(device)
            start = time.perf_counter()  # training only; the test pass is the same work either way
            nets = train_networks(mode, images, targets, streams, training)
            seconds = elapsed(start, device)
            if mode == "together":
                accs = nets.accuracies(test_x, test_y, device)
            else:
                accs = [accuracy(net, test_x, test_y, device) for net in nets]
            ms = 1000 * seconds / n_steps
            row = {
                "images": size, "models": args.models, "steps": n_steps, "mode": mode, "auto": auto,
                "seconds": round(seconds, 2),
                "ms_per_step": round(ms, 1), "gflops_per_step": flops / 1e9,
                "achieved_gflops": flops / 1e9 / (ms / 1000), "peak_gflops": peak,
                "accuracies": accs, "mean": sum(accs) / len(accs),
            }  # fmt: skip
            if args.kernels:  # 20 steps of every network (their set-up included, spread over the steps)
                work = functools.partial(train_networks, mode, images, targets, streams, replace(training, steps=20))
                row["kernels"] = kernel_table(work, device, steps=20, top=args.kernels)
            rows.append(row)
            print(json.dumps(row), flush=True)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor()}
    env.update(device=str(device), dataset=args.dataset, warmup_steps=args.warmup)
    if device.type == "cuda":  # the device's other matmul peaks, for the roofline
        env.update({f"peak_{kind}_gflops": peak_matmul_gflops(device, kind=kind) for kind in ("tf32", "bf16")})
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    print(
        "| images | models × steps | mode | auto picks | wall (s) | ms/step (all models) | GFLOP/step | "
        "achieved GFLOP/s | fraction of fp32 peak | accuracies (%) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        accs = ", ".join(f"{a:.2f}" for a in r["accuracies"])
        fraction = r["achieved_gflops"] / r["peak_gflops"]
        print(
            f"| {r['images']} | {r['models']} × {r['steps']} | {r['mode']} | {r['auto']} | {r['seconds']:.1f} | "
            f"{r['ms_per_step']:.0f} | {r['gflops_per_step']:.1f} | {r['achieved_gflops']:.0f} | {fraction:.0%} | "
            f"{accs} |"
        )
    for r in rows:
        if "kernels" in r:
            title = f"{r['images']} images, {r['mode']}, all {r['models']} networks"
            print_kernels(title, r["kernels"], r["ms_per_step"])


if __name__ == "__main__":
    main()
