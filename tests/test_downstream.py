"""`frepo continual` and `frepo privacy` on digits: the reference's class orders, a task that reads only its
own classes, evaluation on the classes seen so far, the learned set attacked, resume after an
interruption, the JSON contract, and bad input as one line."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import frepo
import frepo.data
from frepo.apps import continual as continual_app
from frepo.apps import privacy as privacy_app
from frepo.apps.continual import Continual, ContinualConfig, class_order, task_splits
from frepo.base.errors import FrepoError, Interrupted
from frepo.cli import main
from frepo.data import load_dataset
from frepo.eval import EvalResult
from frepo.method.trainer import FRePoTrainer

CL = dict(dataset="digits", tasks=5, ipc=2, orders="0", steps=4, batch_size=64, lr=0.01, eval_models=1)
CL.update(eval_steps=10, feature_steps=2)
CL2 = {**CL, "tasks": 2, "feature_width": 16}  # two tasks of five classes: resume across a task boundary
MIA = dict(dataset="digits", chunk=1, chunk_size=300, ipc=2, steps=4, batch_size=64, lr=0.01, victim_steps="5,20")
MIA.update(victim_batch=64, victim_width=8, models=1, attacks="frepo")


def test_class_orders_are_the_reference_s():
    # The official eval_cl.py hard-codes CIFAR-100's orders; order 0 begins with these classes.
    assert class_order(100, 0)[:10] == [26, 86, 2, 55, 75, 93, 16, 73, 54, 95]
    for s in range(5):
        assert class_order(100, s) == np.random.RandomState(s).permutation(100).tolist()
    splits = task_splits(class_order(10, 1), 5)
    assert [len(t) for t in splits] == [2] * 5 and sorted(sum(splits, [])) == list(range(10))


class Guarded(np.ndarray):
    """Training images that refuse to give any image of a class outside `allowed`, except in one read of
    the whole split (the preprocessing fit, which uses no labels, as the reference's ZCA does)."""

    def __getitem__(self, index):
        if isinstance(index, np.ndarray) and index.dtype.kind in "iu" and len(index) != len(self):
            wrong = set(self.labels[index].tolist()) - self.allowed
            if wrong:
                raise AssertionError(f"a task read images of classes {sorted(wrong)}")
        return np.asarray(super().__getitem__(index))


def test_a_task_reads_only_its_own_classes_and_is_evaluated_on_the_classes_seen(tmp_path, monkeypatch):
    raw = load_dataset("digits")
    guarded = raw.x_train.view(Guarded)
    guarded.labels, guarded.allowed = raw.y_train, set()
    raw.x_train = guarded
    monkeypatch.setattr(frepo.data, "load_dataset", lambda *a, **k: raw)
    monkeypatch.setattr(continual_app, "load_dataset", lambda *a, **k: raw)
    tested = []

    def record(ds, test_x, test_y, config, arch=None, progress=False, finished=None):
        tested.append((len(ds.images), sorted(set(test_y.tolist())), ds.preprocessing))
        return EvalResult("frepo", "conv", [50.0], 50.0, 0.0, 10, 0.1)

    monkeypatch.setattr(continual_app, "evaluate_set", record)
    experiment = Continual(ContinualConfig(**CL), tmp_path / "direct")
    splits = task_splits(class_order(10, 0), 5)
    guarded.allowed = set(splits[0])
    first = experiment.distilled(0, 0, splits[0])
    assert set(first.class_ids().tolist()) == set(splits[0]) and first.labels.shape == (4, 10)  # labels over all
    guarded.allowed = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9} - set(splits[0])  # the task's own classes are now forbidden
    with pytest.raises(AssertionError, match="a task read images of classes"):
        experiment.exemplars("random", 1, 0, splits[0])
    guarded.allowed = set(range(10))
    Continual(ContinualConfig(**CL), tmp_path / "cl").run()
    seen = [sorted(sum(splits[: k + 1], [])) for k in range(5)]
    assert [t[1] for t in tested] == [s for s in seen for _ in range(3)]  # 3 arms per task
    assert [t[0] for t in tested] == [4 * (k + 1) for k in range(5) for _ in range(3)]  # 2 per class
    assert all(t[2] is tested[0][2] for t in tested)  # every memory holds the one preprocessing, not a copy


def test_a_union_of_sets_in_different_spaces_is_refused():
    from frepo.apps.common import union
    from frepo.data.preprocess import Preprocessing, fit_preprocessing
    from frepo.io.artifact import DistilledSet

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 4, 4, 3), dtype=np.uint8)
    zca, other = fit_preprocessing(x, "zca", 0.1), fit_preprocessing(x[:30], "zca", 0.1)
    copy = Preprocessing.from_tensors(zca.params(), zca.tensors())  # as a file gives it back
    assert copy.same_as(zca) and not other.same_as(zca) and not fit_preprocessing(x, "standard").same_as(zca)
    meta = {"dataset": "toy", "classes": ["a", "b"]}

    def ds(pre):
        return DistilledSet(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), pre, meta)

    joined = union([ds(zca), ds(copy)])
    assert joined.preprocessing is zca and len(joined.images) == 4
    with pytest.raises(FrepoError, match="different preprocessings"):
        union([ds(zca), ds(other)])


def test_continual_resumes_after_an_interruption_and_keeps_its_contract(tmp_path, monkeypatch, capsys):
    straight = frepo.continual(out=tmp_path / "straight", **CL2)
    assert set(straight["per_task"]) == {"frepo", "random", "herding"}
    assert all(len(v) == 2 and all(0 <= a <= 100 for a in v) for v in straight["per_task"].values())
    assert straight["final"] == {arm: v[-1] for arm, v in straight["per_task"].items()}
    assert [order["use_flip"] for order in straight["orders"].values()] == [[False, False]]  # digits: no flip
    original, calls = FRePoTrainer.step, {"n": 0}

    def interrupt_in_task_2(self):
        calls["n"] += 1
        if calls["n"] == 6:  # the second step of the second task
            signal.raise_signal(signal.SIGINT)
        return original(self)

    monkeypatch.setattr(FRePoTrainer, "step", interrupt_in_task_2)
    args = ["continual", "--out", str(tmp_path / "cl")] + [f"--{k.replace('_', '-')}={v}" for k, v in CL2.items()]
    assert main(args) == 130
    monkeypatch.setattr(FRePoTrainer, "step", original)
    assert main(args) == 0
    assert "| 2 | 10 |" in capsys.readouterr().out
    resumed = json.loads((tmp_path / "cl" / "continual.json").read_text())
    assert resumed["per_task"] == straight["per_task"]
    assert (tmp_path / "cl" / "continual.png").read_bytes()[:4] == b"\x89PNG"
    csv_lines = (tmp_path / "cl" / "continual.csv").read_text().splitlines()
    assert csv_lines[0] == "task,classes_seen,arm,mean,std,budget,count"
    row = next(csv.reader([csv_lines[1]]))
    assert row[:3] == ["1", "5", "frepo"] and (row[4], row[6]) == ("0.0", "1")  # 1 order, 1 model: no spread
    assert resumed["budget"] in (tmp_path / "cl" / "continual.csv").read_text()  # a CSV travels without the note
    # Another setting in the same folder is refused; the same command is not, nor one on another device or with
    # another data folder (refused as other settings before): they do not change what a unit computes.
    args_other = [a if not a.startswith("--ipc=") else "--ipc=3" for a in args]
    assert main(args_other) == 2
    monkeypatch.setattr(FRePoTrainer, "step", lambda self: pytest.fail("a finished unit was computed again"))
    assert main([*args, "--device=cpu", f"--data-dir={tmp_path}", "--no-download"]) == 0
    assert json.loads((tmp_path / "cl" / "continual-config.json").read_text())["device"] == "cpu"
    # The arms named in another order, or fewer of them, only read units there: refused as other settings before
    assert main([*args, "--arms=herding,random,frepo"]) == 0
    capsys.readouterr()
    assert main([*args, "--arms=random"]) == 0
    said = capsys.readouterr().err
    assert "holds results for --arms herding,random,frepo; this summary covers --arms random only" in said
    assert list(json.loads((tmp_path / "cl" / "continual.json").read_text())["per_task"]) == ["random"]
    assert main([*args, "--arms=herding,random,frepo"]) == 0
    assert json.loads((tmp_path / "cl" / "continual.json").read_text())["per_task"] == straight["per_task"]
    table = (tmp_path / "cl" / "continual.md").read_text()
    assert "| task | classes seen | frepo | random | herding |" in table  # in the tables' order, as given or not


def test_an_interrupted_continual_unit_trains_only_its_missing_networks(tmp_path):
    """Ctrl-C in a unit's evaluation lost its finished networks (the dsa protocol: 1000 epochs each): the unit
    was evaluated from its first network again. Each is now kept as it finishes, in the experiment folder."""
    from conftest import counted_protocol

    from frepo.eval import protocols

    settings = {**CL2, "eval_models": 3, "arms": "random"}
    straight = frepo.continual(out=tmp_path / "straight", **settings)
    original, trained = protocols.PROTOCOLS["frepo"], []
    protocols.PROTOCOLS["frepo"] = counted_protocol(original, trained, stop_at=3)  # the first unit's third network
    try:
        with pytest.raises(KeyboardInterrupt):
            frepo.continual(out=tmp_path / "cut", **settings)
        assert trained == ["eval/model0", "eval/model1"]
        trained.clear()
        protocols.PROTOCOLS["frepo"] = counted_protocol(original, trained)
        resumed = frepo.continual(out=tmp_path / "cut", **settings)
    finally:
        protocols.PROTOCOLS["frepo"] = original
    assert trained == ["eval/model2"] + ["eval/model0", "eval/model1", "eval/model2"]  # then the second unit's
    assert resumed["per_task"] == straight["per_task"]
    assert list((tmp_path / "cut" / "evaluations").iterdir()) == []  # each unit's record goes with its result


def test_the_distilled_arm_trains_on_the_learned_set_and_privacy_resumes(tmp_path, monkeypatch, quick_mlp):
    trained = []
    original = privacy_app.train_victim

    def recording(images, targets, **kwargs):
        trained.append(images.clone())
        return original(images, targets, **kwargs)

    monkeypatch.setattr(privacy_app, "train_victim", recording)
    straight = frepo.privacy(out=tmp_path / "straight", **MIA)
    learned = frepo.load_distilled(tmp_path / "straight" / "distill" / "distilled.safetensors")
    initial = frepo.make_subset(frepo.DataConfig(dataset="digits", val_size=0, train_chunk=1, train_chunk_size=300), 2)
    assert torch.equal(trained[0], learned.images) and not torch.equal(trained[0], initial.images)
    # The start arm trains on the distillation's very starting images (what the released mia.py's distilled
    # arm trained on), with their class labels: frepo subset's random draw is the trainer's own.
    torch.testing.assert_close(trained[1], initial.images, rtol=1e-6, atol=1e-6)
    assert straight["distilled"]["checksum"] == learned.meta["checksum"]
    rows = straight["rows"]
    assert [(r["arm"], r["steps"]) for r in rows] == [(arm, steps) for steps in (5, 20) for arm in privacy_app.ARMS]
    attacks = (*privacy_app.ATTACKS, "threshold_others", "threshold_start")  # the loss threshold on the starting
    # members alone, and on the others
    assert straight["members"]["start"] == straight["members"]["start_attacked"] == 20
    for row in rows:
        assert 0 <= row["test_accuracy"] <= 100 and list(row["attacks"]) == list(attacks)
        for metrics in row["attacks"].values():
            names = {"auc", "auc_se", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"}
            assert set(metrics) == names | {f"{m}_std" for m in names}
            assert all(metrics[f"{m}_std"] == 0.0 for m in names)  # one victim
            assert 0.01 < metrics["auc_se"] < 0.1  # 300 members against 300 non-members (20 for threshold_start)
        start, others, every = (row["attacks"][a]["auc"] for a in ("threshold_start", "threshold_others", "threshold"))
        assert every == pytest.approx((20 * start + 280 * others) / 300)  # the members split in two
    assert straight["members"]["indices"] == [300, 600] and straight["nonmembers"]["count"] == 300
    assert straight["members"]["attacked"] == 300 and straight["control"] == {"split": "train", "count": 300}
    # The arms compared, from each victim's kept losses: with one victim a difference is of the rows' AUCs.
    compared = straight["comparisons"]
    assert len(compared) == 2 * len(privacy_app.COMPARISONS) * 3  # step counts × pairs × the three thresholds
    auc = {(r["arm"], r["steps"], a): m["auc"] for r in rows for a, m in r["attacks"].items()}
    for c in compared:
        expected = auc[c["arm"], c["steps"], c["attack"]] - auc[c["against"], c["steps"], c["attack"]]
        assert c["delta_auc"] == pytest.approx(expected, abs=1e-12)
        assert c["ci95"][0] <= c["delta_auc"] <= c["ci95"][1] and 0 <= c["share_at_or_below_zero"] <= 1

    calls = {"n": 0}

    def interrupted_victim(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted("stopped")
        return victim_outputs(self, *args, **kwargs)

    victim_outputs = privacy_app.Privacy._victim_outputs
    monkeypatch.setattr(privacy_app.Privacy, "_victim_outputs", interrupted_victim)
    with pytest.raises(Interrupted):
        frepo.privacy(out=tmp_path / "resumed", **MIA)
    monkeypatch.setattr(privacy_app.Privacy, "_victim_outputs", victim_outputs)
    resumed = frepo.privacy(out=tmp_path / "resumed", **MIA)
    assert resumed["rows"] == rows and resumed["comparisons"] == compared
    assert "## The arms compared" in (tmp_path / "resumed" / "privacy.md").read_text()
    # In the same order too: the table's columns followed the order of the victims' records, read back sorted.
    assert [list(r["attacks"]) for r in resumed["rows"]] == [list(r["attacks"]) for r in rows]
    assert list(rows[0]["attacks"])[0] == "threshold"  # the docs' tables: threshold first
    assert (tmp_path / "resumed" / "privacy.md").read_text() == (tmp_path / "straight" / "privacy.md").read_text()
    assert "threshold AUC / TPR@1% / TPR@0.1%" in (tmp_path / "resumed" / "privacy.md").read_text()  # both low FPRs
    header, first = (tmp_path / "resumed" / "privacy.csv").read_text().splitlines()[:2]
    assert ",budget" in header and "victim" in first  # each row states its budget
    before = "arm,steps,test_accuracy,attack,auc,auc_std,tpr_at_1pct_fpr,tpr_at_1pct_fpr_std,tpr_at_0.1pct_fpr,"
    before += "tpr_at_0.1pct_fpr_std,test_accuracy_std,models,budget,"
    assert header == before + "auc_se"  # the columns of before in their places, a new one after them

    # Without the distilled arm nothing is distilled, and the other arms' victims are the same: the starting
    # images carry the preprocessing the distillation would have fitted.
    others = frepo.privacy(out=tmp_path / "undistilled", **{**MIA, "arms": "control,start,real"})
    assert others["rows"] == [r for r in rows if r["arm"] != "distilled"]
    assert others["distilled"] is None and not (tmp_path / "undistilled" / "distill").exists()
    assert others["budget"].startswith("arms: start, real, control; no distillation")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["continual", "--dataset", "digits", "--tasks", "20"], "20 tasks are more than the 10 classes"),
        (["continual", "--dataset", "digits", "--tasks", "3"], "do not split into 3 tasks"),
        (["continual", "--dataset", "digits", "--ipc", "500"], "ipc 500 is more than class"),
        (["continual", "--dataset", "digits", "--orders", "0,x"], "orders must be comma-separated integers"),
        (["continual", "--dataset", "digits", "--orders", "0,0"], "orders must be distinct integers"),
        (["continual", "--dataset", "digits", "--orders", "5000000000"], "in 0..2**32-1"),  # a seed of numpy's
        (["privacy", "--dataset", "digits", "--victim-steps", "20,20"], "victim_steps must be distinct"),  # taken once
        (["continual", "--dataset", "digits", "--arms", "frepo,dm"], "unknown arm 'dm'"),
        (["privacy", "--dataset", "digits", "--arms", "real,shadow"], "unknown arm 'shadow'"),
        (["privacy", "--dataset", "digits", "--arms", "real,real"], "arms must name each of"),
        (["privacy", "--dataset", "digits", "--arms", ""], "arms must name at least one of"),
        (["continual", "--dataset", "digits", "--eval-epochs", "3"], "--eval-epochs applies to --protocol dsa"),
        (
            ["continual", "--dataset", "digits", "--protocol", "dsa", "--eval-steps", "3"],
            "--eval-steps applies to the frepo protocol; --protocol dsa counts --eval-epochs",
        ),
        (
            ["privacy", "--dataset", "digits", "--chunk", "9", "--chunk-size", "300"],
            "chunk 9 is beyond the training split",
        ),
        (["privacy", "--dataset", "digits", "--chunk-size", "30", "--ipc", "10"], "ipc 10 is more than class"),
        (["privacy", "--dataset", "digits", "--lira-shadows", "1"], "lira_shadows must be 0 (off) or at least 2"),
        # scikit-learn's random_state: a traceback after the distillation and the first victim, until 2026-12-07
        (["privacy", "--dataset", "digits", "--seed", "-1"], "seed must be in 0..2**32-1"),
        (["privacy", "--dataset", "digits", "--seed", str(2**32)], "seed must be in 0..2**32-1"),
        # digits: 1257 training images, 5 chunks of 300: 4 besides the members'; the last chunk holds 57
        (["privacy", "--dataset", "digits", "--chunk-size", "300", "--lira-shadows", "5"], "at most 4 shadows"),
        (
            ["privacy", "--dataset", "digits", "--chunk-size", "300", "--lira-shadows", "4", "--ipc", "5"],
            "of chunk 4 (a LiRA shadow's chunk) can give (3 images)",
        ),
        (["privacy", "--preset", "privacy-cifar-huge"], "unknown preset"),
        (["continual", "--preset", "continual-mnist-cpu", "--dataset", "cifar10"], "is for mnist, not --dataset"),
        # refused once its folder was written: the command with a device this machine has was then refused too
        (["continual", "--dataset", "digits", "--device", "tpu"], "unknown device 'tpu'"),
        (
            ["privacy", "--dataset", "digits", "--chunk", "1", "--chunk-size", "300", "--ipc", "2", "--device", "tpu"],
            "unknown device",
        ),
        # the members' chunk is the whole training split: found after the distillation until 2026-12-06
        (
            ["privacy", "--dataset", "digits", "--chunk", "0", "--chunk-size", "1257", "--nonmembers", "train"],
            "no non-members: the training split outside the members' chunk has too few images",
        ),
        (
            ["privacy", "--dataset", "digits", "--chunk", "0", "--chunk-size", "1257"],
            "no images for the control arm: the members' chunk 0 takes 1257 of the 1257 training images",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, fragment):
    assert main([*args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("frepo: error:") and fragment in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["continual", "privacy"])
@pytest.mark.parametrize("damage", [b'{"ipc": 10,', b"[1, 2]", b"\xff\xfe{"])  # bad JSON, no object, no UTF-8
def test_a_damaged_experiment_config_is_one_line(tmp_path, capsys, kind, damage):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / f"{kind}-config.json").write_bytes(damage)
    # digits: a control arm needs training images outside the members' chunk
    sized = ["--chunk", "1", "--chunk-size", "300", "--ipc", "2"] if kind == "privacy" else []
    assert main([kind, "--dataset", "digits", *sized, "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("frepo: error:")]
    assert len(errors) == 1 and "is damaged" in errors[0] and "Traceback" not in err, err
    assert (folder / f"{kind}-config.json").read_bytes() == damage  # kept for the user to restore


def test_cpu_presets_exist():
    from frepo.apps.continual import PRESETS as CONTINUAL
    from frepo.apps.privacy import PRESETS as PRIVACY

    assert (
        CONTINUAL["continual-cifar10-cpu"]["dataset"] == "cifar10" and CONTINUAL["continual-cifar10-cpu"]["tasks"] == 5
    )
    assert PRIVACY["privacy-mnist-cpu"]["dataset"] == "mnist"
    assert {"continual-cifar100", "continual-mnist-cpu", "continual-fashion_mnist-cpu", "privacy-mnist"} <= set(
        CONTINUAL
    ) | set(PRIVACY)


def test_each_class_order_draws_with_its_own_seed(tmp_path):
    """As the official distill_cl.py seeds each order's memory by the order: the same classes get other
    random exemplars in another order, the same ones in the same order; under dsa the distilled arm keeps
    its learned labels."""
    experiment = Continual(ContinualConfig(**CL), tmp_path / "cl")
    a, b = (experiment.exemplars("random", order, 0, [3, 7]) for order in (0, 1))
    assert a.images.shape == b.images.shape == (4, *a.images.shape[1:])
    assert not torch.equal(a.images, b.images)
    fresh = Continual(ContinualConfig(**CL), tmp_path / "again").exemplars("random", 0, 0, [3, 7])
    assert torch.equal(fresh.images, a.images)
    assert [experiment._eval_config("random", order).seed for order in (0, 2)] == [0, 2]
    dsa = Continual(ContinualConfig(**{**CL, "protocol": "dsa"}), tmp_path / "dsa")
    assert dsa._eval_config("frepo", 0).options().soft_labels is True
    assert dsa._eval_config("random", 0).options().soft_labels is False


def test_lira_end_to_end_detects_a_planted_leak(tmp_path, monkeypatch, quick_mlp):
    """Offline LiRA through `frepo privacy`: shadows trained and stored per arm, scores and AUCs produced; and
    the starting members' own loss threshold.
    The planted leak: the members carry random labels, which a victim can only memorise; against shadows
    that never saw them, LiRA finds the members (AUC 0.975 measured, AVX2 and 2 threads; 0.699 with the true
    labels; 0.972 and 0.712 with the weights torch 2.14's trunc_normal_ drew, also under one thread). The floor
    leaves room for other kernels and thread counts, which moved a like attack's AUC over 0.83-0.99
    (tests/test_attacks.py), and stays above the true labels' 0.7. The victims train 150 steps at lr 1e-3:
    they memorise as 300 steps at 3e-4 did (0.969), in two thirds of the time."""
    raw = load_dataset("digits")
    chunk, size = 1, 100
    labels = raw.y_train.copy()
    labels[chunk * size : (chunk + 1) * size] = np.random.default_rng(0).integers(0, 10, size)
    raw.y_train = labels
    monkeypatch.setattr(privacy_app, "load_dataset", lambda *a, **k: raw)
    settings = {**MIA, "chunk": chunk, "chunk_size": size, "victim_steps": "150", "victim_width": 32, "victim_lr": 1e-3}
    settings["arms"] = "start,real,control"  # the distilled arm's shadows each distil a chunk of their own
    summary = privacy_app.Privacy(privacy_app.PrivacyConfig(**settings, lira_shadows=2), tmp_path / "mia").run()
    rows = {row["arm"]: row["attacks"] for row in summary["rows"]}
    assert all(0.0 <= a["auc"] <= 1.0 for attacks in rows.values() for a in attacks.values())
    assert rows["real"]["lira"]["auc"] > 0.8, rows["real"]["lira"]
    # The start arm memorises the 20 starting members' random labels: the loss threshold finds them (AUC 0.996
    # measured) while its AUC over all 100 members is diluted by the 80 it never saw (0.57): what threshold_start
    # is for. The control arm saw none of them (0.079).
    start = rows["start"]
    assert start["threshold_start"]["auc"] > 0.9 and start["threshold"]["auc"] < start["threshold_start"]["auc"] - 0.2
    assert rows["control"]["threshold_start"]["auc"] < 0.6, rows["control"]
    assert sorted(p.name for p in (tmp_path / "mia" / "shadows").iterdir()) == [
        f"{arm}-150-s{s}.npy" for arm in ("control", "real", "start") for s in (0, 1)
    ]
    # The control victim saw neither members nor non-members: the leak is not its to find.
    assert rows["control"]["lira"]["auc"] < rows["real"]["lira"]["auc"] - 0.2, rows["control"]["lira"]


def test_the_distilled_arms_lira_shadows_distil_other_chunks(tmp_path, quick_mlp):
    """The distilled arm's shadow j distils chunk j (j + 1 from the members' chunk on) with the experiment's
    budget, and its victims train on that distillation."""
    settings = {**MIA, "arms": "distilled", "victim_steps": "5", "lira_shadows": 2}
    summary = frepo.privacy(out=tmp_path / "mia", **settings)
    chunks = {}
    for shadow in (0, 1):
        config = json.loads((tmp_path / "mia" / f"shadow{shadow}-distill" / "config.json").read_text())
        chunks[shadow] = (config["data"]["train_chunk"], config["steps"])
    assert chunks == {0: (0, 4), 1: (2, 4)}  # the members are chunk 1
    assert sorted(p.name for p in (tmp_path / "mia" / "shadows").iterdir()) == [
        "distilled-5-s0.npy",
        "distilled-5-s1.npy",
    ]
    (row,) = summary["rows"]
    assert row["arm"] == "distilled" and 0 <= row["attacks"]["lira"]["auc"] <= 1


def test_lira_checks_other_chunks_only_for_the_arms_whose_shadows_use_them(tmp_path):
    """The real and control arms' shadows train on images outside the members and non-members: with them alone,
    training-split non-members and more shadows than chunks are no conflict."""
    settings = dict(dataset="digits", chunk=1, chunk_size=300, ipc=2, nonmembers="train", lira_shadows=5)
    privacy_app.Privacy(privacy_app.PrivacyConfig(**settings, arms="real,control"), tmp_path / "a")
    with pytest.raises(FrepoError, match="at most 4 shadows"):
        privacy_app.Privacy(privacy_app.PrivacyConfig(**settings, arms="start,real"), tmp_path / "b")
    with pytest.raises(FrepoError, match="the distilled and start arms' shadows train on other chunks"):
        privacy_app.Privacy(privacy_app.PrivacyConfig(**{**settings, "lira_shadows": 2}, arms="start"), tmp_path / "c")


def test_a_folder_from_before_a_unit_setting_existed_holds_the_units_on_its_disk(tmp_path, caplog):
    """A privacy folder made before --arms, resumed with fewer arms, covered those only and said nothing of the
    others on disk. What it holds is read from its victims: one from before the start arm ran distilled, real
    and control. (A setting that is no unit, such as --attacks, is still refused when the record lacks it: its
    default need not be what the folder ran.)"""
    from dataclasses import dataclass

    from frepo.apps.common import ExperimentDir

    @dataclass
    class Settings:
        models: int = 1
        arms: str = "distilled,start,real,control"

    folder = tmp_path / "exp"
    (folder / "victims").mkdir(parents=True)
    (folder / "toy-config.json").write_text(json.dumps({"models": 1}))
    for arm in ("distilled", "real", "control"):
        (folder / "victims" / f"{arm}-100-m0.json").write_text("{}")
    hook = privacy_app.Privacy.held_before_record
    experiment = ExperimentDir(folder, "toy", may_change=frozenset({"models", "arms"}), held_before_record=hook)
    with caplog.at_level("WARNING", logger="frepo"):
        experiment.open(Settings(arms="real"))
    experiment.close()
    (message,) = caplog.messages
    assert "holds results for --arms distilled,real,control; this summary covers --arms real only" in message


def test_victims_recorded_before_threshold_start_still_make_a_table(tmp_path):
    """A folder made before `threshold_start` existed, resumed with the start arm or a smaller step count: the
    table took its columns from the first row only, and failed (KeyError) where that row had the new column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = {"auc": 0.6, "auc_std": 0.0, "tpr_at_1pct_fpr": 0.02, "tpr_at_0.1pct_fpr": 0.0}
    new = {"threshold": metrics, "threshold_start": {**metrics, "auc": 0.9}}
    old = {"threshold": metrics}
    row = dict(test_accuracy=90.0, test_accuracy_std=0.0, models=1)
    rows = [
        {**row, "arm": "start", "steps": 5, "attacks": new},
        {**row, "arm": "distilled", "steps": 20, "attacks": old},
    ]
    experiment = privacy_app.Privacy(privacy_app.PrivacyConfig(**MIA), tmp_path / "x")
    markdown, csv = experiment.tables({"rows": rows, "budget": "tiny"})
    assert "threshold_start AUC" in markdown and markdown.count("| – |") == 1  # the old row: no such cell
    assert [line.split(",")[3] for line in csv.splitlines()[1:]] == ["threshold", "threshold_start", "threshold"]
    fig, _ = experiment.plot(plt, {"rows": list(reversed(rows)), "budget": "tiny"})
    plt.close(fig)


def test_the_control_arm_and_training_non_members_are_disjoint_from_the_members(tmp_path):
    """The control victim trains on as many training images as the members, none of them a member or a
    non-member; non-members drawn from training images lie outside the members' chunk."""
    for split in ("test", "train"):
        experiment = privacy_app.Privacy(privacy_app.PrivacyConfig(**MIA, nonmembers=split), tmp_path / split)
        members, control = set(experiment.member_idx), set(experiment.control_idx)
        assert len(control) == len(members) == 300 and not control & members
        if split == "train":
            assert len(experiment.nonmember_idx) == 300
            assert not set(experiment.nonmember_idx) & (members | control)
    with pytest.raises(frepo.FrepoError, match="nonmembers=train with lira_shadows"):
        privacy_app.Privacy(privacy_app.PrivacyConfig(**MIA, nonmembers="train", lira_shadows=2), tmp_path / "x")


def test_the_distillations_learning_rate_follows_the_budget_unless_given(tmp_path):
    """As `frepo distill`'s: a few outer steps at the paper's 3e-4 would hardly move the images. The rate is
    resolved when the experiment starts and recorded with its settings (a folder written before, with the
    paper's 3e-4 at the paper's 500 000 steps, compares equal), and its distillations run at it."""
    from frepo.config.presets import PAPER_STEPS, budget_lr

    raw = load_dataset("digits")  # a dataset of its own, with no fixed rate (digits' table fixes 1e-2)
    npz = tmp_path / "plain.npz"
    np.savez(npz, x_train=raw.x_train, y_train=raw.y_train, x_test=raw.x_test, y_test=raw.y_test)
    for steps, lr, expected in ((50_000, None, budget_lr(50_000)), (PAPER_STEPS, None, 3e-4), (4, 0.002, 0.002)):
        config = ContinualConfig(**{**CL, "dataset": str(npz), "steps": steps, "lr": lr})
        assert Continual(config, tmp_path / "c").config.lr == expected and config.lr == lr  # the caller's kept
        mia = privacy_app.PrivacyConfig(**{**MIA, "dataset": str(npz), "steps": steps, "lr": lr})
        assert privacy_app.Privacy(mia, tmp_path / "p").config.lr == expected
    assert (
        3e-4 < budget_lr(50_000) < 1e-2
        and Continual(ContinualConfig(**{**CL, "lr": None}), tmp_path / "d").config.lr == 1e-2
    )
    experiment = Continual(ContinualConfig(**{**CL, "dataset": str(npz), "lr": None}), tmp_path / "run")
    experiment.distilled(0, 0, [3, 7])
    (config_file,) = (tmp_path / "run").rglob("config.json")
    assert json.loads(config_file.read_text())["lr"] == budget_lr(CL["steps"])


def test_an_experiment_records_a_relative_data_dir_whole(tmp_path, monkeypatch):
    """As a run and a subset record it: <kind>-config.json and the summary's settings name the folder the data
    came from, whichever folder the experiment is resumed or read from."""
    monkeypatch.chdir(tmp_path)
    continual = Continual(ContinualConfig(**{**CL, "data_dir": "data"}), tmp_path / "c")
    privacy = privacy_app.Privacy(privacy_app.PrivacyConfig(**{**MIA, "data_dir": "~/data"}), tmp_path / "p")
    assert continual.settings()["settings"]["data_dir"] == str(tmp_path / "data")
    assert privacy.settings()["settings"]["data_dir"] == os.path.join(os.path.expanduser("~"), "data")


def test_a_continual_budget_without_the_frepo_arm_names_no_distillation(tmp_path):
    from frepo.apps.continual import Continual, ContinualConfig

    both, random_only = (Continual(ContinualConfig(dataset="digits", arms=a), tmp_path) for a in ("frepo", "random"))
    assert "distillation steps" in both.budget() and "distillation steps" not in random_only.budget()


def test_a_gpu_budget_on_a_cpu_is_said_before_it_starts(tmp_path, caplog, monkeypatch):
    """`frepo privacy` with no arguments is the paper's 500 000 steps: the progress bar's ETA was the only hint.
    Said once: each of an experiment's distillations said it again."""
    import torch

    import frepo.jobs.distill as distill_module

    monkeypatch.setattr(distill_module, "_budgets_said", set())
    (tmp_path / "a-file").write_text("")
    with caplog.at_level("WARNING", logger="frepo"), pytest.raises(FrepoError):
        frepo.continual(dataset="digits", steps=50_000, device="cpu", out=tmp_path / "a-file")  # stops at its folder
    assert "50000 outer steps on a CPU take days; the *-cpu presets" in caplog.text
    assert "--preset continual-mnist-cpu" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="frepo"):
        distill_module.warn_of_cpu_budget(torch.device("cpu"), 50_000, "a task's distillation")  # as each task's
    assert "take days" not in caplog.text


def test_an_experiment_folder_names_what_differs_as_flags_and_warns_when_a_resume_drops_units(tmp_path, caplog):
    """A refusal names each differing setting as its flag with the recorded value; a resume that asks for fewer
    units (orders, victims) than the folder holds says its summary covers those only, and how to get the others."""
    from dataclasses import dataclass

    from frepo.apps.common import ExperimentDir

    @dataclass
    class Settings:
        orders: str = "0,1"
        models: int = 5
        eval_models: int = 5
        lr: float | None = None

    def reopen(**changes):
        folder = ExperimentDir(tmp_path / "exp", "toy", may_change=frozenset({"orders", "models"}))
        folder.open(Settings(**changes))
        folder.close()

    (tmp_path / "exp").mkdir()
    reopen()
    with pytest.raises(FrepoError, match=r"other settings \(--eval-models 1: recorded 5, --lr 0.01: recorded unset\)"):
        reopen(eval_models=1, lr=0.01)
    with caplog.at_level("WARNING", logger="frepo"):
        reopen(orders="0,1,2", models=6)  # more units: nothing to say
        assert caplog.messages == []
        for _ in range(2):  # said each time, not only when the recorded settings change
            reopen(orders="1", models=6)
            (message,) = caplog.messages
            assert message.endswith(
                "holds results for --orders 0,1,2; this summary covers --orders 1 only (give --orders 0,1,2 to include "
                "the others)"
            )
            caplog.clear()
        reopen(orders="3", models=2)  # the advice keeps every unit: the held ones and the new
        assert [m.split("; ")[0].split(" holds ")[1] for m in caplog.messages] == [
            "results for --models 6",
            "results for --orders 0,1,2,3",
        ]
        caplog.clear()
        reopen(orders="3,2,1,0", models=6)
        assert caplog.messages == []


def test_a_write_cut_short_in_a_new_experiment_folder_does_not_stop_the_same_command(tmp_path):
    """A kill -9 in the first write of toy-config.json left `.toy-config.json.<random>.tmp`: the same command then
    said the folder "is not empty and holds no toy experiment". The temp file goes; a stranger's file still
    refuses the folder."""
    from dataclasses import dataclass

    from frepo.apps.common import ExperimentDir

    @dataclass
    class Settings:
        models: int = 5

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / ".toy-config.json.k2j4x9ab.tmp").write_text('{"mod')
    experiment = ExperimentDir(folder, "toy", may_change=frozenset())
    experiment.open(Settings())
    experiment.close()
    assert sorted(p.name for p in folder.iterdir() if p.name != ".lock") == ["toy-config.json", "toy-held.json"]
    for stranger in ("notes.txt", ".notes.bak.tmp"):  # a user's files, the second named like a temp file
        other = tmp_path / stranger.strip(".")
        other.mkdir()
        (other / stranger).write_text("mine")
        with pytest.raises(FrepoError, match="is not empty and holds no toy experiment"):
            ExperimentDir(other, "toy", may_change=frozenset()).open(Settings())
        assert sorted(p.name for p in other.iterdir()) == [stranger]


def test_continual_distils_every_task_with_the_flip_trick_where_a_flip_keeps_the_class(tmp_path, monkeypatch):
    """The official continual script distils each task with the flip trick; frepo's CIFAR-100 continual preset
    (IPC 20) took the IPC 10 distillation preset's flip off. A dataset a flip changes (digits) keeps it off."""
    from conftest import make_blobs_npz

    from frepo.apps.continual import Continual, ContinualConfig
    from frepo.config import presets

    blobs = make_blobs_npz(tmp_path / "blobs.npz", classes=4, channels=3)  # a .npz is taken as mirror-invariant
    monkeypatch.setitem(presets.FLIP_BY_IPC, str(blobs), {1: True, 2: False})  # as CIFAR-100's table: off at 2
    assert not presets.resolve(str(blobs), 2).use_flip
    mirrored = Continual(ContinualConfig(**{**CL, "dataset": str(blobs), "tasks": 2}), tmp_path / "a")
    task = Path("order0") / "task0"
    assert mirrored.raw.mirror_invariant and mirrored.distill_config(**mirrored._flip(task)).use_flip is True
    digits = Continual(ContinualConfig(**CL), tmp_path / "b")
    assert not digits.raw.mirror_invariant and not digits.distill_config(**digits._flip(task)).use_flip
    # A task distilled before (flip off) keeps what it recorded: its run would not resume with another.
    (tmp_path / "a" / task).mkdir(parents=True)
    (tmp_path / "a" / task / "config.json").write_text(json.dumps({"use_flip": False}))
    assert mirrored.distill_config(**mirrored._flip(task)).use_flip is False


def test_continual_keeps_a_herding_memory_chosen_before_normalised_features_and_says_so(tmp_path, caplog):
    """Herding chooses on L2-normalised features since 2026-12-07: a folder's exemplars chosen before are kept
    (its units were evaluated on them), and the mix is said."""
    import dataclasses

    from frepo.apps.continual import Continual, ContinualConfig

    experiment = Continual(ContinualConfig(**CL), tmp_path / "c")
    new = experiment.exemplars("herding", 0, 0, [0, 1])
    assert new.meta["config"]["features"] == "l2-normalised" and "unnormalised" not in caplog.text
    path = tmp_path / "c" / "order0" / "task0-herding.safetensors"
    config = {k: v for k, v in new.meta["config"].items() if k != "features"}  # as an older frepo wrote it
    frepo.save_distilled(dataclasses.replace(new, meta={**new.meta, "config": config}), path)
    with caplog.at_level("WARNING", logger="frepo"):
        kept = experiment.exemplars("herding", 0, 0, [0, 1])
    assert torch.equal(kept.images, new.images) and "chosen on unnormalised features" in caplog.text


def test_a_row_over_victims_recorded_before_an_attack_existed_leaves_that_attack_out(caplog):
    """A resumed privacy folder whose older victims lack `threshold_start` (added since) stopped with a
    KeyError, or averaged a column over fewer victims than `models` says."""
    from frepo.apps.privacy import Privacy

    metrics = {"auc": 0.5, "tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.0}
    old = {"test_accuracy": 90.0, "attacks": {"threshold": metrics}}
    new = {"test_accuracy": 92.0, "attacks": {"threshold": {**metrics, "auc": 0.7}, "threshold_start": metrics}}
    for victims in ([new, old], [old, new]):
        with caplog.at_level("WARNING", logger="frepo"):
            row = Privacy._row("distilled", 100, victims)
        assert list(row["attacks"]) == ["threshold"] and row["attacks"]["threshold"]["auc"] == pytest.approx(0.6)
        assert "threshold_start left out: not every victim has it" in caplog.text
        caplog.clear()


def test_the_start_arm_s_labels_are_scaled_as_the_reference_s_starting_labels(tmp_path):
    """mia.py's starting set takes init_proto(scale_y=True)'s labels, divided by sqrt(C/10); the start arm
    used unscaled centred one-hot labels (the same for MNIST's 10 classes, not for any other count)."""
    from frepo.apps.privacy import Privacy, PrivacyConfig
    from frepo.method.krr import centered_one_hot

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (160, 8, 8, 1), dtype=np.uint8), np.arange(160) % 4
    np.savez(tmp_path / "four.npz", x_train=x, y_train=y, x_test=x[:40], y_test=y[:40])
    config = PrivacyConfig(dataset=str(tmp_path / "four.npz"), chunk=0, chunk_size=40, ipc=2, steps=2, models=1)
    config.attacks = "frepo"  # seconds; the reference's grid searches took 38 s of this test, and are not its point
    experiment = Privacy(config, tmp_path / "out")
    ds = frepo.make_subset(str(tmp_path / "four.npz"), 2)
    _, targets, _ = experiment._training_set("start", ds)
    ids = torch.from_numpy(y[experiment.start_idx])
    torch.testing.assert_close(targets, centered_one_hot(ids, 4) / (4 / 10) ** 0.5)
    # A victim of the older scoring is trained again, and its arm's LiRA shadows, trained on the unscaled
    # labels too, go with it (once: not again for the arm's next victim).
    (tmp_path / "out" / "victims").mkdir(parents=True)
    (tmp_path / "out" / "shadows").mkdir()
    (tmp_path / "out" / "victims" / "start-5-m0.json").write_text(json.dumps({"attacks": {}, "test_accuracy": 1.0}))
    stale = tmp_path / "out" / "shadows" / "start-5-s0.npy"
    np.save(stale, np.zeros(3))
    assert experiment._victim("start", ds, 5, 0)["scoring"] == privacy_app.SCORING
    assert not stale.exists() and experiment._stale_shadows == {("start", 5)}
    # A victim of scoring 2 is scored again, but its shadows already took the scaled labels: they are kept.
    (tmp_path / "out" / "victims" / "start-6-m0.json").write_text(json.dumps({"attacks": {}, "scoring": 2}))
    kept = tmp_path / "out" / "shadows" / "start-6-s0.npy"
    np.save(kept, np.zeros(3))
    assert experiment._victim("start", ds, 6, 0)["scoring"] == privacy_app.SCORING
    assert kept.exists() and experiment._stale_shadows == {("start", 5)}


def test_a_victim_scored_by_an_older_frepo_is_trained_and_scored_again(tmp_path, monkeypatch, caplog):
    """A folder resumed after the scoring changed (LiRA by z, every ROC point, the start arm's label scale)
    averaged old victims' numbers with new ones; a record without today's `scoring` is done again."""
    settings = {**MIA, "victim_steps": "5", "arms": "real"}
    frepo.privacy(out=tmp_path / "p", **settings)
    record = tmp_path / "p" / "victims" / "real-5-m0.json"
    old = json.loads(record.read_text())
    assert old["scoring"] == privacy_app.SCORING
    del old["scoring"]  # as an older frepo wrote it: no scoring, no auc_se
    for metrics in old["attacks"].values():
        del metrics["auc_se"]
    record.write_text(json.dumps(old))
    trained = []
    original = privacy_app.train_victim
    monkeypatch.setattr(privacy_app, "train_victim", lambda *a, **k: trained.append(1) or original(*a, **k))
    with caplog.at_level("WARNING", logger="frepo"):
        frepo.privacy(out=tmp_path / "p", **settings)
    assert trained == [1] and "victims scored by an older frepo" in caplog.text
    assert json.loads(record.read_text())["scoring"] == privacy_app.SCORING
    # A record of scoring 2 (TPR at FPR up to x, no threshold_others) is done again too; today's is kept.
    frepo.privacy(out=tmp_path / "p", **settings)
    assert trained == [1]
    two = json.loads(record.read_text())
    two["scoring"] = 2
    record.write_text(json.dumps(two))
    frepo.privacy(out=tmp_path / "p", **settings)
    assert trained == [1, 1]


def test_a_comparison_without_its_victims_losses_is_left_out_and_said(tmp_path, monkeypatch, caplog):
    """Victims recorded before their per-example losses were kept are not trained again for the comparisons:
    those comparisons are left out, with a warning saying how to get them."""
    settings = {**MIA, "victim_steps": "5", "arms": "real,control"}
    first = frepo.privacy(out=tmp_path / "p", **settings)
    assert [(c["arm"], c["against"], c["attack"]) for c in first["comparisons"]] == [
        ("real", "control", "threshold"),
        ("real", "control", "threshold_others"),
        ("real", "control", "threshold_start"),
    ]
    # kept: the same command reads them back, not bootstrapping again (minutes at the paper's size)
    monkeypatch.setattr(privacy_app, "train_victim", lambda *a, **k: pytest.fail("a recorded victim was trained"))
    with monkeypatch.context() as patch:
        patch.setattr(privacy_app, "resampled_mean_aucs", lambda *a: pytest.fail("bootstrapped again"))
        assert frepo.privacy(out=tmp_path / "p", **settings)["comparisons"] == first["comparisons"]
    (tmp_path / "p" / "victims" / "real-5-m0-loss.npy").unlink()
    with caplog.at_level("WARNING", logger="frepo"):
        again = frepo.privacy(out=tmp_path / "p", **settings)
    assert again["comparisons"] == [] and again["rows"] == first["rows"]
    assert "no comparison of real/control at 5 steps" in caplog.text
    assert "## The arms compared" not in (tmp_path / "p" / "privacy.md").read_text()


def test_continual_replicates_by_seed_share_no_order_s_draws():
    """The order's seed was `seed + order`: --seed 1's order 0 drew what --seed 0's order 1 drew (its pool, batches,
    start, exemplars and evaluation networks). Base seed 0 keeps the reference's seed = order."""
    from frepo.apps.continual import ContinualConfig

    assert [ContinualConfig(seed=0).order_seed(o) for o in range(5)] == [0, 1, 2, 3, 4]
    seeds = {(s, o): ContinualConfig(seed=s).order_seed(o) for s in range(4) for o in range(5)}
    assert len(set(seeds.values())) == len(seeds)


def test_a_continual_folder_of_the_earlier_order_seeds_is_not_mixed_with_the_new(tmp_path):
    """A folder an earlier frepo made with --seed 1 drew its orders with seed + order: resumed, its units on disk
    were kept and the missing ones drawn with the new seeds, under an `order_seeds` that made neither. It is
    refused now; with --seed 0 (seeds unchanged) it goes on."""
    quick = {**CL2, "arms": "random"}
    for seed in (1, 0):
        out = tmp_path / f"seed{seed}"
        first = frepo.continual(out=out, **quick, seed=seed)
        (out / "continual-seeds.json").unlink()  # as an earlier frepo left it
        if seed:
            with pytest.raises(
                FrepoError, match=r"made by an earlier frepo, whose class orders drew with seed \+ order"
            ):
                frepo.continual(out=out, **quick, seed=seed)
        else:
            assert frepo.continual(out=out, **quick, seed=seed)["per_task"] == first["per_task"]
            assert (out / "continual-seeds.json").is_file()


def test_a_continual_folder_whose_orders_all_drew_with_seed_0_is_refused_in_one_line(tmp_path):
    """Before 2026-12-04 every class order drew with --seed itself: order 1 of a --seed 0 folder with seed 0, now
    with 1. Resumed, its distilled arm was refused by distill with advice for a flag continual has not
    (--resume-with-changes); it is found by the runs' recorded seeds and said in continual's words."""
    settings = {**CL2, "arms": "frepo", "orders": "1"}
    out = tmp_path / "cl"
    frepo.continual(out=out, **settings)
    (out / "continual-seeds.json").unlink()  # as an earlier frepo left it
    assert frepo.continual(out=out, **settings)["final"]  # drawn with order 1's seed then too: it goes on
    (out / "continual-seeds.json").unlink()
    record = out / "order1" / "task0" / "config.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "seed": 0}))  # as drawn before 2026-12-04
    # resumed first with another order: the check still reads order 1's run (the folder is marked only once)
    with pytest.raises(FrepoError, match=r"order 1's task 0 was distilled with seed 0"):
        frepo.continual(out=out, **{**settings, "orders": "0"})
    with pytest.raises(
        FrepoError, match=r"order 1's task 0 was distilled with seed 0; the order now draws with seed 1\): use another"
    ):
        frepo.continual(out=out, **settings)
