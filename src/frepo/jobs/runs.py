"""The run directory: one owner at a time, the resolved config, the metrics log, atomic checkpoints.

A run directory belongs to one process at a time: an exclusive `flock` on RUN/.lock, which the kernel
releases when the process dies, so a kill -9 never leaves a stale lock. Rerunning the same command
resumes from `checkpoint.pt`. A different config is refused, except settings that cannot change the
result (`ALWAYS_RESUMABLE`) and, with `--resume-with-changes`, settings that are safe to continue with
(`CONTINUABLE`). Nothing is written before a run has started for real, so a start that fails leaves the
directory as it found it; a fresh start clears what an earlier attempt left; temp files of killed
writes are removed; a checkpoint is checked against the config before a run resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

import torch

from ..base.atomic import (
    append_line,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    is_temp_file,
    remove_stale_temps,
)
from ..base.dist import world_size
from ..base.errors import FrepoError
from ..base.fields import from_dict, to_dict
from ..base.lock import LOCK, FolderLock
from ..base.log import warn
from ..base.version import __version__
from ..config import DistillConfig

# Settings that may change between a run and its resumption: they do not change the result (device, compile
# and deterministic: the same maths, rounded in another order, which a resume says: `environment`,
# `warn_of_other_rounding`).
ALWAYS_RESUMABLE = {
    "device",
    "compile",
    "log_every",
    "checkpoint_every",
    "snapshot_every",
    "tensorboard",
    "data_dir",
    "download",
    "deterministic",
}


class OtherSettings(FrepoError):
    """The run directory holds a run of other settings; `detail` names them (setting: old -> new)."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


NOT_RECORDED = object()  # `RunDir.recorded`'s answer for a setting no run in the directory recorded

# Settings that change the result but are safe to continue with (--resume-with-changes): the schedule's
# length and rate (LAMB's schedule is a function of the step, evaluated anew), and validation.
CONTINUABLE = {"lr", "lr_final_ratio", "steps", "eval_every", "eval_models", "eval_steps"}
ENVIRONMENT = "environment"  # the key of config.json that records where the run ran, not what it is
# What an earlier attempt may have left, cleared when a run starts afresh in its directory.
OUTPUTS = ("metrics.jsonl", "distilled.safetensors", "best.safetensors", "distilled.png")
OUTPUT_FOLDERS = ("images", "tensorboard")


def _unreadable_why(path: Path, exc: Exception) -> str:
    """Why torch.load failed, in a few words: its messages run to several lines, and on a damaged file they
    advise loading it with weights_only=False, which would run whatever code the file holds."""
    if path.is_file() and path.stat().st_size == 0:
        return "an empty file"
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    first = first if len(first) <= 160 else first[:159] + "…"  # cut mid-sentence, said so
    detail = first if first and "weights_only" not in str(exc) else type(exc).__name__
    return f"corrupt, truncated or not a frepo checkpoint ({detail})"


def _is_record(record: object) -> TypeGuard[dict]:
    """Whether `record` is a metrics line as frepo writes them: an object with an integer step whose other values
    are numbers, and a resume's `changed` object ({setting: [old, new]})."""
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return False
    changed = record.get("changed", {})
    pairs = isinstance(changed, dict) and all(isinstance(v, list) and len(v) == 2 for v in changed.values())
    return pairs and all(type(value) in (int, float) for key, value in record.items() if key != "changed")


UNREADABLE = object()  # the JSON of a metrics line that is none


def _check_archive(path: Path) -> None:
    """Raise ValueError when the checkpoint, a zip archive as torch.save writes it, fails its own CRC-32
    checks: torch.load does not check them, and a flipped byte in the synthetic images resumed, went NaN,
    and was then named "the last good checkpoint". A file that is no zip at all is left to torch.load."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        with open(path, "rb") as fh:
            zipped = fh.read(4) == b"PK\x03\x04"
        if zipped:
            raise ValueError("a zip archive damaged or cut short (truncated)") from None
        return
    if damaged is not None:
        raise ValueError(f"its entry {damaged} fails its CRC-32 check (damaged)")


def _onednn_version() -> str | None:
    match = re.search(r"(?:oneDNN|MKL-DNN) v([\w.]+)", torch.__config__.show())
    return match.group(1) if match else None


def environment(device: torch.device) -> dict:
    """What decides the floating-point path of a run besides its config: the processes torchrun launched (each
    draws and averages its share of the batch), the device it runs on (a GPU's model, CUDA and cuDNN: their
    kernels differ), the thread count and versions."""
    gpu = {}
    if device.type == "cuda":
        gpu = {
            "gpu": torch.cuda.get_device_name(device),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return {
        "processes": world_size(),
        "device": device.type,
        **gpu,
        "cpu": torch.backends.cpu.get_cpu_capability(),  # the CPU kernels' vector width
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onednn": _onednn_version(),
        "frepo": __version__,
        "machine": platform.machine(),
    }


def as_the_run_resolves(config: DistillConfig, recorded: dict) -> DistillConfig:
    """`config` with the settings it leaves open taken as a run that recorded `recorded` takes them
    (`Distiller`, and whatever reads a run as it would): its own evaluation budget (recorded before the
    budget-aware default), and the flip table's default where it recorded one (a null from before that
    default stays)."""
    from ..config.presets import default_flip

    if config.eval_steps is None and isinstance(recorded.get("eval_steps"), int):
        config = dataclasses.replace(config, eval_steps=recorded["eval_steps"])
    if config.use_flip is None and recorded.get("use_flip", NOT_RECORDED) is not None:
        flip = default_flip(config.data.dataset, config.ipc, config.data.mirror_invariant)
        config = dataclasses.replace(config, use_flip=flip)
    return config


def settings_of_run(recorded: dict, config: DistillConfig) -> bool:
    """Whether `recorded` (a run's config, as its config.json or its set's meta hold it) is a run of `config`,
    settings that change no more than the rounding (`ALWAYS_RESUMABLE`) aside, as `RunDir.check` compares."""
    old, new = _compared({k: v for k, v in recorded.items() if k != ENVIRONMENT}, config)
    return all(old.get(k) == new.get(k) for k in old.keys() | new.keys() if k.split(".")[-1] not in ALWAYS_RESUMABLE)


def finished_set(path: Path, config: DistillConfig, steps: int):
    """The set at `path` (a DistilledSet) if a run of `config`'s settings made it at step `steps`; None for
    anything else: no file, a damaged one, other settings or another step."""
    from ..io.artifact import load_distilled

    try:
        ds = load_distilled(path)
        recorded = ds.meta.get("config") or {}
        if ds.meta.get("step") != steps or not settings_of_run(recorded, as_the_run_resolves(config, recorded)):
            return None
    except (OSError, ValueError, TypeError, FrepoError):
        return None
    return ds


def _compared(recorded: dict, config: DistillConfig) -> tuple[dict, dict]:
    """(recorded, config) flattened to dotted keys for comparison; a setting added to frepo after the run was
    made counts at its default: the run behaved as that default does."""
    old, new = _flatten(recorded), _flatten(to_dict(config))
    defaults = _flatten(to_dict(DistillConfig()))
    old.update({k: defaults[k] for k in new.keys() - old.keys() if k in defaults})
    return old, new


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class Claim:
    """What a run directory holds for a config: whether to resume, and the accepted changes."""

    resuming: bool  # a checkpoint is there to resume from
    fresh: bool  # no run was there (or none that got to start)
    changes: dict = field(default_factory=dict)  # setting -> [old, new], accepted
    previous_environment: dict | None = None
    # the recorded settings that resume as they are but choose the kernels (`warn_of_other_rounding`)
    previous_kernels: dict = field(default_factory=dict)


def _kernels(compile_mode) -> str:
    """Which kernels a compile mode runs: inductor's (`on`, `cudagraphs`), or torch's own (`off`; `graph`, which
    replays them; `auto`, which is one of those two)."""
    return "inductor" if compile_mode in ("on", "cudagraphs") else "torch"


def warn_of_other_rounding(path: Path, old: dict, new: dict, environment: dict | None, device: torch.device) -> None:
    """A resume may change `compile` and `deterministic` (ALWAYS_RESUMABLE: the same maths), but the rest of the
    run is then rounded otherwise: said, as a change of device or threads is (`environment`). `deterministic`
    chooses cuDNN's and inductor's kernels: on a CPU, before (`environment`: the run's) and now (`device`), it
    changes nothing."""
    changed = [k for k in ("compile", "deterministic") if k in old and old.get(k) != new.get(k)]
    if "compile" in changed and _kernels(old.get("compile")) == _kernels(new.get("compile")):
        changed.remove("compile")
    if "deterministic" in changed and (environment or {}).get("device") != "cuda" and device.type != "cuda":
        changed.remove("deterministic")
    if changed:
        detail = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in changed)
        warn(
            f"{path} resumes with {detail}: the rest of the run sums in another order (on a GPU) and will not "
            "repeat the uninterrupted run bit for bit"
        )


def default_run_dir(config: DistillConfig) -> Path:
    """runs/<dataset>-ipc<N>: where `frepo distill` and `frepo.distill` put a run not given a folder (a file's
    or a folder's dataset by its name)."""
    dataset = config.data.dataset
    name = Path(dataset).stem if ("/" in dataset or dataset.endswith(".npz")) else dataset
    return Path("runs") / f"{name}-ipc{config.ipc}"


# The files a run directory keeps: an output written over one of them loses the run or its set.
KEPT = ("config.json", "checkpoint.pt", "metrics.jsonl", "distilled.safetensors", "best.safetensors", LOCK)
EXPERIMENT_FILES = (".json", ".md", ".csv", ".png")  # <kind>.json ... : an experiment's summary (apps.experiment)


# The records of an experiment's units in its subfolders (frepo.apps): continual's results and memories per
# order, privacy's victims and shadows, and the networks an evaluation kept.
EXPERIMENT_UNITS = (
    re.compile(r"order\d+/task\d+-[a-z]+\.(json|safetensors)"),
    re.compile(r"victims/[a-z_]+-\d+-m\d+(\.json|-loss\.npy)"),
    re.compile(r"shadows/[a-z_]+-\d+-s\d+\.npy"),
    re.compile(r"comparisons/\d+-[a-z_]+\.json"),
    re.compile(r"evaluations/[0-9a-f]+\.json"),
)


def check_not_kept(
    path: str | Path,
    what: str,
    inputs: tuple[str | Path, ...] = (),
    writes_a_set: bool = False,
    writes: str | None = None,
) -> None:
    """Refuse an output file `path` that would overwrite what frepo keeps: one of the command's `inputs`, a
    file a run keeps (`KEPT`, in a folder that holds a run), a file an export wrote (in an export folder), an
    experiment's records and summaries (in a folder with a <kind>-held.json), or, unless the output is a set
    itself (`writes_a_set`), any frepo set. `frepo evaluate RUN --json RUN/distilled.safetensors` replaced the
    set it had just evaluated with JSON; `frepo report RUN --out checkpoint.pt`, the run's checkpoint with
    Markdown; `frepo evaluate a.safetensors --json b.safetensors`, another set. An output that `writes` "json"
    or "text" refuses a file holding anything else (`evaluate --json data/mnist.npz` replaced the dataset)."""
    from ..io.artifact import is_set_file
    from ..io.export import MANIFEST, export_entries
    from ..io.foreign.load import is_run

    path = Path(path)
    if path.is_symlink():  # written through (frepo.base.atomic): what it points to is judged too
        real = Path(os.path.realpath(path))
        if real.is_symlink():  # a loop of links (realpath stops in it): recursing never ended
            raise FrepoError(f"{what} {path} is a loop of links; give a file name")
        check_not_kept(real, what, inputs, writes_a_set, writes)
    here = path.parent.resolve() / path.name  # `..` and folder links too
    for given in inputs:
        if path.exists() and Path(given).exists() and path.samefile(given):
            raise FrepoError(f"{what} {path} is the file this command reads; give another name")
        # in a subfolder of a folder of images read (a class folder): `show DIR --out DIR/3/00003.png` replaced an
        # image (a file beside the class folders is no image the folder holds)
        if Path(given).is_dir() and not is_run(given) and Path(given).resolve() in here.parents[1:]:
            raise FrepoError(
                f"{what} {path} is in a subfolder of {given}, which this command reads; give a path outside it"
            )
    folder = path.parent
    if path.name in KEPT and (folder / "config.json").is_file() and is_run(folder):
        raise FrepoError(f"{what} {path} is a file of the run in {folder}; give another name")
    if here.parent.name == "images" and re.fullmatch(r"step\d+\.png", here.name) and is_run(here.parent.parent):
        raise FrepoError(f"{what} {path} is a snapshot of the run in {here.parent.parent}; give another name")
    # what an export wrote, in its subfolders too (an imagefolder export's class folders)
    for above in here.parents:
        if (above / MANIFEST).is_file() and here.relative_to(above).parts[0] in export_entries(above):
            inside = "a file" if above == here.parent else "in a folder"
            raise FrepoError(f"{what} {path} is {inside} of the export in {above}; give another name")
    for held in folder.glob("*-held.json"):  # an experiment's folder (frepo.apps): its records and summaries
        kind = held.name.removesuffix("-held.json")
        if path.name in {held.name, f"{kind}-config.json", *(f"{kind}{suffix}" for suffix in EXPERIMENT_FILES)}:
            raise FrepoError(f"{what} {path} is a file of the {kind} experiment in {folder}; give another name")
    # and its units' records in its subfolders (named as the experiments name them: a file of one's own there
    # stays one's own to replace)
    if path.exists() and any(pattern.fullmatch(f"{here.parent.name}/{here.name}") for pattern in EXPERIMENT_UNITS):
        above = here.parent.parent
        for held in above.glob("*-held.json"):
            kind = held.name.removesuffix("-held.json")
            raise FrepoError(f"{what} {path} is a record of the {kind} experiment in {above}; give another name")
    if not writes_a_set and is_set_file(path):
        raise FrepoError(f"{what} {path} is a frepo set, which this would replace; give another name")
    if writes is not None and path.is_file() and not _holds(path, writes):
        kind = "JSON" if writes == "json" else "text"
        raise FrepoError(
            f"{what} {path} holds something other than {kind} (a dataset, an archive, another program's file), "
            "which this would replace; give another name"
        )


def _holds(path: Path, writes: str) -> bool:
    """Whether the file at `path` is empty or holds what an output that `writes` "json" or "text" writes, so
    replacing it loses no more than an earlier output: JSON that parses, or text (no NUL byte in its first
    64 KiB, as no binary format lacks one there)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536)
        if not head:
            return True
        if b"\x00" in head:  # binary: said before a multi-GB file is read whole to be parsed
            return False
        if writes == "json":
            json.loads(path.read_bytes())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return False
    return True


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.metrics_path = self.path / "metrics.jsonl"
        self.distilled_path = self.path / "distilled.safetensors"
        self.best_path = self.path / "best.safetensors"
        self.images_dir = self.path / "images"
        self.lock = FolderLock(self.path)

    # ---- ownership --------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Make the directory if needed and lock it for this process, or say who holds it."""
        if str(self.path) in ("", "."):
            raise FrepoError("--out must name a run directory")
        self.lock.acquire()

    def release(self) -> None:
        self.lock.release()

    def abandon(self) -> None:
        """After a failed start: remove what acquire() created, so the directory is as it was found."""
        self.lock.undo()

    # ---- the config ---------------------------------------------------------------------------------
    def settings(self) -> dict:
        """The run's recorded settings (config.json), or {} without a readable one."""
        try:
            recorded = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return {}
        return recorded if isinstance(recorded, dict) else {}

    def recorded(self, name: str, absent=None):
        """A top-level setting of the run found in the directory (`absent` without one, if unreadable, or
        if the run did not record it)."""
        return self.settings().get(name, absent)

    def check(self, config: DistillConfig, allow_changes: bool = False) -> Claim:
        """Compare `config` with the run found in the directory (writes nothing)."""
        if not self.config_path.is_file():
            if self.checkpoint_path.is_file():  # a run's folder that lost its record: said so, not "no run"
                raise FrepoError(
                    f"--out {self.path} holds a checkpoint but no config.json (the run's settings), so it cannot be "
                    "resumed; restore config.json, or delete the folder to start over"
                )
            # a kill -9 in the first write of config.json left its temp file: the same command starts again
            if any(p.name != LOCK and not is_temp_file(p) for p in self.path.iterdir()):
                raise FrepoError(f"--out {self.path} is not empty and holds no frepo run; use another --out")
            return Claim(resuming=False, fresh=True)
        try:
            previous = json.loads(self.config_path.read_text())
            if not isinstance(previous, dict):
                raise TypeError(f"a JSON {type(previous).__name__}, not an object")
            env = previous.pop(ENVIRONMENT, None)
            from_dict(DistillConfig, previous)
        except (OSError, ValueError, TypeError, FrepoError, AttributeError) as exc:  # ValueError: bad JSON or UTF-8
            raise FrepoError(f"{self.config_path} is unreadable ({exc}); use another --out") from exc
        old, new = _compared(previous, config)
        resuming = self.checkpoint_path.is_file()
        if not resuming and self.distilled_path.is_file():  # written at the end only: a finished run
            # Its checkpoint was pruned or deleted: starting over removed the set (hours of work) without a word.
            raise FrepoError(
                f"{self.path} holds a finished run's set (distilled.safetensors) but no checkpoint.pt to resume "
                "from, so this would distil it again from step 0 and replace the set. The set is usable as it is "
                "(evaluate, show, export read it); to distil again from the start, move it away, or use another --out"
            )
        if resuming and old.get("init") != new.get("init"):
            # A run resumes from its checkpoint and never reads its start again: `../r1` typed in another folder
            # (or on another machine) for `r1` was refused as other settings. Said, as the start is not used.
            started = f"--init {old['init']}" if old.get("init") else "seeded real images"
            given = f"--init {new['init']}" if new.get("init") else "the seeded start"
            warn(f"{self.path} resumes from its checkpoint; it started from {started}, and {given} is not read")
            old["init"] = new.get("init")
        diff = sorted(
            k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k.split(".")[-1] not in ALWAYS_RESUMABLE
        )
        refused = [k for k in diff if not (allow_changes and k.split(".")[-1] in CONTINUABLE)]
        if refused and not resuming and not self._validated():  # stopped at its start (out of memory, say):
            # nothing of it to continue or keep, where a validated set (best.safetensors) would be hours of work
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused[:6])
            warn(f"{self.path}: the run there ({detail}) stopped before its first checkpoint; starting afresh")
            return Claim(resuming=False, fresh=False, previous_environment=env)
        continuable_only = all(k.split(".")[-1] in CONTINUABLE for k in diff)
        if diff and continuable_only and not resuming and self._validated():
            # validated, yet no checkpoint: --resume-with-changes (the advice below) had nothing to continue from,
            # said "continuing with changed settings", and started afresh, removing the validated set
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
            raise OtherSettings(
                f"{self.path} holds a run of other settings ({detail}) that stopped before its first checkpoint, "
                "so there is nothing to continue from, and starting afresh there would remove its validated set "
                "(best.safetensors): use another --out, or move that set away (or delete the directory) to start "
                "over there",
                detail,
            )
        if refused:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused[:6])
            continuable = [k for k in refused if k.split(".")[-1] in CONTINUABLE]
            hint = (
                "rerun with --resume-with-changes to continue with the new value"
                if len(continuable) == len(refused)
                else f"only {', '.join(sorted(CONTINUABLE))} may change when a run continues "
                "(--resume-with-changes); use another --out, or delete that directory to start over"
            )
            raise OtherSettings(f"{self.path} holds a run with a different config ({detail}); {hint}", detail)
        changes = {k: [old.get(k), new.get(k)] for k in diff}
        kernels = {k: old[k] for k in ("compile", "deterministic") if k in old}
        return Claim(resuming, False, changes, env, kernels)

    def _validated(self) -> bool:
        """Whether the run validated a set: its best one kept, or a validation logged (before a checkpoint when
        --eval-every is the shorter)."""
        return self.best_path.is_file() or any("val_acc" in record for record in self.read_metrics())

    def begin(self, config: DistillConfig, claim: Claim, device: torch.device) -> None:
        """Write the config (with the environment), once the run has started for real; a fresh start in a
        used directory clears the outputs of the earlier attempt; stale temp files go."""
        remove_stale_temps(self.path)
        if not claim.resuming:
            for name in OUTPUTS:
                (self.path / name).unlink(missing_ok=True)
            for name in OUTPUT_FOLDERS:
                shutil.rmtree(self.path / name, ignore_errors=True)
        atomic_write_json(self.config_path, {**to_dict(config), ENVIRONMENT: environment(device)})
        self.lock.created = []  # the directory now holds a run: never removed by abandon()

    # ---- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict:
        try:
            _check_archive(self.checkpoint_path)
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except OSError as exc:  # unreadable, not damaged: the checkpoint may well be good
            raise FrepoError(f"cannot read {self.checkpoint_path}: {exc.strerror or exc}") from exc
        except Exception as exc:
            why = _unreadable_why(self.checkpoint_path, exc)
            raise FrepoError(f"cannot read {self.checkpoint_path}: {why}; {self._without_checkpoint()}") from exc
        if not isinstance(state, dict):
            raise FrepoError(f"{self.checkpoint_path} is not a frepo checkpoint; {self._without_checkpoint()}")
        return state

    def _without_checkpoint(self) -> str:
        """What deleting a checkpoint that cannot be read does: a finished run keeps its set (its command finds it
        complete) and can no longer be continued; an unfinished one starts again."""
        if self.distilled_path.is_file():
            kept = self.distilled_path.name
            return f"delete it: the run's finished set, {kept}, stays usable, but the run cannot be continued then"
        return "delete it to restart the run"

    def checkpoint_time(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.checkpoint_path.stat().st_mtime))

    # ---- the metrics log ----------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        append_line(self.metrics_path, json.dumps(record))

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        records, strangers = [], []
        for number, _, record in self._logged():
            if _is_record(record):
                records.append(record)
            else:
                strangers.append(number)
        if strangers:  # an edited log: a traceback in report or at a resume before
            shown = ", ".join(map(str, strangers[:5])) + (" ..." if len(strangers) > 5 else "")
            warn(f"{self.metrics_path}: line(s) {shown} are not records frepo writes; left out (kept in the file)")
        return records

    def truncate_metrics(self, step: int, redo_validation: bool = False) -> None:
        """Drop records after `step` (written after the checkpoint a resumed run restarts from), with
        `redo_validation` the validation records of `step` too (a validation a stop cut short runs again), and
        the end of a line cut by a crash; every other line is kept as it is (its bytes), one frepo does not write
        or cannot read (read_metrics leaves it out) included."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for _, line, record in self._logged():
            at = record.get("step") if isinstance(record, dict) else None
            redone = redo_validation and isinstance(record, dict) and "val_acc" in record
            later = type(at) is int and (at > step or (redone and at == step))
            if not later:
                kept.append(line + b"\n")
        atomic_write(self.metrics_path, lambda p: p.write_bytes(b"".join(kept)))

    def _logged(self) -> Iterator[tuple[int, bytes, object]]:
        """(line number, line, its JSON) of metrics.jsonl, up to a line cut by a crash: the last line, when it is
        no JSON, ends the log. Another line that is no JSON or no UTF-8 (damaged or edited) comes with
        `UNREADABLE` for its JSON: a stranger, not the end (that dropped every record after it at a resume), nor
        a UnicodeDecodeError (it stopped report and resume)."""
        lines = self.metrics_path.read_bytes().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line.decode("utf-8"))
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                if number == len(lines):
                    return
                record = UNREADABLE
            yield number, line, record
