"""The base of the downstream experiments: one resumable experiment in one folder. An app states what
differs — its settings dataclass and presets, its units of work (`work`), its budget, its tables and its
plot — and inherits the rest: the entry point (a config, or a preset and options), the distillations
(one run folder each, resumed where it stopped), opening and closing the locked folder, and the summary
(the app's results, its settings, budget, frepo version and date) recorded as `<kind>.json` beside
`<kind>.md`, `<kind>.csv` and `<kind>.png`."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ..base.device import resolve_device
from ..base.errors import FrepoError, check_argument, check_path
from ..base.fields import to_dict
from ..base.version import __version__
from ..config import DistillConfig
from ..config import presets as distill_presets
from ..data import whole_data_dir
from ..io.artifact import DistilledSet, load_distilled
from ..jobs.distill import distill, warn_of_cpu_budget
from .common import ExperimentDir, resolve, save_plot, write_text

log = logging.getLogger(__name__)


class Experiment:
    """One experiment: its settings (validated), its folder, and the template of a run."""

    kind: ClassVar[str]  # the folder's kind and the results' file names: <kind>.json, .md, .csv, .png
    settings_type: ClassVar[type]  # the settings dataclass (its fields: dataset, ipc, steps, batch_size, ...)
    presets: ClassVar[dict[str, dict[str, Any]]]
    may_change: ClassVar[frozenset[str]] = frozenset()  # settings that only add or drop units of work
    # for a unit setting added later: what a folder made before it holds, read from its units (ExperimentDir)
    held_before_record: ClassVar[dict[str, Callable[[Path], Any]]] = {}

    def __init__(self, config: Any, out: str | Path, progress: bool = False):
        config.validate()
        if config.lr is None:  # the rate `frepo distill` resolves for this budget, kept with the settings
            lr = distill_presets.resolve(config.dataset, config.ipc, overrides={"steps": config.steps}).lr
            config = dataclasses.replace(config, lr=lr)
        # recorded whole in <kind>-config.json and the summary, as a run's (the folder may resume with another)
        config = dataclasses.replace(config, data_dir=whole_data_dir(config.data_dir))
        self.config, self.out, self.progress = config, Path(out), progress
        self.folder = ExperimentDir(
            self.out, self.kind, may_change=self.may_change, held_before_record=self.held_before_record
        )

    # ---- what each app states ---------------------------------------------------------------------
    def work(self) -> dict:
        """Run (or pick up) every unit of work; returns the summary's own keys."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What the summary says of the settings."""
        return {"settings": to_dict(self.config)}

    def budget(self) -> str:
        raise NotImplementedError

    def tables(self, summary: dict) -> tuple[str, str]:
        """The summary as Markdown and as CSV."""
        raise NotImplementedError

    def plot(self, plt, summary: dict) -> tuple[Any, Any]:
        """The summary drawn with `plt` (matplotlib.pyplot); returns (figure, axes)."""
        raise NotImplementedError

    # ---- what they share --------------------------------------------------------------------------
    def distillation(self, folder: str | Path, **data: Any) -> DistilledSet:
        """The distillation of the data that `data` (data settings of a DistillConfig) selects, with the
        experiment's budget, in the run folder `out/folder` (resumed where it stopped), as written."""
        run = self.distill_config(**data)
        return load_distilled(distill(run, self.out / folder, progress=self.progress).distilled_path)

    def distill_config(self, **data: Any) -> DistillConfig:
        """The DistillConfig of `distillation(folder, **data)`."""
        cfg = self.config
        overrides = {
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "device": cfg.device,
            "data_dir": cfg.data_dir,
            "download": cfg.download,
            **data,
            "val_size": 0,
            "eval_every": 0,
            "checkpoint_every": max(1, min(200, cfg.steps // 5)),
        }
        return distill_presets.resolve(cfg.dataset, cfg.ipc, overrides=overrides)

    def run(self) -> dict:
        device = resolve_device(self.config.device)  # a device this machine lacks is refused before the folder
        # the paper's defaults, run with no arguments: said once, here (its distillations then say no more)
        advice = f"the *-cpu presets (`frepo presets`, e.g. --preset {self.kind}-mnist-cpu)"
        warn_of_cpu_budget(device, self.config.steps, advice)
        self.folder.open(self.config)
        try:
            return self.summarise(self.work())
        finally:
            self.folder.close()

    def summarise(self, results: dict) -> dict:
        """<kind>.json (documented keys: README / docs/downstream.md), <kind>.md, .csv and .png."""
        summary = {
            **results,
            **self.settings(),
            "budget": self.budget(),
            "frepo_version": __version__,
            "date": time.strftime("%Y-%m-%d"),
        }
        self.folder.record(f"{self.kind}.json", summary)
        markdown, csv = self.tables(summary)
        write_text(self.out / f"{self.kind}.md", markdown)
        write_text(self.out / f"{self.kind}.csv", csv)
        save_plot(self.out / f"{self.kind}.png", lambda plt: self.plot(plt, summary))
        return summary


def run_experiment(
    cls: type[Experiment],
    config: Any | None,
    out: str | Path,
    preset: str | None,
    progress: bool,
    overrides: dict[str, Any],
) -> dict:
    """Run (or resume) `cls` into `out` with `config`, or with its defaults, `preset` and `overrides`."""
    if config is None:
        config = resolve(cls.settings_type, cls.presets, preset, overrides)
    elif preset or overrides:
        raise FrepoError(f"give either a {cls.settings_type.__name__} or a preset and options, not both")
    name = cls.settings_type.__name__
    check_argument("config", config, cls.settings_type, f"a {name}, or none with a preset and options")
    check_path("out", out)
    check_argument("progress", progress, bool, "True or False")
    return cls(config, out, progress).run()
