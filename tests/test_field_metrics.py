"""DD-Ranking's IOR, HLR and LRS under frepo's recipes (`frepo evaluate --field-metrics`)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from test_cli import run_cli

from frepo.jobs import field_metrics as fm


def test_the_label_robust_score_is_ddrankings_formula():
    # Independent: LRS = 100 (e^α − e^−1) / (e − e^−1), α = IOR/2 − HLR/2 (fractions).
    for ior, hlr in ((0.0, 0.0), (0.05, 0.3), (-0.1, 0.6), (1.0, 0.0), (-1.0, 1.0)):
        alpha = 0.5 * ior - 0.5 * hlr
        assert fm.label_robust_score(ior, hlr) == pytest.approx(
            100 * (math.exp(alpha) - 1 / math.e) / (math.e - 1 / math.e), rel=1e-12
        )
    assert fm.label_robust_score(1.0, -1.0) == pytest.approx(100.0)  # the best case
    assert fm.label_robust_score(-1.0, 1.0) == pytest.approx(0.0)  # the worst


def test_a_random_subset_improves_over_random_by_exactly_zero(tmp_path, capsys, monkeypatch):
    """By construction: `frepo subset --method random --seed 0` is the random reference of seed 0, trained
    with the same recipe and seeds, so its IOR is 0 to the last bit; the references are cached."""
    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "cache"))
    subset = tmp_path / "random.safetensors"
    assert run_cli(["subset", "--dataset", "digits", "--ipc", 2, "--seed", 0, "--out", subset], capsys)[0] == 0
    report = tmp_path / "eval.json"
    flags = ["evaluate", subset, "--models", 1, "--steps", 100, "--width", 16, "--field-metrics", "--json", report]
    code, stdout, err = run_cli(flags, capsys)
    assert code == 0, err
    assert "evaluate (conv, frepo, random subset, IPC 2)" in err and "evaluate (conv, frepo, full training" in err
    metrics = json.loads(report.read_text())["field_metrics"]
    assert set(metrics) == set(fm.KEYS)
    from frepo.eval.results import RESULT_KEYS

    assert set(json.loads(report.read_text())) - {"results"} <= set(RESULT_KEYS)  # every key documented
    assert metrics["ior"] == 0.0 and metrics["random"]["mean"] == metrics["set_hard"]["mean"]
    assert metrics["random"]["ipc"] == 2 and metrics["set_own_labels"] == metrics["set_hard"]["mean"]
    assert metrics["hlr"] == pytest.approx(metrics["full"]["mean"] - metrics["set_hard"]["mean"])
    # the full training split against 20 images: 69.8 % against 56.5 % here at 100 steps (at 30: 26.5 and 23.3)
    assert metrics["full"]["mean"] > metrics["set_hard"]["mean"]
    assert metrics["lrs"] == pytest.approx(fm.label_robust_score(0.0, metrics["hlr"] / 100))
    assert "IOR +0.00" in stdout
    cached = sorted(p.name.split("-")[1] for p in (tmp_path / "cache" / "field_metrics").glob("*.json"))
    assert cached == ["full", "random"]

    # A second run reads both references from the cache: only the set itself is trained.
    calls = []
    real = fm.evaluate_set
    monkeypatch.setattr(fm, "evaluate_set", lambda *a, **k: calls.append(1) or real(*a, **k))
    code, _, err = run_cli(flags, capsys)
    assert code == 0 and calls == [] and json.loads(report.read_text())["field_metrics"] == metrics
    # ... and says so (four identical bars ran before, none saying which reference each was)
    assert "field metrics: the random subset's accuracy read from" in err
    assert "field metrics: the full training split's accuracy read from" in err
    assert metrics["recipe"]["depth"] == 3  # resolved, as the set's own evaluation resolves it
    # ... a reference of another depth is another (`--depth 2`, or a set the default resolves to 4, read the depth
    # 3 references of the cache)
    code, _, err = run_cli([*flags, "--depth", 2], capsys)
    assert code == 0 and calls and json.loads(report.read_text())["field_metrics"]["recipe"]["depth"] == 2


def test_learned_labels_are_replaced_by_class_ids_and_uneven_sets_are_refused(tmp_path, capsys, monkeypatch):
    from frepo.base.errors import FrepoError
    from frepo.io.artifact import load_distilled
    from frepo.jobs.evaluate import configure, run

    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "cache"))
    subset = tmp_path / "random.safetensors"
    assert run_cli(["subset", "--dataset", "digits", "--ipc", 2, "--seed", 0, "--out", subset], capsys)[0] == 0
    ds = load_distilled(subset)
    # Learned labels whose argmax is the class: the hard-label accuracy is the subset's, the own one differs.
    learned = dataclasses.replace(ds, labels=torch.eye(10)[ds.labels] * 2.0 - 0.3)
    config, source = configure(models=1, steps=30, width=16)
    trained_on = []
    real = fm.evaluate_set
    monkeypatch.setattr(fm, "evaluate_set", lambda data, *a, **k: trained_on.append(data.labels) or real(data, *a, **k))
    (result,) = run(learned, config, source, field_metrics=True)
    metrics = result.extra["field_metrics"]
    assert metrics["ior"] == 0.0 and metrics["set_own_labels"] == result.mean
    # The set again on its class ids (the argmax), then the random subset and the full split.
    assert torch.equal(trained_on[0], ds.labels) and [t.ndim for t in trained_on] == [1, 1, 1]
    uneven = dataclasses.replace(ds, images=ds.images[1:], labels=ds.labels[1:])
    import frepo.jobs.evaluate

    # Refused before the set's own networks train (after them, their cache record was left behind).
    monkeypatch.setattr(frepo.jobs.evaluate, "evaluate_set", lambda *a, **k: pytest.fail("a network trained"))
    with pytest.raises(FrepoError, match="same number of images in every class"):
        run(uneven, config, source, field_metrics=True)
    # So is a full split too large to train on in memory (Tiny ImageNet's 4.7 GB at the real limit).
    monkeypatch.setattr(fm, "STREAM_AUTO_BYTES", 100_000)
    with pytest.raises(FrepoError, match=r"full-data reference of digits is 0\.\d+ GB .* HLR and LRS cannot"):
        run(ds, config, source, field_metrics=True)
    with pytest.raises(FrepoError, match="field_metrics must be True or False, got 'no'"):
        run(ds, config, source, field_metrics="no")  # "no" is true: it computed them


def test_a_cache_that_cannot_be_written_costs_a_recomputation_not_the_result(tmp_path, monkeypatch, caplog):
    """A full or read-only cache raised the WriteError of the atomic write (a FrepoError, not the OSError caught)
    after the full-split reference had trained: the evaluation exited 2 with no result."""
    from frepo.base.atomic import WriteError
    from frepo.eval import EvalResult

    def full_disk(path, text):
        raise WriteError(f"no space left on the device while writing {path}")

    monkeypatch.setattr(fm, "atomic_write_text", full_disk)
    result = EvalResult("frepo", "conv", [50.0, 70.0], mean=60.0, std=10.0, steps=10, seconds=1.0)
    entry = fm._cached_accuracy(tmp_path / "ref.json", lambda: result, "full training split")
    assert entry == fm._summary(result) and not (tmp_path / "ref.json").exists()
    assert "cannot keep the full training split's accuracy" in caplog.text and "computed again" in caplog.text


def test_a_reference_is_cached_per_training_mode_and_machine(monkeypatch):
    """The references' cache key held the recipe only: a reference trained stacked, on another device, thread
    count or version (a cache may be shared) was subtracted from the set's accuracy trained here."""
    from frepo.eval import EvalConfig

    base = fm._recipe(EvalConfig(), "conv")
    assert fm._recipe(EvalConfig(), "conv") == base
    assert fm._recipe(EvalConfig(together="on"), "conv") != fm._recipe(EvalConfig(together="off"), "conv")
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads + 1)
    assert fm._recipe(EvalConfig(), "conv") != base
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert fm._recipe(EvalConfig(), "conv") != base


@pytest.mark.parametrize("learned", [False, True])
def test_an_interrupted_reference_trains_only_its_missing_networks(tmp_path, capsys, monkeypatch, learned):
    """Ctrl-C in the full split's reference (38 of 45 minutes in docs/evaluation.md's measurement) lost its
    finished networks: the same command trained them all again. Each is kept now as it finishes, and so are
    those of a distilled set's evaluation on its class ids, which no cache holds."""
    from conftest import counted_protocol
    from test_cli import FAST

    from frepo.eval import protocols

    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "cache"))
    subset = tmp_path / "random.safetensors"
    assert run_cli(["subset", "--dataset", "digits", "--ipc", 2, "--seed", 0, "--out", subset], capsys)[0] == 0
    evaluated = subset
    if learned:  # learned labels (2-D): the set is also trained on its class ids
        evaluated = tmp_path / "run"
        distill = ["distill", "--dataset", "digits", "--ipc", 2, "--steps", 2, "--out", evaluated, *FAST]
        assert run_cli(distill, capsys)[0] == 0
    flags = ["evaluate", evaluated, "--models", 2, "--steps", 30, "--width", 8, "--field-metrics", "--together", "off"]
    original, trained = protocols.PROTOCOLS["frepo"], []
    stop_at = 8 if learned else 6  # the full split's second network
    monkeypatch.setitem(protocols.PROTOCOLS, "frepo", counted_protocol(original, trained, stop_at))
    assert run_cli(flags, capsys)[0] == 130
    assert len(trained) == stop_at - 1  # the set's 2 (and 2 on class ids), the random subset's 2, the full's first
    trained.clear()
    monkeypatch.setitem(protocols.PROTOCOLS, "frepo", counted_protocol(original, trained))
    code, _, err = run_cli([*flags, "--json", tmp_path / "eval.json"], capsys)
    assert code == 0, err
    assert trained == ["eval/model1"]  # the rest read back, the random subset from the cache
    assert list((tmp_path / "cache" / "evaluations").glob("*.json")) == []  # each record goes with its result
