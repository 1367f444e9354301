"""A distillation run: data, run directory, the loop of `FRePoTrainer.step()`, and its periodic
actions (metrics and NaN check, checkpoint, validation, outputs) on one schedule. Ctrl-C or SIGTERM
checkpoints and stops; rerunning the same command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .base.device import resolve_device
from .base.dist import init_distributed
from .base.errors import FrepoError, Interrupted
from .base.fields import to_dict
from .config import DistillConfig
from .data import PreparedData, prepare
from .eval import EvalConfig, evaluate_set, reference_steps
from .io.artifact import DistilledSet, save_distilled
from .method.trainer import FRePoTrainer
from .monitor import Monitor
from .runs import RunDir
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


class Distiller:
    """Holds the state of one run; `run()` drives it to `config.steps`."""

    def __init__(self, config: DistillConfig, out: str | Path, progress: bool = False):
        config.validate()
        self.config = config
        self.ctx, device_name = init_distributed(config.device)
        self.device = resolve_device(device_name)
        self.run_dir = RunDir(out)
        self.progress = progress and self.ctx.is_main
        if config.batch_size % self.ctx.world:
            raise FrepoError(f"batch_size {config.batch_size} is not divisible by the {self.ctx.world} processes")
        resuming = self.run_dir.claim(config) if self.ctx.is_main else False
        self.ctx.barrier()
        self.data: PreparedData = prepare(config.data)
        raw = self.data.raw
        self.num_classes = raw.num_classes
        x_train, y_train = self.data.train(channels_last=config.channels_last)
        if config.batch_size > len(x_train):
            log.warning(
                f"frepo: batch_size {config.batch_size} exceeds the {len(x_train)} distillation images; "
                "batches repeat images"
            )
        self.trainer = FRePoTrainer(config, x_train, y_train, self.num_classes, self.device, self.ctx)
        self.syn = self.trainer.syn
        self.step = 0
        self.best = {"val_acc": None, "step": None}
        self.elapsed = 0.0
        if resuming or (self.ctx.enabled and self.run_dir.checkpoint_path.is_file()):
            self._load(self.run_dir.load_checkpoint())
            log.info(f"frepo: resuming {self.run_dir.path} from step {self.step} of {config.steps}")
        self._val = None
        self._test_fingerprint = raw.test_fingerprint()
        self.monitor = Monitor(self.run_dir, config, self.step) if self.ctx.is_main else None
        # The reference protocol on the validation hold-out, with the run's device and model budget.
        self._val_config = EvalConfig.build(
            protocol="frepo",
            models=config.eval_models,
            split="val",
            device=str(self.device),
            steps=config.eval_steps or None,
        )

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, **self.trainer.state_dict(), "best": dict(self.best), "elapsed": self.elapsed}

    def _load(self, state: dict) -> None:
        self.step = int(state["step"])
        self.trainer.load_state_dict(state)
        self.best = dict(state["best"])
        self.elapsed = float(state["elapsed"])
        if self.ctx.is_main:
            self.run_dir.truncate_metrics(self.step)

    def checkpoint(self) -> None:
        if not self.trainer.finite():
            raise FrepoError(f"non-finite synthetic set at step {self.step}; the last good checkpoint is kept")
        if self.ctx.is_main:
            self.run_dir.save_checkpoint(self.state_dict())

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
        }

    def distilled_set(self) -> DistilledSet:
        """A copy of the current set on the CPU, with everything its file records."""
        images, labels = self.syn.images.detach().cpu().clone(), self.syn.labels.detach().cpu().clone()
        return DistilledSet(images, labels, self.data.preprocessing, self._meta())

    def current(self) -> DistilledSet:
        """A view of the current set (no copy), for validation and pictures."""
        return DistilledSet(self.syn.images.detach(), self.syn.labels.detach(), self.data.preprocessing, self._meta())

    def validate(self) -> float | None:
        """Validation accuracy (%) of fresh models trained on the current set; None without a hold-out."""
        if len(self.data.val_idx) == 0:
            return None
        if self._val is None:
            self._val = self.data.val()
        # Each validation draws its models from a seed of its own.
        config = self._val_config.replace(seed=self.config.seed + 1_000_003 * self.step)
        return evaluate_set(self.current(), *self._val, config).mean

    def _record_validation(self) -> None:
        acc = self.validate()
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
            ds = self.distilled_set()
            ds.meta["val_acc"] = acc
            save_distilled(ds, self.run_dir.best_path)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> DistillResult:
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
                if self.step == 0:
                    self.monitor.snapshot(self.current(), 0)
            with stop_on_signal() as stop, contextlib.closing(bar):
                self._loop(bar, stop)
            self.checkpoint()
            if self.ctx.is_main and self.best["step"] != self.step:
                self._record_validation()
        if self.ctx.is_main:
            ds = self.distilled_set()
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
            if self.monitor:
                self.monitor.snapshot(self.current(), self.step, final=self.step == cfg.steps)
            if self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps and self.ctx.is_main:
                self._record_validation()
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
                f"({self.run_dir.checkpoint_path}) is kept. Try a lower --lr or a larger --krr-reg."
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
            self.monitor.record(record, self.current())
        bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['acc']:.3f}", it_s=f"{steps_per_s:.2f}")

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


def distill(config: DistillConfig, out: str | Path, progress: bool = False) -> DistillResult:
    """Run (or resume) a distillation into the run directory `out`; `progress` shows a progress bar
    (the library is quiet by default; the command line turns it on)."""
    return Distiller(config, out, progress).run()
