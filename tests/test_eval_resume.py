"""`frepo evaluate` after an interruption: the networks that finished are read back, the others are
trained, and the numbers are those of an uninterrupted run; a record under other settings, of networks
trained together but not all finished, or damaged, is not used."""

from __future__ import annotations

import dataclasses
import json

import pytest

from frepo.cli import main
from frepo.data import default_data_dir
from frepo.eval import protocols

EVAL = ["--models", "3", "--steps", "15", "--width", "8", "--seed", "4"]


@pytest.fixture(scope="module")
def set_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "digits2.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "2", "--method", "random", "--out", str(path)]) == 0
    return path


def _count_trainings(monkeypatch, stop_at: int | None = None) -> list[str]:
    """Record the streams of the networks trained one by one (and of those trained together, with a
    "together:" prefix); raise KeyboardInterrupt instead of training the `stop_at`-th (1-based)."""
    trained: list[str] = []
    original = protocols.PROTOCOLS["frepo"]

    def one(setup, options, stream):
        if stop_at is not None and len(trained) + 1 == stop_at:
            raise KeyboardInterrupt
        trained.append(stream)
        return original.train_and_test(setup, options, stream)

    def many(setup, options, streams, how):
        if stop_at is not None:
            raise KeyboardInterrupt
        trained.extend(f"together:{s}" for s in streams)
        return original.train_and_test_many(setup, options, streams, how)

    patched = dataclasses.replace(original, train_and_test=one, train_and_test_many=many)
    monkeypatch.setitem(protocols.PROTOCOLS, "frepo", patched)
    return trained


def _evaluate(set_file, tmp_path, name, *flags) -> tuple[int, dict | None]:
    out = tmp_path / f"{name}.json"
    code = main(["evaluate", str(set_file), *EVAL, *flags, "--json", str(out)])
    return code, (json.loads(out.read_text()) if out.is_file() else None)


def _records() -> list:
    return sorted((default_data_dir() / "evaluations").glob("*.json"))


def test_an_interrupted_evaluation_trains_only_the_missing_networks(set_file, tmp_path, monkeypatch, capsys):
    code, straight = _evaluate(set_file, tmp_path, "straight", "--together", "off")
    assert code == 0 and _records() == []  # a completed evaluation leaves no record behind
    with monkeypatch.context() as m:
        trained = _count_trainings(m, stop_at=3)
        code, partial = _evaluate(set_file, tmp_path, "resumed", "--together", "off")
    assert code == 130 and partial is None and trained == ["eval/model0", "eval/model1"]
    assert "2 finished network(s) kept" in capsys.readouterr().err and len(_records()) == 1
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        code, resumed = _evaluate(set_file, tmp_path, "resumed", "--together", "off")
    assert code == 0 and trained == ["eval/model2"] and _records() == []
    assert resumed["accuracies"] == straight["accuracies"]  # bit for bit: the same networks


def test_a_record_is_read_back_only_under_the_same_settings(set_file, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=2)
        assert _evaluate(set_file, tmp_path, "a", "--together", "off")[0] == 130
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        assert _evaluate(set_file, tmp_path, "b", "--together", "off", "--steps", "16")[0] == 0
    assert trained == ["eval/model0", "eval/model1", "eval/model2"]
    assert len(_records()) == 1  # the first evaluation's record waits for its own command
    (record,) = _records()
    record.write_text("{not json")  # damaged (say, a full disk): warned about, ignored, replaced
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        assert _evaluate(set_file, tmp_path, "a", "--together", "off")[0] == 0
    assert trained == ["eval/model0", "eval/model1", "eval/model2"] and _records() == []


def test_networks_trained_together_are_kept_all_or_none(set_file, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=1)
        assert _evaluate(set_file, tmp_path, "t", "--together", "on")[0] == 130
    assert _records() == []  # nothing finished
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        code, together = _evaluate(set_file, tmp_path, "t", "--together", "on")
    assert code == 0 and trained == [f"together:eval/model{i}" for i in range(3)]
    assert together["together_mode"] == "stacked"
