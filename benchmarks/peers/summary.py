"""One table of time per outer step and peak memory, every method against every setting, from the JSON
files that `compare.py` wrote (curve or timing runs, any number, on one machine).

    python benchmarks/peers/summary.py docs/peers_cifar10_ipc1_timing_cpu.json docs/peers_cifar10_ipc10_cpu.json \
        docs/peers_cifar100_ipc10_cpu.json docs/peers_cifar100_ipc50_cpu.json \
        docs/peers_cifar100_ipc10_mtt_batch100_cpu.json docs/peers_cifar100_ipc50_mtt_batch100_cpu.json \
        docs/peers_cifar100_ipc50_mtt_batch125_cpu.json docs/peers_cifar100_ipc50_mtt_batch25_cpu.json

A row is a method (MTT with a `--batch-syn` of its own is a row of its own: its step is another amount of
work), a column a setting in the order the files are given; a cell is the median step and the peak RSS,
or the outcome where the run made no step (e.g. out of memory, with the RSS it had reached).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

DATASETS = {"cifar10": "CIFAR-10", "cifar100-standin": "CIFAR-100 (stand-in)"}


def method_label(row: dict, args: dict) -> str:
    """'MTT, batch_syn 100' for an MTT run with its own synthetic batch; the method's label otherwise."""
    flags = shlex.split(args.get("mtt_flags") or "")
    if row["key"] == "mtt" and "--batch-syn" in flags:
        return f"{row['label']}, batch_syn {flags[flags.index('--batch-syn') + 1]}"
    return row["label"]


def cell(row: dict) -> str:
    rss = f"{row['peak_rss_mb'] / 1024:.1f} GB" if row.get("peak_rss_mb") else "–"
    if row.get("step_s_median"):
        return f"{row['step_s_median']:.2f} s · {rss}"
    outcome = row.get("outcome", "no step")
    if outcome.startswith("out of memory"):
        return f"out of memory (at {rss})"
    return f"{outcome.split(':')[0]} ({rss})"


def summary(records: list[dict]) -> str:
    settings, cells, methods = [], {}, []
    for record in records:
        args = record["args"]
        setting = f"{DATASETS.get(args['dataset'], args['dataset'])} IPC {args['ipc']}"
        if setting not in settings:
            settings.append(setting)
        for row in record["rows"]:
            label = method_label(row, args)
            if label not in methods:
                methods.append(label)
            cells[label, setting] = cell(row)
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for label in methods:
        lines.append(f"| {label} | " + " | ".join(cells.get((label, s), "not run") for s in settings) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", help="compare.py JSON files")
    args = parser.parse_args()
    print(summary([json.loads(Path(path).read_text()) for path in args.json]))


if __name__ == "__main__":
    main()
