"""A distillation run: data, run directory, the loop of `FRePoTrainer.step()`, and its periodic
actions (metrics and NaN check, checkpoint, validation, outputs) on one schedule. Ctrl-C or SIGTERM
checkpoints and stops; rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..base.atomic import WriteError
from ..base.device import resolve_device
from ..base.dist import init_distributed
from ..base.errors import FrepoError, Interrupted
from ..base.fields import to_dict
from ..config import DistillConfig
from ..data import PreparedData, prepare
from ..eval import EvalConfig, evaluate_set, reference_steps
from ..io.artifact import HOST, DistilledSet, save_distilled
from ..method.trainer import FRePoTrainer
from .monitor import Monitor, summary_writer
from .runs import RunDir, environment
from .visualize import save_grid

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    out: Path
    step: int
    distilled_path: Path
    best_path: Path | None
    val_accuracy: float | None
    seconds: float


@contextlib.contextmanager
def stop_on_signal():
    """The first Ctrl-C / SIGTERM asks the loop to stop after the current step; a second Ctrl-C aborts."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set()
        log.warning("frepo: stopping after this step and writing a checkpoint (Ctrl-C again to abort)")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# Divergence without NaN: the kernel loss grown this many times over its first logged value, or the
# validation accuracy within CHANCE_MARGIN of chance this many evaluations in a row, stops the run.
DIVERGENCE_FACTOR = 1e3
CHANCE_MARGIN = 1.2
CHANCE_STREAK = 3
CHECKPOINT_KEYS = ("step", "synthetic", "lamb", "pool", "sampler", "best", "elapsed")


class Distiller:
    """Holds the state of one run; `run()` drives it to `config.steps`.

    Starting is all or nothing: the run directory is locked, the config checked against the run found
    there, the data prepared, the trainer built and the checkpoint checked and loaded — and only then is
    anything written (a failed start leaves the directory as it found it)."""

    def __init__(
        self, config: DistillConfig, out: str | Path, progress: bool = False, resume_with_changes: bool = False
    ):
        config.validate()
        self.config = config
        self.ctx, device_name = init_distributed(config.device)
        self.device = resolve_device(device_name)
        self.run_dir = RunDir(out)
        self.progress = progress and self.ctx.is_main
        if config.batch_size % self.ctx.world:
            raise FrepoError(f"batch_size {config.batch_size} is not divisible by the {self.ctx.world} processes")
        if self.ctx.is_main:
            self.run_dir.acquire()  # rank 0 owns the directory for the whole run
        try:
            claim = self.run_dir.check(config, resume_with_changes) if self.ctx.is_main else None
            self.ctx.barrier()
            resuming = claim.resuming if claim else self.run_dir.checkpoint_path.is_file()
            self._setup(config, resuming)
            if claim:
                self.run_dir.begin(config, claim)
        except BaseException:
            if self.ctx.is_main:
                self.run_dir.abandon()
            raise
        self._announce(claim, resuming)
        self.monitor = Monitor(self.run_dir, config, self.step) if self.ctx.is_main else None
        if claim and claim.changes and self.monitor:
            self.monitor.record({"step": self.step, "changed": claim.changes})

    def _setup(self, config: DistillConfig, resuming: bool) -> None:
        if config.tensorboard and self.ctx.is_main:
            summary_writer()  # a missing package is a failed start, not a failure after the first steps
        self.data: PreparedData = prepare(config.data)
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
        start = None
        if config.init and not resuming:  # a resumed run continues from its checkpoint
            from ..io.foreign import load_start  # other tools' readers, loaded only when asked for

            start = load_start(
                config.init, raw, self.data.preprocessing, config.data.class_ids(raw.num_classes), config.ipc
            )
        self.trainer = FRePoTrainer(config, x_train, y_train, self.num_classes, self.device, self.ctx, start)
        self.syn = self.trainer.syn
        self.step = 0
        self.best = {"val_acc": None, "step": None}
        self.watch = {"first_kernel_loss": None, "chance_streak": 0}
        self.elapsed = 0.0
        self.last_checkpoint: int | None = None
        if resuming:
            self._load(self.run_dir.load_checkpoint())
        self._val = None
        self._host: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (step, images, labels)
        self._test_fingerprint = raw.test_fingerprint()
        self._environment = environment()
        # The reference protocol on the validation hold-out, with the run's device and model budget.
        self._val_config = EvalConfig.build(
            protocol="frepo",
            models=config.eval_models,
            split="val",
            device=str(self.device),
            steps=config.eval_steps or None,
        )

    def _announce(self, claim, resuming: bool) -> None:
        cfg = self.config
        log.info(
            f"frepo: distilling {cfg.data.dataset}, {cfg.ipc} images per class, {cfg.steps} steps, real batch "
            f"{cfg.batch_size}, flip {'on' if cfg.use_flip else 'off'} -> {self.run_dir.path}"
        )
        if resuming:
            log.info(
                f"frepo: resuming from step {self.step} of {cfg.steps} (checkpoint of {self.run_dir.checkpoint_time()})"
            )
        if claim and claim.changes:
            changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in claim.changes.items())
            log.warning(f"frepo: continuing with changed settings: {changed}")
        if resuming and claim and claim.previous_environment:
            now = environment()
            differs = {k: (v, now.get(k)) for k, v in claim.previous_environment.items() if now.get(k) != v}
            if differs:
                detail = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differs.items())
                log.warning(
                    f"frepo: resuming under a different environment ({detail}); the rest of the run will not "
                    "repeat the uninterrupted run bit for bit"
                )

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            **self.trainer.state_dict(),
            "best": dict(self.best),
            "watch": dict(self.watch),
            "elapsed": self.elapsed,
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
            models = state["pool"].get("models") if isinstance(state["pool"], dict) else None
            if not isinstance(models, list) or len(models) != cfg.pool.num_models:
                count = len(models) if isinstance(models, list) else "no"
                problems.append(f"it holds {count} pool models, this run {cfg.pool.num_models}")
            synthetic = state["synthetic"] if isinstance(state["synthetic"], dict) else {}
            for name, tensor in (("images", self.syn.images), ("labels", self.syn.labels)):
                saved = synthetic.get(name)
                if not isinstance(saved, torch.Tensor) or saved.shape != tensor.shape:
                    shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else None
                    problems.append(f"its synthetic {name} are {shape}, this run's {tuple(tensor.shape)}")
        if problems:
            raise FrepoError(
                f"{self.run_dir.checkpoint_path} does not fit this run ({'; '.join(problems)}); "
                "delete it to restart the run"
            )

    def _load(self, state: dict) -> None:
        self._check_checkpoint(state)
        try:
            self.trainer.load_state_dict(state)
            self.best = dict(state["best"])
            self.watch = dict(state.get("watch") or self.watch)
            self.elapsed = float(state["elapsed"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise FrepoError(
                f"{self.run_dir.checkpoint_path} does not fit this run ({exc}); delete it to restart the run"
            ) from exc
        self.step = self.last_checkpoint = int(state["step"])
        if self.ctx.is_main:
            self.run_dir.truncate_metrics(self.step)

    def checkpoint(self) -> None:
        if not self.trainer.finite():
            raise FrepoError(f"non-finite synthetic set at step {self.step}; the last good checkpoint is kept")
        state = self.state_dict()  # on every rank: a per-rank pool is gathered from all of them
        if self.ctx.is_main:
            try:
                self.run_dir.save_checkpoint(state)
            except WriteError as exc:
                if exc.reason is None:
                    raise
                kept = f"the last checkpoint, at step {self.last_checkpoint}, is kept" if self.last_checkpoint else ""
                raise WriteError(f"{exc.reason} while writing {exc.target}; {kept or 'no checkpoint yet'}") from exc
        self.last_checkpoint = self.step

    # ---- outputs ------------------------------------------------------------------------------
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

    def validate(self, progress: bool = False) -> float | None:
        """Validation accuracy (%) of fresh models trained on the current set; None without a hold-out."""
        if len(self.data.val_idx) == 0:
            return None
        if self._val is None:
            self._val = self.data.val()
        # Each validation draws its models from a seed of its own.
        config = self._val_config.replace(seed=self.config.seed + 1_000_003 * self.step)
        live = (self.syn.images.detach(), self.syn.labels.detach())  # on the run's device: no copy
        return evaluate_set(self.host_set(), *self._val, config, progress=progress, on_device=live).mean

    def _record_validation(self, final: bool = False) -> None:
        acc = self.validate(progress=final and self.progress)
        if acc is None:
            return
        record = {
            "step": self.step,
            "val_acc": acc,
            "eval_models": self.config.eval_models,
            "eval_steps": self.config.eval_steps or reference_steps(len(self.syn.images)),
        }
        self.monitor.record(record)
        log.info(f"step {self.step}: validation accuracy {acc:.2f}%")
        if self.best["val_acc"] is None or acc > self.best["val_acc"]:
            self.best = {"val_acc": acc, "step": self.step}
            ds = self.host_set()
            save_distilled(dataclasses.replace(ds, meta={**ds.meta, "val_acc": acc}), self.run_dir.best_path)
        chance = 100.0 / self.num_classes
        self.watch["chance_streak"] = self.watch["chance_streak"] + 1 if acc <= CHANCE_MARGIN * chance else 0
        if self.watch["chance_streak"] >= CHANCE_STREAK:
            self._diverged(
                f"validation accuracy at chance ({acc:.2f}%, chance {chance:.2f}%) {CHANCE_STREAK} times in a row"
            )

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> DistillResult:
        try:
            return self._run()
        finally:
            self.run_dir.release()

    def _run(self) -> DistillResult:
        cfg = self.config
        if self.step >= cfg.steps and self.run_dir.distilled_path.is_file():
            log.info(f"frepo: {self.run_dir.path} is already complete ({self.step} steps)")
            return self._result()
        bar = tqdm(
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
                if self.step == 0 and self.monitor.snapshot_due(0):
                    self.monitor.snapshot(self.host_set(), 0)
            with stop_on_signal() as stop, contextlib.closing(bar):
                self._loop(bar, stop)
            # The final validation comes before the final checkpoint, so a run killed in between redoes it.
            if self.ctx.is_main and self.best["step"] != self.step:
                self._record_validation(final=True)
            self.checkpoint()
        if self.ctx.is_main:
            ds = self.host_set()
            save_distilled(ds, self.run_dir.distilled_path)
            save_grid(
                ds,
                self.run_dir.path / "distilled.png",
                title=f"{self.data.raw.name}, {cfg.ipc} per class, step {self.step}",
            )
        self.ctx.barrier()
        return self._result()

    def _loop(self, bar, stop: threading.Event) -> None:
        """Outer steps to the end of the run with their periodic actions; a stop request checkpoints and raises."""
        cfg = self.config
        window_start, window_steps = time.perf_counter(), 0
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            metrics = self._one_step()
            self.step += 1
            window_steps += 1
            self.elapsed += time.perf_counter() - t0
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                now = time.perf_counter()
                self._log(metrics, window_steps / max(now - window_start, 1e-9), bar)
                window_start, window_steps = now, 0
            if self.monitor and self.monitor.snapshot_due(self.step, final=self.step == cfg.steps):
                self.monitor.snapshot(self.host_set(), self.step)
            # Validation before the checkpoint of the same step: a run killed after it resumes knowing its
            # best set, so best.safetensors and metrics.jsonl end as the uninterrupted run's.
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps and self.ctx.is_main:
                self._record_validation()
            if self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
            if self.ctx.any(stop.is_set()):
                self.checkpoint()
                raise Interrupted(
                    f"stopped at step {self.step}; checkpoint written to "
                    f"{self.run_dir.checkpoint_path}. Run the same command to resume."
                )

    def _one_step(self) -> dict[str, torch.Tensor]:
        return self.trainer.step()

    def _log(self, metrics: dict[str, torch.Tensor], steps_per_s: float, bar) -> None:
        self.ctx.mean_(list(metrics.values()))  # metrics of the global batch, identical on every rank
        values = {k: float(v) for k, v in metrics.items()}
        if not all(map(_isfinite, values.values())) or not self.trainer.finite():
            raise FrepoError(
                f"the loss became NaN/inf at step {self.step}; stopped, and the last good checkpoint "
                f"({self._checkpoint_words()}) is kept. Try a lower --lr or a larger --krr-reg, and rerun with "
                "--resume-with-changes to continue from it"
            )
        first = self.watch["first_kernel_loss"]
        if first is None:
            self.watch["first_kernel_loss"] = values["kernel_loss"]
        elif values["kernel_loss"] > DIVERGENCE_FACTOR * max(first, 1e-12):
            self._diverged(
                f"the kernel loss grew from {first:.3g} to {values['kernel_loss']:.3g} "
                f"({values['kernel_loss'] / max(first, 1e-12):.2g}×)"
            )
        lr = self.trainer.lamb.schedule(max(self.step - 1, 0))
        record = {
            "step": self.step,
            **values,
            "lr": lr,
            "steps_per_s": steps_per_s,
            "peak_mem_mb": peak_memory_mb(self.device),
            "pool_resets": self.trainer.pool.resets,
            "elapsed_s": self.elapsed,
        }
        if self.monitor:
            self.monitor.record(record, self.host_set() if self.monitor.shows_grid else None)
        bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['acc']:.3f}", it_s=f"{steps_per_s:.2f}")

    def _checkpoint_words(self) -> str:
        return f"{self.run_dir.checkpoint_path}, step {self.last_checkpoint}" if self.last_checkpoint else "none yet"

    def _diverged(self, why: str) -> None:
        raise FrepoError(
            f"the run diverged at step {self.step}: {why}; stopped (checkpoint: {self._checkpoint_words()}). "
            "The likely cause is a learning rate too large for this budget: try a lower --lr, in another --out "
            "or with --resume-with-changes"
        )

    def _result(self) -> DistillResult:
        best = self.run_dir.best_path if self.run_dir.best_path.is_file() else None
        val = None
        for record in reversed(self.run_dir.read_metrics()):
            if "val_acc" in record:
                val = record["val_acc"]
                break
        return DistillResult(self.run_dir.path, self.step, self.run_dir.distilled_path, best, val, self.elapsed)


def _isfinite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def distill(
    config: DistillConfig, out: str | Path, progress: bool = False, resume_with_changes: bool = False
) -> DistillResult:
    """Run (or resume) a distillation into the run directory `out`; `progress` shows a progress bar (the
    library is quiet by default; the command line turns it on). `resume_with_changes` lets a resumed run
    continue with changed settings that are safe to continue with (`frepo.runs.CONTINUABLE`)."""
    return Distiller(config, out, progress, resume_with_changes).run()
