"""`frepo evaluate` after an interruption: the networks that finished are read back, the others are
trained, and the numbers are those of an uninterrupted run; a record under other settings, of networks
trained together but not all finished, or damaged, is not used."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from frepo.cli import main
from frepo.data import default_data_dir
from frepo.eval import protocols

EVAL = ["--models", "3", "--steps", "15", "--width", "8", "--seed", "4"]


@pytest.fixture(autouse=True)
def cache_of_its_own(tmp_path, monkeypatch):
    """Each test its own cache folder: `_records()` counts every record in it, so one another test left
    (or this file's tests run in another order) would fail the counts."""
    monkeypatch.setenv("FREPO_CACHE", str(tmp_path / "frepo-cache"))


@pytest.fixture(scope="module")
def set_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "digits2.safetensors"
    assert main(["subset", "--dataset", "digits", "--ipc", "2", "--method", "random", "--out", str(path)]) == 0
    return path


def _count_trainings(monkeypatch, stop_at: int | None = None, protocol: str = "frepo") -> list[str]:
    """Record the networks trained, "<arch>:<stream>", one by one or together ("together:" first); raise
    KeyboardInterrupt instead of the `stop_at`-th (1-based) training call (one per network, or per group
    trained together)."""
    trained: list[str] = []
    calls = {"n": 0}
    original = protocols.PROTOCOLS[protocol]

    def interrupt_here() -> None:
        calls["n"] += 1
        if stop_at is not None and calls["n"] == stop_at:
            raise KeyboardInterrupt

    def one(setup, options, stream):
        interrupt_here()
        trained.append(f"{setup.arch}:{stream}")
        return original.train_and_test(setup, options, stream)

    def many(setup, options, streams, how):
        interrupt_here()
        trained.extend(f"together:{setup.arch}:{s}" for s in streams)
        return original.train_and_test_many(setup, options, streams, how)

    patched = dataclasses.replace(original, train_and_test=one, train_and_test_many=many)
    monkeypatch.setitem(protocols.PROTOCOLS, protocol, patched)
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
    assert code == 130 and partial is None and trained == ["conv:eval/model0", "conv:eval/model1"]
    assert "2 finished networks kept" in capsys.readouterr().err and len(_records()) == 1
    with monkeypatch.context() as m:  # cut before any network finished: nothing is said to be kept
        _count_trainings(m, stop_at=1)
        assert _evaluate(set_file, tmp_path, "early", "--together", "off", "--seed", "7")[0] == 130
    assert "stopped before any network finished: the same command starts it again" in capsys.readouterr().err
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        code, resumed = _evaluate(set_file, tmp_path, "resumed", "--together", "off")
    assert code == 0 and trained == ["conv:eval/model2"] and _records() == []
    assert resumed["accuracies"] == straight["accuracies"]  # bit for bit: the same networks
    assert resumed["networks_read_back"] == 2 and straight["networks_read_back"] == 0


def test_an_interrupted_dsa_evaluation_resumes_with_the_same_networks(set_file, tmp_path, monkeypatch):
    """The dsa protocol (its own optimiser, epochs and augmentation) resumes through the same record."""
    dsa = ["--protocol", "dsa", "--models", "3", "--epochs", "3", "--width", "8", "--seed", "4"]

    def evaluate(name: str) -> tuple[int, dict | None]:
        out = tmp_path / f"{name}.json"
        code = main(["evaluate", str(set_file), *dsa, "--json", str(out)])
        return code, (json.loads(out.read_text()) if out.is_file() else None)

    code, straight = evaluate("straight")
    assert code == 0 and straight["protocol"] == "dsa"
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=2, protocol="dsa")
        assert evaluate("resumed")[0] == 130
    with monkeypatch.context() as m:
        trained = _count_trainings(m, protocol="dsa")
        code, resumed = evaluate("resumed")
    assert code == 0 and trained == ["convnet:dsa/model1", "convnet:dsa/model2"]
    assert resumed["accuracies"] == straight["accuracies"] and resumed["networks_read_back"] == 1


def test_a_failed_write_of_the_results_keeps_the_finished_networks(set_file, tmp_path, monkeypatch, capsys):
    """A full disk at --csv removed the record before the files were written: the same command retrained all."""
    from frepo.base.atomic import WriteError
    from frepo.eval import results

    def full_disk(results_, path):
        raise WriteError(f"No space left on device while writing {path}")

    with monkeypatch.context() as m:
        m.setattr(results, "write_csv", full_disk)
        code = main(["evaluate", str(set_file), *EVAL, "--together", "off", "--csv", str(tmp_path / "r.csv")])
    assert code == 2 and "No space left on device" in capsys.readouterr().err and len(_records()) == 1
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        assert main(["evaluate", str(set_file), *EVAL, "--together", "off", "--csv", str(tmp_path / "r.csv")]) == 0
    assert trained == [] and _records() == [] and (tmp_path / "r.csv").is_file()


def test_a_record_is_read_back_only_under_the_same_settings(set_file, tmp_path, monkeypatch):
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=2)
        assert _evaluate(set_file, tmp_path, "a", "--together", "off")[0] == 130
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        assert _evaluate(set_file, tmp_path, "b", "--together", "off", "--steps", "16")[0] == 0
    assert trained == [f"conv:eval/model{i}" for i in range(3)]
    assert len(_records()) == 1  # the first evaluation's record waits for its own command
    (record,) = _records()
    record.write_text("{not json")  # damaged (say, a full disk): warned about, ignored, replaced
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        assert _evaluate(set_file, tmp_path, "a", "--together", "off")[0] == 0
    assert trained == [f"conv:eval/model{i}" for i in range(3)] and _records() == []


def test_a_record_is_keyed_on_what_the_settings_resolve_to():
    """An interrupted `--dsa-strategy none` evaluation (1000 epochs before that default became 300), or one of a
    hand-made MNIST set (flipped before its dataset decided): resumed under the same settings and version, its
    old networks were mixed with new ones under the new label."""
    from frepo.eval import EvalConfig
    from frepo.eval.finished import evaluation_key
    from frepo.eval.protocols.dsa import STRATEGY, DsaOptions

    plain, none = EvalConfig(protocol="dsa"), EvalConfig(protocol="dsa", dsa=DsaOptions(dsa_strategy="none"))
    assert evaluation_key("s", none, "convnet", "t", True, 3)["resolved"] == {
        "mirror_invariant": True,
        "dsa_epochs": 300,
        "depth": 3,
    }
    assert evaluation_key("s", plain, "convnet", "t", True, 3)["resolved"]["dsa_epochs"] == 1000
    assert evaluation_key("s", plain, "convnet", "t", True, 3) != evaluation_key("s", plain, "convnet", "t", False, 3)
    # the defaults given by hand are the defaults: `--epochs 1000` or the whole default strategy trained again
    spelled = EvalConfig(protocol="dsa", dsa=DsaOptions(epochs=1000, dsa_strategy=STRATEGY))
    assert evaluation_key("s", spelled, "convnet", "t", True, 3) == evaluation_key("s", plain, "convnet", "t", True, 3)
    # the network's depth as the set resolves it (a Tiny ImageNet set's recorded 4; was 3 before 2026-12-08)
    assert evaluation_key("s", plain, "convnet", "t", True, 4) != evaluation_key("s", plain, "convnet", "t", True, 3)
    fewer = EvalConfig(protocol="dsa", dsa=DsaOptions(epochs=999))
    assert evaluation_key("s", fewer, "convnet", "t", True, 3) != evaluation_key("s", plain, "convnet", "t", True, 3)


def test_a_record_is_found_under_any_name_of_its_device(monkeypatch):
    """`--device auto` resumed as `--device cuda:0` (one GPU; here the host, `cpu` and `cpu:0`) retrained the finished
    networks: the key held the name given. Another kind of device is another key."""
    from frepo.eval import EvalConfig
    from frepo.eval.finished import evaluation_key

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # `auto` is the host here on any machine
    keys = [evaluation_key("s", EvalConfig(device=name), "convnet", "t", True, 3) for name in ("auto", "cpu", "cpu:0")]
    assert keys[0] == keys[1] == keys[2] and keys[0]["device"] == "cpu"


def test_networks_trained_together_are_kept_all_or_none(set_file, tmp_path, monkeypatch):
    """Stacked networks finish together: an architecture interrupted mid-way is trained again whole; one
    that finished is read back whole, as stacked."""
    flags = ("--together", "on", "--arch", "conv,mlp")
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=1)
        assert _evaluate(set_file, tmp_path, "t", *flags)[0] == 130
    assert _records() == []  # nothing finished
    with monkeypatch.context() as m:
        trained = _count_trainings(m, stop_at=2)  # conv's 3 networks finish, mlp's are interrupted
        assert _evaluate(set_file, tmp_path, "t", *flags)[0] == 130
    assert trained == [f"together:conv:eval/model{i}" for i in range(3)] and len(_records()) == 1  # conv's
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        code, together = _evaluate(set_file, tmp_path, "t", *flags)
    assert code == 0 and trained == [f"together:mlp:eval/model{i}" for i in range(3)] and _records() == []
    assert [r["together_mode"] for r in together["results"]] == ["stacked", "stacked"]
    assert [r["networks_read_back"] for r in together["results"]] == [3, 0]
    straight = _evaluate(set_file, tmp_path, "straight", *flags)[1]  # uninterrupted: the same numbers
    assert [r["accuracies"] for r in together["results"]] == [r["accuracies"] for r in straight["results"]]


def test_settings_that_do_not_change_a_network_keep_its_record(set_file, tmp_path, monkeypatch):
    """Resumed with more networks, with one architecture of the list, or with `--together auto` (one by one on a
    CPU), an interrupted evaluation trained its finished networks again: the key held those settings as typed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # `auto` is one by one: the host
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=3)  # conv's model0 and model1 finish
        assert _evaluate(set_file, tmp_path, "a", "--together", "off", "--arch", "conv,mlp")[0] == 130
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        code, resumed = _evaluate(set_file, tmp_path, "b", "--together", "auto", "--arch", "conv", "--models", "4")
    assert code == 0 and trained == ["conv:eval/model2", "conv:eval/model3"]
    assert resumed["results"][0]["networks_read_back"] == 2 and _records() == []
    straight = _evaluate(set_file, tmp_path, "straight", "--arch", "conv", "--models", "4")[1]
    assert resumed["results"][0]["accuracies"] == straight["results"][0]["accuracies"]


def test_networks_trained_together_are_read_back_only_beside_as_many(set_file, tmp_path, monkeypatch):
    """Stacked beside two others, a network may round otherwise than beside one (another batched kernel): a
    group of three is not read back for a group of two."""
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=2)  # conv's three finish together, mlp's are interrupted
        assert _evaluate(set_file, tmp_path, "t", "--together", "on", "--arch", "conv,mlp")[0] == 130
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        code, two = _evaluate(set_file, tmp_path, "two", "--together", "on", "--arch", "conv", "--models", "2")
    assert code == 0 and trained == [f"together:conv:eval/model{i}" for i in range(2)]
    assert two["results"][0]["networks_read_back"] == 0


def test_a_record_that_cannot_be_written_costs_only_the_resumption(set_file, tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # $FREPO_CACHE/evaluations cannot be made under a file
    monkeypatch.setenv("FREPO_CACHE", str(blocked))
    with caplog.at_level("WARNING", logger="frepo"):
        code, result = _evaluate(set_file, tmp_path, "w", "--together", "off")
    assert code == 0 and len(result["accuracies"]) == 3
    assert sum("cannot keep the finished networks" in r.getMessage() for r in caplog.records) == 1


def test_sets_from_other_tools_are_told_apart_by_their_content():
    """A file from another tool records the checksum of the whole file, which may hold several sets
    (--entry) or be read in another --preprocess: its set is identified by what was read."""
    import torch

    from frepo.data import load_dataset
    from frepo.data.preprocess import Preprocessing
    from frepo.io.artifact import DistilledSet
    from frepo.jobs.evaluate import _identity

    raw = load_dataset("digits")
    pre = Preprocessing("none", torch.zeros(1), torch.ones(1))
    meta = {"dataset": "digits", "classes": [str(c) for c in range(10)], "checksum": "file", "source": "dc"}
    images = torch.zeros(10, 1, 8, 8)
    a, b = (DistilledSet(x, torch.arange(10), pre, meta) for x in (images, images + 1))
    assert _identity(a, raw, "test", "file")[0] != _identity(b, raw, "test", "file")[0]
    own = DistilledSet(images, torch.arange(10), pre, {**meta, "source": None})
    assert _identity(own, raw, "test", "file")[0] == "file"  # a frepo file's checksum covers its content
    assert _identity(own, raw, "test", "file")[1] != _identity(own, raw, "val", "file")[1]
    assert _identity(own, raw, "test", None)[0] != "file"  # changed in memory: by its content


def test_sigterm_keeps_the_finished_networks_as_ctrl_c_does(set_file, tmp_path, monkeypatch):
    """SIGTERM (a scheduler, `kill`) ended an evaluation at once with exit code 143 and said nothing; it now
    stops as Ctrl-C does, keeping the networks that finished, and the same command trains only the others."""
    args = ["evaluate", str(set_file), *EVAL, "--together", "off"]
    driver = textwrap.dedent(f"""
        import dataclasses, os, signal, sys
        from frepo.eval import protocols
        original, calls = protocols.PROTOCOLS["frepo"], []
        def one(setup, options, stream):
            calls.append(stream)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return original.train_and_test(setup, options, stream)
        protocols.PROTOCOLS["frepo"] = dataclasses.replace(original, train_and_test=one)
        from frepo.cli import main
        sys.exit(main({args!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300)  # this cache
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "1 finished network kept" in proc.stderr and "Traceback" not in proc.stderr
    assert len(_records()) == 1  # kept where the same command looks (this test's $FREPO_CACHE, inherited)
    trained = _count_trainings(monkeypatch)
    assert main(args) == 0 and trained == ["conv:eval/model1", "conv:eval/model2"] and _records() == []


def test_sigterm_is_left_to_torchrun_under_torchrun(monkeypatch):
    """torchrun's agent stops the other workers with SIGTERM when one fails; a worker blocked in a collective
    cannot run a Python handler, so there SIGTERM keeps its default (the process ends at once)."""
    import signal

    from frepo.base.signals import terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setenv("WORLD_SIZE", "2")
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.filterwarnings("ignore:every conv network scored exactly one class")  # 3 steps: no learning needed
def test_a_set_changed_in_memory_is_not_its_file_s_set(set_file, monkeypatch):
    """A set read from a file and then changed in memory kept its file's checksum: its evaluation was labelled
    with the file's checksum, and resume=True read back the file's set's finished networks."""
    import torch

    import frepo

    ds = frepo.load_distilled(set_file)
    options = dict(models=2, steps=3, width=8, resume=True)
    with monkeypatch.context() as m:
        _count_trainings(m, stop_at=2)
        with pytest.raises(KeyboardInterrupt):
            frepo.evaluate(ds, **options)  # the file's set: one network kept
    assert len(_records()) == 1
    changed = dataclasses.replace(ds, images=torch.zeros_like(ds.images))
    with monkeypatch.context() as m:
        trained = _count_trainings(m)
        result = frepo.evaluate(changed, **options)
    assert len(trained) == 2  # none of the file's set's networks
    assert result.extra["file_checksum"] is None
    assert frepo.evaluate(ds, models=1, steps=3, width=8).extra["file_checksum"] == ds.meta["checksum"]
    ds.images.add_(1.0)  # changed in place: the same tensor, another version of it
    assert frepo.evaluate(ds, models=1, steps=3, width=8).extra["file_checksum"] is None
