"""LAMB learning rate against the outer-step budget, measured on VALIDATION hold-outs only.

For every (dataset, IPC, budget, lr, seed) of the grid: `frepo distill --steps BUDGET --lr LR` in its own
process, whose final validation (the reference protocol on the run's hold-out, never the test split)
is the score. Resumable: a finished run directory is read back, not rerun. Prints a Markdown table of
validation accuracy per lr (the best lr per budget in bold) and writes every row as JSON.

    python benchmarks/bench_lr_budget.py --grid digits:10:100,300,1000 mnist:1:100,300 cifar10:1:100,300 \
        --lrs 3e-4,1e-3,3e-3,1e-2,3e-2,1e-1 --out runs/lr_budget --json docs/lr_budget.json

Datasets other than digits are read from $FREPO_DATA_DIR/<name>.npz when present (offline machines).
JSON keys per row: dataset, ipc, steps, lr, seed, val_acc (%), eval_models, eval_steps, seconds (distillation
wall time), run (its directory).
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


def read_val(run: Path) -> float | None:
    """The final validation accuracy recorded in a finished run's metrics, or None."""
    if not (run / "distilled.safetensors").is_file():
        return None
    val = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_acc" in record:
            val = record["val_acc"]
    return val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", required=True, help="DATASET:IPC:BUDGET[,BUDGET...] items")
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3,1e-2,3e-2,1e-1")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--eval-models", type=int, default=2)
    parser.add_argument("--eval-steps", type=int, default=500)
    parser.add_argument("--out", default="runs/lr_budget")
    parser.add_argument("--json", help="write the rows as JSON here (rewritten after every run)")
    args = parser.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    for item in args.grid:
        dataset, ipc, budgets = item.split(":")
        for steps in (int(b) for b in budgets.split(",")):
            for lr in lrs:
                for seed in seeds:
                    run = Path(args.out) / f"{dataset}-ipc{ipc}-steps{steps}-lr{lr:g}-seed{seed}"
                    start = time.perf_counter()
                    if read_val(run) is None:
                        cmd = [
                            sys.executable, "-m", "frepo", "distill", "--dataset", dataset, "--ipc", ipc,
                            "--steps", str(steps), "--lr", str(lr), "--seed", str(seed), "--out", str(run),
                            "--batch-size", "256", "--eval-models", str(args.eval_models),
                            "--eval-steps", str(args.eval_steps), "--snapshot-every", "0",
                        ]  # fmt: skip
                        print("$", " ".join(cmd[2:]), file=sys.stderr, flush=True)
                        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    row = {
                        "dataset": dataset, "ipc": int(ipc), "steps": steps, "lr": lr, "seed": seed,
                        "val_acc": read_val(run), "eval_models": args.eval_models, "eval_steps": args.eval_steps,
                        "seconds": round(time.perf_counter() - start, 1), "run": str(run),
                    }  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        env = {"torch": torch.__version__, "machine": platform.processor() or platform.machine()}
                        Path(args.json).write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    print(table(rows, lrs))


def table(rows: list[dict], lrs: list[float]) -> str:
    """Mean validation accuracy per (dataset, IPC, budget) and lr; the best of each row in bold."""
    keys = sorted({(r["dataset"], r["ipc"], r["steps"]) for r in rows})
    lines = ["| dataset | IPC | steps | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |"]
    lines.append("|---" * (3 + len(lrs)) + "|")
    for key in keys:
        means = []
        for lr in lrs:
            vals = [r["val_acc"] for r in rows if (r["dataset"], r["ipc"], r["steps"]) == key and r["lr"] == lr]
            means.append(sum(vals) / len(vals) if vals else None)
        best = max((m for m in means if m is not None), default=None)
        cells = ["–" if m is None else (f"**{m:.2f}**" if m == best else f"{m:.2f}") for m in means]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
