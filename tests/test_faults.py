"""Runs that survive faults: every probe of a careful user and a hostile file gets one line on stderr and
exit 2, and loses nothing (one owner per run directory, full or unwritable disks, kill -9 at a
checkpoint-and-validation step, re-signed files, wrong checkpoints, bad flags, leftovers, umask,
divergence without NaN, transform's input, what a resumed run says)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from frepo.base.atomic import append_line, atomic_write_text
from frepo.base.errors import FrepoError
from frepo.cli import main
from frepo.config import DataConfig
from frepo.io.artifact import DistilledSet, _checksum, load_distilled, save_distilled
from frepo.jobs.reproduce import reproduce
from frepo.jobs.runs import RunDir
from frepo.jobs.subset import make_subset

FAST = ["--width", "8", "--num-models", "3", "--max-online-updates", "4", "--batch-size", "64"]
FAST += ["--eval-steps", "20", "--log-every", "1", "--checkpoint-every", "2"]
TIMING = {"steps_per_s", "elapsed_s", "peak_mem_mb"}


def distill_args(out, *extra) -> list[str]:
    return ["distill", "--ipc", "1", "--steps", "4", "--out", str(out), *FAST, *map(str, extra)]


def nan_at_update(monkeypatch, at: int | None = None) -> None:
    """LAMB's update leaves the synthetic images NaN at its `at`-th call (1-based), or at every call (None): a
    divergence at a step of the test's choosing."""
    from frepo.method import optim

    original, calls = optim.Lamb.update, {"n": 0}

    def poisoned(self, *scalars):
        original(self, *scalars)
        calls["n"] += 1
        if at is None or calls["n"] == at:
            self.param_groups[0]["params"][0].data.fill_(float("nan"))

    monkeypatch.setattr(optim.Lamb, "update", poisoned)


def one_line(capsys, code: int, fragment: str) -> str:
    """Exit 2 with one error line that holds `fragment`, and no traceback (a run's progress and
    messages before the failure may precede it)."""
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("frepo: error:")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], err
    return errors[0]


def only_line(capsys, code: int, fragment: str) -> None:
    """A mistake found before any work: the error line is all that is printed."""
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("frepo: error:") and fragment in err, err


def metrics(path) -> list[dict]:
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


# ---- 1. one owner per run directory ---------------------------------------------------------------
def test_a_second_process_on_a_run_directory_is_refused_and_a_killed_owner_leaves_no_lock(tmp_path, capsys):
    out = tmp_path / "run"
    holder = RunDir(out)
    holder.acquire()  # another owner (a separate open file: flock conflicts within one process too)
    line = one_line(capsys, main(distill_args(out)), "in use by another frepo process")
    assert f"pid {os.getpid()}" in line
    holder.release()
    # A process that holds the lock and dies by kill -9 leaves nothing that blocks the next run.
    script = (
        f"from frepo.jobs.runs import RunDir; import time; RunDir({str(out)!r}).acquire(); print('held', flush=True)"
    )
    script += "; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    one_line(capsys, main(distill_args(out)), f"pid {proc.pid}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert main(distill_args(out)) == 0


def test_a_lock_on_a_removed_lock_file_is_taken_again_and_no_locks_is_a_warning(tmp_path, monkeypatch, caplog):
    """A process that opened .lock as its last owner's failed start removed it locked a file no other process
    could see: a third took the folder beside it. And a filesystem without file locks (ENOLCK) was a traceback
    with the lock's descriptor left open."""
    import errno

    from frepo.base import lock as lock_module

    folder = tmp_path / "run"
    held = lock_module.FolderLock(folder)
    real_open, opened = lock_module.FolderLock._open, []

    def removed_after_opening(self):
        fd = real_open(self)
        opened.append(fd)
        if len(opened) == 1:
            self.path.unlink()  # the last owner's `undo`, as this process opened the file
        return fd

    monkeypatch.setattr(lock_module.FolderLock, "_open", removed_after_opening)
    held.acquire()
    assert len(opened) == 2 and lock_module.same_file(opened[1], held.path)
    with pytest.raises(FrepoError, match="in use by another frepo process"):
        lock_module.FolderLock(folder).acquire()  # the file at the path is the one held
    held.release()
    monkeypatch.undo()

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    unlocked = lock_module.FolderLock(tmp_path / "nfs")
    with caplog.at_level("WARNING", logger="frepo"):
        unlocked.acquire()
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text
    unlocked.undo()
    assert not (tmp_path / "nfs").exists()


def test_a_run_starting_as_another_command_looks_at_its_folder_waits_a_moment(tmp_path):
    """`holder()` (evaluate, show, export and report on a run folder) holds a shared lock for a moment; a run
    starting then was refused, naming a pid that had gone. It tries again for a second first."""
    import fcntl
    import threading

    from frepo.base import lock as lock_module

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("4242\n")
    looking = os.open(folder / ".lock", os.O_RDONLY)
    fcntl.flock(looking, fcntl.LOCK_SH)  # as holder() does, for a moment
    threading.Timer(0.15, os.close, (looking,)).start()
    owner = lock_module.FolderLock(folder)
    owner.acquire()  # refused at once before ("in use by another frepo process (pid 4242)")
    assert (folder / ".lock").read_text() == f"{os.getpid()}\n"
    owner.release()


# ---- 2. full or unwritable disks ------------------------------------------------------------------
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    original, calls = torch.save, {"n": 0}

    def fills_the_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint, at step 4
            f.write(b"partial")  # frepo saves through a file object (fixed archive names), whose write
            raise OSError(errno.ENOSPC, "No space left on device")  # fails as a full disk's does
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    line = one_line(capsys, main(distill_args(out, "--steps", 6)), "checkpoint.pt")
    assert "the last checkpoint, at step 2, is kept" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not list(out.glob(".*.tmp"))  # the temp file of the failed write is gone
    monkeypatch.setattr(torch, "save", original)
    assert main(distill_args(out, "--steps", 6)) == 0  # and the same command resumes


@pytest.mark.parametrize(
    "damage, why", [(b"", "an empty file"), (bytes(range(256)) * 8, "corrupt, truncated or not a frepo checkpoint")]
)
def test_a_damaged_checkpoint_is_one_short_line(tmp_path, capsys, damage, why):
    """torch.load's message ran to six lines and advised weights_only=False, which runs the file's code."""
    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    (out / "checkpoint.pt").write_bytes(damage)
    capsys.readouterr()
    line = one_line(capsys, main(distill_args(out, "--steps", 4, "--resume-with-changes")), why)
    assert "weights_only" not in line  # and the run is finished: deleting the checkpoint keeps its set
    assert "delete it: the run's finished set, distilled.safetensors, stays usable, but the run cannot be" in line
    (out / "distilled.safetensors").unlink()  # an unfinished run's: deleting it restarts the run
    one_line(capsys, main(distill_args(out, "--steps", 4, "--resume-with-changes")), "delete it to restart the run")


def test_a_checkpoint_damaged_inside_or_cut_short_is_named_so(tmp_path, capsys):
    """torch.load checks no CRC: a byte flipped in the synthetic images resumed, went NaN, and the error then
    named that checkpoint "the last good" one and advised a lower --lr. A cut one said torch's zip reader's
    message cut at 160 characters."""
    import zipfile

    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    path = out / "checkpoint.pt"
    good = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)  # a tensor's bytes
    start = entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra)  # its local header's end
    flipped = bytearray(good)
    flipped[start + entry.compress_size // 2] ^= 0x40
    path.write_bytes(bytes(flipped))
    capsys.readouterr()
    resume = distill_args(out, "--steps", 4, "--resume-with-changes")
    line = one_line(capsys, main(resume), f"its entry {entry.filename} fails its CRC-32 check")
    assert "delete it: the run's finished set" in line
    path.write_bytes(good[: len(good) // 2])
    one_line(capsys, main(resume), "a zip archive damaged or cut short (truncated)")
    path.write_bytes(good)
    assert main(resume) == 0


def test_a_damaged_final_file_of_a_finished_run_is_written_again(tmp_path, capsys):
    """The run said "already complete" over a truncated distilled.safetensors, and evaluate then failed."""
    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    final = out / "distilled.safetensors"
    images = load_distilled(final).images.clone()  # not a view of the file truncated next
    final.write_bytes(final.read_bytes()[:1000])
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(distill_args(out, "--steps", 2)) == 0
    assert "writing it again from the final checkpoint" in capsys.readouterr().err
    assert torch.equal(load_distilled(final).images, images)
    assert (out / "metrics.jsonl").read_text() == metrics  # no second final validation
    # Another valid set over it (a subset copied there, or the stale set of a shorter run extended, stopped and
    # ended at a step between) was "already complete" too: the end runs again (final files, best set, and the
    # validation, unless the checkpoint's step had it).
    other = tmp_path / "other.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(other), "--seed", "5"]) == 0
    final.write_bytes(other.read_bytes())
    capsys.readouterr()
    assert main(distill_args(out, "--steps", 2)) == 0
    assert "holds another set than this run's final checkpoint; ending the run again" in capsys.readouterr().err
    assert torch.equal(load_distilled(final).images, images)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_acc" in r] == [2]  # step 2's validation is in its checkpoint: once


def test_a_resume_on_other_training_data_is_refused(tmp_path, capsys, monkeypatch):
    """A resumed run refitted its preprocessing on whatever the data folder held and went on silently, the
    steps before in one space and the rest in another."""
    from frepo.data import registry

    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    original = registry._load_digits

    def inverted():
        raw = original()
        return dataclasses.replace(raw, x_train=255 - raw.x_train)

    monkeypatch.setattr(registry, "_load_digits", inverted)
    capsys.readouterr()
    one_line(capsys, main(distill_args(out, "--steps", 4, "--resume-with-changes")), "made on other training data")
    monkeypatch.setattr(registry, "_load_digits", original)
    assert main(distill_args(out, "--steps", 4, "--resume-with-changes")) == 0


def test_safetensors_and_read_only_failures_are_one_line(tmp_path, capsys, monkeypatch):
    import safetensors.torch

    class SafetensorError(Exception):  # safetensors' own type, raised from Rust
        pass

    def no_space(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    one_line(capsys, main(distill_args(tmp_path / "a", "--eval-every", 2)), "No space left on device while writing")
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    one_line(
        capsys,
        main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "s.safetensors")]),
        "Read-only file system",
    )
    monkeypatch.undo()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line(capsys, main(distill_args(a_file / "sub")), "Not a directory")


def test_bad_output_paths_are_refused_before_the_work(tmp_path, capsys, monkeypatch):
    subset = tmp_path / "random.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(subset)]) == 0
    import frepo.jobs.evaluate

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation ran before its output path and networks were checked")

    # where the command calls it (frepo.eval.run's own name is not the one frepo.jobs.evaluate holds)
    monkeypatch.setattr(frepo.jobs.evaluate, "evaluate_set", no_work)
    # `--arch mlp,resnet18` on 8×8 images trained the mlp, then failed on resnet18: the mlp's work was lost.
    capsys.readouterr()
    one_line(capsys, main(["evaluate", str(subset), "--arch", "mlp,resnet18"]), "too small for resnet18")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    capsys.readouterr()
    one_line(capsys, main(["evaluate", str(subset), "--json", str(a_file / "eval.json")]), "--json")
    one_line(capsys, main(["evaluate", str(subset), "--csv", str(tmp_path)]), "is a folder")
    one_line(capsys, main(["show", str(subset), "--out", str(a_file / "grid.png")]), "--out")
    one_line(capsys, main(["show", str(subset), "--per-class", "0"]), "--per-class must be >= 1")
    one_line(capsys, main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(a_file / "x")]), "--out")
    if sys.platform == "linux":  # a virtual folder answers "No such file or directory", which it is not
        out = ["subset", "--dataset", "digits", "--ipc", "1", "--out", "/proc/x.safetensors"]
        one_line(capsys, main(out), "cannot write into the folder of --out /proc: files cannot be created in it")


def test_a_command_that_fails_leaves_no_folders_its_outputs_would_have_needed(tmp_path, capsys):
    """The output paths are checked before the work without being made: a failed evaluation of a missing set
    with --json new/deeper/eval.json left the empty folders new/deeper behind."""
    new = tmp_path / "new"
    out = ["evaluate", str(tmp_path / "missing.safetensors"), "--json", str(new / "deeper" / "eval.json")]
    one_line(capsys, main([*out, "--csv", str(new / "other" / "eval.csv")]), "file not found")
    assert not new.exists()


def test_a_read_only_ancestor_of_an_output_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    """Still checked where the folder would be made (which the check does not make). Root writes into a read-only
    folder (and CI may run as root, where this test was skipped): there the refusal the OS gives is modelled."""
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        real = tempfile.mkstemp

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and os.fspath(dir) == os.fspath(locked):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    locked.chmod(0o500)
    try:
        subset = ["subset", "--dataset", "digits", "--ipc", "1", "--out", str(locked / "a" / "s.safetensors")]
        one_line(capsys, main(subset), f"cannot write into the folder of --out {locked / 'a'}: Permission denied")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_an_output_never_replaces_what_a_run_or_an_export_keeps_or_the_file_read(tmp_path, capsys, monkeypatch):
    """An output named as a run's own file, an export's, or the command's input was written over it, exit 0:
    `evaluate RUN --json RUN/distilled.safetensors` replaced the set it had just evaluated with JSON, `report
    RUN --out checkpoint.pt` the run's checkpoint with Markdown, `subset --out RUN/distilled.safetensors` the
    run's set with a random subset."""
    run = tmp_path / "run"
    assert main(distill_args(run, "--dataset", "digits")) == 0
    assert main(["export", str(run), "--to", str(tmp_path / "ex"), "--format", "pt", "--space", "frepo"]) == 0
    kept = {f: (run / f).read_bytes() for f in ("distilled.safetensors", "checkpoint.pt", "config.json")}
    capsys.readouterr()
    evaluate = ["evaluate", str(run), "--models", "1", "--steps", "2"]
    for name in kept:
        one_line(capsys, main([*evaluate, "--json", str(run / name)]), f"is a file of the run in {run}")
        one_line(capsys, main(["report", str(run), "--out", name]), f"is a file of the run in {run}")
    subset = ["subset", "--dataset", "digits", "--ipc", "1", "--out"]
    one_line(capsys, main([*subset, str(run / "best.safetensors")]), "is a file of the run")
    one_line(capsys, main([*subset, str(run / "distilled.safetensors")]), "is a file of the run")
    one_line(capsys, main([*evaluate, "--csv", str(tmp_path / "ex" / "export.json")]), "is a file of the export")
    copy = tmp_path / "set.safetensors"
    copy.write_bytes(kept["distilled.safetensors"])
    one_line(capsys, main(["evaluate", str(copy), "--json", str(copy)]), "is the file this command reads")
    one_line(capsys, main(["show", str(copy), "--out", str(copy)]), "is the file this command reads")
    other = tmp_path / "other.safetensors"  # another set, named by a slip: replaced with JSON, a grid, a table
    other.write_bytes(kept["distilled.safetensors"])
    for command in (["evaluate", str(copy), "--json"], ["evaluate", str(copy), "--csv"], ["show", str(copy), "--out"]):
        one_line(capsys, main([*command, str(other)]), "is a frepo set, which this would replace")
    mine = run / "mine.safetensors"  # the report's file is named inside the run's folder
    mine.write_bytes(kept["distilled.safetensors"])
    one_line(capsys, main(["report", str(run), "--out", mine.name]), "is a frepo set, which this would replace")
    assert other.read_bytes() == mine.read_bytes() == kept["distilled.safetensors"]
    mine.unlink()
    both = tmp_path / "same.out"
    one_line(capsys, main([*evaluate, "--json", str(both), "--csv", str(both)]), "the second would replace the first")
    assert {f: (run / f).read_bytes() for f in kept} == kept and not both.exists()
    # Other names beside a run stay open: its evaluations and report are written there by design.
    assert main([*evaluate, "--json", str(run / "eval.json")]) == 0 and (run / "eval.json").is_file()
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    for name in ("eval.json", "loss.png", "distilled.png"):  # what the report reads or draws
        one_line(capsys, main(["report", str(run), "--out", name]), "is one the report reads or draws")
    with pytest.raises(FrepoError, match="is a file of the run"):  # the table's JSON beside its --out
        reproduce(1, "tiny", out=run / "config.md", runs_dir=tmp_path / "runs")
    (tmp_path / "exp").mkdir()
    for name in ("continual-held.json", "continual.json"):
        (tmp_path / "exp" / name).write_text("{}")
    one_line(capsys, main([*evaluate, "--json", str(tmp_path / "exp" / "continual.json")]), "continual experiment")
    unit = tmp_path / "exp" / "order0" / "task0-frepo.json"  # a unit's record: its JSON was replaced as well
    unit.parent.mkdir()
    unit.write_text('{"accuracies": [50.0]}')
    one_line(capsys, main([*evaluate, "--json", str(unit)]), "is a record of the continual experiment in")
    with monkeypatch.context() as m:  # named from inside the unit's folder
        m.chdir(unit.parent)
        one_line(capsys, main([*evaluate, "--json", unit.name]), "is a record of the continual experiment in")
    assert unit.read_text() == '{"accuracies": [50.0]}'
    mine = unit.parent / "eval.json"  # a file of one's own there: one's own to replace
    mine.write_text("{}")
    assert main([*evaluate, "--json", str(mine)]) == 0 and mine.read_text() != "{}"
    one_line(capsys, main(["show", str(run), "--animate", "--out", str(run / "images" / "f.gif")]), "snapshots")


def test_a_grid_never_replaces_an_image_it_or_a_run_reads_nor_a_file_named_without_suffix(tmp_path, capsys):
    """`show DIR --out DIR/3/00003.png` replaced an image of the folder it drew (an imagefolder export's class
    folder: the export no longer read back), `--out RUN/images/step….png` a run's snapshot, and `--out
    exp/continual` was checked as that name and then written as continual.png, an experiment's plot."""
    run = tmp_path / "run"
    assert main(distill_args(run, "--dataset", "digits")) == 0
    export_dir = tmp_path / "ex"
    assert main(["export", str(run), "--to", str(export_dir), "--format", "imagefolder"]) == 0
    image = sorted(export_dir.glob("*/*.png"))[0]
    snapshot = sorted((run / "images").glob("step*.png"))[-1]
    kept = {p: p.read_bytes() for p in (image, snapshot)}
    capsys.readouterr()
    one_line(capsys, main(["show", str(export_dir), "--out", str(image)]), "is in a subfolder of")
    one_line(capsys, main(["show", str(run), "--out", str(image)]), f"is in a folder of the export in {export_dir}")
    link = tmp_path / "grid.png"  # a link is written through: what it points to is judged
    link.symlink_to(image)
    one_line(capsys, main(["show", str(run), "--out", str(link)]), f"is in a folder of the export in {export_dir}")
    link.unlink()
    dangling = tmp_path / "away.png"
    dangling.symlink_to(tmp_path / "nowhere" / "g.png")
    one_line(capsys, main(["show", str(run), "--out", str(dangling)]), "is a link into")
    for typed in ("", ".", "..", str(tmp_path), f"{tmp_path}/"):  # names no file (a traceback once suffixed)
        one_line(capsys, main(["show", str(run), "--out", typed]), "")
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    one_line(capsys, main(["show", str(run), "--out", str(tmp_path / "loop_a.png")]), "is a loop of links")
    from frepo.jobs.runs import check_not_kept

    with pytest.raises(FrepoError, match="is a loop of links"):  # the report's path, which no probe checks first
        check_not_kept(tmp_path / "loop_a.png", "--out")
    (run / "report.md").symlink_to(tmp_path / "kept_report.md")  # a report kept elsewhere: written through
    assert main(["report", str(run)]) == 0 and (tmp_path / "kept_report.md").is_file()
    one_line(capsys, main(["show", str(run), "--out", str(snapshot)]), f"is a snapshot of the run in {run}")
    (tmp_path / "exp").mkdir()
    for name in ("continual-held.json", "continual.png"):
        (tmp_path / "exp" / name).write_text("{}")
    one_line(capsys, main(["show", str(run), "--out", str(tmp_path / "exp" / "continual")]), "continual experiment")
    assert {p: p.read_bytes() for p in kept} == kept and (tmp_path / "exp" / "continual.png").read_text() == "{}"
    assert main(["show", str(export_dir), "--out", str(tmp_path / "grid")]) == 0  # outside it: drawn
    assert (tmp_path / "grid.png").is_file() and not (tmp_path / "nowhere").exists()
    # beside the class folders, a file of one's own: no image of the folder
    assert (
        main(["evaluate", str(export_dir), "--models", "1", "--steps", "2", "--json", str(export_dir / "e.json")]) == 0
    )


def test_outputs_never_replace_a_dataset_weights_or_a_distilled_set(tmp_path, capsys):
    """`subset --out model.safetensors` replaced a model's weights, and `subset --out` a copied distilled set,
    with a random draw; `evaluate --json data.npz` replaced the very dataset the set was made from (and
    `--json notes.txt` a text file) with JSON. Each is refused before the work; the outputs' own files are not."""
    from safetensors.torch import save_file

    subset = ["subset", "--dataset", "digits", "--ipc", "1", "--out"]
    weights = tmp_path / "model.safetensors"
    save_file({"conv.weight": torch.ones(2, 2)}, str(weights))
    before = weights.read_bytes()
    one_line(capsys, main([*subset, str(weights)]), "is a safetensors file other than a frepo set")
    run = tmp_path / "run"
    assert main(distill_args(run, "--dataset", "digits")) == 0
    distilled = tmp_path / "mine.safetensors"
    distilled.write_bytes((run / "distilled.safetensors").read_bytes())
    one_line(capsys, main([*subset, str(distilled)]), "holds a distilled set, which the subset would replace")
    assert weights.read_bytes() == before and distilled.read_bytes() == (run / "distilled.safetensors").read_bytes()
    drawn = tmp_path / "drawn.safetensors"
    assert main([*subset, str(drawn)]) == 0 and main([*subset, str(drawn), "--seed", "1"]) == 0  # a subset's own

    data = tmp_path / "data.npz"
    np.savez(data, x_train=np.zeros((2, 4, 4), np.uint8))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    evaluate = ["evaluate", str(drawn), "--models", "1", "--steps", "2"]
    kept = {path: path.read_bytes() for path in (data, notes)}
    capsys.readouterr()
    for flag, path in (("--json", data), ("--csv", data), ("--json", notes)):
        held = "JSON" if flag == "--json" else "text"
        one_line(capsys, main([*evaluate, flag, str(path)]), f"holds something other than {held}")
    assert {path: path.read_bytes() for path in kept} == kept
    for flag, name in (("--json", "e.json"), ("--csv", "e.csv")):  # an earlier output of its own: replaced
        assert main([*evaluate, flag, str(tmp_path / name)]) == 0 and main([*evaluate, flag, str(tmp_path / name)]) == 0


def test_what_is_no_set_is_named_so_before_asking_for_its_dataset(tmp_path, capsys):
    """A folder of runs was read as class folders, a dataset's .npz as an official FRePo file and a model's
    weights as a plain safetensors set: each asked for --dataset, and then failed on it with advice that did
    not fit."""
    from safetensors.torch import save_file

    runs = tmp_path / "runs"
    for name in ("b-run", "a-run"):  # as a run is from its start: its settings and its log
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text(json.dumps({"ipc": 1, "data": {"dataset": "digits"}}))
        (runs / name / "metrics.jsonl").write_text("")
    data = tmp_path / "data.npz"
    np.savez(data, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, int))
    weights = tmp_path / "model.safetensors"
    save_file({"conv.weight": torch.ones(2)}, str(weights))
    for command in ("evaluate", "show", "export"):
        more = ["--to", str(tmp_path / "ex"), "--format", "pt"] if command == "export" else []
        for path, said in (
            (runs, "holds frepo runs (a-run, b-run), not a set: pass one of them"),
            (data, f"is a dataset (x_train, y_train, ...), not a set: give it as --dataset {data}"),
            (weights, "is a safetensors file without a set's images and labels (it holds conv.weight: a model's"),
        ):
            for dataset in ([], ["--dataset", "digits"]):
                one_line(capsys, main([command, str(path), *dataset, *more]), said)
            if command == "evaluate":  # and before a validation split's refusal of another tool's set
                one_line(capsys, main([command, str(path), "--dataset", "digits", "--split", "val"]), said)


def test_show_draws_beside_a_set_over_its_own_grid_only(tmp_path, capsys):
    """`frepo show x.safetensors` wrote x.png beside the set over a user's own x.png, exit 0. It now replaces only
    a grid it drew (marked in the PNG), and a run's own distilled.png (an older run's carries no mark)."""
    from PIL import Image

    subset = tmp_path / "x.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(subset)]) == 0
    beside = tmp_path / "x.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(beside)  # the user's, not a grid
    own = beside.read_bytes()
    capsys.readouterr()
    one_line(capsys, main(["show", str(subset)]), "is no image grid frepo drew: name the grid with --out")
    assert beside.read_bytes() == own
    assert main(["show", str(subset), "--out", str(beside)]) == 0  # named: replaced, as cp does
    assert beside.read_bytes() != own
    assert main(["show", str(subset)]) == 0  # over the grid it drew
    run = tmp_path / "run"
    assert main(distill_args(run, "--dataset", "digits")) == 0
    Image.new("RGB", (4, 4)).save(run / "distilled.png")  # as an older frepo drew it: no mark
    assert main(["show", str(run)]) == 0
    with Image.open(run / "distilled.png") as grid:
        assert grid.size != (4, 4)
    (run / "mine.safetensors").write_bytes(subset.read_bytes())  # a set of one's own in a run's folder
    Image.new("RGB", (4, 4)).save(run / "mine.png")  # and one's own picture beside it
    capsys.readouterr()
    one_line(capsys, main(["show", str(run / "mine.safetensors")]), "is no image grid frepo drew")


def test_damage_inside_compressed_or_exported_files_is_one_line(tmp_path, capsys):
    """Tracebacks before: zlib.error from a damaged np.savez_compressed dataset, np.stack's ValueError from an
    imagefolder export with one PNG of another size, "Could not infer dtype of dict" from a pt export whose
    images.pt held a dict."""
    from PIL import Image

    from frepo.data import load_dataset

    raw = load_dataset("digits")
    npz = tmp_path / "compressed.npz"
    np.savez_compressed(npz, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test)
    damaged = bytearray(npz.read_bytes())
    damaged[3000:3002] = bytes(b ^ 0xFF for b in damaged[3000:3002])
    npz.write_bytes(bytes(damaged))
    capsys.readouterr()
    subset = ["subset", "--dataset", str(npz), "--ipc", "1", "--out", str(tmp_path / "s.safetensors")]
    one_line(capsys, main(subset), "is corrupt or truncated")
    assert main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(tmp_path / "set.safetensors")]) == 0
    for layout in ("imagefolder", "pt"):
        to = ["--to", str(tmp_path / layout), "--format", layout] + (["--space", "frepo"] if layout == "pt" else [])
        assert main(["export", str(tmp_path / "set.safetensors"), *to]) == 0
    png = sorted((tmp_path / "imagefolder").rglob("*.png"))[3]
    Image.new("L", (4, 4)).save(png)
    capsys.readouterr()
    evaluate = ["--models", "1", "--steps", "2"]
    name = png.relative_to(tmp_path / "imagefolder").as_posix()
    one_line(capsys, main(["evaluate", str(tmp_path / "imagefolder"), *evaluate]), f"{name} is 4×4, the manifest")
    torch.save({"a": 1}, tmp_path / "pt" / "images.pt")
    one_line(capsys, main(["evaluate", str(tmp_path / "pt"), *evaluate]), "expected an array of images, found a dict")


def test_records_edited_into_other_shapes_are_left_out_not_tracebacks(tmp_path, capsys):
    """Valid JSON of another shape in metrics.jsonl or an eval*.json was a traceback in `frepo report`
    (AttributeError, "Unknown format code") and at a resume (truncate_metrics)."""
    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    log = out / "metrics.jsonl"
    good = log.read_text().splitlines()
    strangers = ["[1, 2]", '{"step": "x", "loss": "nan"}', '{"step": 1, "val_acc": "abc"}', '{"step": true}']
    strangers += ['{"step": 1, "loss": null}', '{"step": 1, "changed": {"lr": 1}}']
    log.write_text("\n".join([good[0], *strangers, *good[1:]]) + "\n")
    (out / "eval.json").write_text(json.dumps({"accuracies": "x", "mean": "y"}))
    (out / "eval-2.json").write_text(json.dumps({"mean": 50.0, "std": "wide"}))
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "line(s) 2, 3, 4, 5, 6 ... are not records frepo writes; left out (kept in the file)" in err
    assert "Traceback" not in err
    assert "Unreadable evaluation files: eval-2.json, eval.json." in (out / "report.md").read_text()
    assert main(distill_args(out, "--steps", 4, "--resume-with-changes")) == 0
    lines = log.read_text().splitlines()
    assert lines[1:7] == strangers and json.loads(lines[-1])["step"] == 4  # a resume drops none of them


def test_a_folder_of_set_files_read_as_class_folders_names_the_file_to_pass(tmp_path, capsys):
    """An npz export without its export.json is a folder holding a set file: "holds no class folders" said
    nothing of it."""
    subset = tmp_path / "s.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "1", "--out", str(subset)]) == 0
    assert main(["export", str(subset), "--to", str(tmp_path / "ex"), "--format", "npz"]) == 0
    (tmp_path / "ex" / "export.json").unlink()
    (npz,) = (tmp_path / "ex").glob("*.npz")
    capsys.readouterr()
    evaluate = ["evaluate", str(tmp_path / "ex"), "--dataset", "digits", "--models", "1", "--steps", "2"]
    line = one_line(capsys, main(evaluate), "is no run, export or folder of class folders of images")
    assert line.endswith(f"to read a set file in it, pass the file ({npz})")
    # without --dataset too: it was asked for, as if the folder were another tool's set of class folders
    one_line(capsys, main(["show", str(tmp_path / "ex")]), f"pass the file ({npz})")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    line = one_line(capsys, main(["show", str(tmp_path / "notes")]), "notes is no run, export or folder of class")
    assert "--dataset" not in line


def test_torch_s_own_full_disk_errors_are_named(tmp_path, monkeypatch):
    """On a full tmpfs torch.save fails with "unexpected pos 99392 vs 99280" (seen here): a RuntimeError
    from a writer on a (nearly) full filesystem is named as what it is."""
    from frepo.base.atomic import write_failure

    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 99392 vs 99280")
    assert write_failure(error, tmp_path).startswith("The write failed (")  # plenty of space here

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    assert write_failure(error, tmp_path) == "No space left on device"
    assert write_failure(ValueError("not a disk problem"), tmp_path) is None
    # Through atomic_path, as a checkpoint is written: the partial file held what the disk lacked, and the
    # cause was judged after it was removed (space again: torch's words, as a real full tmpfs showed). Modelled:
    # the filesystem is full while a partial file is there.
    from frepo.base.atomic import WriteError, atomic_path

    monkeypatch.undo()
    real = os.statvfs

    class Counted:
        def __init__(self, path):
            full = any(p.name.startswith(".checkpoint.pt.") for p in tmp_path.iterdir())
            stats = real(path)
            self.f_frsize, self.f_bavail = stats.f_frsize, 10 if full else stats.f_bavail

    monkeypatch.setattr(os, "statvfs", Counted)
    with pytest.raises(WriteError, match=r"^No space left on device while writing .*checkpoint.pt"):
        with atomic_path(tmp_path / "checkpoint.pt") as partial:
            partial.write_bytes(b"x" * 1000)
            raise error
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_killed_write_s_temp_file_goes_at_the_next_write_of_its_file_once_an_hour_old(tmp_path):
    """A kill -9 in a write left its temp file beside a `subset --out` file or in a cache (a ZCA entry's,
    36-72 MB) for good; run and experiment folders alone were cleaned. A fresh one may be another process's
    write under way, and a user's file named like one, or another file's, is not this write's."""
    target = tmp_path / "set.safetensors"
    killed, fresh = tmp_path / ".set.safetensors.ab12cd34.tmp", tmp_path / ".set.safetensors.ef56gh78.tmp"
    others = [tmp_path / ".set.safetensors.bak.tmp", tmp_path / ".set.safetensors.x.ab12cd34.tmp"]
    for path in (killed, fresh, *others):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for path in (killed, *others):
        os.utime(path, (hours_ago, hours_ago))
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (target, fresh, *others))


def test_a_rewrite_goes_through_a_link_and_keeps_the_file_s_permissions(tmp_path):
    """An output named through a link (results kept elsewhere) replaced the link with a file and left its target
    stale; a file the user had made 0600 (private) became readable by all at its next write."""
    elsewhere = tmp_path / "kept" / "results.md"
    elsewhere.parent.mkdir()
    elsewhere.write_text("old")
    elsewhere.chmod(0o600)
    link = tmp_path / "results.md"
    link.symlink_to(elsewhere)
    atomic_write_text(link, "new")
    assert link.is_symlink() and elsewhere.read_text() == "new"
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    fresh = tmp_path / "fresh.md"
    previous = os.umask(0o022)
    try:
        atomic_write_text(fresh, "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # a new file: the umask's


def test_a_failed_log_write_leaves_no_partial_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    append_line(log, json.dumps({"step": 1}))
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(FrepoError, match="No space left on device while writing"):
        append_line(log, json.dumps({"step": 2, "loss": 0.5}))
    monkeypatch.undo()
    assert log.read_text() == '{"step": 1}\n'


# ---- 3. kill -9 at a checkpoint-and-validation step ------------------------------------------------
def test_kill_9_after_a_checkpoint_and_validation_step_resumes_to_the_same_outputs(tmp_path):
    args = distill_args(tmp_path / "X", "--steps", 12, "--checkpoint-every", 4, "--eval-every", 4)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

    def cli(out, kill_at=None):
        run_args = [str(out) if a == str(tmp_path / "X") else a for a in args]
        driver = textwrap.dedent(f"""
            import os, signal, sys
            import frepo.jobs.runs as runs
            save = runs.RunDir.save_checkpoint
            def save_then_die(self, state):
                save(self, state)
                if state["step"] == {kill_at!r}:
                    os.kill(os.getpid(), signal.SIGKILL)  # right after the step's validation and checkpoint
            runs.RunDir.save_checkpoint = save_then_die
            from frepo.cli import main
            sys.exit(main({run_args!r}))
        """)
        return subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=env, timeout=300)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli(straight).returncode == 0
    assert cli(killed, kill_at=4).returncode == -signal.SIGKILL
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = cli(killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 4 of 12 (checkpoint of " in resumed.stderr
    for name in ("best.safetensors", "distilled.safetensors"):
        a, b = load_distilled(straight / name), load_distilled(killed / name)
        assert torch.equal(a.images, b.images) and a.meta["step"] == b.meta["step"], name
    assert metrics(straight) == metrics(killed)


def test_a_stop_asked_before_interruptible_work_begins_stops_it_before_it_begins():
    """A Ctrl-C in the step's training, before its validation: the validation does not start (it ran to its end,
    minutes, before the step's checkpoint)."""
    from frepo.base.signals import StopRequest

    stop, ran = StopRequest(), []
    with stop.interruptible():
        ran.append(stop.now)
    assert ran == [True] and not stop.now
    stop.set()
    with pytest.raises(KeyboardInterrupt), stop.interruptible():
        ran.append("begun")
    assert ran == [True] and not stop.now


def test_a_stop_in_a_validation_checkpoints_at_once_and_the_resume_redoes_it(tmp_path, capsys, monkeypatch):
    """SIGTERM during a mid-run validation waited for it to end (minutes at a real budget, where a scheduler's
    SIGKILL follows in 30 s) and lost the steps since the last checkpoint. It now stops the validation at once,
    checkpoints the step with the validation pending, and the same command runs it again first: the outputs
    are the uninterrupted run's, through a later crash before the next checkpoint too."""
    import signal

    from frepo.jobs import actions
    from frepo.method.trainer import FRePoTrainer

    flags = ("--steps", 12, "--checkpoint-every", 4, "--eval-every", 3)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(distill_args(straight, *flags)) == 0
    real, calls = actions.evaluate_set, []

    def stopped_in_the_second(*args, **kwargs):  # the validation of step 6, between two checkpoints
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
            raise AssertionError("the validation went on after the stop request")
        return real(*args, **kwargs)

    monkeypatch.setattr(actions, "evaluate_set", stopped_in_the_second)
    capsys.readouterr()
    assert main(distill_args(cut, *flags)) == 130
    assert "stopped in step 6's validation; checkpoint written to" in capsys.readouterr().err
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and state["pending"] == "Validation"
    assert [r["step"] for r in metrics(cut) if "val_acc" in r] == [3]
    monkeypatch.setattr(actions, "evaluate_set", real)
    # The resume validates step 6, then crashes in step 8's training (no stop, no checkpoint: a power cut)...
    original, done = FRePoTrainer.step, [0]

    def crash_in_the_second_step(self):
        done[0] += 1
        if done[0] == 2:
            raise SystemExit(9)
        return original(self)

    monkeypatch.setattr(FRePoTrainer, "step", crash_in_the_second_step)
    with pytest.raises(SystemExit):
        main(distill_args(cut, *flags))
    assert [r["step"] for r in metrics(cut) if "val_acc" in r] == [3, 6]  # logged before the crash
    monkeypatch.setattr(FRePoTrainer, "step", original)
    # ... and the next resume, from the same checkpoint, validates step 6 once more, in place of that record.
    assert main(distill_args(cut, *flags)) == 0
    for name in ("best.safetensors", "distilled.safetensors"):
        a, b = load_distilled(straight / name), load_distilled(cut / name)
        assert torch.equal(a.images, b.images) and a.meta["step"] == b.meta["step"], name
    assert metrics(straight) == metrics(cut)


# ---- 4. files checked for what they hold -----------------------------------------------------------
def _good_set() -> DistilledSet:
    from frepo.data.preprocess import Preprocessing

    meta = {"kind": "distilled", "dataset": "digits", "classes": [str(i) for i in range(10)], "config": {}}
    pre = Preprocessing("standard", torch.full((1,), 0.3), torch.full((1,), 0.4))
    return DistilledSet(torch.randn(10, 1, 8, 8), torch.randn(10, 10), pre, meta)


def _resign(path, edit_meta=None, edit_tensors=None):
    """Rewrite a set file with changes and a freshly computed checksum: what a hostile file can do."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["frepo"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    meta["checksum"] = _checksum(tensors, meta)
    save_file(tensors, str(path), metadata={"frepo": json.dumps(meta)})


@pytest.mark.parametrize(
    "edit_meta, edit_tensors, fragment",
    [
        (None, lambda t: t["images"].view(-1)[3].fill_(float("nan")), "NaN or infinite"),
        (None, lambda t: t.update(images=torch.zeros(10, 1, 8, 8, dtype=torch.int32)), "images are torch.int32"),
        (None, lambda t: t.update(labels=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 12])), "class ids must lie in 0..9"),
        (None, lambda t: t["labels"].view(-1)[0].fill_(float("inf")), "labels contain NaN"),
        (None, lambda t: t.update(pre_std=torch.zeros(1)), "std must be positive"),
        (None, lambda t: t.update(pre_mean=torch.zeros(3)), "pre_mean"),
        (lambda m: m.pop("classes"), None, "lacks 'classes'"),
        (lambda m: m.update(classes="0123456789"), None, "'classes' is"),
        (lambda m: m.update(num_images="10"), None, "'num_images' is"),
        (lambda m: m.update(preprocessing={"kind": "whiten"}), None, "preprocessing {'kind': 'whiten'} is not one of"),
        (lambda m: m.update(ipc=-1), None, "'ipc' is -1; it must be at least 1"),
        (lambda m: m.update(step=-3), None, "'step' is -3; it must be at least 0"),
        (lambda m: m.update(config={"data": 5}), None, "'config' holds the data settings 5, not a JSON object"),
        (
            lambda m: m.update(num_images=0),
            lambda t: t.update(images=torch.zeros(0, 1, 8, 8), labels=torch.zeros(0, 10)),
            "at least one image",
        ),
    ],
)
def test_resigned_files_are_checked_for_what_they_hold(tmp_path, capsys, edit_meta, edit_tensors, fragment):
    path = save_distilled(_good_set(), tmp_path / "set.safetensors")
    load_distilled(path)
    _resign(path, edit_meta, edit_tensors)
    with pytest.raises(FrepoError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        load_distilled(path)
    one_line(capsys, main(["evaluate", str(path), "--models", "1", "--steps", "1"]), fragment)


def test_transform_takes_what_it_documents_or_a_declared_range():
    ds = _good_set()
    raw = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
    expected = ds.transform(raw)
    torch.testing.assert_close(ds.transform(raw / 255.0, value_range=(0, 1)), expected)
    torch.testing.assert_close(ds.transform(raw.astype(np.float32), value_range=(0, 255)), expected)
    for bad, kwargs, fragment in [
        (raw / 255.0, {}, "need their range declared"),
        (raw.astype(np.float32), {"value_range": (0, 1)}, "outside the declared"),
        (raw.transpose(0, 3, 1, 2), {}, "N×H×W×C"),
        (raw.astype(np.int64), {}, "uint8 images"),
        # [0, 1] pixels declared as 0..255 were divided by 255 again: black images, chance accuracy
        (raw / 255.0, {"value_range": (0, 255)}, r"pixels in \[0, 1\], not 0..255; pass value_range=\(0, 1\)"),
    ]:
        with pytest.raises(FrepoError, match=fragment):
            ds.transform(bad, **kwargs)
    # The preprocessing itself (`ds.preprocessing`, a public attribute) took floats and channels-first images
    # too: float [0, 1] pixels divided by 255 again, and "shape '[1, 8, 1, 1]' is invalid".
    torch.testing.assert_close(ds.preprocessing(raw), expected)
    for bad, fragment in [
        (raw / 255.0, "takes uint8 images \\(0..255\\), got torch.float64; for float images use the set's transform"),
        (raw.transpose(0, 3, 1, 2), "N×H×W×C with C = 1 \\(channels last\\), got shape \\(4, 1, 8, 8\\)"),
    ]:
        with pytest.raises(FrepoError, match=fragment):
            ds.preprocessing(bad)


def test_transform_warns_of_images_far_from_the_preprocessing_s_statistics():
    """scikit-learn's digits rebuilt by hand (levels 0..16, as uint8) passed every check of shape and range, and
    scored chance; frepo's digits are those levels scaled to 0..255. The split itself, whole or one class at a
    time (each class's mean is within a std of the split's), and a handful of images are not warned of."""
    import warnings

    from sklearn.datasets import load_digits

    import frepo
    from frepo.data import load_dataset

    raw = load_dataset("digits")
    ds = frepo.make_subset("digits", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.transform(raw.x_test)
        ds.transform(raw.x_test[:8] // 16)  # too few images to say
        for c in range(10):
            ds.transform(raw.x_test[raw.y_test == c])
    by_hand = load_digits().images.astype(np.uint8)[..., None]
    with pytest.warns(
        UserWarning, match=r"these images' pixels \(mean 0.0\d\d, std 0.0\d\d per channel.*images of digits"
    ):
        ds.transform(by_hand)
    with pytest.warns(UserWarning, match="far from those of the data"):  # 0..16 declared as 0..255 floats
        ds.transform(by_hand.astype(np.float32), value_range=(0, 255))


# ---- 5. leftovers and duplicates -------------------------------------------------------------------
def test_leftovers_go_and_a_failed_start_leaves_the_directory_as_found(tmp_path, capsys):
    out = tmp_path / "run"
    one_line(capsys, main(distill_args(out, "--ipc", 400)), "fewer than ipc=400")
    assert not out.exists()  # nothing left behind: the corrected command may use the directory
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line(capsys, main(distill_args(empty, "--dataset", "nope")), "unknown dataset")
    assert list(empty.iterdir()) == []
    cut = tmp_path / "cut"  # a kill -9 in the first write of config.json: the same command starts the run
    cut.mkdir()
    (cut / ".config.json.q8w2e1_z.tmp").write_text('{"data": {"data')
    assert main(distill_args(cut)) == 0
    assert not list(cut.glob(".*.tmp")) and (cut / "distilled.safetensors").is_file()
    assert main(distill_args(out)) == 0
    (out / ".checkpoint.pt.abc123de.tmp").write_bytes(b"x" * 1000)  # what a killed checkpoint write leaves
    (out / "checkpoint.pt").unlink()  # pruned: the finished set is not distilled again over itself
    kept = (out / "distilled.safetensors").read_bytes()
    capsys.readouterr()
    assert main(distill_args(out)) == 0  # the same command: already complete (reproduce, continual reopen runs)
    assert "is already complete (4 steps; its checkpoint is gone)" in capsys.readouterr().err
    extended = distill_args(out, "--steps", 6, "--resume-with-changes")  # further, it cannot go
    one_line(capsys, main(extended), "holds a finished run's set (distilled.safetensors) but no checkpoint")
    assert (out / "distilled.safetensors").read_bytes() == kept
    (out / "distilled.safetensors").unlink()  # restart from scratch in the same directory
    assert main(distill_args(out)) == 0
    assert not list(out.glob(".*.tmp"))
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # no duplicates from the first attempt


def test_after_a_nan_stop_a_lower_lr_continues_with_resume_with_changes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    nan_at_update(monkeypatch, 3)
    line = one_line(capsys, main(distill_args(out, "--steps", 6)), "NaN")
    assert "--resume-with-changes" in line
    monkeypatch.undo()
    one_line(capsys, main(distill_args(out, "--steps", 6, "--lr", "0.001")), "--resume-with-changes")
    assert main(distill_args(out, "--steps", 6, "--lr", "0.001", "--resume-with-changes")) == 0
    assert "continuing with changed settings: lr 0.01 -> 0.001" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["lr"] == 0.001
    assert any(r.get("changed") == {"lr": [0.01, 0.001]} for r in metrics(out))
    one_line(
        capsys, main(distill_args(out, "--steps", 6, "--lr", "0.001", "--seed", 3, "--resume-with-changes")), "seed"
    )
    # On the finished run, changes that would run no step are refused before they are recorded: config.json took
    # them (the set made at 0.001 said 0.0005), and the command that made it was then refused
    record = (out / "config.json").read_bytes()
    later = distill_args(out, "--steps", 6, "--lr", "0.0005", "--resume-with-changes")
    one_line(capsys, main(later), "is complete at step 6: the changed settings (lr 0.001 -> 0.0005) would run no step")
    assert (out / "config.json").read_bytes() == record
    assert main(distill_args(out, "--steps", 6, "--lr", "0.001")) == 0  # the command that made it


def test_a_nan_stop_before_any_checkpoint_says_there_is_none(tmp_path, capsys, monkeypatch):
    """It said "the last good checkpoint is kept" with none on disk, and gave no advice, when the checkpoint's
    own check found the set non-finite first."""
    nan_at_update(monkeypatch)
    out = tmp_path / "run"
    line = one_line(capsys, main(distill_args(out, "--log-every", 4)), "the synthetic set became NaN/inf at step 2")
    assert "no checkpoint yet. Try a lower --lr (nothing to continue: the same --out starts afresh with it" in line
    assert not (out / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert main(distill_args(out, "--log-every", 4, "--lr", "0.001")) == 0  # nothing to continue: a fresh start
    assert "stopped before its first checkpoint; starting afresh" in capsys.readouterr().err
    nan_at_update(monkeypatch)
    line = one_line(capsys, main(distill_args(tmp_path / "again")), "the loss became NaN/inf at step 1")
    assert "no checkpoint yet" in line
    # A run that validated a set (best.safetensors) before its NaN, and has no checkpoint: a lower --lr with
    # --resume-with-changes said "continuing with changed settings", started afresh and removed that set
    validated = tmp_path / "validated"
    monkeypatch.undo()
    nan_at_update(monkeypatch, 3)
    args = distill_args(validated, "--steps", 6, "--eval-every", 2, "--checkpoint-every", 5)
    one_line(capsys, main(args), "the loss became NaN/inf at step 3")
    monkeypatch.undo()
    best = (validated / "best.safetensors").read_bytes()
    for more in ([], ["--resume-with-changes"]):
        one_line(capsys, main([*args, "--lr", "0.001", *more]), "stopped before its first checkpoint, so there is")
    assert (validated / "best.safetensors").read_bytes() == best


def test_a_nan_met_by_a_validation_is_the_run_s_nan_stop(tmp_path, capsys, monkeypatch):
    """A set gone NaN between log steps reached a validation first: "not saved to best.safetensors: the images
    contain NaN", no step, no checkpoint status, no advice (or, no new best, a chance accuracy logged and counted
    by ChanceWatch). The validation stops the run as the checkpoint does."""
    nan_at_update(monkeypatch, 3)
    out = tmp_path / "run"
    args = distill_args(out, "--steps", 6, "--log-every", 6, "--eval-every", 3, "--checkpoint-every", 2)
    line = one_line(capsys, main(args), "the synthetic set became NaN/inf at step 3; stopped, and the last good")
    assert "checkpoint.pt, step 2) is kept" in line and "--resume-with-changes" in line
    logged = metrics(out) if (out / "metrics.jsonl").is_file() else []
    assert (out / "checkpoint.pt").is_file() and not any("val_acc" in r for r in logged)  # no NaN set's accuracy


def test_ctrl_c_stops_a_sweep_that_goes_on_past_bad_settings(tmp_path, monkeypatch):
    """`frepo.Interrupted` was a FrepoError: a script's sweep, `except frepo.FrepoError` around each run so that
    bad settings skip to the next, caught Ctrl-C too, and went on with the next run."""
    import frepo
    from frepo.method.trainer import FRePoTrainer

    original = FRePoTrainer.step

    def ctrl_c(self):
        signal.raise_signal(signal.SIGINT)
        return original(self)

    monkeypatch.setattr(FRePoTrainer, "step", ctrl_c)
    started = []
    with pytest.raises(KeyboardInterrupt) as stopped:
        for lr in (0.01, 0.02):
            started.append(lr)
            try:
                frepo.distill(dataset="digits", ipc=1, steps=4, eval_steps=1, lr=lr, out=tmp_path / f"lr{lr}")
            except frepo.FrepoError:
                continue
    assert started == [0.01] and isinstance(stopped.value, frepo.Interrupted)
    assert "checkpoint written to" in str(stopped.value)


def test_out_of_memory_is_one_line_and_a_smaller_batch_starts_afresh(tmp_path, capsys, monkeypatch):
    """A batch or preset too large for the device was torch's allocator traceback, and the corrected command was
    then refused as a different config, though the run had no checkpoint to keep."""
    from frepo.method.trainer import FRePoTrainer

    out, lines = tmp_path / "run", []
    original = FRePoTrainer.step
    for error in (
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 24.00 GiB. GPU 0 has a total capacity "
                                    "of 79 GiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:121] . DefaultCPUAllocator: can't allocate memory: you tried to "
                     "allocate 25600000000 bytes. Error code 12 (Cannot allocate memory)"),
    ):  # fmt: skip

        def fails(self, error=error):
            raise error

        monkeypatch.setattr(FRePoTrainer, "step", fails)
        lines.append(one_line(capsys, main(distill_args(out)), "out of memory"))
        assert "--batch-size" in lines[-1] and not (out / "checkpoint.pt").exists()
    assert "out of memory (CUDA out of memory. Tried to allocate 24.00 GiB)." in lines[0]
    assert "out of memory (can't allocate memory: you tried to allocate 25600000000 bytes)." in lines[1]
    monkeypatch.setattr(FRePoTrainer, "step", original)
    assert main(distill_args(out, "--batch-size", 32)) == 0
    assert "stopped before its first checkpoint; starting afresh" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["batch_size"] == 32
    # A run that validated a set before it stopped has something to lose: other settings are refused as before.
    validated, calls = tmp_path / "validated", {"n": 0}

    def fails_at_the_third(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self)

    monkeypatch.setattr(FRePoTrainer, "step", fails_at_the_third)
    schedule = ["--eval-every", "2", "--checkpoint-every", "100"]
    one_line(capsys, main(distill_args(validated, *schedule)), "out of memory")
    assert (validated / "best.safetensors").is_file() and not (validated / "checkpoint.pt").exists()
    monkeypatch.setattr(FRePoTrainer, "step", original)
    one_line(capsys, main(distill_args(validated, *schedule, "--batch-size", 32)), "different config")
    assert (validated / "best.safetensors").is_file()
    monkeypatch.setattr(FRePoTrainer, "step", lambda self: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other error stays a traceback, to be reported
        main(distill_args(tmp_path / "other"))


# ---- 6. checkpoints of the wrong structure ---------------------------------------------------------
@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda s: s.pop("sampler"), "lacks sampler"),
        (lambda s: s["pool"].update(models=s["pool"]["models"][:2]), "holds 2 pool models, this run 3"),
        (lambda s: s.update(step=99), "at step 99, past this run's --steps 2; give --steps 99 or more"),
        (lambda s: s.update(step=-1), "step -1 is not within this run's 0..2"),
        (lambda s: s["synthetic"].update(images=torch.zeros(3, 1, 8, 8)), "synthetic images"),
        (lambda s: s.clear(), "lacks step"),
    ],
)
def test_wrong_checkpoints_are_refused(tmp_path, capsys, edit, fragment):
    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, out / "checkpoint.pt")
    one_line(capsys, main(distill_args(out, "--steps", 2)), fragment)


def test_a_checkpoint_without_its_config_is_named_so(tmp_path, capsys):
    """It said the folder "holds no frepo run" beside the run's checkpoint."""
    out = tmp_path / "run"
    assert main(distill_args(out, "--steps", 2)) == 0
    (out / "config.json").unlink()
    capsys.readouterr()
    one_line(capsys, main(distill_args(out, "--steps", 2)), "holds a checkpoint but no config.json")
    assert (out / "checkpoint.pt").is_file()


# ---- 7. flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--online-lr", "nan", "online_lr must be a finite number"),
        ("--online-lr", "-1", "online_lr must be a finite number > 0, got -1"),
        ("--lr", "nan", "lr must be a finite number > 0, got nan"),
        ("--lr", "0", "lr must be a finite number > 0, got 0"),  # one bound for NaN and 0 (">= 0.0", then "> 0")
        ("--lr", "inf", "lr must be a finite number"),
        ("--krr-reg", "nan", "krr_reg must be a finite number"),
        ("--krr-reg", "inf", "krr_reg must be a finite number"),
        ("--zca-reg", "nan", "zca_reg must be a finite number"),
        ("--out", "", "--out must name a run directory"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, flag, value, fragment):
    args = ["distill", "--ipc", "1", "--steps", "2", "--out", str(tmp_path / "run"), *FAST, flag, value]
    one_line(capsys, main(args), fragment)
    assert not (tmp_path / "run").exists()


def test_flags_a_command_would_not_read_are_refused(tmp_path, capsys):
    """`subset --method random --feature-steps 50` and `show --fps 3` without --animate ignored the flag."""
    out = tmp_path / "s.safetensors"
    subset = ["subset", "--dataset", "digits", "--ipc", "1", "--out", str(out)]
    one_line(capsys, main([*subset, "--feature-width", "8"]), "(--feature-width): read by the herding and kcenter")
    with pytest.raises(FrepoError, match=r"feature_steps \(--feature-steps\): read by the herding and kcenter"):
        make_subset("digits", 1, feature_steps=0)  # the Python API ignored it too
    # the data's options as keywords, as distill takes them (a TypeError before), and a misspelt one named
    keywords = make_subset(dataset="digits", ipc=1, val_size=0, preprocess="standard")
    config = DataConfig(dataset="digits", val_size=0, preprocess="standard")
    assert torch.equal(keywords.images, make_subset(config, 1).images)
    with pytest.raises(FrepoError, match=r"make_subset takes no option val_sise \(did you mean val_size\?\); "):
        make_subset("digits", 1, val_sise=0)
    with pytest.raises(FrepoError, match=r"no option feature_step \(did you mean feature_steps\?\)"):
        make_subset("digits", 1, "herding", feature_step=3)
    with pytest.raises(FrepoError, match="make_subset needs ipc"):
        make_subset(dataset="digits")
    assert main(subset) == 0
    one_line(capsys, main(["show", str(out), "--fps", "3"]), "--fps is the frame rate of --animate")
    chunked = distill_args(tmp_path / "run", "--dataset", "digits", "--train-chunk-size", "300")  # the whole split
    one_line(capsys, main(chunked), "--train-chunk-size is the size of --train-chunk's block; give --train-chunk")


def test_a_subset_refuses_a_device_it_cannot_use_whatever_its_method(tmp_path, capsys):
    """The random method ignored --device: --device bogus (or cuda without CUDA) made a subset, exit 0."""
    out = tmp_path / "s.safetensors"
    for device in ("bogus", *(["cuda"] if not torch.cuda.is_available() else [])):
        subset = ["subset", "--dataset", "digits", "--ipc", "1", "--out", str(out), "--device", device]
        one_line(capsys, main(subset), f"device {device!r}")
    assert not out.exists()


# ---- 8 and 9. threads recorded; outputs honour the umask -------------------------------------------
def test_environment_is_recorded_and_a_different_thread_count_warns(tmp_path, capsys):
    out = tmp_path / "run"
    previous = os.umask(0o022)
    try:
        assert main(distill_args(out, "--steps", 2)) == 0
    finally:
        os.umask(previous)
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["threads"] == torch.get_num_threads()
    assert config["environment"]["torch"] == torch.__version__
    assert load_distilled(out / "distilled.safetensors").meta["environment"]["threads"] == torch.get_num_threads()
    for name in ("config.json", "checkpoint.pt", "distilled.safetensors", "metrics.jsonl", "best.safetensors"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert any((out / "images").iterdir()) and all(
        stat.S_IMODE(p.stat().st_mode) == 0o644 for p in (out / "images").iterdir()
    )
    assert config["environment"]["device"] == "cpu" and "gpu" not in config["environment"]
    config["environment"]["threads"] = 99
    config["environment"]["device"] = "cuda"  # begun on a GPU, resumed on this CPU: said too
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(distill_args(out, "--steps", 4, "--resume-with-changes")) == 0
    err = capsys.readouterr().err
    assert "resuming under a different environment (device cuda -> cpu, threads 99 -> " in err
    # Settings that resume as they are (ALWAYS_RESUMABLE) but round otherwise on a GPU are said too; --compile
    # off for auto runs torch's own kernels, as before: nothing to say.
    assert main(distill_args(out, "--steps", 5, "--resume-with-changes", "--compile", "off")) == 0
    assert "bit for bit" not in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    config["environment"]["device"] = "cuda"  # begun on a GPU, where --deterministic chose its kernels
    (out / "config.json").write_text(json.dumps(config))
    assert main(distill_args(out, "--steps", 6, "--resume-with-changes", "--no-deterministic")) == 0
    assert "resumes with deterministic True -> False: the rest of the run sums in another order" in (
        capsys.readouterr().err
    )
    # On a CPU, before and now, --deterministic changes nothing: not said
    assert main(distill_args(out, "--steps", 7, "--resume-with-changes", "--deterministic")) == 0
    assert "resumes with" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "before, after, env, said",
    [
        ({"compile": "auto"}, {"compile": "on"}, "cpu", "compile auto -> on"),  # torch's kernels, then inductor's
        ({"compile": "cudagraphs"}, {"compile": "off"}, "cuda", "compile cudagraphs -> off"),
        ({"compile": "off"}, {"compile": "graph"}, "cuda", None),  # graph replays torch's own kernels
        ({"compile": "on"}, {"compile": "cudagraphs"}, "cuda", None),  # inductor's both
        ({"deterministic": True}, {"deterministic": False}, "cuda", "deterministic True -> False"),
        ({"deterministic": True}, {"deterministic": False, "device": "cpu"}, "cpu", None),  # a CPU's kernels
    ],
)
def test_a_resume_says_which_changes_round_otherwise(tmp_path, before, after, env, said):
    import warnings

    from frepo.jobs.runs import warn_of_other_rounding

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_of_other_rounding(tmp_path, before, {**before, **after}, {"device": env}, torch.device("cpu"))
    messages = [str(w.message) for w in caught]
    if said is None:
        assert messages == []
    else:
        assert len(messages) == 1 and said in messages[0], messages


# ---- 10. divergence without NaN ----------------------------------------------------------------------
# At --lr 0.5 the kernel loss jumps about chaotically (0.68 at step 1; 26, 51, 254, 298 by step 20 on one CPU):
# where it first crosses the run's 1000x depends on the CPU's summation order. 30x is crossed many times over.
@pytest.fixture
def divergence_at_30x(monkeypatch):
    from frepo.jobs import actions

    monkeypatch.setattr(actions, "DIVERGENCE_FACTOR", 30.0)


def test_divergence_without_nan_stops_the_run(tmp_path, capsys, divergence_at_30x):
    line = one_line(capsys, main(distill_args(tmp_path / "run", "--steps", 60, "--lr", "0.5")), "diverged")
    assert "kernel loss grew" in line and "lower --lr" in line


def test_a_diverged_run_resumed_with_a_lower_lr_is_judged_afresh(tmp_path, capsys, divergence_at_30x):
    """The watch compared the resumed run with the first run's loss, so the advised resume with a lower
    --lr diverged again at once, for ever. With changed settings it judges from the resumed loss on."""
    out = tmp_path / "run"
    args = ("--steps", 60, "--lr", "0.5", "--checkpoint-every", 1, "--log-every", 1)  # a checkpoint to resume
    stopped = one_line(capsys, main(distill_args(out, *args)), "diverged")
    assert "resume-with-changes" in stopped and "none yet" not in stopped
    one_line(capsys, main(distill_args(out, *args)), "diverged")  # unchanged: the same verdict
    assert main(distill_args(out, *args[:2], "--lr", "1e-5", *args[4:], "--resume-with-changes")) == 0
    assert load_distilled(out / "distilled.safetensors").meta["step"] == 60


def test_validation_at_chance_stops_the_run(tmp_path, capsys, monkeypatch):
    from frepo.jobs.actions import Validation

    monkeypatch.setattr(Validation, "accuracy", lambda self, now, progress=False: 10.0)  # digits: chance is 10%
    line = one_line(capsys, main(distill_args(tmp_path / "run", "--steps", 8, "--eval-every", 1)), "at chance")
    assert "step 3" in line


# ---- 12. what a run says ------------------------------------------------------------------------------
def test_nothing_is_printed_before_the_arguments_are_validated(tmp_path, capsys):
    only_line(capsys, main(distill_args(tmp_path / "run", "--ipc", 0)), "ipc must be >= 1")
    only_line(capsys, main(distill_args(tmp_path / "run", "--norm", "layer")), "norm must be one of")
    only_line(capsys, main(distill_args(tmp_path / "run", "--lr", "nan")), "lr must be a finite number")
    only_line(capsys, main(distill_args(tmp_path / "run", "--dataset", "nope")), "unknown dataset")
    line = one_line(capsys, main(distill_args(tmp_path / "run", "--val-size", 1790)), "leaves no training images")
    assert "digits has 1257" in line


@pytest.mark.parametrize("damage", [b"[]", b'{"lr": ', b'{"data": 3}', b"\xff\xfe{"])  # the last: no UTF-8
def test_a_damaged_run_config_is_one_line_and_kept(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert main(distill_args(out)) == 0
    (out / "config.json").write_bytes(damage)
    capsys.readouterr()
    one_line(capsys, main(distill_args(out)), "config.json is unreadable")
    assert (out / "config.json").read_bytes() == damage


def test_a_run_made_before_a_setting_existed_resumes(tmp_path):
    """config.json of an older frepo lacks settings added since (here `stream`, `pool_mode`): the run
    behaved as their defaults do, so the same command still resumes it; a non-default value is refused."""
    from frepo.base.fields import from_dict
    from frepo.config import DistillConfig

    out = tmp_path / "run"
    assert main(distill_args(out)) == 0
    config = json.loads((out / "config.json").read_text())
    config.pop("environment", None)
    same = from_dict(DistillConfig, config)  # the run's own settings, as today's frepo reads them
    del config["data"]["stream"], config["pool"]["pool_mode"]
    (out / "config.json").write_text(json.dumps(config))
    claim = RunDir(out).check(same)  # no refusal
    assert claim.resuming and not claim.changes
    same.data.stream = "on"
    with pytest.raises(FrepoError, match="stream"):
        RunDir(out).check(same)


def test_a_second_ctrl_c_during_a_write_is_an_interruption_not_a_disk_error(tmp_path):
    """The second Ctrl-C while the checkpoint was written raised into torch.save, whose "unexpected pos" error
    was reported as a failed write (exit 2, "no checkpoint yet"); it is an interruption (exit 130), and the file's
    previous version stays."""
    import time

    from frepo.base.atomic import atomic_path
    from frepo.base.errors import Interrupted
    from frepo.base.signals import stop_on_signal

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous")
    with stop_on_signal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the first: stop at the next safe point
        assert stop.wait(5)
        for converted in (False, True):  # raised as is, or turned into the writer's own error, as torch does
            with pytest.raises(Interrupted, match="aborted by a second Ctrl-C while writing .*checkpoint.pt"):
                with atomic_path(target) as tmp:
                    tmp.write_bytes(b"half")
                    try:
                        os.kill(os.getpid(), signal.SIGINT)
                        time.sleep(5)  # the handler raises before this ends
                    except KeyboardInterrupt:
                        if converted:
                            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from None
                        raise
    assert target.read_bytes() == b"previous" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:  # outside the loop's handler: a write error is a write error again
        tmp.write_bytes(b"next")
    assert target.read_bytes() == b"next"


def test_an_option_of_choices_given_a_flag_names_its_choices():
    """`EvalConfig.build(together=True)` said "together must be a string", naming none of auto, on, off, streams."""
    from frepo.eval import EvalConfig

    with pytest.raises(FrepoError, match="unknown together True: together must be one of auto, on, off, streams"):
        EvalConfig.build(together=True)
    with pytest.raises(FrepoError, match="together must be one of"):  # compared with the choices, it raised
        EvalConfig.build(together=np.array([1, 2]))
