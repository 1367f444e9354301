"""Evaluation results as a printed table, JSON and CSV.

JSON keeps the single-result shape of earlier versions (one object with `protocol`, `arch`,
`accuracies`, `mean`, `std`, ...) when there is one result; several results (one per architecture)
become `{"results": [...]}`. Every result carries the evaluated file's checksum and the seeds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from .evaluate import EvalResult
from .io import atomic_write_json, atomic_write_text

CSV_COLUMNS = (
    "file",
    "dataset",
    "split",
    "protocol",
    "arch",
    "models",
    "mean",
    "std",
    "accuracies",
    "steps",
    "seconds",
    "seed",
    "model_seeds",
    "num_images",
    "file_checksum",
)


def results_table(results: Sequence[EvalResult]) -> str:
    """A fixed-width text table: architecture, protocol, models, mean ± std, train steps, seconds."""
    header = ("architecture", "protocol", "models", "accuracy (%)", "train steps", "seconds")
    rows = [
        (r.arch, r.protocol, str(r.models), f"{r.mean:.2f} ± {r.std:.2f}", str(r.steps), f"{r.seconds:.1f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def results_json(results: Sequence[EvalResult]):
    """One result -> its dict (the historical shape); several -> {"results": [dicts]}."""
    dicts = [r.to_dict() for r in results]
    return dicts[0] if len(dicts) == 1 else {"results": dicts}


def write_json(results: Sequence[EvalResult], path) -> None:
    atomic_write_json(path, results_json(results))


def results_csv(results: Sequence[EvalResult]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = result.to_dict()
        row["accuracies"] = ";".join(f"{a:.4f}" for a in result.accuracies)
        row["model_seeds"] = ";".join(str(s) for s in row.get("model_seeds", []))
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return out.getvalue()


def write_csv(results: Sequence[EvalResult], path) -> None:
    atomic_write_text(path, results_csv(results))
