"""Evaluation protocols on tiny data: the dsa protocol's schedule, batching and losses, the krr protocol
against an explicit dual-form solve, every protocol on 32×32×3 and 28×28×1, option errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import needs_cxx

import frepo.eval.augment_dsa as augment_dsa
import frepo.eval.protocols.dsa as protocol_dsa
from frepo.base.errors import FrepoError
from frepo.config import DataConfig
from frepo.data.preprocess import Preprocessing
from frepo.eval import PROTOCOLS, EvalConfig, evaluate_set
from frepo.eval.protocols.krr import krr_accuracy
from frepo.eval.results import RESULT_KEYS
from frepo.io.artifact import DistilledSet, save_distilled
from frepo.jobs.evaluate import evaluate_archs
from frepo.jobs.subset import make_subset
from frepo.models import build_model


def _set(shape=(1, 8, 8), n_per_class=2, classes=3, learned=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_per_class * classes, *shape, generator=g)
    ids = torch.arange(classes).repeat_interleave(n_per_class)
    labels = torch.randn(len(ids), classes, generator=g) if learned else ids
    c = shape[0]
    meta = {"dataset": "toy", "classes": [str(i) for i in range(classes)], "mirror_invariant": True, "config": {}}
    return DistilledSet(images, labels, Preprocessing("standard", torch.zeros(c), torch.ones(c)), meta)


def test_dsa_training_schedule_batches_and_shuffling(monkeypatch):
    made, steps, batches = [], [], []

    class RecordingSGD(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            made.append(kwargs)

        def step(self, closure=None):
            steps.append(self.param_groups[0]["lr"])
            return super().step(closure)

    def identity_augment(x, gen, ops):
        batches.append(x[:, 0, 0, 0].round().long().tolist())  # image i carries the value i
        return x

    monkeypatch.setattr(torch.optim, "SGD", RecordingSGD)
    monkeypatch.setattr(protocol_dsa, "dsa_augment", identity_augment)
    images = torch.arange(300.0).view(300, 1, 1, 1).expand(300, 1, 4, 4).contiguous()
    targets = torch.arange(300) % 3
    protocol_dsa.train_dsa_model(
        images,
        targets,
        num_classes=3,
        arch="mlp",
        init_gen=torch.Generator().manual_seed(0),
        train_gen=torch.Generator().manual_seed(1),
        device=torch.device("cpu"),
        epochs=4,
    )
    # epochs + 1 passes of ceil(300 / 256) = 2 batches (256, then 44); the lr drops after pass 4 // 2 + 1
    # = 3 and the optimiser is rebuilt (fresh momentum).
    assert [len(b) for b in batches] == [256, 44] * 5
    assert steps == [0.01] * 8 + [pytest.approx(0.001)] * 2
    assert len(made) == 2 and made[0] == {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "fused": None}
    assert made[1]["lr"] == pytest.approx(0.001) and made[1]["momentum"] == 0.9
    passes = [batches[i] + batches[i + 1] for i in range(0, 10, 2)]
    assert all(sorted(p) == list(range(300)) for p in passes)  # every image once per epoch
    assert len({tuple(p) for p in passes}) == 5  # reshuffled every epoch
    assert protocol_dsa.dsa_steps(300, 4) == 10 and protocol_dsa.dsa_steps(10, 1000) == 1001


def test_dsa_trains_300_epochs_without_augmentation_as_dc_does():
    """DC's main.py: epoch_eval_train = 1000 with DSA augmentation, 300 without; --epochs still wins."""
    assert protocol_dsa.epochs_of(protocol_dsa.DsaOptions()) == 1000
    assert protocol_dsa.epochs_of(protocol_dsa.DsaOptions(dsa_strategy="crop_scale")) == 1000
    assert protocol_dsa.epochs_of(protocol_dsa.DsaOptions(dsa_strategy="none")) == 300
    assert protocol_dsa.epochs_of(protocol_dsa.DsaOptions(dsa_strategy="none", epochs=50)) == 50
    setup = _setup(_set())
    made = protocol_dsa.plan(setup, protocol_dsa.DsaOptions(dsa_strategy="none"))
    assert made.extra["epochs"] == 300 and made.steps == protocol_dsa.dsa_steps(6, 300)


def test_a_set_without_its_flip_record_is_judged_by_its_dataset():
    """The frepo protocol leaves flips out for MNIST and F-MNIST (the reference's eval rule). A set made by hand,
    or an older export, has no meta["mirror_invariant"]: its dataset decides, not a default of yes."""
    from frepo.eval.protocols.frepo import FrepoOptions, reference_training

    for dataset, flips in (("mnist", False), ("fashion_mnist", False), ("cifar10", True), ("my/own.npz", True)):
        ds = _set()
        del ds.meta["mirror_invariant"]
        ds.meta["dataset"] = dataset
        assert ds.mirror_invariant is flips
        assert ("flip" in reference_training(_setup(ds), FrepoOptions()).ops) is flips, dataset
    recorded = _set()
    recorded.meta.update(dataset="mnist", mirror_invariant=True)  # the record wins: the user's word
    assert recorded.mirror_invariant


def test_the_frepo_protocol_trains_as_the_reference_does():
    """What the frepo protocol hands its training loop, pinned to the reference's eval script: Adam with optax's
    defaults and no weight decay, 500-step linear warm-up from 0 then cosine to 0.01x, batches of min(N, 500)
    taken in order across the set's end, MSE on the targets, the reference step table."""
    from frepo.eval.protocols.frepo import REFERENCE_STEPS, FrepoOptions, reference_network, reference_training

    assert {n: REFERENCE_STEPS[n] for n in (10, 100, 500, 1000)} == {10: 1000, 100: 2000, 500: 5000, 1000: 10000}
    setup = _setup(_set(n_per_class=4))
    training = reference_training(setup, FrepoOptions())
    schedule = training.schedule()
    assert (schedule.steps, schedule.batch_size, schedule.order) == (1000, 500, "cycle")
    lr = schedule.lr
    assert lr is not None and lr(0) == 0 and lr(250) == pytest.approx(1.5e-4) and lr(500) == pytest.approx(3e-4)
    # cosine over the 500 steps after the warm-up: alpha + (1 - alpha)(1 + cos(pi t/500))/2 of 3e-4
    assert lr(750) == pytest.approx(3e-4 * (0.01 + 0.99 * 0.5)) and lr(1000) == pytest.approx(3e-6)
    _, _, update = reference_network(setup.images, training, torch.Generator().manual_seed(0))
    (group,) = update.optimizer.param_groups
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.9, 0.999), 1e-8, 0)
    assert isinstance(update.optimizer, torch.optim.Adam) and not isinstance(update.optimizer, torch.optim.AdamW)
    assert training.ops == ("flip", "color", "crop", "rotate", "translate", "cutout")
    # 0.5 * sum over classes, mean over the batch: rows of 3 errors of 1 and 2 -> (1.5 + 6) / 2
    loss = update.loss(torch.zeros(2, 3), torch.tensor([[1.0, 1, 1], [2, 2, 2]]))
    assert float(loss) == pytest.approx(3.75)
    # `cycle`: the set repeated, then batched in order, batches running on across its end (12 images, 8 a batch)
    from frepo.eval.training import Schedule, batch_indices

    batches = batch_indices(Schedule(3, 8, "cycle"), 12, torch.Generator(), torch.device("cpu"))
    assert [b.tolist() for b in batches] == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [8, 9, 10, 11, 0, 1, 2, 3],
        [4, 5, 6, 7, 8, 9, 10, 11],
    ]


def _setup(ds):
    from frepo.eval.protocol import EvalSetup

    images, labels = ds.images, ds.labels
    return EvalSetup(ds, images, labels, images[:2], torch.zeros(2, dtype=torch.long), "conv", 0, torch.device("cpu"))


def test_dsa_strategy_decides_which_groups_a_batch_can_get(monkeypatch):
    assert protocol_dsa.STRATEGY == "color_crop_cutout_flip_scale_rotate"
    assert protocol_dsa.parse_strategy("crop_scale_rotate") == ("crop", "scale", "rotate")
    assert protocol_dsa.parse_strategy("none") == ()
    for bad, message in [("crop_mirror", "unknown DSA strategy"), ("", "unknown DSA strategy"), ("crop_crop", "twice")]:
        with pytest.raises(FrepoError, match=message):
            protocol_dsa.parse_strategy(bad)

    applied = []

    def recording(name, op):
        return lambda x, gen: applied.append(name) or op(x, gen)

    for name, op in dict(augment_dsa.OPS).items():
        monkeypatch.setitem(augment_dsa.OPS, name, recording(name, op))
    images, targets = torch.randn(12, 1, 8, 8), torch.arange(12) % 3

    def train(ops):
        applied.clear()
        protocol_dsa.train_dsa_model(
            images,
            targets,
            num_classes=3,
            arch="mlp",
            init_gen=torch.Generator().manual_seed(0),
            train_gen=torch.Generator().manual_seed(1),
            device=torch.device("cpu"),
            epochs=59,
            ops=ops,
        )
        return list(applied)

    assert set(train(protocol_dsa.parse_strategy("color_crop_cutout_scale_rotate"))) == {
        "color",
        "crop",
        "cutout",
        "scale",
        "rotate",
    }  # 60 batches: every allowed group is drawn, flip never
    assert set(train(protocol_dsa.DSA_OPS)) == set(protocol_dsa.DSA_OPS)
    assert train(()) == []  # none: no augmentation at all


def test_soft_targets():
    probs = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    assert torch.equal(protocol_dsa.soft_targets(probs), probs)
    logits = torch.tensor([[0.9, -0.1], [-0.1, 0.9]])
    torch.testing.assert_close(protocol_dsa.soft_targets(logits), logits.softmax(-1))


@pytest.mark.parametrize("use_flip", [False, True])
def test_krr_accuracy_matches_the_explicit_dual_form(use_flip):
    """Scored against the explicit dual form's own predictions: every one must match (an accuracy against random
    labels, as before, let many other prediction vectors through), and the two flip settings predict differently
    here, so a flip applied wrongly cannot pass."""
    g = torch.Generator().manual_seed(0)
    model = build_model("conv", (1, 8, 8), 4, generator=torch.Generator().manual_seed(1), width=8)
    xs, ys = torch.randn(6, 1, 8, 8, generator=g), torch.randn(6, 4, generator=g)
    xt = torch.randn(40, 1, 8, 8, generator=g)

    def predicted(flip: bool) -> torch.Tensor:
        x, y = (torch.cat([xs, xs.flip(-1)]), torch.cat([ys, ys])) if flip else (xs, ys)
        with torch.no_grad():
            fs, ft = model.embed(x).double(), model.embed(xt).double()
        k = fs @ fs.T
        alpha = torch.linalg.solve(k + 1e-6 * torch.trace(k) / len(k) * torch.eye(len(k), dtype=k.dtype), y.double())
        return (ft @ fs.T @ alpha).argmax(-1)

    # the closest top-two scores differ by 3.6e-3 (no flip) and 4.9e-3 (flip) of the largest score: far above
    # float32 rounding of the features (~1e-6), so summation order cannot change a prediction
    expected, other = predicted(use_flip), predicted(not use_flip)
    assert not torch.equal(expected, other)
    acc = krr_accuracy(model, xs, ys, xt, expected, device=torch.device("cpu"), use_flip=use_flip, batch=7)
    assert acc == 100.0
    assert krr_accuracy(model, xs, ys, xt, other, device=torch.device("cpu"), use_flip=use_flip, batch=7) < 100.0


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_runs_on_tiny_data(shape, protocol):
    ds = _set(shape, learned=protocol == "frepo")
    g = torch.Generator().manual_seed(5)
    eval_x, eval_y = torch.randn(8, *shape, generator=g), torch.randint(3, (8,), generator=g)
    options = {"frepo": {"steps": 2}, "dsa": {"epochs": 1}, "krr": {}}[protocol]
    result = evaluate_set(ds, eval_x, eval_y, EvalConfig.build(protocol=protocol, models=2, seed=3, width=8, **options))
    assert result.protocol == protocol and result.arch == {"dsa": "convnet"}.get(protocol, "conv")
    assert result.models == 2 and all(0 <= a <= 100 for a in result.accuracies)
    assert result.steps == {"frepo": 2, "dsa": 2, "krr": 0}[protocol]
    assert len(result.extra["model_seeds"]) == 2 and result.seed == 3
    assert result.mean == pytest.approx(np.mean(result.accuracies))
    assert set(result.to_dict()) <= set(RESULT_KEYS), set(result.to_dict()) - set(RESULT_KEYS)  # all documented


def test_dsa_soft_labels_and_determinism(monkeypatch):
    """The soft labels reach the training (the set's learned labels softmaxed, as the official softxent), and
    without them the class ids do: a flag recorded but not acted on passed before."""
    from frepo.eval.protocols import dsa as protocol_dsa

    ds = _set(learned=True)
    eval_x, eval_y = torch.randn(8, 1, 8, 8), torch.randint(3, (8,))
    trained_on, original = [], protocol_dsa.train_dsa_model
    monkeypatch.setattr(
        protocol_dsa,
        "train_dsa_model",
        lambda images, targets, **k: trained_on.append(targets) or original(images, targets, **k),
    )
    for soft in (True, False):
        evaluate_set(
            ds, eval_x, eval_y, EvalConfig.build(protocol="dsa", arch="mlp", models=1, epochs=1, soft_labels=soft)
        )
    soft_targets, class_ids = (t.cpu() for t in trained_on)
    torch.testing.assert_close(soft_targets, ds.labels.float().softmax(-1))
    assert torch.equal(class_ids, ds.labels.argmax(-1))
    a = evaluate_set(
        ds, eval_x, eval_y, EvalConfig.build(protocol="dsa", arch="mlp", models=1, epochs=2, soft_labels=True)
    )
    b = evaluate_set(
        ds, eval_x, eval_y, EvalConfig.build(protocol="dsa", arch="mlp", models=1, epochs=2, soft_labels=True)
    )
    assert a.accuracies == b.accuracies and a.extra["soft_labels"] is True
    assert a.extra["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate" and a.extra["init"] == "torch"
    c = evaluate_set(
        ds, eval_x, eval_y, EvalConfig.build(protocol="dsa", arch="mlp", models=1, epochs=2, dsa_strategy="crop_rotate")
    )
    assert c.extra["dsa_strategy"] == "crop_rotate"
    with pytest.raises(FrepoError, match="learned labels"):
        evaluate_set(
            _set(), eval_x, eval_y, EvalConfig.build(protocol="dsa", arch="mlp", models=1, epochs=1, soft_labels=True)
        )


@pytest.mark.parametrize(
    "options, message",
    [
        ({"protocol": "magic"}, "unknown protocol"),
        ({"protocol": "frepo", "models": 0}, r"models must be in 1..2147483647, got 0"),
        # a traceback (tqdm's OverflowError) or a list of 10^20 streams filling the memory, until 2026-12-07
        ({"protocol": "frepo", "models": 10**20}, r"models must be in 1..2147483647"),
        ({"protocol": "frepo", "steps": 10**20}, r"steps must be in 1..2147483647"),
        ({"protocol": "dsa", "epochs": 10**20}, r"epochs must be in 1..2147483647"),
        ({"protocol": "dsa", "steps": 10}, "--epochs"),
        ({"protocol": "dsa", "compile": "on"}, "--compile applies to --protocol frepo$"),  # no counting hint
        ({"protocol": "frepo", "epochs": 10}, "--protocol dsa"),
        ({"protocol": "dsa", "epochs": 0}, r"epochs must be in 1..2147483647, got 0"),
        ({"protocol": "krr", "soft_labels": True}, "--soft-labels"),
        ({"protocol": "frepo", "dsa_strategy": "crop"}, "--dsa-strategy"),
        ({"protocol": "dsa", "dsa_strategy": "crop_mirror"}, "unknown DSA strategy"),
    ],
)
def test_option_errors(options, message):
    options = {"models": 1, **options}
    with pytest.raises(FrepoError, match=message):
        EvalConfig.build(**options)


def test_arch_lists():
    assert EvalConfig.build(protocol="dsa").archs() == ["convnet"] and EvalConfig.build().archs() == ["conv"]
    assert EvalConfig.build(arch="conv, alexnet").archs() == ["conv", "alexnet"]
    for bad, message in (("conv,conv", "twice"), (",", "at least one"), ("conv,lenet", "unknown architecture")):
        with pytest.raises(FrepoError, match=message):
            EvalConfig.build(arch=bad)


def test_one_result_per_architecture_with_checksum_and_seeds(tmp_path, blobs):
    path = save_distilled(make_subset(DataConfig(dataset=str(blobs)), 2), tmp_path / "set.safetensors")
    results = evaluate_archs(str(path), arch="conv,mlp", protocol="krr", models=2, width=8)
    assert [r.arch for r in results] == ["conv", "mlp"]
    for r in results:
        assert r.extra["file"] == str(path) and len(r.extra["file_checksum"]) == 64
        assert r.extra["num_images"] == 6 and r.extra["model_streams"] == ["krr/model0", "krr/model1"]


@needs_cxx
def test_frepo_protocol_compiles_long_cpu_evaluations_and_the_compiled_network_trains_alike():
    """`--compile auto` compiles only where it measured faster (CPU, >= 100 32×32 images or as many pixels,
    >= 1000 steps), and a compiled network trains as the eager one (same parameters and draws; float
    rounding apart)."""
    from frepo.eval.protocol import ReferenceTraining
    from frepo.eval.protocols.frepo import FrepoOptions, train_reference_model

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto, cifar100, mnist100 = FrepoOptions(), torch.empty(100, 3, 32, 32), torch.empty(100, 1, 28, 28)
    assert auto.compiles(cifar100, 1000, cpu) and auto.compiles(torch.empty(25, 3, 64, 64), 1000, cpu)
    assert not auto.compiles(cifar100[:99], 1000, cpu) and not auto.compiles(cifar100, 999, cpu)
    assert not auto.compiles(mnist100, 1000, cpu) and not auto.compiles(cifar100, 5000, cuda)
    assert FrepoOptions(compile="on").compiles(mnist100[:1], 5, cuda)
    with pytest.raises(FrepoError, match="compile"):
        EvalConfig.build(compile="sometimes")
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(12, 3, 8, 8, generator=gen), torch.arange(12) % 3
    targets = torch.nn.functional.one_hot(labels, 3).float() - 1 / 3
    training = ReferenceTraining(num_classes=3, steps=4, ops=("flip", "crop"), device=cpu, width=8)
    eager = train_reference_model(images, targets, training, torch.Generator().manual_seed(1))
    compiled = train_reference_model(images, targets, replace(training, compile=True), torch.Generator().manual_seed(1))
    # Inductor sums in another order, and Adam's first steps move each weight by about lr·sign(gradient),
    # so a weight whose gradient is at rounding level can move the other way: each tensor's gap is judged
    # as a norm against how far training moved it (a wrong draw or a skipped step is off by ~100%).
    start = build_model("conv", (3, 8, 8), 3, generator=torch.Generator().manual_seed(1), width=8).state_dict()
    for name, a in eager.state_dict().items():
        moved, gap = (a - start[name]).norm(), (compiled.state_dict()[name] - a).norm()
        assert moved > 0 and gap < 1e-2 * moved, (name, float(gap / moved))


def test_the_dsa_protocol_says_it_flips_a_set_whose_classes_a_flip_changes(caplog, monkeypatch):
    """The field's dsa strategy flips MNIST too: kept, but no longer without a word (once a dataset)."""
    import frepo.eval.protocols.dsa as dsa

    monkeypatch.setattr(dsa, "_flips_said", set())
    g = torch.Generator().manual_seed(5)
    eval_x, eval_y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(3, (8,), generator=g)
    cases = ((False, "crop_scale", False), (True, None, False), (False, None, True), (False, None, False))
    for mirror_invariant, strategy, said in cases:  # the last: said before
        ds = _set()
        ds.meta["mirror_invariant"] = mirror_invariant
        caplog.clear()
        with caplog.at_level("INFO", logger="frepo"):
            config = EvalConfig.build(protocol="dsa", models=1, epochs=1, width=8, dsa_strategy=strategy)
            evaluate_set(ds, eval_x, eval_y, config)
        assert ("strategy flips images, though a flip changes this dataset's classes" in caplog.text) == said


def test_width_is_recorded_only_for_the_networks_it_sizes():
    """--width 8 was recorded for alexnet and mlp, whose sizes are fixed (their numbers did not move with it)."""
    g = torch.Generator().manual_seed(5)
    eval_x, eval_y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(3, (8,), generator=g)
    for arch, width in (("conv", 8), ("mlp", None)):
        config = EvalConfig.build(protocol="frepo", arch=arch, models=1, steps=1, width=8)
        assert evaluate_set(_set(learned=True), eval_x, eval_y, config).extra["width"] == width


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_networks_have_the_depth_the_set_was_distilled_with(protocol, monkeypatch):
    """The Tiny ImageNet presets distil with a depth-4 Conv; evaluation built depth 3 whatever the set recorded
    (a network the set was not distilled for, where the README promised depth 4). A set's recorded depth is the
    default now, --depth overrides it, and a set without a record (another tool's) gets 3."""
    import frepo.models.registry as registry

    built: list[int] = []
    original = registry.ModelSpec

    def recording(*args, **kwargs):
        spec = original(*args, **kwargs)
        built.append(spec.depth)
        return spec

    monkeypatch.setattr(registry, "ModelSpec", recording)
    ds = _set((3, 32, 32), learned=protocol == "frepo")
    eval_x, eval_y = torch.randn(4, 3, 32, 32), torch.randint(3, (4,))
    options = {"frepo": {"steps": 1}, "dsa": {"epochs": 1}, "krr": {}}[protocol]
    cases = [(4, None, 4, "toy"), (4, 2, 2, "toy"), (None, None, 3, "toy"), (True, None, 3, "toy")]
    cases += [(None, None, 4, "tiny_imagenet"), (None, 3, 3, "tiny_imagenet"), (5, None, 5, "tiny_imagenet")]
    for recorded, given, expected, dataset in cases:  # a subset or export records none: its dataset's depth
        meta = {**ds.meta, "dataset": dataset, "config": {"model": {"depth": recorded}} if recorded else {}}
        config = EvalConfig.build(protocol=protocol, models=1, width=8, depth=given, **options)
        built.clear()
        result = evaluate_set(replace(ds, meta=meta), eval_x, eval_y, config)
        assert built and set(built) == {expected} and result.extra["depth"] == expected, (recorded, given, built)
    with pytest.raises(FrepoError, match="depth must be in 1..16"):
        EvalConfig.build(depth=0)


def test_a_conv_too_deep_for_the_images_is_refused_before_any_network_trains(tmp_path, monkeypatch):
    """`--arch mlp,conv --depth 6` on 8×8 images trained every mlp network, then failed on the conv: the probe of
    the later architectures built them at depth 3."""
    path = tmp_path / "digits.safetensors"
    save_distilled(make_subset("digits", ipc=1), path)
    trained = []
    monkeypatch.setitem(
        PROTOCOLS, "frepo", replace(PROTOCOLS["frepo"], train_and_test=lambda *a: trained.append(a) or 0.0)
    )
    with pytest.raises(FrepoError, match="too small for a Conv of depth 6"):
        evaluate_archs(path, EvalConfig.build(arch="mlp,conv", depth=6, models=1, steps=1))
    assert trained == []
