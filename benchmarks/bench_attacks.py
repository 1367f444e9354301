"""Time the membership-inference attacks of one victim, the reference set's grid searches in 1 process and in
one per CPU.

    python benchmarks/bench_attacks.py [--members 2000] [--classes 10] [--jobs 1,-1] [--attacks reference] [--json F]

The inputs stand in for a victim's outputs on `--members` members and as many non-members (`privacy-mnist-cpu`:
2 000 and 2 000, 10 classes): logits drawn around the true class, losses drawn smaller for the members (a
victim that partly memorised). The models are fitted on these numbers as on a real victim's, so the time is
the attacks' own; it is not an AUC measurement. Prints wall seconds per `--jobs` value and whether every
attack's scores equal those of the first value (they must: each fit is seeded).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from frepo.apps.attacks import run_attacks


def victim_outputs(n: int, classes: int, loss_scale: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits N×C, loss N, labels N) of a victim on n examples."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0.0, 2.0, (n, classes)).astype(np.float32)
    logits[np.arange(n), labels] += 4.0
    loss = rng.exponential(loss_scale, n).astype(np.float32)
    return logits, loss, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--jobs", default="1,-1", help="comma-separated process counts to time (-1: one per CPU)")
    parser.add_argument("--attacks", default="reference", choices=("reference", "frepo"))
    parser.add_argument("--json")
    args = parser.parse_args()

    members = victim_outputs(args.members, args.classes, 0.05, seed=0)
    nonmembers = victim_outputs(args.members, args.classes, 0.3, seed=1)
    rows, first = [], None
    print(f"{args.attacks} attacks, {args.members} members + {args.members} non-members, {os.cpu_count()} CPUs")
    print("| jobs | wall s | scores as the first row's |\n|---|---|---|")
    for jobs in map(int, args.jobs.split(",")):
        start = time.perf_counter()
        results = run_attacks(members, nonmembers, args.classes, seed=0, attack_set=args.attacks, jobs=jobs)
        wall = time.perf_counter() - start
        first = first or results
        same = results == first
        rows.append(
            {
                "jobs": jobs,
                "wall_s": round(wall, 2),
                "same_scores": same,
                "auc": {k: v["auc"] for k, v in results.items()},
            }
        )
        print(f"| {jobs} | {wall:.1f} | {'yes' if same else 'NO'} |")
    if args.json:
        meta = {"members": args.members, "classes": args.classes, "attacks": args.attacks, "cpus": os.cpu_count()}
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
