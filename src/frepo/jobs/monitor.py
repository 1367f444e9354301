"""What a run shows while it runs, besides its progress bar: a line of metrics.jsonl every log step and
validation, optional TensorBoard events (the same scalars, and the image grid every log step), and a
snapshot of the image grid every few steps (RUN/images/stepNNNNNNN.png), from which
`frepo show RUN --animate` makes the synthetic set's film. Rank 0 alone monitors a distributed run.
None of it changes the result, so these settings may change when a run resumes.
"""

from __future__ import annotations

import numbers
from typing import Any

from ..base.errors import FrepoError
from ..config import DistillConfig
from ..io.artifact import DistilledSet
from .runs import RunDir
from .visualize import grid_array, save_snapshot

SNAPSHOTS = 50  # frames over a run when --snapshot-every is not given


def snapshot_interval(config: DistillConfig) -> int:
    """Steps between snapshots: the given interval, 0 for none, or about SNAPSHOTS over the run."""
    if config.snapshot_every is not None:
        return config.snapshot_every
    return max(1, config.steps // SNAPSHOTS)


def summary_writer() -> type:
    """TensorBoard's writer, or one line saying how to install it (checked before a run starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise FrepoError("--tensorboard needs the tensorboard package: pip install 'frepo[tensorboard]'") from exc
    return SummaryWriter


class Monitor:
    def __init__(self, run_dir: RunDir, config: DistillConfig, resume_step: int):
        self.run_dir = run_dir
        self.every = snapshot_interval(config)
        self.writer: Any = None  # torch.utils.tensorboard's SummaryWriter, once opened
        # TensorBoard's writer opens at the first record: opened at once, it purged the events of a finished run's
        # last step when the run was only read again ("already complete").
        self._writer_type = summary_writer() if config.tensorboard else None
        self._resume_step = resume_step

    @property
    def shows_grid(self) -> bool:
        """Whether `record` shows the image grid (TensorBoard): only then does it need the set."""
        return self._writer_type is not None

    def record(self, record: dict, ds: DistilledSet | None = None) -> None:
        """A metrics line (and its TensorBoard scalars; with `ds`, a host set, its image grid too)."""
        self.run_dir.append_metrics(record)
        if self._writer_type is None:
            return
        if self.writer is None:
            # Events after the checkpoint a resumed run restarts from are dropped, as metrics.jsonl's lines are;
            # the checkpoint's own step is kept, as there (purge_step drops that step and all after it).
            purge = self._resume_step + 1 if self._resume_step else None
            self.writer = self._writer_type(str(self.run_dir.path / "tensorboard"), purge_step=purge)
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, numbers.Real):
                self.writer.add_scalar(key, float(value), step)
        if ds is not None:
            self.writer.add_image("synthetic set", grid_array(ds), step, dataformats="HWC")

    def snapshot_due(self, step: int, final: bool = False) -> bool:
        """Whether the grid of `step` is kept: every `every` steps, and the last step of a run."""
        return bool(self.every) and (step % self.every == 0 or final)

    def snapshot(self, ds: DistilledSet, step: int) -> None:
        """Keep the grid of `ds`, a host set, as the snapshot of `step`."""
        save_snapshot(ds, self.run_dir.images_dir, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self._writer_type = None  # nothing more is recorded to TensorBoard
