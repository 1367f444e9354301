"""Reports and reproduction: result tables/JSON/CSV, the run report (curves, grid, evaluation table),
and `reproduce` planning every row of Table 1, running a tiny table end to end and reusing its results."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import os
import shutil
import warnings

import pytest
import torch
from conftest import ctrl_c_after_steps

from frepo import presets
from frepo.base.errors import FrepoError, FrepoWarning, Interrupted
from frepo.data.preprocess import Preprocessing
from frepo.eval import EvalResult
from frepo.eval.results import results_csv, results_json, results_table
from frepo.io.artifact import DistilledSet, load_distilled, save_distilled
from frepo.jobs import reproduce
from frepo.jobs.report import write_report
from frepo.jobs.runs import RunDir

PNG = b"\x89PNG\r\n\x1a\n"


def _result(arch="conv", accs=(50.0, 60.0)):
    r = EvalResult("dsa", arch, list(accs), 55.0, 5.0, 12, 3.5, "test", 7)
    r.extra = {"file": "set.safetensors", "dataset": "digits", "file_checksum": "ab" * 32, "model_seeds": [1, 2]}
    return r


def test_result_formats():
    one = results_json([_result()])
    assert {"protocol", "arch", "accuracies", "mean", "std", "models", "file_checksum", "model_seeds"} <= set(one)
    many = results_json([_result(), _result("mlp")])
    assert [r["arch"] for r in many["results"]] == ["conv", "mlp"]
    # One way to read any evaluation: "results" is there for one architecture too (its keys also on top).
    assert one["results"] == [{k: v for k, v in one.items() if k != "results"}]
    # The krr protocol trains nothing: it said "0 steps".
    krr = EvalResult("krr", "conv", [70.0, 72.0], 71.0, 1.0, 0, 2.0)
    assert "2 models, no training, 2 s)" in krr.summary()
    assert results_table([krr]).splitlines()[2].split() == ["conv", "krr", "2", "71.00", "±", "1.00", "–", "2.0"]
    rows = list(csv.DictReader(io.StringIO(results_csv([_result(), _result("mlp")]))))
    assert [r["arch"] for r in rows] == ["conv", "mlp"] and rows[0]["accuracies"] == "50.0;60.0"
    assert rows[0]["model_seeds"] == "1;2" and rows[0]["seed"] == "7" and rows[0]["file_checksum"] == "ab" * 32
    # Each network's accuracy as the JSON has it (it was rounded to 4 decimals), and the protocol's settings,
    # which the CSV lacked: two dsa rows differing only in their augmentation or labels read the same.
    precise = _result(accs=(97.22999999999999, 1 / 3))
    precise.extra.update(epochs=1000, soft_labels=True, dsa_strategy="color_crop", together=False)
    row = next(csv.DictReader(io.StringIO(results_csv([precise]))))
    assert [float(a) for a in row["accuracies"].split(";")] == [97.22999999999999, 1 / 3]
    assert (row["epochs"], row["soft_labels"], row["dsa_strategy"], row["together"]) == (
        "1000",
        "True",
        "color_crop",
        "False",
    )
    assert row["use_flip"] == row["together_mode"] == ""
    table = results_table([_result(), _result("resnet18_bn")]).splitlines()
    assert table[0].split() == ["architecture", "protocol", "models", "accuracy", "(%)", "train", "steps", "seconds"]
    assert table[2].split() == ["conv", "dsa", "2", "55.00", "±", "5.00", "12", "3.5"]


def _field_metrics():
    return {
        "ior": 12.5,
        "hlr": 30.25,
        "lrs": 51.0,
        "set_hard": {"mean": 55.0},
        "random": {"mean": 42.5, "ipc": 1},
        "full": {"mean": 85.25},
    }


def test_one_model_has_no_spread_and_field_metrics_reach_the_csv():
    """A single model's std is 0 by arithmetic, not by measurement: no "± 0.00" anywhere it is printed."""
    single = _result(accs=(55.0,))
    single.std = 0.0
    table = results_table([single]).splitlines()
    assert table[2].split() == ["conv", "dsa", "1", "55.00", "12", "3.5"]
    assert single.summary().startswith("55.00 % (test, protocol dsa, arch conv, 1 model, 12 steps")
    assert "2 models" in _result().summary()
    # DD-Ranking's metrics were printed and in the JSON only; the CSV has their columns (empty without).
    with_metrics = _result()
    with_metrics.extra["field_metrics"] = _field_metrics()
    rows = list(csv.DictReader(io.StringIO(results_csv([with_metrics, _result("mlp")]))))
    columns = ("ior", "hlr", "lrs", "set_hard_mean", "random_mean", "full_mean")
    assert [rows[0][k] for k in columns] == ["12.5", "30.25", "51.0", "55.0", "42.5", "85.25"]
    assert [rows[1][k] for k in columns] == [""] * 6


def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "loss": 1.0 / s, "kernel_loss": 1.1 / s} for s in range(1, 6)]
    records.insert(2, {"step": 2, "val_acc": 40.0})
    records.append({"step": 5, "val_acc": 45.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"data": {"dataset": "digits"}, "model": {"width": 8}, "pool": {}, "ipc": 1, "steps": 5}
    (run / "config.json").write_text(json.dumps(config))
    (run / "eval.json").write_text(json.dumps(_result().to_dict()))
    (run / "eval_archs.json").write_text(json.dumps(results_json([_result("alexnet"), _result("vgg11")])))
    (run / "eval_broken.json").write_text("{not json")
    meta = {"dataset": "toy", "classes": ["a", "b"], "kind": "distilled", "step": 5}
    ds = DistilledSet(
        torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), Preprocessing("none", torch.zeros(1), torch.ones(1))
    )
    ds.meta = meta
    save_distilled(ds, run / "distilled.safetensors")
    return run


def test_run_report(tmp_path):
    run = _run_dir(tmp_path)
    path = write_report(run)
    text = path.read_text()
    assert path == run / "report.md"
    for png in ("loss.png", "val_acc.png", "distilled.png"):
        assert (run / png).read_bytes()[:8] == PNG and f"({png})" in text  # drawn, and linked relatively
    assert "best 45.00% (step 5)" in text and "Last logged step 5" in text
    for arch in ("conv", "alexnet", "vgg11"):
        assert f"| other: set.safetensors | {arch} | – | dsa | test | 2 | 55.00 ± 5.00 |" in text
    # The run's own set is named as such (an evaluation of another set in the folder was read as the run's).
    own = _result()
    own.extra.update(file_checksum=load_distilled(run / "distilled.safetensors").meta["checksum"], width=8)
    (run / "eval_own.json").write_text(json.dumps(own.to_dict()))
    assert "| eval_own.json | distilled | conv | 8 | dsa | test | 2 | 55.00 ± 5.00 |" in write_report(run).read_text()
    own.extra.update(file=str(run / "distilled.safetensors"), file_checksum="cd" * 32)  # before a resume rewrote it
    (run / "eval_own.json").write_text(json.dumps(own.to_dict()))
    assert "| eval_own.json | distilled (an earlier one: rewritten since) | conv |" in write_report(run).read_text()
    assert "Unreadable evaluation files: eval_broken.json" in text
    assert "DD-Ranking's metrics" not in text
    # One model: no spread to report. Field metrics: their own table.
    single = _result("mlp", accs=(55.0,))
    single.extra["field_metrics"] = _field_metrics()
    (run / "eval_field.json").write_text(json.dumps(single.to_dict()))
    text = write_report(run).read_text()
    assert "| eval_field.json | other: set.safetensors | mlp | – | dsa | test | 1 | 55.00 | 12 |" in text
    assert "| eval_field.json | mlp | 55.00 | 42.50 | 85.25 | +12.50 | 30.25 | 51.00 |" in text
    assert "- dataset: digits, 1 image per class, preprocessing None, validation hold-out default" in text
    # A run without a hold-out (continual's and privacy's) said "default"; a narrowed run did not say so.
    config = json.loads((run / "config.json").read_text())
    config["data"].update(val_size=0, train_chunk=1, train_chunk_size=300)
    (run / "config.json").write_text(json.dumps(config))
    assert (
        "digits, training chunk 1 of 300 images, 1 image per class, preprocessing None, validation hold-out none"
        in (write_report(run).read_text())
    )


def test_a_report_of_edited_or_damaged_files_shows_what_it_can(tmp_path):
    """Each was a traceback: settings of the wrong kind (AttributeError), field metrics without their
    references (KeyError), a checksum that is a list (unhashable), bytes that are no UTF-8 in an evaluation
    file or a metrics line (UnicodeDecodeError, on resume too). Now the settings show as unset, the evaluation
    files are named as unreadable, and a damaged metrics line is left out, the records after it kept (at a
    resume too: ending the log there dropped them)."""
    run = _run_dir(tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": 5, "pool": 5, "model": [1]}))
    (run / "eval_field.json").write_text(json.dumps({"mean": 1.0, "field_metrics": {"a": 1}}))
    (run / "eval_checksum.json").write_text(json.dumps({"mean": 1.0, "file_checksum": [1]}))
    (run / "eval_latin1.json").write_bytes(b'{"mean": 1.0, "arch": "\xe9"}')
    log = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    log.insert(3, b"\xff\xfe\n")  # a damaged block amid the log
    (run / "metrics.jsonl").write_bytes(b"".join(log) + b'{"step": 6, "loss": 0.1}\n{"step": 7, "loss": 0.1}\n')
    with pytest.warns(FrepoWarning, match="line\\(s\\) 4 are not records frepo writes"):
        text = write_report(run).read_text()
    assert "- dataset: None, 1 image per class" in text and "pool: None models of Conv width None" in text
    assert "Unreadable evaluation files: eval_broken.json, eval_checksum.json, eval_field.json, eval_latin1" in text
    assert "Last logged step 7" in text
    RunDir(run).truncate_metrics(6)  # a resume from step 6 keeps the log up to it, the damaged line as it was
    assert b"\n\xff\xfe\n" in (run / "metrics.jsonl").read_bytes()
    with pytest.warns(FrepoWarning, match="not records frepo writes"):
        assert [r["step"] for r in RunDir(run).read_metrics() if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # A last line cut by a crash is the log's end, not a stranger: no warning, and a resume drops it.
    with (run / "metrics.jsonl").open("ab") as fh:
        fh.write(b'{"step": 7, "lo')
    (run / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes().replace(b"\xff\xfe\n", b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrepoWarning)
        assert [r["step"] for r in RunDir(run).read_metrics() if "loss" in r] == [1, 2, 3, 4, 5, 6]
    RunDir(run).truncate_metrics(6)
    assert (run / "metrics.jsonl").read_bytes().endswith(b'{"step": 6, "loss": 0.1}\n')


def test_a_report_of_a_damaged_set_shows_the_rest(tmp_path):
    """A truncated distilled.safetensors (no distilled.png yet) failed the whole report after its curves were
    drawn, where a damaged checkpoint is said in the report; an evaluation whose mean is NaN or 1e400 (JSON's
    Infinity) showed as nan and inf."""
    run = _run_dir(tmp_path)
    (run / "distilled.safetensors").write_bytes((run / "distilled.safetensors").read_bytes()[:40])
    (run / "eval_nan.json").write_text('{"mean": NaN, "std": 0.0}')
    (run / "eval_inf.json").write_text('{"mean": 1e400, "std": 0.0}')
    text = write_report(run).read_text()
    assert "(distilled.safetensors cannot be read, so no images are shown: " in text
    assert "Last logged step 5" in text and not (run / "distilled.png").exists()
    assert "Unreadable evaluation files: eval_broken.json, eval_inf.json, eval_nan.json." in text
    assert "| nan" not in text and "| inf" not in text


def test_report_errors(tmp_path):
    with pytest.raises(FrepoError, match="not found"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrepoError, match="holds no frepo run"):
        write_report(tmp_path / "empty")
    run = _run_dir(tmp_path)
    with pytest.raises(FrepoError, match="into the run directory"):
        write_report(run, tmp_path / "elsewhere.md")


def test_reproduce_plan_lists_every_row_with_its_reason(tmp_path, monkeypatch):
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "mnist.npz").write_bytes(b"")
    monkeypatch.setenv("FREPO_DATA_DIR", str(offline))
    rows = reproduce.plan(1, "cpu-small", data_dir=tmp_path / "cache", download=False, cuda=False)
    assert len(rows) == sum(len(entry[2]) for entry in reproduce.TABLE1)  # nothing silently dropped
    status = {(r.dataset, r.ipc): r.status for r in rows}
    assert status[("mnist", 1)].startswith("planned") and status[("mnist", 10)].startswith("planned")
    assert status[("mnist", 50)] == "not run: no cpu-small preset (mnist-ipc50-cpu)"
    assert status[("cifar100", 1)].startswith("not run: no data: cifar100 not found: expected")
    assert "cifar-100-python" in status[("cifar100", 1)]
    assert status[("tiny_imagenet", 1)].startswith("not run: no data: tiny_imagenet not found")
    assert status[("imagenet64", 2)].startswith("not run: no data: imagenet64 not found")
    paper = reproduce.plan(1, "paper", ["mnist"], data_dir=tmp_path, download=False, cuda=False)
    assert all(r.status == "not run: needs a GPU (500000 steps × batch 1024)" for r in paper)
    assert all(r.steps == 500_000 and r.preset == f"mnist-ipc{r.ipc}" for r in paper)
    gpu = reproduce.plan(1, "gpu-small", ["mnist", "fashion_mnist"], data_dir=tmp_path, download=False, cuda=False)
    assert [(r.dataset, r.ipc, r.preset, r.steps, r.batch_size) for r in gpu] == [
        (d, ipc, f"{d}-ipc{ipc}-gpu", steps, 256)
        for d in ("mnist", "fashion_mnist")
        for ipc, steps in ((1, 1000), (10, 2000), (50, 1000))
    ]
    assert [r.status for r in gpu[:3]] == [f"not run: needs a GPU ({s} steps × batch 256)" for s in (1000, 2000, 1000)]
    assert all(r.status.startswith("planned") for r in reproduce.plan(1, "gpu-small", ["mnist"], cuda=True))
    # Reading finished rows (--finished-only) needs neither the data nor a GPU: a GPU table's runs, brought to a
    # CPU machine without the data, were refused as "no finished, evaluated run in --runs-dir".
    read = reproduce.plan(1, "gpu-small", ["mnist"], data_dir=tmp_path, download=False, cuda=False, reading=True)
    assert [r.status for r in read] == ["planned (read from its run)"] * 3
    text = reproduce.reproduce(1, "cpu-small", ["mnist"], out=tmp_path / "r.md", dry_run=True, download=False)
    assert not (tmp_path / "r.md").exists() and "| MNIST | 1 | mnist-ipc1-cpu | 1000 × 256 |" in text
    for bad, message in ((dict(table=2), "only table 1"), (dict(budget="huge"), "unknown budget")):
        with pytest.raises(FrepoError, match=message):
            reproduce.plan(**{"table": 1, "budget": "paper", **bad})
    with pytest.raises(FrepoError, match="not in table 1"):
        reproduce.plan(1, "paper", ["imagenet1k"])
    # <name>.npz in --data-dir is what load_dataset reads, so the plan counts it as data too.
    monkeypatch.delenv("FREPO_DATA_DIR", raising=False)
    (tmp_path / "npz").mkdir()
    (tmp_path / "npz" / "mnist.npz").write_bytes(b"")
    found = reproduce.plan(1, "cpu-small", ["mnist"], data_dir=tmp_path / "npz", download=False)
    assert [r.status for r in found if r.preset] == [f"planned (data: {tmp_path / 'npz' / 'mnist.npz'})"] * 2


def test_reproduce_plans_gpu_rows_only_for_the_device_it_runs_on(tmp_path, monkeypatch):
    """On a machine with a GPU, `--device cpu` planned the GPU budgets' rows and ran them on the CPU (days)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (tmp_path / "mnist.npz").write_bytes(b"")
    monkeypatch.setenv("FREPO_DATA_DIR", str(tmp_path))

    def statuses(device: str) -> set[str]:
        text = reproduce.reproduce(1, "gpu-small", ["mnist"], dry_run=True, download=False, device=device)
        return {line.split("|")[-2].strip() for line in text.splitlines() if line.startswith("| MNIST |")}

    for device in ("cpu", "cpu:0"):
        assert statuses(device) == {f"not run: needs a GPU ({s} steps × batch 256)" for s in (1000, 2000)}, device
    for device in ("auto", "cuda", "cuda:1"):
        assert all(s.startswith("planned") for s in statuses(device)), device
    assert not reproduce.device_is_cuda("tpu:what")


def test_a_row_whose_folder_holds_something_else_is_told_about_runs_dir_not_out(tmp_path, monkeypatch):
    """distill's refusals advise "use another --out"; reproduce has none (a row's folder is under --runs-dir)."""
    monkeypatch.setattr(reproduce, "TABLES", {1: (("digits", "Digits", {1: (80.0, 1.0)}, True),)})
    monkeypatch.setitem(reproduce.BUDGETS, "tiny", reproduce.Budget("tiny", "-tiny", 1, 3, False, "a test budget"))
    monkeypatch.setitem(
        presets.PRESETS, "digits-ipc1-tiny", {"dataset": "digits", "ipc": 1, "steps": 2, "batch_size": 32}
    )
    row = tmp_path / "runs" / "digits-ipc1-tiny"
    row.mkdir(parents=True)
    (row / "config.json").write_text("{damaged")
    text = reproduce.reproduce(1, "tiny", out=tmp_path / "t.md", runs_dir=tmp_path / "runs", device="cpu")
    status = next(line for line in text.splitlines() if line.startswith("| Digits"))
    assert "is unreadable" in status and "use another --runs-dir" in status and "--out" not in status


def test_a_row_out_of_memory_is_recorded_and_the_next_rows_run(tmp_path, monkeypatch):
    """run_row recorded FrepoErrors only: a row too large for the device (torch's OutOfMemoryError, a RuntimeError)
    stopped the whole table with the CLI's line, and no later row ran. Any other error still raises."""
    monkeypatch.setattr(reproduce, "TABLES", {1: (("digits", "Digits", {1: (80.0, 1.0), 10: (90.0, 1.0)}, True),)})
    tiny = reproduce.Budget("tiny", "-tiny", 1, 3, False, "a test budget")
    monkeypatch.setitem(reproduce.BUDGETS, "tiny", tiny)
    for ipc in (1, 10):
        monkeypatch.setitem(
            presets.PRESETS, f"digits-ipc{ipc}-tiny", {"dataset": "digits", "ipc": ipc, "steps": 2, "batch_size": 32}
        )
    started = []

    class Finished:
        distilled_path = tmp_path / "set.safetensors"

    def distill(config, out, progress=False):
        started.append(config.ipc)
        if config.ipc == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.20 GiB. GPU 0 has a total of 79 GiB")
        return Finished()

    class Evaluation:
        mean, std = 91.0, 0.5

    monkeypatch.setattr(importlib.import_module("frepo.jobs.distill"), "distill", distill)
    monkeypatch.setattr(importlib.import_module("frepo.jobs.evaluate"), "evaluate", lambda *a, **k: Evaluation())
    kwargs = dict(out=tmp_path / "t.md", runs_dir=tmp_path / "runs", device="cpu", progress=False)
    reproduce.reproduce(1, "tiny", **kwargs)
    assert started == [1, 10]
    first, second = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert first["status"] == (
        "failed: out of memory (CUDA out of memory. Tried to allocate 7.20 GiB); this row's settings need more "
        "memory than the device has"
    )
    assert second["status"] == "done" and second["measured"] == [91.0, 0.5]

    def broken(config, out, progress=False):
        raise RuntimeError("a bug")

    monkeypatch.setattr(importlib.import_module("frepo.jobs.distill"), "distill", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        reproduce.reproduce(1, "tiny", **{**kwargs, "runs_dir": tmp_path / "other"})


def test_reproduce_runs_a_tiny_table_and_reuses_finished_rows(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reproduce, "TABLES", {1: (("digits", "Digits", {1: (80.0, 1.0)}, True),)})
    tiny = reproduce.Budget("tiny", "-tiny", 1, 3, False, "a test budget")
    monkeypatch.setitem(reproduce.BUDGETS, "tiny", tiny)
    settings = {"dataset": "digits", "ipc": 1, "steps": 2, "batch_size": 32, "width": 8, "num_models": 2}
    settings.update(max_online_updates=2, eval_steps=3, checkpoint_every=2, log_every=1)
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", settings)
    out = tmp_path / "docs" / "reproduction.md"
    kwargs = dict(out=out, runs_dir=tmp_path / "runs", device="cpu", progress=False)
    text = reproduce.reproduce(1, "tiny", **kwargs)
    assert out.read_text() == text
    # Beside the table, its JSON (documented keys) and a plot with the budget in its title.
    summary = json.loads(out.with_suffix(".json").read_text())
    assert set(summary) == set(reproduce.JSON_KEYS) and summary["budget"]["eval_steps"] == 3
    # The command that repeats it: a table whose command named no --runs-dir could not be read back by it.
    assert summary["command"] == (
        f"frepo reproduce --table 1 --budget tiny --out {out} --runs-dir {tmp_path / 'runs'} --device cpu"
    )
    assert f"Command: `{summary['command']}`" in text
    (row,) = summary["rows"]
    assert row["status"] == "done" and row["steps"] == 2 and len(row["measured"]) == 2 and row["published"] == [80, 1]
    assert row["ran_on"] == "cpu" and " (cpu) | done |" in text  # where its run ran, from the run's own record
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size[0] > 100
    notes = f"{reproduce.NOTES_MARKER}\n## Parity\nhand-written\n"
    out.write_text(text + "\n" + notes)
    row = next(line for line in text.splitlines() if line.startswith("| Digits"))
    assert "| digits-ipc1-tiny | 2 × 32 | frepo protocol, 1 model × 3 steps | 80.0 ± 1.0 |" in row
    assert row.endswith("| done |")
    saved = json.loads((tmp_path / "runs" / "digits-ipc1-tiny" / "eval-reproduce-tiny.json").read_text())
    assert saved["steps"] == 3 and saved["protocol"] == "frepo"

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a finished row was evaluated again")

    monkeypatch.setattr(importlib.import_module("frepo.jobs.evaluate"), "evaluate", no_evaluation)
    again = reproduce.reproduce(1, "tiny", **kwargs)
    assert f"| {saved['mean']:.2f} (cpu) | done |" in again
    assert out.read_text() == again + "\n" + notes  # the table rewritten, the notes kept
    # A finished, evaluated run whose checkpoint was pruned is read, not distilled again (which distill refuses).
    pruned = tmp_path / "pruned"
    shutil.copytree(tmp_path / "runs", pruned)
    (pruned / "digits-ipc1-tiny" / "checkpoint.pt").unlink()
    text = reproduce.reproduce(1, "tiny", **{**kwargs, "runs_dir": pruned, "out": tmp_path / "pruned" / "t.md"})
    assert f"| {saved['mean']:.2f} (cpu) | done |" in text

    # A table cut short keeps the rows finished before the cut in its file.
    monkeypatch.setattr(reproduce, "TABLES", {1: (("digits", "Digits", {1: (80.0, 1.0), 10: (90.0, 1.0)}, True),)})
    monkeypatch.setitem(presets.PRESETS, "digits-ipc10-tiny", {**settings, "ipc": 10})
    original_run_row = reproduce.run_row

    def cut_at_the_second_row(row, *args, **kwargs):
        if row.ipc == 10:
            raise KeyboardInterrupt
        original_run_row(row, *args, **kwargs)

    monkeypatch.setattr(reproduce, "run_row", cut_at_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        reproduce.reproduce(1, "tiny", **kwargs)
    assert f"| {saved['mean']:.2f} (cpu) | done |" in out.read_text()
    monkeypatch.setattr(reproduce, "run_row", original_run_row)

    # Ctrl-C inside a row's distillation (its run checkpoints, then raises Interrupted, a KeyboardInterrupt) stops the
    # command: the row is not recorded as failed and the next row does not start.
    started = []

    def interrupted_distill(config, out, progress=False):
        started.append(config.ipc)
        raise Interrupted(f"stopped at step 1; checkpoint written to {out}. Run the same command to resume.")

    with monkeypatch.context() as m:
        m.setattr(importlib.import_module("frepo.jobs.distill"), "distill", interrupted_distill)
        with pytest.raises(Interrupted, match="stopped at step 1"):
            reproduce.reproduce(1, "tiny", **{**kwargs, "runs_dir": tmp_path / "cut"})
    assert started == [1]
    monkeypatch.setattr(reproduce, "TABLES", {1: (("digits", "Digits", {1: (80.0, 1.0)}, True),)})

    # A run directory of other settings: the advice is this command's, not distill's --resume-with-changes.
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", {**settings, "steps": 3})
    with caplog.at_level("WARNING", logger="frepo"):
        changed = reproduce.reproduce(1, "tiny", **kwargs)
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", settings)
    assert "holds a run of other settings (steps: 2 -> 3); delete it to run the tiny preset" in changed
    # Of the same steps but other settings (a batch): its evaluation is not reused as the preset's (it was).
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", {**settings, "batch_size": 64})
    other_batch = reproduce.reproduce(1, "tiny", **kwargs)
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", settings)
    assert "holds a run of other settings (batch_size: 32 -> 64)" in other_batch
    assert "--resume-with-changes" not in changed and "delete it to run the tiny preset" in caplog.text

    # --finished-only reports what has finished and runs nothing for the rest.
    monkeypatch.setattr(importlib.import_module("frepo.jobs.distill"), "distill", no_evaluation)
    reported = reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    assert f"| {saved['mean']:.2f} (cpu) | done |" in reported
    # ... at this budget only: an evaluation of other training steps, or a run of other distillation steps,
    # was reported under the budget's cell (what ran was not what the row said).
    record = tmp_path / "runs" / "digits-ipc1-tiny" / "eval-reproduce-tiny.json"
    # Such a row's measurement in the table is not replaced by "not run": --finished-only runs nothing to
    # make it again (a table of measured rows became one of rows not run, and exited 0).
    measured = out.read_text()
    lost = "found no finished, evaluated run in --runs-dir .* for 1 rows that .* holds measured \\(Digits IPC 1\\)"
    fresh = {**kwargs, "out": tmp_path / "fresh" / "table.md"}
    record.write_text(json.dumps({**saved, "steps": 10}))
    with pytest.raises(FrepoError, match=lost):
        reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    assert out.read_text() == measured
    assert "not run: no finished, evaluated run" in reproduce.reproduce(1, "tiny", finished_only=True, **fresh)
    # ... nor one of another network, protocol, seed or depth written there (read back as the row's measurement)
    for other in ({"arch": "alexnet"}, {"protocol": "krr"}, {"seed": 7}, {"split": "val"}, {"depth": 4}):
        record.write_text(json.dumps({**saved, **other}))
        with pytest.raises(FrepoError, match=lost):
            reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    record.write_text(json.dumps({k: v for k, v in saved.items() if k != "depth"}))  # before results said: 3
    assert f"| {saved['mean']:.2f} (cpu) | done |" in reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    record.write_text(json.dumps(saved))
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", {**settings, "steps": 3})
    with pytest.raises(FrepoError, match=lost):
        reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    monkeypatch.setitem(presets.PRESETS, "digits-ipc1-tiny", settings)
    assert f"| {saved['mean']:.2f} (cpu) | done |" in reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    kwargs["runs_dir"] = fresh["runs_dir"] = tmp_path / "elsewhere"
    with pytest.raises(FrepoError, match=lost):
        reproduce.reproduce(1, "tiny", finished_only=True, **kwargs)
    empty = reproduce.reproduce(1, "tiny", finished_only=True, **fresh)
    assert "| – | not run: no finished, evaluated run in" in empty
    # A JSON beside the table that is not frepo's is said so (its budget a string: an AttributeError)
    stray = tmp_path / "stray" / "table.md"
    stray.parent.mkdir()
    stray.write_text("| table |\n")
    stray.with_suffix(".json").write_text(json.dumps({"table": 1, "budget": "paper"}))
    with pytest.raises(FrepoError, match="holds a table.json frepo did not write, not table 1 at budget tiny"):
        reproduce.check_rewrite(stray, 1, reproduce.BUDGETS["tiny"])
    # Without a table at --out, a JSON or PNG of the names written beside it is replaced only if frepo's: a user's
    # paper/table1.png beside a new paper/table1.md was replaced by the plot.
    stray.unlink()
    with pytest.raises(FrepoError, match="beside it, table.json holds a table.json frepo did not write"):
        reproduce.check_rewrite(stray, 1, reproduce.BUDGETS["tiny"])
    stray.with_suffix(".json").unlink()
    Image.new("RGB", (4, 4)).save(stray.with_suffix(".png"))
    with pytest.raises(FrepoError, match="table.png beside it is no plot frepo drew, and would be replaced"):
        reproduce.check_rewrite(stray, 1, reproduce.BUDGETS["tiny"])
    shutil.copy(out.with_suffix(".png"), stray.with_suffix(".png"))  # a plot of frepo's, as a deleted table left it
    shutil.copy(out.with_suffix(".json"), stray.with_suffix(".json"))
    reproduce.check_rewrite(stray, 1, reproduce.BUDGETS["tiny"])
    # Nor is a table of another budget replaced (a cpu-small table by a gpu-small one of rows not run).
    monkeypatch.setitem(reproduce.BUDGETS, "other", dataclasses.replace(reproduce.BUDGETS["tiny"], name="other"))
    with pytest.raises(FrepoError, match="holds table 1 at budget tiny, not table 1 at budget other: give another"):
        reproduce.reproduce(1, "other", finished_only=True, **kwargs)
    assert out.read_text() == measured

    # The command line's run fails when a row failed, once the table says why (it exited 0 before).
    def failing_distill(config, out, progress=False):
        raise FrepoError("the disk is on fire")

    monkeypatch.setattr(importlib.import_module("frepo.jobs.distill"), "distill", failing_distill)
    kwargs["runs_dir"] = tmp_path / "failing"
    with caplog.at_level("WARNING", logger="frepo"):
        assert "failed: the disk is on fire" in reproduce.reproduce(1, "tiny", **kwargs)
    assert "Digits IPC 1 failed: the disk is on fire; going on with the next row" in caplog.text  # said at once
    with pytest.raises(FrepoError, match=r"1 of 1 rows failed \(first: Digits IPC 1, failed: the disk is on fire; "):
        reproduce.reproduce(1, "tiny", strict=True, **kwargs)
    # ... and the row keeps the measurement the table held, said so: a rerun where a row failed, could not run
    # (no GPU, no data) or was still to come replaced it with "failed" or "not run".
    failed_row = next(line for line in out.read_text().splitlines() if line.startswith("| Digits | 1 |"))
    assert (
        f"| {saved['mean']:.2f} (cpu) | failed: the disk is on fire; shown: the measurement of the table this"
        in failed_row
    )
    assert json.loads(out.with_suffix(".json").read_text())["rows"][0]["measured"][0] == saved["mean"]
    assert f"run {tmp_path / 'runs' / 'digits-ipc1-tiny'})" in failed_row
    # ... of the same run only: a budget redefined under its name (other steps) measures another.
    earlier = json.loads(out.with_suffix(".json").read_text())
    earlier["rows"][0]["steps"] = 99
    out.with_suffix(".json").write_text(json.dumps(earlier))
    redefined = next(line for line in reproduce.reproduce(1, "tiny", **kwargs).splitlines() if "| Digits" in line)
    assert redefined.endswith("| – | failed: the disk is on fire |")
    # A table of other datasets (--datasets) keeps this dataset's rows: they vanished from --out.
    monkeypatch.setattr(
        reproduce,
        "TABLES",
        {1: (("digits", "Digits", {1: (80.0, 1.0)}, True), ("cifar10", "CIFAR-10", {1: (46.8, 0.7)}, True))},
    )
    digits_row = next(line for line in out.read_text().splitlines() if line.startswith("| Digits | 1 |"))
    with monkeypatch.context() as m:  # a row without a finished run says what it lacks here too (no data)
        m.setenv("FREPO_DATA_DIR", str(tmp_path / "no-data"))
        m.setitem(presets.PRESETS, "cifar10-ipc1-tiny", {**settings, "dataset": "cifar10"})
        other = reproduce.reproduce(
            1, "tiny", ["cifar10"], finished_only=True, data_dir=tmp_path, download=False, **kwargs
        )
    assert "not run: no finished, evaluated run in " in other and "(--finished-only); here: no data offline" in other
    assert digits_row in other.splitlines() and "| CIFAR-10 | 1 |" in other
    assert [r["dataset"] for r in json.loads(out.with_suffix(".json").read_text())["rows"]] == ["digits", "cifar10"]
    # A table without its JSON (one written before frepo wrote one) cannot keep them: refused before the rows run
    # (it was rewritten without them, and exited 0).
    out.with_suffix(".json").unlink()
    before = out.read_text()
    with pytest.raises(FrepoError, match="holds a table without reproduction.json beside it .* cannot be kept: give"):
        reproduce.reproduce(1, "tiny", ["cifar10"], finished_only=True, data_dir=tmp_path, download=False, **kwargs)
    assert out.read_text() == before and digits_row in before
    # ... even with --datasets naming every dataset of the table (the repository's docs/reproduction.md has no
    # JSON: rewritten from the current folder's runs); moved away, it is written afresh
    with pytest.raises(FrepoError, match="holds a table without"):
        reproduce.reproduce(1, "tiny", ["digits", "cifar10"], finished_only=True, data_dir=tmp_path, **kwargs)
    out.rename(out.with_suffix(".old"))
    notes = tmp_path / "docs" / "notes.txt"  # a user's file: not "a table without notes.json beside it"
    notes.write_text("my notes")
    with pytest.raises(FrepoError, match="--out .*notes.txt is a file frepo did not write \\(no reproduction table\\)"):
        reproduce.reproduce(1, "tiny", finished_only=True, data_dir=tmp_path, **{**kwargs, "out": notes})
    assert notes.read_text() == "my notes"
    every = reproduce.reproduce(
        1, "tiny", ["digits", "cifar10"], finished_only=True, data_dir=tmp_path, download=False, **kwargs
    )
    assert "| Digits | 1 |" in every and "| CIFAR-10 | 1 |" in every
    # An --out that cannot be written is refused before the rows run, not once they are done.
    unrun = lambda *a, **k: pytest.fail("a row ran")  # noqa: E731
    monkeypatch.setattr(importlib.import_module("frepo.jobs.distill"), "distill", unrun)
    (tmp_path / "a-file").write_text("")
    for bad in (tmp_path, tmp_path / "a-file" / "table.md"):
        with pytest.raises(FrepoError, match="--out"):
            reproduce.reproduce(1, "tiny", **{**kwargs, "out": bad, "finished_only": False})
    # ... and so is a --runs-dir (each row failed on its own, naming its run's --out)
    with pytest.raises(FrepoError, match="cannot write into --runs-dir"):
        reproduce.reproduce(1, "tiny", **{**kwargs, "runs_dir": tmp_path / "a-file" / "runs"})
    with pytest.raises(FrepoError, match="is not a folder"):
        reproduce.reproduce(1, "tiny", **{**kwargs, "runs_dir": tmp_path / "a-file"})
    with pytest.raises(FrepoError, match="a-file exists and is not a folder"):  # it said "File exists"
        reproduce.reproduce(1, "tiny", finished_only=True, **{**kwargs, "out": tmp_path / "a-file" / "r.md"})


def test_report_says_where_a_run_stands_and_what_a_resume_changed(tmp_path, monkeypatch):
    """A run's report said nothing of a run cut short (nor from where its command resumes it), refused one
    stopped before its first log line, and showed only the last lr of a run continued with another."""
    import subprocess
    import sys

    from frepo.jobs.distill import distill

    settings = dict(steps=4, width=8, num_models=2, batch_size=32, eval_every=0, checkpoint_every=1, log_every=1)
    out = tmp_path / "run"
    with ctrl_c_after_steps(3), pytest.raises(Interrupted):
        distill(presets.resolve("digits", 1, overrides=settings), out)
    text = write_report(out).read_text()
    assert "**Unfinished**: stopped at its checkpoint of step 3 of 4" in text
    assert "the same `frepo distill` command resumes it from there" in text
    # A kill after a log line, before its checkpoint: that line, which the resume discards, was quoted as the
    # last logged step.
    lines = (out / "metrics.jsonl").read_text()
    past = {**json.loads(lines.splitlines()[-1]), "step": 4, "loss": 123.0}
    (out / "metrics.jsonl").write_text(lines + json.dumps(past) + "\n")
    text = write_report(out).read_text()
    assert "Last logged step 3: loss" in text and "123" not in text
    assert "(1 metrics line past the checkpoint left out: what a kill left there, the same command discards" in text
    (out / "metrics.jsonl").write_text(lines)
    # A torchrun run is continued by torchrun with as many processes: config.json records them (it did not).
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["processes"] == 1
    (out / "config.json").write_text(json.dumps({**config, "environment": {**config["environment"], "processes": 2}}))
    text = write_report(out).read_text()
    assert "the same `torchrun ... -m frepo distill` command (2 processes in all) resumes it from there" in text
    (out / "config.json").write_text(json.dumps(config))
    # A checkpoint this machine cannot read may be good: no advice to delete it (a damaged one gets it).
    with monkeypatch.context() as patched:

        def refused(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        patched.setattr(torch, "load", refused)
        text = write_report(out).read_text()
    assert "**Unfinished**: its checkpoint cannot be read here (Permission denied)." in text
    good = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(good[:100])
    assert "its checkpoint is damaged; delete checkpoint.pt to restart the run" in write_report(out).read_text()
    (out / "checkpoint.pt").write_bytes(good)

    # Another process distilling it now: said, with the pid to wait for.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; f=os.open(sys.argv[1], os.O_RDWR); "
            "os.ftruncate(f, 0); os.write(f, b'4242'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)",
            str(out / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "**Running**: frepo process 4242 is distilling it now, last checkpoint at step 3 of 4" in (
            write_report(out).read_text()
        )
        # ... and one still loading its data, before its config.json: said so, not "holds no frepo run"
        starting = tmp_path / "starting"
        starting.mkdir()
        os.link(out / ".lock", starting / ".lock")  # the same locked file, as its holder's
        with pytest.raises(FrepoError, match="is a run starting now \\(frepo process 4242 holds it\\)"):
            write_report(starting)
    finally:
        holder.kill()
        holder.wait()

    distill(presets.resolve("digits", 1, overrides={**settings, "lr": 1e-4}), out, resume_with_changes=True)
    text = write_report(out).read_text()
    assert "**Finished**: its set is of step 4 of 4." in text
    # the defaults it resolved, as its set records them ("preprocessing auto, validation hold-out default")
    assert "preprocessing auto (standard), validation hold-out default (125 images)" in text
    assert "- continued at step 3 with lr " in text and " -> 0.0001" in text

    # Stopped before its first log line (config.json and nothing else): reported, not refused.
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text((out / "config.json").read_text())
    text = write_report(early).read_text()
    assert "**Unfinished**: stopped before its first checkpoint" in text and "No training metrics logged." in text


def test_networks_that_predict_one_class_are_said_to_have_learnt_nothing():
    """At 20 steps every network predicted one class: the set, the random subset and the full split all scored
    10.56 %, and DD-Ranking's metrics from them were printed as measured. Such a score is exactly one class's
    share of the split."""
    import warnings

    from frepo.jobs.evaluate import warn_of_untrained

    labels = torch.tensor([0] * 3 + [1] * 3 + [2] * 4)  # shares 30, 30, 40 %
    untrained = EvalResult("frepo", "conv", [30.0, 40.0], 35.0, 5.0, 20, 1.0)
    with pytest.warns(UserWarning, match=r"every conv network scored exactly one class's share of the test split "):
        warn_of_untrained([untrained], labels, "test")
    # A set of one class (--classes 2) can teach no other: "give more training" could not help.
    with pytest.warns(UserWarning, match=r"the set's images are all of class 2, so a network trained on it predicts"):
        warn_of_untrained([untrained], labels, "test", set_classes=[2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for accuracies in ([30.0, 50.0], [90.0, 90.0], [10.0]):  # one network learnt; or far above chance
            warn_of_untrained([EvalResult("frepo", "conv", accuracies, 0.0, 0.0, 20, 1.0)], labels, "test")
        # a split of one class (a --classes set's hold-out): every network rightly predicts it
        perfect = EvalResult("frepo", "conv", [100.0, 100.0], 100.0, 0.0, 20, 1.0)
        warn_of_untrained([perfect], torch.tensor([3, 3, 3]), "val")


def test_an_evaluation_record_s_numbers_are_numbers():
    """A hand-edited or damaged record (its checksum still the set's) crashed the whole table on `"mean": "x"`."""
    assert reproduce._number(97.5) == 97.5 and reproduce._number(1) == 1.0
    assert reproduce._number("97.5") is None and reproduce._number(True) is None and reproduce._number(None) is None


@pytest.mark.parametrize("suffix", [".json", ".png", ".JSON"])
def test_reproduce_refuses_an_out_its_own_json_or_plot_would_overwrite(tmp_path, suffix):
    """`--out t.json` wrote the Markdown table over its JSON (the next call refused the unreadable JSON); `--out
    t.png` the plot over the table (the next call a UnicodeDecodeError traceback)."""
    out = tmp_path / f"t{suffix}"
    with pytest.raises(FrepoError, match=r"the table is Markdown.*give e\.g\. reproduction\.md"):
        reproduce.reproduce(1, "cpu-small", finished_only=True, out=out, runs_dir=tmp_path / "runs")
    assert not list(tmp_path.iterdir())
    with pytest.raises(FrepoError, match="--out names no file"):
        reproduce.reproduce(1, "cpu-small", finished_only=True, out="", runs_dir=tmp_path / "runs")
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")  # a file that is no text: no notes to keep
    assert reproduce.kept_notes(tmp_path / "t.png") == ""


def test_rows_kept_from_an_earlier_table_take_the_table_s_published_numbers_now(tmp_path):
    """`--datasets mnist` rewriting a table kept the other datasets' rows whole: their published numbers, labels
    and `checked` as the earlier table said them (a corrected number reached only the datasets rewritten), and a
    row the table no longer has."""
    out = tmp_path / "reproduction.md"
    row = {"dataset": "cifar10", "label": "old", "ipc": 1, "published": [11.1, 0.1], "checked": False}
    row.update(preset="cifar10-ipc1-cpu", steps=300, batch_size=256, status="done", measured=[40.0, 0.5])
    row.update(run_dir="runs/c", ran_on="cpu")
    gone = {**row, "ipc": 3}  # an IPC the table has no more
    earlier = {"table": 1, "budget": {"name": "cpu-small"}, "rows": [row, gone]}
    out.with_suffix(".json").write_text(json.dumps(earlier))
    (kept,) = reproduce.kept_rows(out, 1, reproduce.BUDGETS["cpu-small"], ["mnist"])
    assert (kept.label, kept.published, kept.checked) == ("CIFAR-10", (46.8, 0.7), True)
    assert kept.measured == (40.0, 0.5) and kept.status == "done" and kept.ran_on == "cpu"  # the measurement stays


def test_the_plot_states_the_evaluation_budget_and_marks_carried_rows(tmp_path, monkeypatch):
    """The plot's title named the distillation steps and the model count, not the evaluation's steps; a row carried
    from the table it rewrote (its run failed now) was drawn as a fresh measurement."""
    import matplotlib.axes

    titles, hollow = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, **k: titles.append(text))
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "errorbar",
        lambda self, *a, **k: hollow.append(k.get("mfc") == "none") or real(self, *a, **k),
    )
    tiny = reproduce.Budget("tiny", "-tiny", 1, 3, False, "a test budget")
    done = reproduce.Row("digits", "Digits", 1, (80.0, 1.0), True, steps=2, status="done", measured=(70.0, 1.0))
    carried = reproduce.Row(
        "digits", "Digits", 10, (90.0, 1.0), True, steps=2, status="failed: x", measured=(85.0, 1.0)
    )
    reproduce.plot([done, carried], 1, tiny, tmp_path / "t.png")
    assert "frepo protocol, 1 model × 3 steps" in titles[0] and "hollow: carried" in titles[0]
    assert hollow == [False, True]
