"""Evaluation results (`EvalResult`) and their tables: printed, JSON and CSV.

JSON always holds `"results"`, a list of one object per architecture (`protocol`, `arch`, `accuracies`,
`mean`, `std`, ...), so a script reads any evaluation the same way; with one result that object's keys are
also at the top level (the shape of earlier versions). Every result carries the evaluated file's checksum and
the seeds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..base.atomic import atomic_write_json, atomic_write_text


def mean_std(mean: float, std: float, count: int) -> str:
    """`mean ± std` of `count` measurements; one measurement has no spread to give, and "± 0.00" would say
    it was measured to be none."""
    return f"{mean:.2f}" + (f" ± {std:.2f}" if count > 1 else "")


def count_of(count: int, noun: str) -> str:
    """'1 model', '5 models'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class EvalResult:
    """One protocol on one architecture: the accuracy of each fresh model and how it was obtained."""

    protocol: str
    arch: str
    accuracies: list[float]  # percent, one per model
    mean: float
    std: float  # population std over models, as the reference (np.std)
    steps: int  # optimiser steps per model (0 for the krr protocol, which trains nothing)
    seconds: float
    split: str = "test"
    seed: int = 0
    extra: dict = field(default_factory=dict)  # the protocol's settings, the models' seeds, the file's identity

    @property
    def models(self) -> int:
        """The number of networks trained and tested."""
        return len(self.accuracies)

    def to_dict(self) -> dict:
        """As plain JSON, with `models` (the keys: RESULT_KEYS)."""
        out = asdict(self)
        out["models"] = self.models
        out.update(out.pop("extra"))
        return out

    def summary(self) -> str:
        """One line: mean ± std over the networks, with the split, protocol, architecture, training and time."""
        return (
            f"{mean_std(self.mean, self.std, self.models)} % ({self.split}, protocol {self.protocol}, "
            f"arch {self.arch}, {count_of(self.models, 'model')}, {trained(self.steps)}, {self.seconds:.0f} s)"
        )


# Every key of a result in `--json` (EvalResult.to_dict plus what `frepo evaluate` adds), documented here and
# checked against real results by the tests.
RESULT_KEYS = {
    "protocol": "frepo, dsa or krr",
    "arch": "the network",
    "accuracies": "test (or val) accuracy of each network, percent",
    "mean": "their mean",
    "std": "their population std (numpy's np.std, ddof 0, as the reference); 0 for one network",
    "models": "how many networks",
    "steps": "optimiser steps per network (0: krr trains nothing)",
    "seconds": "the evaluation's seconds (networks read back after an interruption not counted)",
    "split": "test, or val (the hold-out the set was distilled without)",
    "seed": "the evaluation's seed",
    "model_seeds": "each network's seed, stream_seed(seed, its stream): the frepo and krr protocols draw from it; "
    "the dsa protocol draws the network's weights and its training from its stream's /init and /train streams "
    "(frepo.base.rng.generator(seed, stream + '/init'), ... '/train')",
    "model_streams": "each network's random stream",
    "width": "the width of conv-family networks and convnet; null for networks of fixed size",
    "depth": "their blocks (--depth, else the depth the set was distilled with, else 3); null for fixed sizes",
    "device": "where the networks trained",
    "together": "whether the networks trained at once (--together)",
    "together_mode": "how: stacked or streams; null when one after the other",
    "networks_read_back": "networks finished before an interruption and read back",
    "use_flip": "krr protocol: the flip trick's augmentation of the support set (as the set was distilled)",
    "epochs": "dsa protocol: training epochs",
    "soft_labels": "dsa protocol: trained on the set's learned labels as distributions",
    "dsa_strategy": "dsa protocol: the augmentation strategy",
    "init": "dsa protocol: the networks' initialisation (torch, as the DC code's)",
    "file": "the evaluated file (absent for a set passed in Python)",
    "dataset": "the dataset whose split was used",
    "num_images": "the set's images",
    "file_checksum": "the set's file's checksum (null for a set changed in memory since it was read)",
    "source": "another tool's file: how it was read",
    "field_metrics": "--field-metrics: DD-Ranking's IOR, HLR, LRS and their accuracies",
}


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
    "width",
    "depth",
    "seconds",
    "device",
    "seed",
    "model_seeds",
    "num_images",
    "file_checksum",
    # DD-Ranking's metrics under `--field-metrics` (empty without): points, and LRS on 0..100. IOR and HLR are
    # differences from set_hard_mean (the set trained on its class ids), not from `mean` (on its own labels).
    "ior",
    "hlr",
    "lrs",
    "set_hard_mean",
    "random_mean",
    "full_mean",
    # The protocol's settings (empty where a protocol has none): what two rows differ in besides the network.
    # Last, so that a reader of the earlier columns by position keeps them.
    "use_flip",
    "epochs",
    "soft_labels",
    "dsa_strategy",
    "together",
    "together_mode",
)


def trained(steps: int) -> str:
    """A model's training, in words: "1000 steps", or "no training" (the krr protocol solves, it trains nothing)."""
    return count_of(steps, "step") if steps else "no training"


def results_table(results: Sequence[EvalResult]) -> str:
    """A fixed-width text table: architecture, protocol, models, mean ± std, train steps, seconds."""
    header = ("architecture", "protocol", "models", "accuracy (%)", "train steps", "seconds")
    rows = [
        (r.arch, r.protocol, str(r.models), mean_std(r.mean, r.std, r.models), str(r.steps or "–"), f"{r.seconds:.1f}")
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def results_json(results: Sequence[EvalResult]):
    """{"results": [one dict per result]}; one result's keys also at the top level (the historical shape, which
    `--json` had to be read by one way for one architecture and another for several)."""
    dicts = [r.to_dict() for r in results]
    return {**dicts[0], "results": dicts} if len(dicts) == 1 else {"results": dicts}


def write_json(results: Sequence[EvalResult], path) -> None:
    atomic_write_json(path, results_json(results))


def results_csv(results: Sequence[EvalResult]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        row = result.to_dict()
        row["accuracies"] = ";".join(repr(float(a)) for a in result.accuracies)  # as the JSON, not rounded
        row["model_seeds"] = ";".join(str(s) for s in row.get("model_seeds", []))
        field = row.get("field_metrics")
        if field:
            row.update({k: field[k] for k in ("ior", "hlr", "lrs")})
            row.update(
                set_hard_mean=field["set_hard"]["mean"],
                random_mean=field["random"]["mean"],
                full_mean=field["full"]["mean"],
            )
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return out.getvalue()


def write_csv(results: Sequence[EvalResult], path) -> None:
    atomic_write_text(path, results_csv(results))
