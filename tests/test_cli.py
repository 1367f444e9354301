"""The command line end to end on real data (digits), and every user mistake: one line on stderr,
a non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from frepo.cli import main
from frepo.io.artifact import load_distilled

# A small but complete run: the reference algorithm with a narrow network and a short schedule.
FAST = [
    "--width",
    "8",
    "--num-models",
    "3",
    "--max-online-updates",
    "4",
    "--batch-size",
    "64",
    "--eval-steps",
    "30",
    "--checkpoint-every",
    "2",
    "--log-every",
    "1",
]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code, err, fragment):
    assert code == 2, err
    # Progress-bar redraws and the run's opening lines are not part of the message.
    lines = [
        line
        for line in err.strip().splitlines()
        if line.strip() and not line.startswith(("frepo: distilling", "frepo: data:", "distill:", "evaluate"))
    ]
    assert len(lines) == 1 and lines[0].startswith("frepo: error:"), err
    assert fragment in lines[0], err
    assert "Traceback" not in err


def test_distill_evaluate_show_subset_on_digits(tmp_path, capsys):
    global_rng = torch.random.get_rng_state()
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["distill", "--dataset", "digits", "--ipc", 2, "--steps", 6, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    for name in (
        "config.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "distilled.safetensors",
        "best.safetensors",
        "distilled.png",
    ):
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["steps_per_s"] > 0 for r in records if "loss" in r)
    assert any("val_acc" in r for r in records)
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 6 and config["model"]["width"] == 8 and config["use_flip"] is False

    ds = load_distilled(out / "distilled.safetensors")
    assert ds.images.shape == (20, 1, 8, 8) and ds.labels.shape == (20, 10)
    assert ds.meta["dataset"] == "digits" and ds.meta["step"] == 6 and ds.meta["preprocessing"]["kind"] == "standard"

    result = tmp_path / "eval.json"
    # A run directory stands for its set, as for show (its snapshots' folder was read as class folders)
    code, stdout, err = run_cli(["evaluate", out, "--models", 2, "--steps", 20, "--json", result], capsys)
    assert code == 0, err
    assert run_cli(["export", out, "--to", tmp_path / "npz", "--format", "npz"], capsys)[0] == 0
    report = json.loads(result.read_text())
    assert report["protocol"] == "frepo" and report["arch"] == "conv" and len(report["accuracies"]) == 2
    assert report["mean"] == pytest.approx(np.mean(report["accuracies"]))
    assert report["std"] == pytest.approx(np.std(report["accuracies"]))
    assert all(0 <= a <= 100 for a in report["accuracies"])

    png = tmp_path / "grid.png"
    code, stdout, err = run_cli(["show", out / "distilled.safetensors", "--out", png], capsys)
    assert code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    subset = tmp_path / "random.safetensors"
    code, stdout, err = run_cli(
        ["subset", "--dataset", "digits", "--ipc", 2, "--method", "random", "--out", subset], capsys
    )
    assert code == 0, err
    rand = load_distilled(subset)
    assert rand.labels.dtype == torch.int64 and rand.meta["kind"] == "subset-random"
    # The random subset is the distillation's starting point (same seed, same stream): its images, not only its
    # class ids (any class-balanced set of 2 per class has those).
    from frepo.base.fields import from_dict
    from frepo.config import DistillConfig
    from frepo.jobs.distill import Distiller

    recorded = {k: v for k, v in config.items() if k != "environment"}
    distiller = Distiller(from_dict(DistillConfig, recorded), tmp_path / "start")
    start = distiller.host_set()
    distiller.run_dir.release()
    torch.testing.assert_close(rand.images, start.images)
    assert torch.equal(rand.class_ids(), start.class_ids())
    code, stdout, err = run_cli(["evaluate", subset, "--models", 1, "--steps", 10], capsys)
    assert code == 0, err
    # Their numbers come from their seeds alone: none of these commands drew from torch's global generator.
    assert torch.equal(torch.random.get_rng_state(), global_rng)
    # Fewer per row than the set holds: said (a grid of 10 under "300 images"). No suffix: PNG data in `grid2`.
    code, stdout, err = run_cli(["show", subset, "--per-class", 1, "--out", tmp_path / "grid2"], capsys)
    assert code == 0 and (tmp_path / "grid2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", err
    assert stdout.strip().endswith("grid2.png (1 of 2 images per class; --per-class 2 shows all)"), stdout
    # More per row than the largest class holds: the grid of --per-class 2 (2000 drew 20 000 blank tiles, 8.8 GB).
    for per_class, name in ((2, "grid3.png"), (2000, "grid4.png")):
        assert run_cli(["show", subset, "--per-class", per_class, "--out", tmp_path / name], capsys)[0] == 0
    assert (tmp_path / "grid3.png").read_bytes() == (tmp_path / "grid4.png").read_bytes()

    # Rerunning a finished run changes nothing and says so.
    before = (out / "distilled.safetensors").read_bytes()
    code, stdout, err = run_cli(
        ["distill", "--dataset", "digits", "--ipc", 2, "--steps", 6, "--out", out, *FAST], capsys
    )
    assert code == 0 and "already complete" in err
    assert (out / "distilled.safetensors").read_bytes() == before

    # A run continued past its set (a newer checkpoint) is read with a warning; one without its set yet is
    # said to be unfinished (it was read as class folders: its snapshots' folder), and can still be animated
    os.utime(out / "checkpoint.pt", ns=(time.time_ns(), time.time_ns() + 10**9))
    code, stdout, err = run_cli(["evaluate", out / "checkpoint.pt"], capsys)  # read as a DC file, then refused
    assert code == 2 and f"is a frepo run's checkpoint, not a set: give its run directory {out}" in err, err
    code, stdout, err = run_cli(["evaluate", out, "--models", 1, "--steps", 2, "--width", 8], capsys)
    assert code == 0 and "was continued after it wrote its set" in err, err
    (out / "distilled.safetensors").unlink()  # stopped early: its set is one resume away
    code, stdout, err = run_cli(["evaluate", out, "--models", 1], capsys)
    assert code == 2 and "the same command with --steps <the checkpoint's step> --resume-with-changes" in err, err
    assert "best.safetensors holds its best validated set so far" in err
    for name in ("checkpoint.pt", "metrics.jsonl", "best.safetensors"):
        (out / name).unlink()  # killed before its first checkpoint: config.json and the first snapshot
    code, stdout, err = run_cli(["evaluate", out, "--models", 1], capsys)
    assert code == 2 and "is a run that has not written its set (distilled.safetensors) yet" in err, err
    assert "rerun its distill command to finish" in err and "--resume-with-changes" not in err  # no checkpoint
    assert run_cli(["show", out, "--animate"], capsys)[0] == 0
    # A run another process is distilling: its command would be refused (the folder is locked), so say so.
    hold = "import sys, time; from frepo.base.lock import FolderLock; FolderLock(sys.argv[1]).acquire(); print(1)"
    owner = subprocess.Popen(
        [sys.executable, "-c", hold + "; sys.stdout.flush(); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout.readline().strip() == "1"
        code, stdout, err = run_cli(["evaluate", out, "--models", 1], capsys)
        assert code == 2 and f"frepo process {owner.pid} is distilling it now: wait for it to finish" in err, err
    finally:
        owner.kill()
        owner.wait()


def test_different_config_in_a_used_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(["distill", "--ipc", 1, "--steps", 2, "--out", out, *FAST], capsys)[0] == 0
    code, _, err = run_cli(["distill", "--ipc", 1, "--steps", 2, "--lr", "0.05", "--out", out, *FAST], capsys)
    assert_user_error(code, err, "different config")
    assert "lr" in err
    # Settings that cannot change the result may differ.
    code, _, err = run_cli(["distill", "--ipc", 1, "--steps", 2, "--out", out, *FAST, "--log-every", "2"], capsys)
    assert code == 0, err


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys, blobs):
    code, _, err = run_cli(["evaluate", tmp_path / "missing.safetensors"], capsys)
    assert_user_error(code, err, "not found")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    code, _, err = run_cli(["evaluate", garbage], capsys)
    assert_user_error(code, err, "corrupt or truncated")
    code, _, err = run_cli(["distill", "--dataset", "not-a-dataset", "--out", tmp_path / "a"], capsys)
    assert_user_error(code, err, "unknown dataset")
    code, _, err = run_cli(["distill", "--dataset", tmp_path / "nope.npz", "--out", tmp_path / "b"], capsys)
    assert_user_error(code, err, "not found")

    shapes = tmp_path / "shapes.npz"
    np.savez(
        shapes,
        x_train=np.zeros((10, 6), np.uint8),
        y_train=np.zeros(10, int),
        x_test=np.zeros((4, 6), np.uint8),
        y_test=np.zeros(4, int),
    )
    code, _, err = run_cli(["distill", "--dataset", shapes, "--out", tmp_path / "c"], capsys)
    assert_user_error(code, err, "must be N×H×W")

    counts = tmp_path / "counts.npz"
    np.savez(
        counts,
        x_train=np.zeros((10, 6, 6), np.uint8),
        y_train=np.zeros(9, int),
        x_test=np.zeros((4, 6, 6), np.uint8),
        y_test=np.zeros(4, int),
    )
    code, _, err = run_cli(["subset", "--dataset", counts, "--ipc", 1, "--out", tmp_path / "s.safetensors"], capsys)
    assert_user_error(code, err, "10 train images but 9 train labels")

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blobs.read_bytes()[:300])
    code, _, err = run_cli(["distill", "--dataset", truncated, "--out", tmp_path / "d"], capsys)
    assert_user_error(code, err, "corrupt or truncated")

    code, _, err = run_cli(["distill", "--dataset", blobs, "--ipc", 40, "--out", tmp_path / "e", *FAST], capsys)
    assert_user_error(code, err, "3 of 3 classes have fewer than ipc=40 images to draw from")
    assert "; give --ipc 27 or less, or a smaller --val-size" in err, err
    # A start from a file draws no real images: its IPC may pass a class's images left after the hold-out.
    start = tmp_path / "start28.safetensors"
    code, _, err = run_cli(["subset", "--dataset", blobs, "--ipc", 28, "--val-size", 0, "--out", start], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        ["distill", "--dataset", blobs, "--ipc", 28, "--init", start, "--steps", 1, "--out", tmp_path / "i", *FAST],
        capsys,
    )
    assert code == 0, err
    longer = ["--steps", 2, "--resume-with-changes"]  # resumed: its checkpoint holds the set, nothing is drawn
    code, _, err = run_cli(
        ["distill", "--dataset", blobs, "--ipc", 28, "--init", start, *FAST, *longer, "--out", tmp_path / "i"], capsys
    )
    assert code == 0 and "resuming from step 1 of 2" in err, err

    code, _, err = run_cli(
        ["distill", "--dataset", blobs, "--ipc", 1, "--norm", "layer", "--out", tmp_path / "f"], capsys
    )
    assert_user_error(code, err, "norm must be one of")

    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    code, _, err = run_cli(["distill", "--dataset", blobs, "--ipc", 1, "--out", not_dir, *FAST], capsys)
    assert_user_error(code, err, "not a directory")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from frepo.method import optim

    calls = {"n": 0}
    original = optim.Lamb.update

    def poisoned(self, *scalars):
        original(self, *scalars)
        calls["n"] += 1
        if calls["n"] == 5:  # the update of step 5 produces NaN images
            self.param_groups[0]["params"][0].data.fill_(float("nan"))

    monkeypatch.setattr(optim.Lamb, "update", poisoned)
    out = tmp_path / "run"
    code, _, err = run_cli(["distill", "--ipc", 1, "--steps", 10, "--out", out, *FAST], capsys)
    assert_user_error(code, err, "NaN")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    assert torch.isfinite(state["synthetic"]["images"]).all()
    assert not (out / "distilled.safetensors").exists()


def test_entry_point_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "frepo", "evaluate", str(tmp_path / "missing.safetensors")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("frepo: error:") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "frepo", "distill", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--batch-size" in proc.stdout and "--preset" in proc.stdout


def test_ctrl_c_while_the_library_loads_is_one_line(tmp_path):
    """Ctrl-C in a command's first seconds (torch's import) printed a traceback: `import frepo` loaded the whole
    library before the command line could catch it. A torch whose import is interrupted stands in for the key."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    script = "import sys; from frepo.cli import main; sys.exit(main())"  # what the installed `frepo` runs
    for command in (["-m", "frepo"], ["-c", script]):
        proc = subprocess.run([sys.executable, *command, "distill", "--help"], capture_output=True, text=True, env=env)
        assert (proc.returncode, proc.stderr) == (130, "frepo: interrupted\n"), proc.stderr[-2000:]


def test_import_frepo_loads_the_library_on_first_use():
    probe = """
import sys, frepo
assert "torch" not in sys.modules, "import frepo loaded torch"
for name in frepo.__all__:
    getattr(frepo, name)
assert frepo.data.load_dataset and frepo.presets.get and frepo.eval.EvalConfig is frepo.EvalConfig  # README's uses
assert callable(frepo.distill) and callable(frepo.export)  # functions, not their modules of the same name
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_evaluate_protocols_architectures_reports_and_baselines(tmp_path, capsys, monkeypatch):
    subset = tmp_path / "random.safetensors"
    assert run_cli(["subset", "--dataset", "digits", "--ipc", 2, "--out", subset], capsys)[0] == 0
    out_json, out_csv = tmp_path / "eval_dsa.json", tmp_path / "eval.csv"
    code, stdout, err = run_cli(
        ["evaluate", subset, "--protocol", "dsa", "--arch", "convnet,mlp", "--epochs", 1, "--models", 2]
        + ["--dsa-strategy", "color_crop_cutout_scale_rotate", "--json", out_json, "--csv", out_csv],
        capsys,
    )
    assert code == 0, err
    header = stdout.splitlines()[1].split()
    assert header[:4] == ["architecture", "protocol", "models", "accuracy"] and "seconds" in header
    assert [line.split()[:3] for line in stdout.splitlines()[3:5]] == [["convnet", "dsa", "2"], ["mlp", "dsa", "2"]]
    results = json.loads(out_json.read_text())["results"]
    assert [r["arch"] for r in results] == ["convnet", "mlp"] and all(r["protocol"] == "dsa" for r in results)
    assert all(len(r["file_checksum"]) == 64 and len(r["model_seeds"]) == 2 and r["steps"] == 2 for r in results)
    assert all(r["dsa_strategy"] == "color_crop_cutout_scale_rotate" for r in results)
    assert all(r["device"] == "cpu" for r in results)
    assert [r["width"] for r in results] == [128, None]  # a width-16 run was indistinguishable; mlp has no width
    assert out_csv.read_text().count("\n") == 3 and out_csv.read_text().startswith("file,dataset,split,protocol")
    assert ",128," in out_csv.read_text().splitlines()[1] and ",cpu," in out_csv.read_text().splitlines()[1]

    # One architecture: the JSON stays a single object with the historical keys.
    single = tmp_path / "eval_krr.json"
    code, _, err = run_cli(["evaluate", subset, "--protocol", "krr", "--models", 1, "--json", single], capsys)
    assert code == 0, err
    report = json.loads(single.read_text())
    assert {"protocol", "arch", "accuracies", "mean", "std"} <= set(report) and report["arch"] == "conv"

    kcenter = tmp_path / "kcenter.safetensors"
    code, stdout, err = run_cli(
        ["subset", "--dataset", "digits", "--ipc", 1, "--method", "kcenter", "--feature-steps", 2]
        + ["--feature-width", 8, "--out", kcenter],
        capsys,
    )
    assert code == 0, err
    assert load_distilled(kcenter).meta["kind"] == "subset-kcenter" and "kcenter subset" in stdout
    assert "frepo: kcenter: training the feature network (2 Adam steps" in err and "train: 100%" in err, err

    code, stdout, err = run_cli(["reproduce", "--table", 1, "--budget", "cpu-small", "--dry-run"], capsys)
    assert code == 0, err
    assert "| MNIST | 1 | mnist-ipc1-cpu |" in stdout and "| Tiny ImageNet | 1 |" in stdout
    # ... and says where the real command writes (a user learnt it by running it), and whether it would refuse
    expected = "without --dry-run: the table -> docs/reproduction.md (with reproduction.json and reproduction.png"
    assert expected in err and "the runs -> runs/reproduce/<preset>" in err, err
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "reproduction.md").write_text("| a table written by hand |\n")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(["reproduce", "--budget", "cpu-small", "--dry-run"], capsys)
    refusal = "frepo: warning: the real command would refuse: --out docs/reproduction.md is a file frepo did not write"
    assert code == 0 and refusal in err
    # A malformed WORLD_SIZE is no torchrun: every command but distill ignores it (a traceback for all)
    monkeypatch.setenv("WORLD_SIZE", "")
    assert run_cli(["presets"], capsys)[0] == 0
    code, _, err = run_cli(["distill", "--steps", 1, "--out", tmp_path / "w"], capsys)  # which joins a group
    assert code == 2 and "WORLD_SIZE must be the number of processes (torchrun sets it), got ''" in err, err


def test_evaluate_files_from_other_tools(tmp_path, capsys):
    from frepo.data import load_dataset
    from frepo.data.recipes import reference_preprocessing

    raw = load_dataset("digits")
    two = np.concatenate([np.flatnonzero(raw.y_train == c)[:2] for c in range(10)])  # of every class
    images = reference_preprocessing(raw, tmp_path)(raw.x_train[two])  # N×C×H×W in the reference's space
    labels = np.eye(10, dtype=np.float32)[raw.y_train[two]] - 0.1
    good = tmp_path / "np" / "step000500.npz"
    good.parent.mkdir()
    np.savez(good, image=images.permute(0, 2, 3, 1).numpy(), label=labels)
    code, stdout, err = run_cli(["evaluate", good, "--dataset", "digits", "--protocol", "krr", "--models", 1], capsys)
    assert code == 0, err
    assert (
        "20 images of digits (official FRePo .npz file read as 'reference' preprocessing)" in stdout
        and "warning" not in err
    )
    raw_pixels = tmp_path / "np" / "step000001.npz"
    np.savez(raw_pixels, image=raw.x_train[two] / 255.0, label=labels)
    code, stdout, err = run_cli(
        ["evaluate", raw_pixels, "--dataset", "digits", "--protocol", "krr", "--models", 1], capsys
    )
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("frepo: warning:")]
    assert len(warning) == 1 and "like raw pixels" in warning[0] and "--preprocess" in warning[0]


def test_bad_evaluation_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    subset = tmp_path / "random.safetensors"
    assert run_cli(["subset", "--dataset", "digits", "--ipc", 1, "--out", subset], capsys)[0] == 0
    np.savez(tmp_path / "step1.npz", image=np.zeros((10, 8, 8, 1), np.float32), label=np.eye(10, dtype=np.float32))
    cases = [
        (["evaluate", subset, "--protocol", "nope"], "unknown protocol"),
        (["evaluate", subset, "--arch", "conv,nope"], "unknown architecture 'nope'"),
        (["evaluate", subset, "--protocol", "dsa", "--steps", 5], "--epochs"),
        (["evaluate", subset, "--epochs", 5], "--protocol dsa"),
        (["evaluate", subset, "--soft-labels"], "--soft-labels applies to --protocol dsa"),
        (["evaluate", subset, "--dsa-strategy", "none"], "--dsa-strategy applies to --protocol dsa"),
        (["evaluate", subset, "--protocol", "dsa", "--dsa-strategy", "flip_zoom"], "unknown DSA strategy 'flip_zoom'"),
        (["evaluate", subset, "--protocol", "dsa", "--soft-labels", "--epochs", 1], "needs a set with learned labels"),
        (["evaluate", subset, "--models", 0], "models must be in 1..2147483647, got 0"),
        (["evaluate", subset, "--steps", 10**20], "steps must be in 1..2147483647"),
        (["evaluate", subset, "--entry", 1], "--entry selects a set inside a DC/DSA"),
        (["evaluate", subset, "--preprocess", "dc"], "carries its own preprocessing"),
        (["evaluate", subset, "--dataset", "mnist"], "was distilled from digits"),
        (["evaluate", tmp_path / "step1.npz"], "pass --dataset NAME"),
        (
            ["evaluate", tmp_path / "step1.npz", "--dataset", "digits", "--preprocess", "whiten"],
            "unknown preprocess 'whiten'",
        ),
        (["evaluate", tmp_path / "nothing.pt", "--dataset", "digits"], "not found"),
        (
            ["subset", "--dataset", "digits", "--ipc", 1, "--method", "nope", "--out", tmp_path / "x.safetensors"],
            "unknown subset method",
        ),
        (["report", tmp_path / "no-run"], "not found"),
        (["report", subset], "is a file, not a run directory"),  # it said "not found"
        (["subset", "--dataset", "digits", "--ipc", 1, "--out", tmp_path / "x.png"], "name it .safetensors"),
        (["reproduce", "--table", 3, "--dry-run"], "only table 1"),
        (["reproduce", "--budget", "huge", "--dry-run"], "unknown budget"),
        (["reproduce", "--datasets", "mnist,svhn", "--dry-run"], "not in table 1"),
        (["reproduce", "--datasets", "", "--dry-run"], "--datasets names no dataset"),  # it meant every dataset
        (["reproduce", "--dry-run", "--finished-only"], "pass one of them"),  # --dry-run won silently
    ]
    for args, fragment in cases:
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, fragment)


def test_every_subcommand_has_its_handler():
    import argparse

    from frepo.cli.commands import HANDLERS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(HANDLERS)


def test_every_help_says_each_default_once_and_prints_percent_signs_as_such():
    import argparse

    from frepo.cli.commands import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    texts = {"frepo": parser.format_help(), **{name: p.format_help() for name, p in sub.choices.items()}}
    for name, text in texts.items():
        assert "%%" not in text, name
        for option in text.split("\n  -")[1:]:  # one block per option
            assert option.count("(default:") <= 1, (name, option)
    flat = {name: " ".join(text.split()) for name, text in texts.items()}  # argparse wraps lines
    assert (
        "1% and 0.1% FPR" in flat["privacy"]
        and "epochs (default: 1000, or 300 with --dsa-strategy none) --" in flat["evaluate"]
    )
    # A switch's default is on or off in every command (settings' switches said True where --download said on).
    assert not any(f"(default: {v})" in text for v in (True, False, None) for text in flat.values())
    assert "the layout's public archive) (default: on)" in flat["evaluate"] and "(default: on)" in flat["distill"]


def test_a_redirected_log_gets_the_outer_progress_as_plain_lines(tmp_path, capsys, monkeypatch):
    """A batch job's log (stderr not a terminal) got carriage-return redraws, cursor-up codes and the nested
    training bars glued onto result lines; it now gets the outermost bar as lines, and nothing of the inner."""
    import frepo.base.log as frepo_log

    monkeypatch.setattr(frepo_log, "LOG_INTERVAL_S", 0.0)  # a line for every update
    run = tmp_path / "run"
    flags = ["distill", "--dataset", "digits", "--ipc", 1, "--steps", 4, "--eval-every", 2, "--out", run, *FAST]
    code, _, err = run_cli(flags, capsys)
    assert code == 0, err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    shown = [line.split("|")[0] for line in lines if line.startswith(("distill:", "evaluate", "train"))]
    shown = list(dict.fromkeys(shown))  # a line per update, and per postfix set
    # step 2's validation ran inside the distillation's bar: no line of its; the final one's after it closed
    assert shown == ["distill:   0%", "distill:  25%", "distill:  50%", "distill:  75%", "distill: 100%"] + [
        "evaluate (conv, frepo):   0%",
        "evaluate (conv, frepo): 100%",
    ]
    assert sum("validation accuracy" in line for line in lines) == 2
    code, _, err = run_cli(["evaluate", run, "--models", 2, "--steps", 20, "--width", 8], capsys)
    assert code == 0, err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert [line.split("|")[0] for line in lines if line.startswith("evaluate (")] == [
        "evaluate (conv, frepo):   0%",
        "evaluate (conv, frepo):  50%",
        "evaluate (conv, frepo): 100%",
    ]
    assert not any(line.startswith("train") for line in lines)

    # At a real interval: the first line and the last only, however many log steps and messages came between.
    monkeypatch.setattr(frepo_log, "LOG_INTERVAL_S", 3600.0)
    code, _, err = run_cli([*flags[: -len(FAST) - 2], "--out", tmp_path / "again", *FAST], capsys)
    assert code == 0, err
    shown = [line.split("|")[0] for line in err.splitlines() if line.startswith(("distill:", "evaluate", "train"))]
    # (the evaluation's bar, which clears itself on a terminal, said 0 % and nothing after it)
    assert shown == ["distill:   0%", "distill: 100%", "evaluate (conv, frepo):   0%", "evaluate (conv, frepo): 100%"]

    # On a terminal the bars redraw in place, as before.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for _ in frepo_log.progress_bar(range(3), desc="drawn"):
        pass
    assert "\rdrawn: 100%" in capsys.readouterr().err


def test_a_gpu_budget_on_a_cpu_is_announced_with_its_learning_rate(tmp_path, capsys, monkeypatch):
    """`frepo distill --preset mnist-ipc1` (500 000 steps) started on a CPU with only the bar's 312-hour
    estimate to say so (`frepo privacy` warned); the announcement also names the learning rate, which a
    hand-made DistillConfig keeps at the paper's 3e-4."""
    import frepo.jobs.distill as distill_module

    monkeypatch.setattr(distill_module, "GPU_STEPS", 2)  # the warning's threshold, at this test's budget
    monkeypatch.setattr(distill_module, "_budgets_said", set())  # said once per process
    code, _, err = run_cli(
        ["distill", "--ipc", 1, "--steps", 2, "--lr", 0.004032831534, "--out", tmp_path / "r", *FAST], capsys
    )
    assert code == 0, err
    assert "frepo: distilling digits, 1 image per class, 2 steps, lr 0.00403, real batch 64" in err
    # What it distils from, as frepo read it (a dataset of one's own: its size, classes, hold-out)
    expected = "training images of 1×8×8, 10 classes (110..115 per class), 125 held out for validation"
    assert f"frepo: data: 1132 {expected}, preprocessing standard" in err, err
    assert "frepo: 2 outer steps on a CPU take days; the *-cpu presets (`frepo presets`)" in err
