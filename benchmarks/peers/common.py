"""What the peer harnesses share: the wall clock and its snapshots, peak memory, the result file, and the
stand-ins for torchvision's downloading datasets.

A harness runs one method in its own process. `Clock` starts when the harness starts (before the peer's
code is imported), so a method's wall clock holds everything it needs: imports, data loading, its own
preprocessing, MTT's expert trajectories. After each outer step the harness calls `Clock.tick(save)`:
it records the step's end, saves the set through `save(tag)` at each mark (a fraction of the budget)
and raises `BudgetReached` when the budget is spent. Step times are taken on the host after the step's
last result reached it, so asynchronous devices (JAX, CUDA) are timed whole.
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

T0 = time.monotonic()  # the harness's start: the first import of this module

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class BudgetReached(Exception):
    """The method's wall-clock budget is spent: the harness stops it here (not an error)."""


@dataclass
class Clock:
    budget_s: float  # wall clock allowed from the harness's start; inf for a fixed number of steps
    marks: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)  # fractions of the budget at which the set is saved
    max_steps: int | None = None  # stop after this many outer steps (timing runs)
    step_ends: list[float] = field(default_factory=list)  # seconds since T0
    snapshots: list[dict] = field(default_factory=list)
    first_step_start: float | None = None  # seconds since T0 when the first outer step began
    now: Callable[[], float] = field(default=lambda: time.monotonic() - T0, repr=False)  # seconds since T0

    def elapsed(self) -> float:
        return self.now()

    def start_steps(self) -> None:
        """The method's setup is done; its first outer step begins now."""
        self.first_step_start = self.elapsed()

    def tick(self, save: Callable[[str], str] | None = None) -> None:
        now = self.elapsed()
        self.step_ends.append(now)
        due = [m for m in self.marks if m * self.budget_s <= now and not self._taken(m)]
        last = self.max_steps is not None and len(self.step_ends) >= self.max_steps
        if save is not None and (due or (now >= self.budget_s) or last):
            tag = f"step{len(self.step_ends):06d}"
            path = save(tag)
            for m in due or [1.0]:
                self.snapshots.append({"mark": m, "minutes": now / 60, "steps": len(self.step_ends), "path": path})
        if now >= self.budget_s or last:
            raise BudgetReached

    def finish(self, save: Callable[[str], str]) -> None:
        """The method ended its own schedule within the budget: its last set is the budget's."""
        if not self.snapshots or self.snapshots[-1]["steps"] != len(self.step_ends):
            steps = len(self.step_ends)
            path = save(f"step{steps:06d}")
            self.snapshots.append({"mark": 1.0, "minutes": self.elapsed() / 60, "steps": steps, "path": path})

    def _taken(self, mark: float) -> bool:
        return any(s["mark"] == mark for s in self.snapshots)

    def step_times(self) -> list[float]:
        if self.first_step_start is None:
            return []
        ends = [self.first_step_start, *self.step_ends]
        return [b - a for a, b in zip(ends, ends[1:])]

    def summary(self, warmup: int = 2) -> dict:
        times = self.step_times()
        warmup = min(warmup, max(len(times) - 1, 0))  # a run of 2 steps times its second
        timed = times[warmup:] if len(times) > warmup else times
        return {
            "steps": len(self.step_ends),
            "setup_s": self.first_step_start,
            "step_s_median": statistics.median(timed) if timed else None,
            "step_s_all": [round(t, 4) for t in times],
            "warmup_steps": min(warmup, len(times)),
            "wall_s": self.elapsed(),
            "snapshots": self.snapshots,
        }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def cap_memory(gb: float | None) -> None:
    """Cap the process's address space, so a run too large for the machine fails with an allocation error
    (a result: "out of memory at this size") instead of pushing the machine into swap or the OOM killer.
    Used by the torch peers only: XLA reserves address space it never touches."""
    if gb:
        limit = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()}


def write_result(path: str | Path, result: dict) -> None:
    """The harness's JSON (atomically: a killed harness leaves the previous file or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    os.replace(tmp, path)
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_s_all", "snapshots")}, default=float))


def load_arrays(dataset: str, data_dir: str | None, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 NHWC images and int64 labels of a dataset: `<data_dir>/<dataset>.npz`, or for `cifar100-standin`
    random images of CIFAR-100's shape and size (50 000 + 10 000, 100 balanced classes). The stand-in is for
    timing and memory only: a step's cost does not depend on the pixels' values."""
    if dataset == "cifar100-standin":
        rng = np.random.default_rng(seed)
        return {
            "x_train": rng.integers(0, 256, (50000, 32, 32, 3), dtype=np.uint8),
            "y_train": np.arange(50000) % 100,
            "x_test": rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8),
            "y_test": np.arange(10000) % 100,
        }
    directory = data_dir or os.environ.get("FREPO_DATA_DIR")
    if not directory:
        sys.exit("no data: give --data-dir or set FREPO_DATA_DIR to a folder holding <dataset>.npz")
    path = Path(directory) / f"{dataset}.npz"
    if not path.is_file():
        sys.exit(f"{path}: not found (the harnesses read the .npz layout of ../shared/data)")
    with np.load(path) as z:
        return {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}


def install_torchvision_datasets(arrays: dict[str, np.ndarray]) -> None:
    """Replace torchvision's CIFAR10 and CIFAR100 (which download, or check a download's checksums) by a
    dataset serving `arrays` the same way: PIL images through the caller's transform, int labels."""
    import torch.utils.data
    import torchvision.datasets
    from PIL import Image

    num_classes = int(arrays["y_train"].max()) + 1

    class ArrayDataset(torch.utils.data.Dataset):
        def __init__(self, root=None, train=True, download=False, transform=None, target_transform=None):
            split = "train" if train else "test"
            self.data, self.targets = arrays[f"x_{split}"], [int(y) for y in arrays[f"y_{split}"]]
            self.transform, self.target_transform = transform, target_transform
            self.classes = CIFAR10_CLASSES if num_classes == 10 else [f"class{i}" for i in range(num_classes)]

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i):
            image, target = Image.fromarray(self.data[i]), self.targets[i]
            if self.transform is not None:
                image = self.transform(image)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return image, target

    torchvision.datasets.CIFAR10 = ArrayDataset
    torchvision.datasets.CIFAR100 = ArrayDataset


def install_scipy_interpolation_alias() -> None:
    """`scipy.ndimage.interpolation` (imported by MTT's and DC's utils.py) was removed from SciPy; its
    functions live in `scipy.ndimage`."""
    import scipy.ndimage

    sys.modules.setdefault("scipy.ndimage.interpolation", scipy.ndimage)


def install_fake_wandb(on_log: Callable[[dict], None] | None = None) -> types.ModuleType:
    """A stand-in for Weights & Biases (MTT logs every iteration to it, names its run by it, and rebuilds its
    arguments from `wandb.config`): nothing leaves the machine; `log` calls `on_log`."""
    wandb = types.ModuleType("wandb")
    wandb.config = types.SimpleNamespace(_items={})
    wandb.run = types.SimpleNamespace(name="harness")

    def init(*args, config=None, **kwargs):
        wandb.config._items = dict(vars(config)) if config is not None else {}
        return wandb.run

    wandb.init = init
    wandb.finish = lambda *a, **k: None
    wandb.log = lambda data, *a, **k: on_log(data) if on_log else None
    wandb.Histogram = wandb.Image = lambda *a, **k: None
    sys.modules["wandb"] = wandb
    return wandb


def run_script(path: Path, argv: list[str], cwd: Path) -> None:
    """Run a peer's script as `cd cwd; python path argv...` would, in this process (its folder first on
    sys.path). `cwd` takes what a script writes relative to it (MTT's ./logged_files)."""
    import runpy

    old_argv, old_path, old_cwd = sys.argv, list(sys.path), os.getcwd()
    sys.argv = [str(path), *argv]
    sys.path.insert(0, str(path.parent))
    os.chdir(cwd)
    try:
        runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        os.chdir(old_cwd)


def install_aliased_assignment_clone() -> None:
    """`t[idx] = v` where `v` is a view of `t` itself copies `v` first. The DC/DSA augmentation's
    "Siamese" branch writes `randb[:] = randb[0]`; with one image per class (DM's per-class batches at
    IPC 1) source and destination are the same element, which torch 1.x copied and torch 2.x refuses
    ("some elements of the input tensor and the written-to tensor refer to a single memory location").
    Copying first gives the old result; assignments without aliasing are untouched."""
    import torch

    if getattr(torch.Tensor.__setitem__, "clones_aliased_values", False):
        return
    setitem = torch.Tensor.__setitem__

    def setitem_cloning_aliases(self, key, value):
        if (
            isinstance(value, torch.Tensor)
            and value.numel()
            and self.numel()
            and value.untyped_storage().data_ptr() == self.untyped_storage().data_ptr()
        ):
            value = value.clone()
        return setitem(self, key, value)

    setitem_cloning_aliases.clones_aliased_values = True
    torch.Tensor.__setitem__ = setitem_cloning_aliases


def prepare_torch_peer(dataset: str, data_dir: str | None, seed: int, memory_gb: float | None) -> dict:
    """What a torch peer (MTT, DM) needs before its script runs: the memory cap, the torch and numpy seeds
    (the peers seed nothing themselves), and the dataset and SciPy stand-ins. Returns the arrays served."""
    import torch

    cap_memory(memory_gb)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)  # MTT shuffles its expert files and buffer with Python's own generator
    arrays = load_arrays(dataset, data_dir, seed)
    install_torchvision_datasets(arrays)
    install_scipy_interpolation_alias()
    return arrays


# What torch's allocators say when an allocation fails (CPU: past the `--memory-gb` cap; GPU: full).
# Only these: other RuntimeErrors that mention memory (e.g. "... refer to a single memory location")
# are bugs, not results.
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "cannot allocate memory")


def run_until_stopped(path: Path, argv: list[str], cwd: Path) -> str:
    """Run a peer's script until the harness stops it; returns the outcome. An allocation past the
    `--memory-gb` cap is a result ("out of memory ..."), not a crash."""
    try:
        run_script(path, argv, cwd)
    except BudgetReached:
        pass
    except (MemoryError, RuntimeError) as exc:
        message = str(exc)
        if not isinstance(exc, MemoryError) and not any(m in message.lower() for m in OUT_OF_MEMORY):
            raise
        return f"out of memory: {message.splitlines()[0][:200] if message else type(exc).__name__}"
    return "stopped by the harness"


def torch_measures(clock: Clock) -> dict:
    """The clock's summary and the memory and machine of a torch run, for its result.json."""
    import torch

    measures = {
        **clock.summary(),
        "peak_rss_mb": peak_rss_mb(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "machine": machine(),
    }
    if torch.cuda.is_available():
        measures["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return measures
