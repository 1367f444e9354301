"""What the downstream experiments share: a locked experiment folder that refuses a different config and
lets the same command resume, settings resolved from presets, unions of sets, the test images of some
classes, and results written as JSON, Markdown, CSV and a plot."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.atomic import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    is_temp_file,
    json_text,
    remove_stale_temps,
)
from ..base.device import host_tensor
from ..base.errors import FrepoError
from ..base.fields import check_type, comma_items, from_dict, set_leaf, to_dict
from ..base.lock import LOCK, FolderLock
from ..data import Preprocessing, RawDataset
from ..io.artifact import DistilledSet
from ..jobs.runs import ALWAYS_RESUMABLE

log = logging.getLogger("frepo")


def resolve(cls: type, presets: dict[str, dict], preset: str | None, overrides: dict[str, Any]) -> Any:
    """A settings dataclass: its defaults, then the named preset's values, then `overrides` (leaf names). A
    preset's budget is its dataset's, so another dataset is refused, as `frepo distill` refuses it."""
    config = cls()
    if preset is not None:
        check_type("preset", preset, str)  # a list was "unhashable type"
        if preset not in presets:
            raise FrepoError(f"unknown preset {preset!r}; known: {', '.join(sorted(presets))}")
        named, given = presets[preset].get("dataset"), overrides.get("dataset")
        if named is not None and given is not None and given != named:
            raise FrepoError(f"--preset {preset} is for {named}, not --dataset {given}; give one of them")
        for name, value in presets[preset].items():
            set_leaf(config, name, value)
    for name, value in overrides.items():
        set_leaf(config, name, value)
    config.validate()
    if hasattr(config, "check_given"):  # what only an explicit option can get wrong
        config.check_given(set(overrides))
    return config


class ExperimentDir:
    """The folder of one experiment: one owner at a time, its config (a different one is refused, except
    settings in `may_change`, which only add or drop units: more class orders, more step counts, and those a
    run may always resume with: device, data folder, download), and finished units of work as JSON files, so
    rerunning the same command picks up where it stopped."""

    def __init__(
        self,
        path: str | Path,
        kind: str,
        may_change: frozenset[str] = frozenset(),
        held_before_record: dict[str, Callable[[Path], Any]] | None = None,
    ):
        self.path, self.kind, self.may_change = Path(path), kind, may_change
        # a unit setting added after some folders were made: what such a folder holds, read from its units on disk
        self.held_before_record = held_before_record or {}
        self.config_path = self.path / f"{kind}-config.json"
        # what the units of `may_change` settings asked for so far add up to (orders 0,1 then 2: 0,1,2)
        self.held_path = self.path / f"{kind}-held.json"
        self.lock = FolderLock(self.path)

    def open(self, config: Any) -> None:
        if str(self.path) in ("", "."):
            raise FrepoError("--out must name an experiment folder")
        self.lock.acquire()
        try:
            if self.config_path.is_file():
                previous = self._previous_config()
                now = to_dict(config)
                changed = {k for k in previous.keys() | now.keys() if previous.get(k) != now.get(k)}
                refused = changed - self.may_change - ALWAYS_RESUMABLE
                if refused:
                    differences = ", ".join(
                        f"{_flag(k, now.get(k))}: recorded {_value(previous.get(k))}" for k in sorted(refused)
                    )
                    raise FrepoError(
                        f"{self.path} holds a {self.kind} experiment with other settings ({differences}); use "
                        "another --out, or delete that folder to start over"
                    )
                self._check_types(config, previous)
                held = self._held(previous)
            elif any(p.name != LOCK and not is_temp_file(p) for p in self.path.iterdir()):
                raise FrepoError(f"--out {self.path} is not empty and holds no {self.kind} experiment")
            else:
                held = {}
            remove_stale_temps(self.path)  # of writes a kill cut short (the folder is this process's now)
            now = to_dict(config)
            for name in sorted(self.may_change):
                merged = _union(held.get(name, now[name]), now[name])
                if merged != now[name]:  # the results of the others stay on disk
                    log.warning(
                        f"frepo: {self.path} holds results for {_flag(name, merged)}; this summary covers "
                        f"{_flag(name, now[name])} only (give {_flag(name, merged)} to include the others)"
                    )
                held[name] = merged
            atomic_write_json(self.config_path, now)
            atomic_write_json(self.held_path, held)
        except BaseException:
            self.lock.undo()
            raise
        self.lock.created = []

    def _previous_config(self) -> dict:
        """The folder's recorded settings (a JSON object)."""
        try:
            previous = json.loads(self.config_path.read_text())
            if not isinstance(previous, dict):
                raise TypeError(f"a JSON {type(previous).__name__}, not an object")
        except (OSError, ValueError, TypeError) as exc:  # ValueError: bad JSON or UTF-8
            raise self._damaged(exc) from exc
        return previous

    def _held(self, previous: dict) -> dict:
        """The units held so far, by setting (a folder from before this record: its recorded settings; one from
        before a unit setting existed, such as privacy's arms: what its units on disk say, `held_before_record`)."""
        fallback = {name: previous[name] for name in self.may_change if name in previous}
        for name, read in self.held_before_record.items():
            if name not in previous:
                fallback[name] = read(self.path)
        if not self.held_path.is_file():
            return fallback
        try:
            held = json.loads(self.held_path.read_text())
        except ValueError:  # a damaged record: the units are still on disk, only the advice is lost
            return fallback
        return {**fallback, **held} if isinstance(held, dict) else fallback

    def _check_types(self, config: Any, previous: dict) -> None:
        """The recorded settings (equal to `config`'s by name) read as `config`'s type."""
        try:
            from_dict(type(config), previous)
        except (FrepoError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise self._damaged(exc) from exc

    def _damaged(self, exc: Exception) -> FrepoError:
        return FrepoError(
            f"{self.config_path} is damaged ({exc}); restore it, or use another --out (or delete that folder to "
            "start over)"
        )

    def close(self) -> None:
        self.lock.release()

    def done(self, name: str) -> dict | None:
        """The result of a finished unit, or None."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            result = json.loads(path.read_text())
        except ValueError:  # bad JSON or UTF-8
            return None  # a damaged result is recomputed
        return result if isinstance(result, dict) else None

    def record(self, name: str, result: dict) -> dict:
        """Write a finished unit's result; returns it as `done` reads it back (a NaN as None, tuples as lists),
        so the same command gives the same numbers whether the unit ran now or before."""
        text = json_text(result)
        atomic_write_text(self.path / name, text)
        return json.loads(text)


def _flag(name: str, value: Any) -> str:
    """A setting as its command-line flag: `--eval-models 5`."""
    return f"--{name.replace('_', '-')} {_value(value)}"


def _value(value: Any) -> str:
    return "unset" if value is None else str(value)


def _union(held: Any, asked: Any) -> Any:
    """The units of both: the larger count of victims, or a comma list's items (class orders, step counts)
    held first, then those newly asked for; `asked` itself where it holds them all."""
    if isinstance(held, int) and isinstance(asked, int):
        return max(held, asked)
    if isinstance(held, (str, list)) and isinstance(asked, (str, list)):
        held_items, asked_items = comma_items(held), comma_items(asked)
        if set(held_items) <= set(asked_items):
            return asked
        return ",".join(held_items + [item for item in asked_items if item not in held_items])
    return asked


def sharing_preprocessing(ds: DistilledSet, pre: Preprocessing) -> DistilledSet:
    """`ds` holding `pre`, equal to its own, in place of its own copy. The sets of one experiment all carry
    the training split's preprocessing, a ZCA of 36-72 MB on CIFAR each (W, and W⁻¹ once derived): held
    once, not once per task and arm."""
    if ds.preprocessing is pre:
        return ds
    if not ds.preprocessing.same_as(pre):
        raise FrepoError("these sets carry different preprocessings: their images are in different spaces")
    return dataclasses.replace(ds, preprocessing=pre)


def union(sets: list[DistilledSet]) -> DistilledSet:
    """One set of several with the same preprocessing (checked) and classes: images and labels concatenated
    (learned labels stay learned; class ids stay class ids; a mix becomes regression targets)."""
    first = sets[0]
    sets = [sharing_preprocessing(s, first.preprocessing) for s in sets]
    if all(s.labels.ndim == 1 for s in sets):
        labels = torch.cat([s.labels.long() for s in sets])
    elif all(s.labels.ndim == 2 for s in sets):
        labels = torch.cat([s.labels.float() for s in sets])
    else:
        labels = torch.cat([s.targets() for s in sets])
    images = torch.cat([s.images.detach().float() for s in sets])
    meta = {**first.meta, "kind": "union", "ipc": None, "step": None, "checksum": None}
    return DistilledSet(images, labels, first.preprocessing, meta)


def test_split_of(ds: DistilledSet, raw: RawDataset, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images of `classes` in the set's preprocessed space, and their class ids."""
    keep = np.isin(raw.y_test, np.asarray(classes))
    return ds.transform(raw.x_test[keep]), host_tensor(raw.y_test[keep])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def save_plot(path: Path, draw) -> Path:
    """`draw(ax)` onto a figure, saved atomically as PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = draw(plt)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def write_text(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    return path
