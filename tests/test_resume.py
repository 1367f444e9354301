"""An interrupted run, resumed with the same command, equals the uninterrupted run bit for bit."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ctrl_c_after_steps

from frepo import presets
from frepo.base.errors import Interrupted
from frepo.io.artifact import load_distilled, save_distilled
from frepo.jobs.distill import distill

OVERRIDES = dict(
    steps=8,
    width=8,
    num_models=3,
    max_online_updates=4,
    batch_size=64,
    eval_steps=20,
    checkpoint_every=3,
    log_every=1,
    eval_every=4,
)
TIMING = {"steps_per_s", "elapsed_s", "peak_mem_mb"}


def _config():
    return presets.resolve("digits", 2, overrides=OVERRIDES)


def _records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _metrics(path):
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _assert_same_run(a, b):
    sa, sb = load_distilled(a / "distilled.safetensors"), load_distilled(b / "distilled.safetensors")
    assert torch.equal(sa.images, sb.images) and torch.equal(sa.labels, sb.labels)
    bs = load_distilled(a / "best.safetensors"), load_distilled(b / "best.safetensors")
    assert torch.equal(bs[0].images, bs[1].images)
    assert _metrics(a) == _metrics(b)
    ca, cb = torch.load(a / "checkpoint.pt", weights_only=True), torch.load(b / "checkpoint.pt", weights_only=True)
    # the whole state a further resume starts from: the set, LAMB, every pool model and its optimiser, the
    # sampler, the best (not the first pool model alone); the clock aside
    _assert_same_state({k: v for k, v in ca.items() if k != "elapsed"}, {k: v for k, v in cb.items() if k != "elapsed"})


def _assert_same_state(a, b, where="checkpoint"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    distill(_config(), out, progress=False)
    return out


def test_resume_after_sigint_equals_uninterrupted(tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "run"
    # a real Ctrl-C in the middle of the run (not on a checkpoint step)
    with ctrl_c_after_steps(5), pytest.raises(Interrupted, match="Run the same command to resume"):
        distill(_config(), out, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    from frepo.method.trainer import FRePoTrainer

    steps, original = [], FRePoTrainer.step
    monkeypatch.setattr(FRePoTrainer, "step", lambda self: steps.append(1) or original(self))
    result = distill(_config(), out, progress=False)
    assert result.step == 8 and len(steps) == 3  # resumed at step 5, not started over to the same bits
    _assert_same_run(uninterrupted, out)
    record = json.loads(json.dumps(result.to_dict()))  # plain JSON, paths absolute
    assert record["distilled_path"] == str((out / "distilled.safetensors").resolve()) and record["step"] == 8


def test_ctrl_c_in_the_end_validation_keeps_the_steps(tmp_path, uninterrupted, monkeypatch):
    """The end's validation ran outside the loop's signal handling: Ctrl-C there lost every step since the
    last checkpoint (8 steps, checkpoints every 3: steps 7-8), and the rerun started from step 6 (or 0)."""
    from frepo.jobs.actions import Validation

    original = Validation.accuracy

    def interrupted_at_the_end(self, now, progress=False):
        if now.final:  # what Ctrl-C raises there (a raised SIGINT would do nothing where the shell ignores it)
            raise KeyboardInterrupt
        return original(self, now, progress)

    monkeypatch.setattr(Validation, "accuracy", interrupted_at_the_end)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped in the end's validation, after step 8.*Run the same command"):
        distill(_config(), out, progress=False)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 8
    assert not (out / "distilled.safetensors").exists()
    monkeypatch.setattr(Validation, "accuracy", original)
    # Its end is still to run: the validation's settings may change for it (a changed setting of a run whose end
    # has run is refused: it would run nothing)
    other = tmp_path / "other"
    shutil.copytree(out, other)
    changed = dataclasses.replace(_config(), eval_models=2)
    assert distill(changed, other, progress=False, resume_with_changes=True).step == 8
    assert [r["eval_models"] for r in _records(other) if "val_acc" in r and r["step"] == 8] == [2]
    assert distill(_config(), out, progress=False).step == 8
    _assert_same_run(uninterrupted, out)


def test_ctrl_c_while_the_end_writes_the_best_set_validates_again(tmp_path, monkeypatch):
    """The end's validation took the new best step before writing best.safetensors: stopped in that write, the
    run was checkpointed as validated, and its resume kept an older best file."""
    import frepo.jobs.actions as actions

    monkeypatch.setattr(actions.Validation, "accuracy", lambda self, now, progress=False: float(now.step))
    straight = distill(_config(), tmp_path / "straight", progress=False)  # each validation a new best
    original = actions.save_distilled

    def interrupted_write(ds, path):
        if ds.meta["step"] == 8:
            raise KeyboardInterrupt
        return original(ds, path)

    monkeypatch.setattr(actions, "save_distilled", interrupted_write)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped in the end's validation"):
        distill(_config(), out, progress=False)
    assert load_distilled(out / "best.safetensors").meta["step"] == 4
    monkeypatch.setattr(actions, "save_distilled", original)
    distill(_config(), out, progress=False)
    _assert_same_run(straight.out, out)
    assert load_distilled(out / "best.safetensors").meta["step"] == 8


def test_a_best_set_of_steps_the_resume_repeats_is_not_kept(tmp_path, uninterrupted, caplog):
    """Validation every 3 steps, checkpoints every 4: a validation at step 6 wrote best.safetensors, a kill at
    step 7 resumed from step 4. The file held a set of no step the run's history keeps, under the best step the
    checkpoint recorded; a replay on other hardware need not write it again."""
    import shutil

    from frepo.jobs.distill import Distiller

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    best = load_distilled(out / "best.safetensors")
    save_distilled(dataclasses.replace(best, meta={**best.meta, "step": 7}), out / "best.safetensors")
    with caplog.at_level("WARNING", logger="frepo"):
        resumed = Distiller(_config(), out)
    resumed.run_dir.release()
    assert "holds the set of step 7, not the best the checkpoint (step 8) records" in caplog.text
    assert not (out / "best.safetensors").exists() and resumed.validation.best == {"val_acc": None, "step": None}


def test_a_finished_run_whose_end_runs_again_validates_its_last_step_once(tmp_path, monkeypatch):
    """The end validates unless the last step was validated; it asked only whether that step was the best. A
    finished run whose final file is written again (deleted, or replaced) ran the end again: a second line of
    the step's accuracy, counted twice by the chance watch."""
    import frepo.jobs.actions as actions

    monkeypatch.setattr(actions.Validation, "accuracy", lambda self, now, progress=False: 100.0 - now.step)
    out = tmp_path / "run"
    distill(_config(), out, progress=False)  # validations at 4 (the best) and 8
    (out / "distilled.safetensors").unlink()
    distill(_config(), out, progress=False)
    assert (out / "distilled.safetensors").is_file()
    assert [r["step"] for r in _metrics(out) if "val_acc" in r] == [4, 8]


def test_killed_process_resumes_with_the_same_command(tmp_path, uninterrupted):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "frepo", "distill", "--dataset", "digits", "--ipc", "2", "--out", str(out)]
    for key, value in OVERRIDES.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    # SIGTERM (what a scheduler or `kill` sends) arrives right after the first checkpoint, at a known step: sent
    # from outside on seeing the file, it could land after the last step on a fast machine, or not at all.
    driver = textwrap.dedent(f"""
        import os, signal, sys
        import frepo.jobs.runs as runs
        save = runs.RunDir.save_checkpoint
        def save_then_terminate(self, state):
            save(self, state)
            if state["step"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        runs.RunDir.save_checkpoint = save_then_terminate
        from frepo.cli import main
        sys.exit(main({args[3:]!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Run the same command to resume" in proc.stderr and "Traceback" not in proc.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    _assert_same_run(uninterrupted, out)


def test_a_finished_distillation_leaves_nothing_to_the_cyclic_collector(tmp_path):
    """A run's objects refer to each other (its actions call back into it); left to Python's cyclic collector,
    which counts objects rather than bytes, each finished run's data, trainer and pool stayed in memory
    (continual learning's 3 orders × 5 tasks grew to 9.6 GB). `distill` returns with them freed."""
    import gc

    gc.collect()
    gc.disable()  # no automatic collection while the run's objects would be garbage
    try:
        distill(presets.resolve("digits", 1, overrides={"steps": 2, "val_size": 0}), tmp_path / "run")
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection now finds is kept in gc.garbage
        gc.collect()
        left = [
            type(o).__qualname__ for o in gc.garbage if isinstance(o, torch.Tensor) or "frepo" in type(o).__module__
        ]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        gc.collect()
    assert left == []


def test_a_run_started_from_a_file_resumes_as_if_uninterrupted(tmp_path):
    """A resumed --init run builds its trainer from a placeholder of the set's shape (its checkpoint holds the
    set; no real image is drawn, as a class may hold fewer than ipc): the result is the uninterrupted run's."""
    import frepo
    from frepo.io.artifact import save_distilled

    start = tmp_path / "start.safetensors"
    save_distilled(frepo.make_subset("digits", 2, seed=5), start)
    config = presets.resolve("digits", 2, overrides={**OVERRIDES, "init": str(start), "eval_every": 0})
    straight = tmp_path / "straight"
    distill(config, straight)
    cut = tmp_path / "cut"
    with ctrl_c_after_steps(5), pytest.raises(Interrupted):
        distill(config, cut)
    assert distill(config, cut).step == 8
    a, b = load_distilled(straight / "distilled.safetensors"), load_distilled(cut / "distilled.safetensors")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


class Killed(BaseException):
    """A kill -9 as the run sees it: nothing of frepo's handles it (the lock goes with the process)."""


def test_a_kill_after_the_end_s_validation_logged_leaves_one_line_of_it(tmp_path, monkeypatch):
    """Steps a multiple of --checkpoint-every (the digits preset: 300 and 100): the last step is checkpointed before
    the end's validation, whose line a kill before the end's checkpoint left in metrics.jsonl; the resume ran
    that validation again and logged it twice. A validation of the checkpoint's step the checkpoint does not
    record is dropped with its line now. Also: a stop on a checkpoint step writes that checkpoint once (it was
    written twice), and a grid a kill kept from being drawn is drawn by the rerun (it said "already complete")."""
    from frepo.jobs.distill import Distiller

    config = presets.resolve("digits", 2, overrides={**OVERRIDES, "steps": 6, "checkpoint_every": 3})
    straight = tmp_path / "straight"
    distill(config, straight, progress=False)
    original, written = Distiller.checkpoint, []

    def killed_in_the_end_s_checkpoint(self):
        if self.step == 6 and self.validation.validated_at == 6:  # after the end's validation logged its line
            raise Killed
        written.append(self.step)
        original(self)

    monkeypatch.setattr(Distiller, "checkpoint", killed_in_the_end_s_checkpoint)
    out = tmp_path / "run"
    with pytest.raises(Killed):
        distill(config, out, progress=False)
    assert written == [3, 6] and sum('"val_acc"' in line for line in (out / "metrics.jsonl").open()) == 2
    monkeypatch.setattr(Distiller, "checkpoint", original)
    assert distill(config, out, progress=False).step == 6
    assert _metrics(out) == _metrics(straight)  # one line of the end's validation, as the straight run's

    monkeypatch.setattr(Distiller, "checkpoint", lambda self: written.append(self.step) or original(self))
    written.clear()
    with ctrl_c_after_steps(3), pytest.raises(Interrupted, match="stopped at step 3"):
        distill(config, tmp_path / "stopped", progress=False)
    assert written == [3]

    (out / "distilled.png").unlink()  # as a kill between the set and its picture leaves the run
    assert distill(config, out, progress=False).step == 6
    assert (out / "distilled.png").read_bytes() == (straight / "distilled.png").read_bytes()


def test_a_stop_between_the_end_s_validation_line_and_its_record_keeps_the_line(tmp_path, monkeypatch):
    """Ctrl-C after the end's validation logged its line and took its step as the best, but before it marked the
    step validated: the checkpoint records a best of that step, so the end does not validate again, and its line
    must stay (dropping every unrecorded validation line left the run without its last). No validation before the
    end here (--eval-every past the steps): the end's is the best, whatever the CPU."""
    from frepo.jobs.monitor import Monitor

    config = presets.resolve("digits", 2, overrides={**OVERRIDES, "eval_every": 10})
    straight = tmp_path / "straight"
    distill(config, straight, progress=False)
    original = Monitor.record

    def stopped_after_the_line(self, record, *more):
        original(self, record, *more)
        if "val_acc" in record and record["step"] == 8:  # the line written, the step not yet marked validated
            raise KeyboardInterrupt

    monkeypatch.setattr(Monitor, "record", stopped_after_the_line)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped in the end's validation, after step 8"):
        distill(config, out, progress=False)
    monkeypatch.setattr(Monitor, "record", original)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["best"]["step"] == 8 and state["last_val_step"] != 8  # the window this test is about
    assert distill(config, out, progress=False).step == 8
    _assert_same_run(straight, out)
