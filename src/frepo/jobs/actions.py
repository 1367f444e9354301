"""The periodic actions of a distillation run, as plug-ins on one schedule.

The loop (`frepo.jobs.distill`) runs, after each outer step, every action that is `due`, in the order
it was given them, and once more when the run ends the actions that ask to (`at_end`). Each receives the
same `Moment`: the step, its metrics and the set, as live device tensors (to train on) and as the host
copy made in one place once per step (for files and pictures). An action that holds state across a
resume gives it through `state_dict`; the job keeps it in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.errors import FrepoError
from ..base.perf import peak_rss_bytes
from ..data.stream import StreamingImages
from ..eval import EvalConfig, evaluate_set, reference_steps
from ..eval.results import count_of
from ..io.artifact import DistilledSet, recorded_meta, save_distilled
from .monitor import Monitor

log = logging.getLogger(__name__)

# Divergence without NaN: the kernel loss grown this many times over its first logged value, or the
# validation accuracy within CHANCE_MARGIN of chance this many evaluations in a row, stops the run.
DIVERGENCE_FACTOR = 1e3
CHANCE_MARGIN = 1.2
CHANCE_STREAK = 3
# The validation hold-out (`PreparedData.val`): images N×C×H×W (streamed when large), class ids (N,).
HoldOut = tuple[torch.Tensor | StreamingImages, torch.Tensor]


def itstime(step: int, every: int | None, total: int | None = None, last: bool = False) -> bool:
    """big_vision's schedule: every `every` steps (0 or None: never), and with `last` the run's last step."""
    if every and step % every == 0:
        return True
    return last and step == total


@dataclass
class Moment:
    """What the actions of one step see. `metrics` are the step's values on the device (None at the end
    of a run resumed at its last step); `numbers()` averages them over the processes (a collective:
    every process's actions ask on the same steps) and reads them once."""

    step: int
    final: bool
    metrics: dict[str, torch.Tensor] | None
    live: tuple[torch.Tensor, torch.Tensor]  # images N×C×H×W, labels N×K, on the run's device
    host_set: Callable[[], DistilledSet]  # the host copy, made once per step however many ask
    reduce: Callable[[list[torch.Tensor]], None]  # the in-place mean over processes
    val_acc: float | None = None  # set by `Validation`, read by `ChanceWatch`
    rate: float = 0.0  # outer steps per second since the last metrics line (set by `MetricsLog`)
    _numbers: dict[str, float] | None = field(default=None, repr=False)

    def numbers(self) -> dict[str, float]:
        if self._numbers is None:
            assert self.metrics is not None, "no step ran: there are no metrics"
            values = list(self.metrics.values())
            self.reduce(values)  # metrics of the global batch, identical on every rank
            # One read for all: a float() each made the host wait for the GPU once per metric.
            read = torch.stack([v.detach().reshape(()).double() for v in values]).tolist()
            self._numbers = dict(zip(self.metrics, read))
        return self._numbers

    @property
    def has_numbers(self) -> bool:
        return self._numbers is not None


class Action:
    """A plug-in of the run's loop. The defaults: never due, nothing at the end, no state, and its time
    counted as training time (`training = False`: the run's `elapsed` leaves it out). An `interruptible`
    action is cut short by a stop request (Ctrl-C, SIGTERM) after a step, and run again, with the actions
    after it, when the run resumes from the checkpoint the stop writes: it changes nothing before it ends."""

    training = True
    interruptible = False

    def begin(self, now: Moment) -> None:
        """The loop starts (or resumes) at `now.step`."""

    def due(self, step: int) -> bool:
        return False

    def at_end(self, step: int) -> bool:
        return False

    def __call__(self, now: Moment) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


def reset_peak_memory(device: torch.device) -> None:
    """A run's GPU peak from its loop's start: without this, `peak_memory_mb` on a GPU was the peak of the
    process, whose earlier runs (continual's tasks, reproduce's rows) and evaluations counted too. (A CPU's is
    the process's resident peak: its dataset and all.) torch's peak is one per process and device: a caller
    measuring its own around `frepo.distill` reads the run's from then on."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def _isfinite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def diverged(step: int, why: str, checkpoint_words: str) -> FrepoError:
    return FrepoError(
        f"the run diverged at step {step}: {why}; stopped (checkpoint: {checkpoint_words}). The likely cause "
        "is a learning rate too large for this budget: try a lower --lr in another --out. --resume-with-changes "
        "continues from that checkpoint, judged afresh from there, but the set may already have diverged in it"
    )


def non_finite(what: str, step: int, checkpoint: str) -> str:
    """The error of a run stopped by NaN/inf in `what` at `step`; `checkpoint`: the last good one in words, or
    "none yet"."""
    if checkpoint == "none yet":
        kept = "no checkpoint yet"
        lower = (
            "nothing to continue: the same --out starts afresh with it, or another --out where a validated set is kept"
        )
    else:
        kept = f"the last good checkpoint ({checkpoint}) is kept"
        lower = "rerun with --resume-with-changes to go on from it"
    # --krr-reg changes what the checkpoint's set was distilled for: not continuable (runs.CONTINUABLE)
    return (
        f"{what} became NaN/inf at step {step}; stopped, and {kept}. Try a lower --lr ({lower}), or a "
        "larger --krr-reg in another --out"
    )


class LossWatch(Action):
    """On log steps: NaN/inf in the metrics or the set stops the run, and so does a kernel loss grown
    DIVERGENCE_FACTOR times over its first logged value. Runs before the metrics are recorded."""

    def __init__(self, every: int, total: int, finite: Callable[[], bool], checkpoint_words: Callable[[], str]):
        self.every, self.total, self.finite, self.checkpoint_words = every, total, finite, checkpoint_words
        self.first_kernel_loss: float | None = None

    def due(self, step: int) -> bool:
        return itstime(step, self.every, self.total, last=True)

    def __call__(self, now: Moment) -> None:
        values = now.numbers()
        if not all(map(_isfinite, values.values())) or not self.finite():
            raise FrepoError(non_finite("the loss", now.step, self.checkpoint_words()))
        first, loss = self.first_kernel_loss, values["kernel_loss"]
        if first is None:
            self.first_kernel_loss = loss
        elif loss > DIVERGENCE_FACTOR * max(first, 1e-12):
            why = f"the kernel loss grew from {first:.3g} to {loss:.3g} ({loss / max(first, 1e-12):.2g}×)"
            raise diverged(now.step, why, self.checkpoint_words())


class ChanceWatch(Action):
    """After each validation: an accuracy within CHANCE_MARGIN of chance CHANCE_STREAK times in a row
    stops the run."""

    def __init__(self, num_classes: int, checkpoint_words: Callable[[], str]):
        self.chance, self.checkpoint_words = 100.0 / num_classes, checkpoint_words
        self.streak = 0

    def due(self, step: int) -> bool:
        return True  # acts only where a validation ran

    at_end = due

    def __call__(self, now: Moment) -> None:
        acc = now.val_acc
        if acc is None:
            return
        self.streak = self.streak + 1 if acc <= CHANCE_MARGIN * self.chance else 0
        if self.streak >= CHANCE_STREAK:
            why = (
                f"validation accuracy at chance ({acc:.2f}%, chance {self.chance:.2f}%) {CHANCE_STREAK} times in a row"
            )
            raise diverged(now.step, why, self.checkpoint_words())


def watch_state(loss: LossWatch, chance: ChanceWatch) -> dict:
    """The two watches' state, as the checkpoint's "watch" entry."""
    return {"first_kernel_loss": loss.first_kernel_loss, "chance_streak": chance.streak}


def load_watch_state(loss: LossWatch, chance: ChanceWatch, state: dict | None) -> None:
    state = state or {}
    loss.first_kernel_loss = state.get("first_kernel_loss")
    chance.streak = int(state.get("chance_streak") or 0)


class MetricsLog(Action):
    """On log steps: a line of metrics.jsonl (and TensorBoard) with the step's losses, the learning rate,
    steps/s since the last log, peak memory, pool resets and training time. Steps/s is over training time
    (`clock`): a validation or snapshot in the window made it a fraction of the step rate."""

    def __init__(
        self, every: int, total: int, monitor: Monitor | None, facts: Callable[[int], dict], clock: Callable[[], float]
    ):
        self.every, self.total, self.monitor, self.facts, self.clock = every, total, monitor, facts, clock
        self.window: tuple[float, int] = (clock(), 0)

    def begin(self, now: Moment) -> None:
        self.window = (self.clock(), now.step)

    def due(self, step: int) -> bool:
        return itstime(step, self.every, self.total, last=True)

    def __call__(self, now: Moment) -> None:
        values = now.numbers()
        start, start_step = self.window
        clock = self.clock()
        self.window = (clock, now.step)
        steps_per_s = now.rate = (now.step - start_step) / max(clock - start, 1e-9)
        if self.monitor is None:
            return
        facts = self.facts(now.step)
        record = {"step": now.step, **values, "lr": facts["lr"], "steps_per_s": steps_per_s}
        record.update(peak_mem_mb=facts["peak_mem_mb"], pool_resets=facts["pool_resets"], elapsed_s=facts["elapsed_s"])
        self.monitor.record(record, now.host_set() if self.monitor.shows_grid else None)


class Snapshots(Action):
    """The image grid every few steps and at the last step (RUN/images), for `frepo show --animate`."""

    training = False

    def __init__(self, monitor: Monitor, total: int):
        self.monitor, self.total = monitor, total

    def begin(self, now: Moment) -> None:
        if now.step == 0 and self.monitor.snapshot_due(0):
            self(now)

    def due(self, step: int) -> bool:
        return self.monitor.snapshot_due(step, final=step == self.total)

    def __call__(self, now: Moment) -> None:
        self.monitor.snapshot(now.host_set(), now.step)


@dataclass
class ValidationPlan:
    """When and how a run validates: the reference protocol on the hold-out, with the run's budget."""

    every: int
    total: int
    seed: int
    config: EvalConfig
    models: int
    steps: int | None  # None: the reference table


class Validation(Action):
    """Validation accuracy (%) of fresh networks trained on the live set, every `plan.every` steps before
    the last and once at the end (unless the last step was validated); the best set so far is written
    to `best_path`. It runs before the checkpoint of its step, so a run killed after it resumes knowing
    its best set, and best.safetensors and metrics.jsonl end as the uninterrupted run's."""

    training = False  # evaluating networks is not distilling
    interruptible = True  # minutes at a real budget: a scheduler's SIGKILL follows SIGTERM within 30 s

    def __init__(
        self,
        plan: ValidationPlan,
        val: Callable[[], HoldOut],
        monitor: Monitor,
        best_path: Path,
        finite: Callable[[int], None],
    ):
        self.plan, self.val, self.monitor, self.best_path = plan, val, monitor, best_path
        # raises the run's NaN/inf stop for a step whose set is not finite: validated, it gave a chance accuracy
        # (logged, counted by ChanceWatch), or "not saved to best.safetensors" with no step and no advice
        self.finite = finite
        self.data: HoldOut | None = None  # (images, labels) of the hold-out, loaded on first use
        self.best: dict = {"val_acc": None, "step": None}
        self.last: float | None = None
        self.validated_at: int | None = None  # the step of the last validation recorded (checkpointed)
        self.progress = False  # the end's validation shows a bar when the run does

    def due(self, step: int) -> bool:
        return bool(self.plan.every) and step % self.plan.every == 0 and step < self.plan.total

    def at_end(self, step: int) -> bool:
        # Not again where the last step was validated, best or not: a finished run whose final file is written
        # again runs the end again, and a second line of the step's accuracy counted twice in ChanceWatch.
        return self.best["step"] != step and self.validated_at != step

    def accuracy(self, now: Moment, progress: bool = False) -> float:
        if self.data is None:
            self.data = self.val()
        # Each validation draws its models from a seed of its own.
        config = self.plan.config.replace(seed=self.plan.seed + 1_000_003 * now.step)
        return evaluate_set(now.host_set(), *self.data, config, progress=progress, on_device=now.live).mean

    def __call__(self, now: Moment) -> None:
        self.finite(now.step)
        steps = self.plan.steps or reference_steps(len(now.live[0]))
        if self.data is None or now.final:  # what a validation costs, said before the first and the last
            log.info(
                f"step {now.step}: validating: {count_of(self.plan.models, 'network')} × {steps} steps on the "
                f"{len(now.live[0])} images (eval_steps; the reference's check uses 1000)"
            )
        acc = self.accuracy(now, progress=self.progress and now.final)
        now.val_acc = self.last = acc
        if self.best["val_acc"] is None or acc > self.best["val_acc"]:
            ds = now.host_set()
            save_distilled(dataclasses.replace(ds, meta={**ds.meta, "val_acc": acc}), self.best_path)
            # Only once the file is written: a run stopped in the write (Ctrl-C in the end's validation is
            # checkpointed) resumes without a best step whose file it lacks, and validates again.
            self.best = {"val_acc": acc, "step": now.step}
        self.monitor.record({"step": now.step, "val_acc": acc, "eval_models": self.plan.models, "eval_steps": steps})
        self.validated_at = now.step
        log.info(f"step {now.step}: validation accuracy {acc:.2f}%")

    def state_dict(self) -> dict:
        return dict(self.best)

    def load_state_dict(self, state: dict) -> None:
        self.best = dict(state)

    def forget_a_best_of_lost_steps(self, resumed_at: int) -> None:
        """After a resume: best.safetensors must be the set of the best step the checkpoint records. A validation
        after that checkpoint, in the steps the resume threw away, may have replaced it; that set is in no
        history the run will have (a replay on other hardware need not find it again), and the file of the
        recorded best step is gone. Both are dropped: the next validation chooses afresh. Where the replay is
        the same, it chooses that step again, as the uninterrupted run did."""
        if not self.best_path.is_file():
            return
        step = (recorded_meta(self.best_path) or {}).get("step")
        if step == self.best["step"]:
            return
        log.warning(
            f"frepo: {self.best_path} holds the set of step {step}, not the best the checkpoint (step {resumed_at}) "
            f"records ({self.best['step']}): a validation of steps this resume repeats wrote it; removed, the next "
            "validation chooses the best set again"
        )
        self.best_path.unlink()
        self.best = {"val_acc": None, "step": None}


class Checkpoint(Action):
    """The run's state every `every` steps and at the end (after the end's validation)."""

    training = False

    def __init__(self, every: int, save: Callable[[], None]):
        self.every, self.save = every, save

    def due(self, step: int) -> bool:
        return itstime(step, self.every)

    def at_end(self, step: int) -> bool:
        return True

    def __call__(self, now: Moment) -> None:
        self.save()
