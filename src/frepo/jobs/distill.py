"""A distillation run: data, run directory, and the loop of `FRePoTrainer.step()` followed by its
periodic actions (`frepo.jobs.actions`: divergence watch, metrics, snapshots, validation and best set,
checkpoint) on one schedule. Ctrl-C or SIGTERM checkpoints and stops; rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.atomic import WriteError
from ..base.device import resolve_device, synchronize
from ..base.dist import init_distributed, world_size
from ..base.errors import FrepoError, Interrupted, check_argument, check_path, out_of_memory
from ..base.fields import to_dict
from ..base.log import progress_bar
from ..base.perf import AllocatorPolicy, release_free_heap
from ..base.signals import StopRequest, aborting, stop_on_signal
from ..config import DistillConfig, presets
from ..data import PreparedData, prepare, whole_data_dir
from ..eval import EvalConfig
from ..eval.results import count_of
from ..io.artifact import HOST, DistilledSet, load_distilled, save_distilled
from ..method.synthetic import check_class_sizes
from ..method.trainer import FRePoTrainer
from .actions import (
    Action,
    ChanceWatch,
    Checkpoint,
    LossWatch,
    MetricsLog,
    Moment,
    Snapshots,
    Validation,
    ValidationPlan,
    load_watch_state,
    non_finite,
    peak_memory_mb,
    reset_peak_memory,
    watch_state,
)
from .monitor import Monitor, summary_writer
from .runs import RunDir, as_the_run_resolves, default_run_dir, environment, warn_of_other_rounding
from .visualize import save_grid

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    """What `distill` returns: the run directory `out` and its files (paths as given, relative to the working
    folder of the call where `out` was), the last `step`, the last validation's accuracy in percent (None
    without validation: val_size 0), and `seconds` of training (validations and checkpoints left out)."""

    out: Path
    step: int
    distilled_path: Path
    best_path: Path | None
    val_accuracy: float | None
    seconds: float

    def to_dict(self) -> dict:
        """As plain JSON, paths absolute."""
        return {
            "out": str(self.out.resolve()),
            "step": self.step,
            "distilled_path": str(self.distilled_path.resolve()),
            "best_path": None if self.best_path is None else str(self.best_path.resolve()),
            "val_accuracy": self.val_accuracy,
            "seconds": self.seconds,
        }


GPU_STEPS = 50_000  # outer steps from which a CPU is warned of days of work (the paper's budgets are 500 000)
_budgets_said: set[int] = set()  # the step counts a CPU was warned of in this process


def warn_of_cpu_budget(device: torch.device, steps: int, advice: str) -> None:
    """Warn that `steps` outer steps (a paper preset, or a hand-made config) take days on a CPU, naming the
    presets that do not (`advice`); once per budget and process: an experiment's tasks each distilled and each
    said it again, after the experiment had."""
    if device.type == "cpu" and steps >= GPU_STEPS and steps not in _budgets_said:
        _budgets_said.add(steps)
        log.warning(f"frepo: {steps} outer steps on a CPU take days; {advice} run in minutes to hours")


def _shown(value):
    """A changed setting as a person reads it: 0.00403, not 0.004032831534026304."""
    return f"{value:.3g}" if isinstance(value, float) else repr(value)


# The order `Distiller._actions` gives the actions of a step (a rank runs those it has: under torchrun rank 0 alone
# snapshots and validates).
ACTION_ORDER = ("LossWatch", "Snapshots", "MetricsLog", "Validation", "ChanceWatch", "Checkpoint")

CHECKPOINT_KEYS = ("step", "synthetic", "lamb", "pool", "sampler", "best", "elapsed")


class Distiller:
    """Holds the state of one run; `run()` drives it to `config.steps`.

    Starting is all or nothing: the run directory is locked, the config checked against the run found
    there, the data prepared, the trainer built and the checkpoint checked and loaded — and only then is
    anything written (a failed start leaves the directory as it found it)."""

    def __init__(
        self, config: DistillConfig, out: str | Path, progress: bool = False, resume_with_changes: bool = False
    ):
        # Not given: a run made before the budget-aware default (which recorded 1000) keeps its own evaluation
        # budget; a config built by hand gets the reference's flip table, as presets.resolve gives it, but for a
        # run of one made before that default, which recorded null and ran without the flip (bool(None)).
        config = as_the_run_resolves(config, RunDir(out).settings())
        config.validate()
        # --data-dir recorded whole: the run's sets find their dataset from any folder
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, data_dir=whole_data_dir(config.data.data_dir))
        )
        self.config = config
        self.ctx, device_name = init_distributed(config.device)
        self.device = resolve_device(device_name)
        self.run_dir = RunDir(out)
        self.progress = progress and self.ctx.is_main
        if config.batch_size % self.ctx.world:
            raise FrepoError(f"batch_size {config.batch_size} is not divisible by the {self.ctx.world} processes")
        # Rank 0 owns the directory for the whole run and judges it; every rank learns the verdict (`agree`), so a
        # refusal under torchrun is rank 0's one line, not the others' broken connections.
        claim, acquired = None, False
        try:
            refusal = None
            if self.ctx.is_main:
                try:
                    self.run_dir.acquire()
                    acquired = True
                    claim = self.run_dir.check(config, resume_with_changes)
                except FrepoError as exc:
                    refusal = exc
            self.ctx.agree(refusal)
            if claim and claim.resuming:  # the start it was made from stays on record (RunDir.check says why)
                config = dataclasses.replace(config, init=self.run_dir.recorded("init"))
            # every rank takes rank 0's word on both (only rank 0 read the directory)
            resuming, init = self.ctx.gather_objects((bool(claim and claim.resuming), config.init))[0]
            config = self.config = dataclasses.replace(config, init=init)
            self.ctx.agree(self._unseen_checkpoint(resuming))
            saved = self._setup(config, resuming)
            self.ctx.agree(self._other_steps())
            self.ctx.agree(self._changes_to_a_finished_run(claim))
            if claim:
                self.run_dir.begin(config, claim, self.device)
        except BaseException:
            if acquired:
                self.run_dir.abandon()
            raise
        self._announce(claim, resuming)
        self.monitor = Monitor(self.run_dir, config, self.step) if self.ctx.is_main else None
        if claim and claim.changes and self.monitor:
            self.monitor.record({"step": self.step, "changed": claim.changes})
        # Settings changed on resume (a lower --lr after a divergence): the watches judge the run afresh from
        # here, against the resumed loss, not the first run's (rank 0 read the directory; every rank agrees).
        changed = bool(self.ctx.gather_objects(bool(claim and claim.changes))[0])
        self.actions = self._actions(saved, fresh_watches=changed)

    def _unseen_checkpoint(self, resuming: bool) -> FrepoError | None:
        """On a rank other than 0 of a run that rank 0 resumes: a refusal if this process cannot see the checkpoint
        (--out on each node's own disk). It would start afresh and average its gradients with rank 0's."""
        if self.ctx.is_main or not resuming or self.run_dir.checkpoint_path.is_file():
            return None
        return FrepoError(
            f"rank 0 resumes the run from its checkpoint, but this process (rank {self.ctx.rank} on "
            f"{socket.gethostname()}) finds none at {self.run_dir.checkpoint_path}: --out must be one folder that "
            "every node shares"
        )

    def _changes_to_a_finished_run(self, claim) -> FrepoError | None:
        """On rank 0: a refusal of changed settings for a run whose checkpoint is at or past its steps, before they
        are recorded. Nothing would run with them, yet config.json took them: the set, made with the old ones,
        was then said to be of the new, and the first command was refused as "a different config". (A new --steps
        at the checkpoint's step ends the run there, and a run stopped in its end has its end to run, its
        validation's settings among the changes: both stay allowed.)"""
        if not (claim and claim.changes) or "steps" in claim.changes or self.step < self.config.steps:
            return None
        if not self.run_dir.distilled_path.is_file():  # its end is still to run (stopped in it): the changes count
            return None
        changed = ", ".join(f"{k} {_shown(old)} -> {_shown(new)}" for k, (old, new) in claim.changes.items())
        return FrepoError(
            f"{self.run_dir.path} is complete at step {self.step}: the changed settings ({changed}) would run no "
            f"step; rerun without --resume-with-changes for the run as it is, or give --steps above {self.step} "
            "to continue with them"
        )

    def _other_steps(self) -> FrepoError | None:
        """On rank 0: a refusal if the ranks loaded checkpoints of different steps (a copy of --out on each node:
        the ranks would average gradients of different sets, then wait for each other at the end for hours)."""
        steps = self.ctx.gather_objects(self.step)
        if not self.ctx.is_main or len(set(steps)) == 1:
            return None
        return FrepoError(
            f"the processes resumed {self.run_dir.path} at different steps ({', '.join(map(str, steps))}, by rank): "
            "--out must be one folder that every node shares, not a copy on each"
        )

    def _setup(self, config: DistillConfig, resuming: bool) -> dict | None:
        """Data, trainer and (when resuming) the checkpoint, checked and loaded; returns the checkpoint."""
        # Under torchrun every rank prepares its own data (a node may lack the dataset, or rank 0 TensorBoard): a
        # refusal on some ranks stops all, where the others waited in the trainer's broadcast of rank 0's start
        # (NCCL's for up to the 2 h collective timeout) and then failed with a broken connection's traceback.
        prepared: tuple | None = None
        refusal = None
        try:
            prepared = self._training_data(config, resuming)
        except FrepoError as exc:
            refusal = exc
        self.ctx.agree(refusal)
        assert prepared is not None  # agree raised otherwise
        x_train, y_train, start = prepared
        self.trainer = FRePoTrainer(config, x_train, y_train, self.num_classes, self.device, self.ctx, start)
        self.syn = self.trainer.syn
        self.step = 0
        self.elapsed = 0.0
        self._step_start: float | None = None  # when the running step's training began (pauses move it)
        self.last_checkpoint: int | None = None
        # the action a stop cut short after this step (`Action.interruptible`), run again first on resuming
        self._pending: str | None = None
        self._host: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (step, images, labels)
        self._test_fingerprint = self.data.raw.test_fingerprint()
        self._train_digest = self.data.train_digest()
        self._environment = environment(self.device)
        state, refusal = None, None
        try:  # every rank reads its own view of the checkpoint: one it cannot read (a damaged copy) stops them all
            state = self.run_dir.load_checkpoint() if resuming else None
            if state is not None:
                self._load(state)
        except FrepoError as exc:
            refusal = exc
        self.ctx.agree(refusal)
        return state

    def _training_data(self, config: DistillConfig, resuming: bool) -> tuple:
        """The run's data prepared (`self.data`), and the trainer's: the training images and labels, and the start an
        --init file gives (None: drawn from the real images)."""
        if config.tensorboard and self.ctx.is_main:
            summary_writer()  # a missing package is a failed start, not a failure after the first steps
        self.data: PreparedData = prepare(config.data, self.device)  # a ZCA is fitted on the run's device
        raw = self.data.raw
        self.num_classes = raw.num_classes
        if self.data.streams(config.data.stream):
            x_train, y_train = self.data.train_stream(channels_last=config.channels_last)
        else:
            x_train, y_train = self.data.train(channels_last=config.channels_last)
        if config.batch_size > len(x_train):
            log.warning(
                f"frepo: batch_size {config.batch_size} exceeds the {len(x_train)} distillation images; "
                "batches repeat images"
            )
        if not config.init:  # the start is drawn from each class's real images (an --init file brings its own)
            classes = config.data.class_ids(raw.num_classes)
            check_class_sizes(y_train, classes, config.ipc, raw.classes, held_out=len(self.data.val_idx))
        start = None
        if config.init and not resuming:  # a resumed run continues from its checkpoint
            from ..io.foreign import load_start  # other tools' readers, loaded only when asked for

            classes = config.data.class_ids(raw.num_classes)
            start = load_start(config.init, raw, self.data.preprocessing, classes, config.ipc, self.data.val_idx)
        elif config.init:  # resumed: its checkpoint holds the set, and no real image is drawn (a class may have
            # fewer than ipc of them: the start came from the file); a placeholder of the set's shape, overwritten
            ids = torch.tensor(config.data.class_ids(raw.num_classes)).repeat_interleave(config.ipc)
            start = (
                torch.zeros(len(ids), *x_train.shape[1:]),
                torch.nn.functional.one_hot(ids, raw.num_classes).float(),
            )
        return x_train, y_train, start

    def _actions(self, saved: dict | None, fresh_watches: bool = False) -> list[Action]:
        """The periodic actions, in the order they run after a step (their state from `saved`; the
        divergence watches' only where `fresh_watches` is False)."""
        cfg, words = self.config, self._checkpoint_words
        self.loss_watch = LossWatch(cfg.log_every, cfg.steps, self.trainer.finite, words)
        self.chance_watch = ChanceWatch(self.num_classes, words)
        actions: list[Action] = [self.loss_watch]
        if self.monitor:  # the step-0 snapshot is written (begin) before the first metrics window opens
            actions.append(Snapshots(self.monitor, cfg.steps))
        actions.append(MetricsLog(cfg.log_every, cfg.steps, self.monitor, self._facts, self._training_seconds))
        self.validation = None
        if self.monitor and len(self.data.val_idx):  # the reference protocol on the hold-out, the run's budget
            steps = cfg.validation_steps()
            config = EvalConfig.build(
                protocol="frepo", models=cfg.eval_models, split="val", device=str(self.device), steps=steps
            )
            plan = ValidationPlan(cfg.eval_every, cfg.steps, cfg.seed, config, cfg.eval_models, steps)
            self.validation = Validation(plan, self.data.val, self.monitor, self.run_dir.best_path, self._finite)
            self.validation.progress = self.progress
            actions.append(self.validation)
        actions += [self.chance_watch, Checkpoint(cfg.checkpoint_every, self.checkpoint)]
        if saved is not None:
            load_watch_state(self.loss_watch, self.chance_watch, None if fresh_watches else saved.get("watch"))
            if self.validation:
                self.validation.load_state_dict(saved["best"])
                self.validation.forget_a_best_of_lost_steps(self.step)
                self.validation.last = saved.get("last_val_acc")
                self.validation.validated_at = saved.get("last_val_step")  # None in older checkpoints
                if self.validation.best["step"] == self.step:  # a best of this step was validated (its line kept)
                    self.validation.validated_at = self.step
        return actions

    def _resumed_at(self, pending: str) -> int:
        """The index of the first action to run again after a stop cut `pending` short: its own, or, on a rank
        without it (under torchrun rank 0 alone validates and snapshots), the first that comes after it in
        `ACTION_ORDER`, so every rank meets the same checkpoint."""
        if pending not in ACTION_ORDER:  # a name of another version: nothing is run again
            return len(self.actions)
        after = ACTION_ORDER.index(pending)
        names = [type(action).__name__ for action in self.actions]
        ranks = [ACTION_ORDER.index(name) if name in ACTION_ORDER else len(ACTION_ORDER) for name in names]
        return next((index for index, rank in enumerate(ranks) if rank >= after), len(self.actions))

    def _facts(self, step: int) -> dict:
        """What a metrics line records beside the step's losses (`MetricsLog`)."""
        return {
            "lr": self.trainer.learning_rate(max(step - 1, 0)),
            "peak_mem_mb": peak_memory_mb(self.device),
            "pool_resets": self.trainer.pool_resets,
            "elapsed_s": self._training_seconds(),  # the logged step's included, as steps/s's clock has it
        }

    def _data_summary(self) -> str:
        """What the run distils from, said once: a dataset of one's own is seen as frepo read it (its image
        size, classes and their sizes, the hold-out, the preprocessing)."""
        data, raw = self.data, self.data.raw
        classes = self.config.data.class_ids(raw.num_classes)
        counts = np.bincount(np.asarray(raw.y_train)[data.train_idx], minlength=raw.num_classes)[classes]
        c, h, w = raw.image_shape
        sizes = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}..{counts.max()}"
        kinds = f"{len(classes)} class{'' if len(classes) == 1 else 'es'}"
        return (
            f"{count_of(len(data.train_idx), 'training image')} of {c}×{h}×{w}, {kinds} ({sizes} per class), "
            f"{len(data.val_idx)} held out for validation, preprocessing {data.preprocessing.kind}"
        )

    def _announce(self, claim, resuming: bool) -> None:
        cfg = self.config
        log.info(
            f"frepo: distilling {cfg.data.dataset}, {count_of(cfg.ipc, 'image')} per class, "
            f"{count_of(cfg.steps, 'step')}, lr {cfg.lr:.3g}, real batch {cfg.batch_size}"
            + (f" over {self.ctx.world} processes" if self.ctx.world > 1 else "")
            + f", flip {'on' if cfg.use_flip else 'off'} -> {self.run_dir.path}"
        )
        log.info(f"frepo: data: {self._data_summary()}")
        warn_of_cpu_budget(self.device, cfg.steps - self.step, "the *-cpu presets (`frepo presets`)")
        if resuming and self.step < cfg.steps:  # a complete run is said to be so (`_run`), not to resume
            log.info(
                f"frepo: resuming from step {self.step} of {cfg.steps} (checkpoint of {self.run_dir.checkpoint_time()})"
            )
        if claim and claim.changes:
            changed = ", ".join(f"{k} {_shown(old)} -> {_shown(new)}" for k, (old, new) in claim.changes.items())
            log.warning(f"frepo: continuing with changed settings: {changed}")
        if resuming and claim and self.step < cfg.steps:  # a complete run runs nothing: nothing to round
            kernels = {"compile": cfg.compile, "deterministic": cfg.deterministic}
            warn_of_other_rounding(
                self.run_dir.path, claim.previous_kernels, kernels, claim.previous_environment, self.device
            )
        if resuming and claim and claim.previous_environment:
            now = environment(self.device)
            differs = {k: (v, now.get(k)) for k, v in claim.previous_environment.items() if now.get(k) != v}
            if differs:
                detail = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differs.items())
                log.warning(
                    f"frepo: resuming under a different environment ({detail}); the rest of the run will not "
                    "repeat the uninterrupted run bit for bit"
                )

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        validation = self.validation
        return {
            "step": self.step,
            **self.trainer.state_dict(),
            "best": validation.state_dict() if validation else {"val_acc": None, "step": None},
            "last_val_acc": validation.last if validation else None,
            "last_val_step": validation.validated_at if validation else None,
            "watch": watch_state(self.loss_watch, self.chance_watch),
            "elapsed": self.elapsed,
            "train_digest": self._train_digest,
            "pending": self._pending,
        }

    def _check_checkpoint(self, state: dict) -> None:
        """A checkpoint of another config (or none at all) is refused before anything is loaded."""
        cfg, problems = self.config, []
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            problems.append(f"it lacks {', '.join(missing)}")
        else:
            step = state["step"]
            if not isinstance(step, int) or not 0 <= step <= cfg.steps:
                problems.append(f"its step {step!r} is not within this run's 0..{cfg.steps}")
            problems += self.trainer.state_problems(state)
        if state.get("train_digest", self._train_digest) != self._train_digest:  # none in older checkpoints
            raise FrepoError(
                f"{self.run_dir.checkpoint_path} was made on other training data (labels or sampled images "
                "differ, or a decoder that now decodes them otherwise); resume with the data the run began with, "
                "or use another --out"
            )
        step = state.get("step")
        past = type(step) is int and step > cfg.steps
        if past and problems == [f"its step {step!r} is not within this run's 0..{cfg.steps}"]:
            # --steps lowered below the progress made: advice to keep it, not to delete it
            raise FrepoError(
                f"{self.run_dir.checkpoint_path} is at step {step}, past this run's --steps {cfg.steps}; give "
                f"--steps {step} or more (with --resume-with-changes), or delete it to restart the run"
            )
        if problems:
            raise FrepoError(
                f"{self.run_dir.checkpoint_path} does not fit this run ({'; '.join(problems)}); "
                "delete it to restart the run"
            )

    def _load(self, state: dict) -> None:
        self._check_checkpoint(state)
        try:
            self.trainer.load_state_dict(state)
            self.elapsed = float(state["elapsed"])
            # The actions load theirs once they exist (after the directory is claimed): wrong types fail now.
            best, watch = dict(state["best"]), dict(state.get("watch") or {})
            float(watch.get("first_kernel_loss") or 0.0), int(watch.get("chance_streak") or 0)
            float(best.get("val_acc") or 0.0)
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise FrepoError(
                f"{self.run_dir.checkpoint_path} does not fit this run ({exc}); delete it to restart the run"
            ) from exc
        self.step = self.last_checkpoint = int(state["step"])
        pending = state.get("pending")  # none in older checkpoints
        self._pending = pending if isinstance(pending, str) else None
        # A validation of this step the checkpoint does not record (cut short, or the end's, run after the last
        # step's checkpoint and killed before the end's) may have logged its line: it runs again, so the line goes.
        # (Checkpoints of before `last_val_step` lack the key: only their pending validation is known.)
        best_step = (state.get("best") or {}).get("step")  # a best of this step: the end does not validate again
        unrecorded = "last_val_step" in state and state["last_val_step"] != self.step and best_step != self.step
        if self.ctx.is_main:
            self.run_dir.truncate_metrics(self.step, redo_validation=self._pending == "Validation" or unrecorded)

    def _finite(self, step: int) -> None:
        """The run's stop (with the last good checkpoint, and advice) where the set holds NaN/inf. (Under torchrun
        rank 0 alone validates: its stop there reaches the other ranks through `_run_actions`.)"""
        if not self.trainer.finite():
            raise FrepoError(non_finite("the synthetic set", step, self._checkpoint_words()))

    def checkpoint(self) -> None:
        self.ctx.agree(_failure_of(lambda: self._finite(self.step)))  # every rank finds it: said once, by rank 0
        state = self.state_dict()  # on every rank: a per-rank pool is gathered from all of them
        # rank 0 writes; a failure (a full disk) stops every rank, which wait here for it
        self.ctx.agree(_failure_of(lambda: self._save_checkpoint(state)) if self.ctx.is_main else None)
        self.last_checkpoint = self.step

    def _save_checkpoint(self, state: dict) -> None:
        try:
            self.run_dir.save_checkpoint(state)
        except WriteError as exc:
            if exc.reason is None:
                raise
            kept = f"the last checkpoint, at step {self.last_checkpoint}, is kept" if self.last_checkpoint else ""
            raise WriteError(f"{exc.reason} while writing {exc.target}; {kept or 'no checkpoint yet'}") from exc

    def _checkpoint_words(self) -> str:
        return f"{self.run_dir.checkpoint_path}, step {self.last_checkpoint}" if self.last_checkpoint else "none yet"

    # ---- the set ------------------------------------------------------------------------------
    def _meta(self) -> dict:
        raw = self.data.raw
        return {
            "kind": "distilled",
            "dataset": raw.name,
            "classes": raw.classes,
            "ipc": self.config.ipc,
            "seed": self.config.seed,
            "step": self.step,
            "config": to_dict(self.config),
            "mirror_invariant": raw.mirror_invariant,
            "val_size": int(len(self.data.val_idx)),
            "holdout": self.data.holdout.to_meta(),
            "test_fingerprint": self._test_fingerprint,
            "environment": self._environment,
        }

    def host_set(self) -> DistilledSet:
        """The current set as a host copy, with everything its file records: the one place where the run's
        device tensors reach the host. Files, pictures, monitoring and the best set receive this (a
        `DistilledSet` holds host tensors by contract); validation trains on the live device tensors (and
        takes this for the set's description). Copied once per step, however many consumers ask (the copy
        waits for the device's step to end); the consumers of a step share it, so it is read-only."""
        if self._host is None or self._host[0] != self.step:
            images = self.syn.images.detach().to(HOST, copy=True)
            labels = self.syn.labels.detach().to(HOST, copy=True)
            self._host = (self.step, images, labels)
        _, images, labels = self._host
        return DistilledSet(images, labels, self.data.preprocessing, self._meta())

    def _moment(self, metrics: dict[str, torch.Tensor] | None) -> Moment:
        live = (self.syn.images.detach(), self.syn.labels.detach())  # on the run's device: no copy
        final = self.step == self.config.steps
        return Moment(self.step, final, metrics, live, self.host_set, self.ctx.mean_)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> DistillResult:
        try:
            return self._run()
        finally:
            self.run_dir.release()

    def _run(self) -> DistillResult:
        cfg = self.config
        # Rank 0 alone looks at the final file (GBs for ImageNet IPC 50) and every rank takes its answer, so all of
        # them meet in the barrier or none does (the step, the checkpoint's, is every rank's).
        finished = self.step >= cfg.steps
        verdict = self._final_file() if finished and self.ctx.is_main else "intact"
        if finished and not self.ctx.any(verdict in ("missing", "other")):
            # The final checkpoint holds the set: only a damaged file is written again.
            if self.ctx.any(verdict == "damaged"):
                self.ctx.agree(_failure_of(self._write_final_files))  # the barrier: rank 0 wrote them, or failed
            elif self.ctx.is_main and not self._grid_path.is_file():  # killed between the set and its picture
                self._write_grid(self.host_set())
            log.info(f"frepo: {self.run_dir.path} is already complete ({count_of(self.step, 'step')})")
            return self._result()
        bar = progress_bar(
            total=cfg.steps,
            initial=self.step,
            desc="distill",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        with contextlib.ExitStack() as cleanup:
            if self.monitor:
                cleanup.callback(self.monitor.close)
            with stop_on_signal() as stop, contextlib.closing(bar):
                metrics = self._loop(bar, stop)
                if self.ctx.enabled:
                    self._end(metrics, stop)
            if not self.ctx.enabled:
                self._end(metrics, None)
        self.ctx.agree(_failure_of(self._write_final_files))  # the barrier: rank 0 wrote them, or failed
        return self._result()

    def _end(self, metrics: dict[str, torch.Tensor] | None, stop: StopRequest | None) -> None:
        """The end's actions: the last validation, then the last checkpoint. In one process after the loop's signal
        handling (`stop` None): Ctrl-C or the command line's SIGTERM interrupts, and `_keep_the_steps` keeps the
        steps. Under torchrun within it: SIGTERM's default there ended the process at once (the command line leaves
        it to torchrun), losing the steps since the last checkpoint; a stop in rank 0's validation is every rank's,
        as in the loop."""
        now = self._moment(metrics)
        try:
            stopping = self._run_actions(now, stop, lambda index, action: action.at_end(self.step))
        except Interrupted:  # already said and kept (a second Ctrl-C in a write)
            raise
        except KeyboardInterrupt:
            self._keep_the_steps()
            raise
        if stopping and self.ctx.any(self._pending is not None):  # rank 0 cut its validation: every rank stops
            self._stop_here()

    def _keep_the_steps(self) -> None:
        """Ctrl-C in the end's actions (its validation: minutes at a real budget; SIGTERM too under the command
        line, which turns it into a KeyboardInterrupt): every step is done,
        and a run whose steps are not a multiple of --checkpoint-every lost those since its last checkpoint.
        The steps are checkpointed, and the same command runs the end again. In one process only: under
        torchrun the checkpoint gathers from every rank, and each rank takes the signal somewhere else."""
        if self.ctx.enabled:
            return
        if self.last_checkpoint != self.step:
            self.checkpoint()
        raise Interrupted(
            f"stopped in the end's validation, after step {self.step}; checkpoint written to "
            f"{self.run_dir.checkpoint_path}. Run the same command to finish."
        )

    def _write_final_files(self) -> None:
        """distilled.safetensors and distilled.png of the current set (rank 0)."""
        if self.ctx.is_main:
            ds = self.host_set()
            save_distilled(ds, self.run_dir.distilled_path)
            self._write_grid(ds)

    @property
    def _grid_path(self) -> Path:
        return self.run_dir.path / "distilled.png"

    def _write_grid(self, ds: DistilledSet) -> None:
        title = f"{self.data.raw.name}, {self.config.ipc} per class, step {self.step}"
        save_grid(ds, self._grid_path, title=title)

    def _training_seconds(self) -> float:
        """Training time so far: the finished steps' and the running one's, actions that do not train left out."""
        running = 0.0 if self._step_start is None else time.perf_counter() - self._step_start
        return self.elapsed + running

    def _loop(self, bar, stop: StopRequest) -> dict[str, torch.Tensor] | None:
        """Outer steps to the end of the run, each followed by its due actions; a stop request checkpoints
        and raises. Returns the last step's metrics (None when no step was left)."""
        metrics = None
        start = self._moment(metrics)
        reset_peak_memory(self.device)
        for action in self.actions:
            action.begin(start)
        if self._pending is not None:  # what a stop cut short after the checkpoint's step, and the actions after it
            first = self._resumed_at(self._pending)
            self._pending = None
            stopping = self._run_actions(start, stop, lambda index, action: index >= first and action.due(self.step))
            if stopping and self.ctx.any(self._pending is not None):  # cut short again (under torchrun: on rank 0)
                self._stop_here()
        # On a CPU, whether freed memory stays in the heap (faster, more memory) is chosen from the first
        # step's peak under glibc's default (frepo.base.perf); a GPU run's host memory is small.
        allocator = AllocatorPolicy() if self.device.type == "cpu" else None
        if allocator is not None and self.step < self.config.steps:
            allocator.before_first_step()
        while self.step < self.config.steps:
            # Training time is the loop's wall time but what non-training actions take: a step only queues
            # its GPU work (CUDA graphs queue whole steps), which the host waits for at the next read of
            # its numbers, so timing `step()` alone would miss the GPU's time.
            self._step_start = time.perf_counter()
            metrics = self.trainer.step()
            self.step += 1
            if allocator is not None and allocator.kept is None:
                allocator.after_first_step()
            bar.update(1)
            now = self._moment(metrics)
            stopping = self._run_actions(now, stop, lambda index, action: action.due(self.step))
            if now.has_numbers:
                values = now.numbers()
                # shown with the bar's next redraw (refresh=False): a redraw per log step was a line per log
                # step in a redirected log, whatever its interval
                # the training steps' own rate (the bar's step/s counts validations too), and the kernel
                # head's accuracy on the real batch, in % (validation accuracies are in their own lines)
                bar.set_postfix(
                    loss=f"{values['loss']:.4f}",
                    batch_acc=f"{100 * values['acc']:.1f}%",
                    train_step_s=f"{now.rate:.2f}",
                    refresh=False,
                )
            self.elapsed += time.perf_counter() - self._step_start
            self._step_start = None
            if stopping:
                self._stop_here()
        return metrics

    def _stop_here(self) -> None:
        """A stop request after the step's actions, agreed by every rank: checkpoint the step and raise."""
        cut = self._pending  # an action a stop cut short (under torchrun rank 0's: its message names it)
        if self.last_checkpoint != self.step:  # the step's own checkpoint action may have written it
            self.checkpoint()
        where = f"in step {self.step}'s {cut.lower()}" if cut else f"at step {self.step}"
        again = " (it runs that again first)" if cut else ""
        raise Interrupted(
            f"stopped {where}; checkpoint written to {self.run_dir.checkpoint_path}. Run the same command "
            f"to resume{again}."
        )

    def _run_actions(self, now: Moment, stop: StopRequest | None, chosen: Callable[[int, Action], bool]) -> bool:
        """Run the actions `chosen(index, action)` selects, in order, after step `now.step`; returns whether a stop
        was requested (`stop`; None: not asked), on any rank.

        Under torchrun rank 0 alone runs some actions (validation, snapshots, the metrics files): a failure there
        (a NaN set, a full disk, an allocation) raised on rank 0 alone, the other ranks waited in the checkpoint's
        gather or the next step's collective and then failed with "Connection closed by peer" tracebacks. So before
        the checkpoint (the last action, whose gather and write are collectives), the ranks exchange the stop
        request and whether an action failed, in one collective: a failure stops every rank, the failing one with
        its error, the others saying which rank stopped them. A rank that failed runs no further action."""
        failure: FrepoError | None = None
        stopping = exchanged = False
        for index, action in enumerate(self.actions):
            if isinstance(action, Checkpoint) and self.ctx.enabled:
                stopping, failed = self.ctx.any_of(stop is not None and stop.is_set(), failure is not None)
                exchanged = True
                if failed:
                    self.ctx.agree(failure)  # raises on every rank
            if failure is not None or not chosen(index, action):
                continue
            try:
                self._timed_act(index, now, stop)
            except (FrepoError, MemoryError, RuntimeError) as exc:
                said = exc if isinstance(exc, FrepoError) else out_of_memory(exc)  # torch's OOM is a RuntimeError
                if not self.ctx.enabled or exchanged or said is None:  # the checkpoint shares its own (`checkpoint`)
                    raise
                failure = said if isinstance(said, FrepoError) else FrepoError(said)
        if not self.ctx.enabled:  # one process reads its request last, after the checkpoint
            stopping = stop is not None and stop.is_set()
        return stopping

    def _timed_act(self, index: int, now: Moment, stop: StopRequest | None) -> None:
        """Action `index`; in the loop (`_step_start` set) a non-training action's time is left out of the step's."""
        action = self.actions[index]
        if stop is None:  # the end, after the loop's signal handling
            action(now)
        elif action.training or self._step_start is None:
            self._act(index, now, stop, paused=None)
        else:
            synchronize(self.device)  # the steps queued so far are training
            paused = time.perf_counter()
            self._act(index, now, stop, paused)
            self._step_start += time.perf_counter() - paused

    def _act(self, index: int, now: Moment, stop: StopRequest, paused: float | None) -> None:
        """Run non-training action `index` of the step; one that is `interruptible` stops at once on a stop request,
        and the step is checkpointed with it pending, so the same command runs it (and those after it) again first.
        Under torchrun the checkpoint is every rank's: the action is left pending, and the stop request reaches
        the others at the step's exchange (`_run_actions`), where every rank checkpoints. (It ran to its end
        there, and torchrun's agent, which gives its workers 30 s after a SIGTERM, killed a minutes-long
        validation with nothing written.)"""
        action = self.actions[index]
        if not action.interruptible:
            action(now)
            return
        try:
            with stop.interruptible():
                action(now)
        except Interrupted:  # already said and kept (a second Ctrl-C in a write)
            raise
        except KeyboardInterrupt:
            stop.now = False  # a second SIGTERM in the checkpoint below waits for it (a second Ctrl-C aborts)
            if aborting():  # a second Ctrl-C: abort, as anywhere
                raise
            self._pending = type(action).__name__
            if self.ctx.enabled:
                return
            if paused is not None and self._step_start is not None:  # the step's training time (the loop's after
                self.elapsed += paused - self._step_start  # its actions), up to this action
                self._step_start = None
            self.checkpoint()
            raise Interrupted(
                f"stopped in step {self.step}'s {type(action).__name__.lower()}; checkpoint written to "
                f"{self.run_dir.checkpoint_path}. Run the same command to resume (it runs that again first)."
            ) from None

    def _final_file(self) -> str:
        """What the run's final file holds: "missing" (the end makes it), "intact" (the final checkpoint's set),
        "damaged" (unreadable: written again from the checkpoint, without the end's validation, which the
        checkpoint's step has had), or "other": another set, such as the set of step 300 left by a run extended
        to 500 with --resume-with-changes, interrupted at 400 and then rerun with --steps 400. Its checkpoint
        need not be the end's, so the end runs again (final files, best set, and the validation unless the
        checkpoint's step had it); it said "already complete"."""
        path = self.run_dir.distilled_path
        if not path.is_file():
            return "missing"
        try:
            on_disk = load_distilled(path)
        except FrepoError as exc:
            log.warning(f"frepo: {exc}; writing it again from the final checkpoint")
            return "damaged"
        final = self.host_set()
        if torch.equal(on_disk.images, final.images) and torch.equal(on_disk.labels, final.labels):
            return "intact"
        log.warning(f"frepo: {path} holds another set than this run's final checkpoint; ending the run again")
        return "other"

    def _result(self) -> DistillResult:
        best = self.run_dir.best_path if self.run_dir.best_path.is_file() else None
        val = self.validation.last if self.validation else None
        if val is None:  # another rank, or a checkpoint older than `last_val_acc`: the run's record
            val = next((r["val_acc"] for r in reversed(self.run_dir.read_metrics()) if "val_acc" in r), None)
        return DistillResult(self.run_dir.path, self.step, self.run_dir.distilled_path, best, val, self.elapsed)


def _finished_without_checkpoint(config: DistillConfig, out: Path) -> DistillResult | None:
    """The result of a run in `out` that finished with `config`'s settings and steps and whose checkpoint was
    removed since (pruned to save space: reproduce, continual and privacy reopen every run), read from its
    set and log; None for anything else, which the run directory's own checks then take (a run of other
    settings or steps cannot go on without its checkpoint: they refuse)."""
    from .runs import finished_set

    run = RunDir(out)
    if not run.config_path.is_file() or run.checkpoint_path.exists() or not run.distilled_path.is_file():
        return None
    if finished_set(run.distilled_path, config, config.steps) is None:
        return None
    # the set's own steps' records (a later extension, killed and pruned, may have logged past them)
    records = [r for r in run.read_metrics() if isinstance(r.get("step"), int) and r["step"] <= config.steps]
    val = next((r["val_acc"] for r in reversed(records) if "val_acc" in r), None)
    elapsed = next((r["elapsed_s"] for r in reversed(records) if "elapsed_s" in r), 0.0)
    log.info(f"frepo: {run.path} is already complete ({count_of(config.steps, 'step')}; its checkpoint is gone)")
    best = run.best_path if run.best_path.is_file() else None
    return DistillResult(run.path, config.steps, run.distilled_path, best, val, float(elapsed))


def _same_view_of_a_finished_run(config: DistillConfig, out: Path, finished: bool) -> None:
    """Under torchrun: a refusal on every rank unless all found a finished run in `out` (`_finished_without_checkpoint`)
    or none did. On node-local copies of --out, ranks that found one returned and exited, and the others waited for
    them in the group's start until its 2 h timeout."""
    ctx, _ = init_distributed(config.device)  # the group the run joins (`Distiller`): joined once
    seen = ctx.gather_objects(finished)
    refusal = None
    if ctx.is_main and len(set(seen)) > 1:
        which = ", ".join(str(rank) for rank, found in enumerate(seen) if found)
        refusal = FrepoError(
            f"the processes see {out} differently: rank(s) {which} find a finished run without its checkpoint there, "
            "the others do not; --out must be one folder that every node shares, not a copy on each"
        )
    ctx.agree(refusal)


def _failure_of(write: Callable[[], None]) -> FrepoError | None:
    """The FrepoError `write` raised (a full disk), or None: for `DistContext.agree`, which raises it on the rank
    that failed and stops the others with it (one process: raises it)."""
    try:
        write()
    except FrepoError as exc:
        return exc
    return None


def distill(
    config: DistillConfig | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    resume_with_changes: bool = False,
    *,
    preset: str | None = None,
    **overrides: Any,
) -> DistillResult:
    """Run (or resume) a distillation into the run directory `out` (default: runs/<dataset>-ipc<N>, as the
    command line's): `frepo.distill(preset="mnist-ipc10-cpu")`, `frepo.distill(dataset="cifar10", ipc=1,
    steps=500)`, or a `DistillConfig` (`frepo.presets.resolve(...)`). Without a config the settings are made
    as `frepo distill` makes them from its flags (`frepo.presets.configure`). `progress` shows a progress bar
    (the library is quiet by default; the command line turns it on). `resume_with_changes` lets a resumed run
    continue with changed settings that are safe to continue with (`frepo.jobs.runs.CONTINUABLE`)."""
    if config is None:
        config = presets.configure(preset, overrides)
    elif preset is not None or overrides:
        given = ", ".join(sorted(overrides)) or "preset"
        raise FrepoError(
            f"give either a DistillConfig or a preset and options, not both (given with the config: {given}; "
            "set options on the config itself)"
        )
    check_argument(
        "config",
        config,
        DistillConfig,
        "a DistillConfig (frepo.presets.resolve(...)), or none with a preset and options: "
        "distill(preset='digits-ipc10', steps=100)",
    )
    out = default_run_dir(config) if out is None else out
    check_path("out", out)
    check_argument("progress", progress, bool, "True or False")
    check_argument("resume_with_changes", resume_with_changes, bool, "True or False")  # "no" is true
    finished = _finished_without_checkpoint(config, Path(out))
    if world_size() > 1:  # each rank looked at --out as it sees it: they go on together or stop together
        _same_view_of_a_finished_run(config, Path(out), finished is not None)
    if finished is not None:
        return finished
    try:
        return Distiller(config, out, progress, resume_with_changes).run()
    finally:
        # The run's objects refer to each other (its actions call back into it), so its data, trainer and
        # pool (GBs on a large set) would wait for Python's cyclic collector, which counts objects, not
        # bytes: a loop of distillations (continual learning's tasks and orders) held every one of them.
        gc.collect()
        release_free_heap()  # and the heap they were freed into (frepo.base.perf)
