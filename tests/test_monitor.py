"""What a run shows: snapshots of the image grid and their animation, TensorBoard events with the same
numbers as metrics.jsonl; the library is quiet unless asked, the command line is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from frepo import distill, presets
from frepo.cli import main
from frepo.io.artifact import load_distilled
from frepo.jobs.visualize import grid_array

OVERRIDES = dict(steps=6, width=8, num_models=3, max_online_updates=4, batch_size=64, eval_steps=20, log_every=1)


def test_snapshots_make_an_animation_of_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    config = presets.resolve("digits", 1, overrides={**OVERRIDES, "snapshot_every": 2})
    distill(config, out)
    frames = sorted(p.name for p in (out / "images").glob("step*.png"))
    assert frames == ["step0000000.png", "step0000002.png", "step0000004.png", "step0000006.png"]
    # The last frame is the final set's grid.
    last = np.asarray(Image.open(out / "images" / frames[-1]).convert("RGB"))
    assert np.array_equal(last, grid_array(load_distilled(out / "distilled.safetensors")))

    assert main(["show", str(out), "--animate", "--fps", "4"]) == 0
    capsys.readouterr()
    assert main(["show", str(out), "--animate", "--fps", "1e-4", "--out", str(tmp_path / "slow.gif")]) == 2
    assert "fps must be at least 0.001526 (a GIF frame lasts at most 655.35 s), got 0.0001" in capsys.readouterr().err
    assert main(["show", str(out), "--animate", "--fps", "0.001526", "--out", str(tmp_path / "slow.gif")]) == 0
    gif = Image.open(out / "distilled.gif")
    assert gif.format == "GIF" and gif.is_animated and gif.n_frames == 4
    assert main(["show", str(out), "--out", str(tmp_path / "grid.png")]) == 0  # a run directory shows its set
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The suffix names the format (a .jpg grid was PNG data); one matplotlib cannot write, or an animation not
    # named .gif, is one line before anything is written.
    assert main(["show", str(out), "--out", str(tmp_path / "grid.jpg")]) == 0
    assert Image.open(tmp_path / "grid.jpg").format == "JPEG"
    assert main(["show", str(out), "--out", str(tmp_path / "grid.pdf")]) == 0
    assert (tmp_path / "grid.pdf").read_bytes()[:5] == b"%PDF-"
    capsys.readouterr()
    assert main(["show", str(out), "--out", str(tmp_path / "grid.bmp")]) == 2
    assert "cannot write an image grid as .bmp" in capsys.readouterr().err
    assert main(["show", str(out), "--animate", "--out", str(tmp_path / "film.mp4")]) == 2
    assert "name it .gif, not film.mp4" in capsys.readouterr().err
    assert not (tmp_path / "grid.bmp").exists() and not (tmp_path / "film.mp4").exists()
    # A folder's name or nothing names no file ('new/' wrote a file 'new'; '' was said to be the folder '.').
    for named in (f"{tmp_path}/new/", ""):
        assert main(["show", str(out), "--out", named]) == 2
        assert f"--out {named!r} names no file; give a file name" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    capsys.readouterr()
    assert main(["show", str(out / "distilled.safetensors"), "--animate"]) == 2
    assert "pass a run directory, not a file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    assert main(["show", str(empty), "--animate"]) == 2
    assert "pass a run directory, not a folder that holds no run" in capsys.readouterr().err  # it said "a file"
    # A damaged snapshot is left out with a warning (it was a PIL traceback); none readable is one line.
    (out / "images" / "step0000002.png").write_bytes(b"not a png")
    frame = out / "images" / "step0000004.png"
    frame.write_bytes(frame.read_bytes()[:200])  # truncated
    capsys.readouterr()
    assert main(["show", str(out), "--animate"]) == 0
    assert "left out 2 damaged snapshot(s)" in capsys.readouterr().err
    assert Image.open(out / "distilled.gif").n_frames == 2
    for frame in (out / "images").glob("step*.png"):
        frame.write_bytes(b"")
    assert main(["show", str(out), "--animate"]) == 2
    assert "every snapshot in" in capsys.readouterr().err


def test_tensorboard_events_hold_the_metrics_and_the_grid(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert (
        main(
            ["distill", "--ipc", "1", "--out", str(out), "--tensorboard", "--eval-every", "3"]
            + [f"--{k.replace('_', '-')}={v}" for k, v in OVERRIDES.items()]
        )
        == 0
    )
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in events.Scalars("loss")} == loss
    assert [e.step for e in events.Scalars("val_acc")] == [r["step"] for r in records if "val_acc" in r] == [3, 6]
    assert [e.step for e in events.Images("synthetic set")] == [1, 2, 3, 4, 5, 6]

    def scalars(tag: str) -> dict:
        events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        return {e.step: e.value for e in events.Scalars(tag)}

    command = ["distill", "--ipc", "1", "--out", str(out), "--tensorboard", "--eval-every", "3"]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in OVERRIDES.items()]
    before = scalars("loss"), scalars("val_acc")
    # Read again when complete: the writer, opened at once, purged the last step's events (loss at 6, val_acc)
    assert main(command) == 0
    assert (scalars("loss"), scalars("val_acc")) == before
    # Extended from the checkpoint at step 6: that step's events stay, as its metrics line does (purged before)
    assert main(command + ["--steps", "8", "--resume-with-changes"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(scalars("loss")) == [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_the_library_is_quiet_and_the_command_line_is_not(tmp_path, capsys):
    distill(presets.resolve("digits", 1, overrides=OVERRIDES), tmp_path / "api")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    args = ["distill", "--ipc", "1", "--out", str(tmp_path / "cli")] + [
        f"--{k.replace('_', '-')}={v}" for k, v in OVERRIDES.items()
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "frepo: distilling digits" in err and "distill:" in err and "validation accuracy" in err


def test_steps_per_second_leave_out_what_does_not_train(tmp_path, monkeypatch):
    """metrics.jsonl's steps/s is over training time: a validation in the window made it a fraction of the
    step rate (0.08 against 0.7 steps/s here once). The validation is made to take 1000 s of the clock."""
    import time

    from frepo.jobs import actions

    real, offset = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real() + offset[0])
    validate = actions.Validation.__call__

    def slow_validation(self, now):
        validate(self, now)
        offset[0] += 1000.0

    monkeypatch.setattr(actions.Validation, "__call__", slow_validation)
    config = presets.resolve("digits", 1, overrides={**OVERRIDES, "eval_every": 3})
    distill(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["steps_per_s"] for r in records if "steps_per_s" in r}
    assert [r["step"] for r in records if "val_acc" in r] == [3, 6]
    assert rates[4] > 0.01 and min(rates.values()) > 0.01  # a step takes far less than 100 s: not 1/1000
    assert max(r.get("elapsed_s", 0) for r in records) < 1000  # (already so) training time leaves it out


def test_a_grid_takes_back_to_pixels_only_the_images_it_shows(tmp_path, monkeypatch):
    """TensorBoard's grid at every log step took the whole set back to pixels (a dense ZCA's inverse of 5000
    CIFAR-100 images, on the host, every 10 GPU steps) to show 10 images a class: the same grid from those alone."""
    import torch

    from frepo.jobs.visualize import class_grid, set_grid

    path = tmp_path / "digits30.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "30", "--method", "random", "--out", str(path)]) == 0
    ds = load_distilled(path)
    whole, whole_rows = class_grid(ds.pixels(), ds.class_ids(), ds.num_classes, 10)
    converted: list[int] = []
    kind = type(ds.preprocessing)
    original = kind.to_unit

    def counted(self, images):
        converted.append(len(images))
        return original(self, images)

    monkeypatch.setattr(kind, "to_unit", counted)
    grid, rows = set_grid(ds, 10)
    assert converted == [10 * ds.num_classes] and len(ds.images) == 30 * ds.num_classes
    assert rows == whole_rows and torch.equal(grid, whole)
    converted.clear()
    grid_array(ds)
    assert converted == [10 * ds.num_classes]
