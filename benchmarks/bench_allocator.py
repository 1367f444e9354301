"""Step time and peak memory of a CPU distillation under each choice of frepo.base.perf's allocator policy.

    python benchmarks/bench_allocator.py cifar100-ipc50 --steps 5 [--reach-gb 9] [--json OUT]

SETTING is one of bench_step.py's (random data of the dataset's shape and size), or cifar100-ipc50 (without
flip). Each choice runs in a fresh process, one after the other, as `frepo distill` runs on a CPU: freed
memory kept from the start (the CLI), then `AllocatorPolicy` around the first step:

- glibc: FREPO_TUNE_ALLOCATOR=0, glibc's own settings throughout;
- kept: FREPO_TUNE_ALLOCATOR=1, freed memory kept in the heap throughout (frepo's default until 12-05);
- auto: the default, which measures the first step under glibc's settings and keeps freed memory after it
  where the kept heap fits; `--reach-gb` stands in for the memory within reach, to see the other branch.

Time per step is the median of the steps after the first (the first is glibc's in `auto`, and warms up);
peak RSS is the process's (data included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS_EXTRA = {"cifar100-ipc50": ((3, 32, 32), 100, 50, 1024, False, 50000)}


def child(setting: str, steps: int, reach_gb: float | None) -> dict:
    import torch
    from bench_step import SETTINGS  # this file's folder is on sys.path

    from frepo.base import perf
    from frepo.config import DistillConfig
    from frepo.method.trainer import FRePoTrainer

    if reach_gb is not None:
        perf.memory_within_reach = lambda: int(reach_gb * 2**30)
    shape, classes, ipc, batch, flip, n_train = {**SETTINGS, **SETTINGS_EXTRA}[setting]
    perf.tune_cpu_allocator()  # as the CLI does at its start
    config = DistillConfig(ipc=ipc, batch_size=batch, use_flip=flip, steps=500_000)
    gen = torch.Generator().manual_seed(0)
    x_train = torch.empty(n_train, *shape, memory_format=torch.channels_last).normal_(generator=gen)
    trainer = FRePoTrainer(config, x_train, torch.arange(n_train) % classes, classes, torch.device("cpu"))
    policy = perf.AllocatorPolicy()
    policy.before_first_step()  # as Distiller._loop does
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        metrics = trainer.step()
        if policy.kept is None:
            policy.after_first_step()
        seconds.append(time.perf_counter() - start)
    assert torch.isfinite(metrics["loss"]), "non-finite loss"
    return {"seconds": [round(s, 2) for s in seconds], "kept": policy.kept, "peak_gb": perf.peak_rss_bytes() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reach-gb", type=float, default=None, help="the memory within reach, for `auto`")
    parser.add_argument("--choices", default="glibc,kept,auto")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.setting, args.steps, args.reach_gb)))
        return
    env_value = {"glibc": "0", "kept": "1", "auto": "auto"}
    rows = []
    for choice in args.choices.split(","):
        cmd = [sys.executable, __file__, args.setting, "--steps", str(args.steps), "--child", choice]
        if args.reach_gb is not None and choice == "auto":
            cmd += ["--reach-gb", str(args.reach_gb)]
        env = {**os.environ, "FREPO_TUNE_ALLOCATOR": env_value[choice]}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"choice": choice, "reach_gb": args.reach_gb if choice == "auto" else None, **result})
    print(f"{args.setting}, {args.steps} steps, one process per choice, one after the other")
    print("| choice | kept after step 1 | s/step (median after the first) | steps | peak RSS GB |")
    print("|---|---|---|---|---|")
    for row in rows:
        name = row["choice"] + (f" (reach {row['reach_gb']:g} GB)" if row["reach_gb"] is not None else "")
        median = statistics.median(row["seconds"][1:]) if len(row["seconds"]) > 1 else float("nan")
        steps = " ".join(f"{s:.1f}" for s in row["seconds"])
        print(f"| {name} | {row['kept']} | {median:.2f} | {steps} | {row['peak_gb']:.2f} |")
    if args.json:
        meta = {"setting": args.setting, "steps": args.steps, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
