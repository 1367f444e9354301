"""Distilled set vs same-size random subset, under the same evaluation, per preset.

For each preset: `frepo distill --preset P` (its own process, so peak memory is that run's), then
`frepo subset --method random` with the same seed (= the distillation's starting images), then
`frepo evaluate` on both with the reference protocol. Prints a Markdown table and writes JSON.

    python benchmarks/bench_accuracy.py --settings digits-ipc10,mnist-ipc1-cpu,cifar10-ipc1-cpu \
        --models 5 --out runs/bench --json bench_accuracy.json

Datasets other than digits are read from $FREPO_DATA_DIR/<name>.npz when present (offline machines).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from frepo.eval.results import count_of, mean_std


def frepo(*args: str) -> None:
    cmd = [sys.executable, "-m", "frepo", *args]
    print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="digits-ipc10", help="comma-separated preset names")
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--json", help="write the rows as JSON here")
    parser.add_argument("--extra", default="", help="extra flags for distill, e.g. '--eval-every 0'")
    args = parser.parse_args()

    from frepo import presets

    rows = []
    for name in args.settings.split(","):
        preset = presets.PRESETS[name]
        run = Path(args.out) / name
        start = time.time()
        frepo(
            "distill",
            "--dataset",
            preset["dataset"],
            "--ipc",
            str(preset["ipc"]),
            "--preset",
            name,
            "--seed",
            str(args.seed),
            "--out",
            str(run),
            *args.extra.split(),
        )
        wall = time.time() - start
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [m for m in metrics if "loss" in m]
        subset = run / "random_subset.safetensors"
        frepo(
            "subset",
            "--dataset",
            preset["dataset"],
            "--ipc",
            str(preset["ipc"]),
            "--method",
            "random",
            "--seed",
            str(args.seed),
            "--out",
            str(subset),
        )
        results = {}
        for label, file in (("distilled", run / "distilled.safetensors"), ("random", subset)):
            out = run / f"eval_{label}.json"
            frepo("evaluate", str(file), "--models", str(args.models), "--seed", str(args.seed), "--json", str(out))
            results[label] = json.loads(out.read_text())
        steps = train[-1]["step"]
        rows.append(
            {
                "setting": name,
                "dataset": preset["dataset"],
                "ipc": preset["ipc"],
                "steps": steps,
                "batch_size": json.loads((run / "config.json").read_text())["batch_size"],
                "s_per_step": train[-1]["elapsed_s"] / steps,
                "peak_rss_mb": max(m["peak_mem_mb"] for m in train),
                "distill_wall_s": wall,
                "distilled_mean": results["distilled"]["mean"],
                "distilled_std": results["distilled"]["std"],
                "random_mean": results["random"]["mean"],
                "random_std": results["random"]["std"],
                "eval_steps": results["distilled"]["steps"],
                "models": args.models,
            }
        )

    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print("| setting | steps × batch | s/step | peak RSS (MB) | distilled (%) | random subset (%) | eval |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['steps']} × {r['batch_size']} | {r['s_per_step']:.3f} | {r['peak_rss_mb']:.0f} | "
            f"{mean_std(r['distilled_mean'], r['distilled_std'], r['models'])} | "
            f"{mean_std(r['random_mean'], r['random_std'], r['models'])} | "
            f"frepo protocol, {count_of(r['models'], 'model')}, {r['eval_steps']} steps |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
