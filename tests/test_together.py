"""Evaluation networks trained together (stacked, vmap; or one CUDA stream each) against the same networks
one after the other."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
import torch

from frepo.base.errors import FrepoError
from frepo.base.rng import generator
from frepo.data.preprocess import Preprocessing
from frepo.eval import EvalConfig, evaluate_set
from frepo.eval.augment import reference_ops
from frepo.eval.protocol import ReferenceTraining
from frepo.eval.protocols.frepo import train_reference_model, train_reference_models_on_streams
from frepo.eval.together import train_reference_models
from frepo.io.artifact import DistilledSet

CPU = torch.device("cpu")


def _problem(n=12, classes=3, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, side, side, generator=g)
    targets = torch.nn.functional.one_hot(torch.arange(n) % classes, classes).float() - 1 / classes
    return images, targets


@pytest.mark.parametrize("arch", ["conv", "conv_in"])  # conv_in: GroupNorm, stacked under vmap too
def test_stacked_training_follows_each_sequential_network(arch):
    images, targets = _problem()
    training = ReferenceTraining(3, 24, reference_ops(True), CPU, arch=arch, width=8, batch_size=8)
    streams = [f"eval/model{i}" for i in range(3)]
    stacked = train_reference_models(images, targets, training, [generator(7, s) for s in streams])
    start = train_reference_models(images, targets, replace(training, steps=0), [generator(7, s) for s in streams])
    for m, s in enumerate(streams):
        seq = train_reference_model(images, targets, training, generator(7, s)).state_dict()
        moved = sum((seq[k] - start.params[k][m]).norm() ** 2 for k in seq) ** 0.5
        off = sum((seq[k] - stacked.params[k][m]).norm() ** 2 for k in seq) ** 0.5
        assert moved > 1e-2  # the networks did train
        # Measured ~1e-6; another network is ~80× off. Adam moves a weight whose gradient is at rounding level
        # by ±lr whatever the order, so the bound leaves room for a few such weights (each ~1e-3 of the movement).
        assert off / moved < 1e-2, (m, float(off / moved))


@pytest.mark.parametrize("arch", ["conv", "conv_bn"])
def test_networks_on_streams_are_the_sequential_networks_bit_for_bit(arch):
    """Interleaved step by step (one CUDA stream each on a GPU; in turn on a CPU), every network computes what
    it computes alone: the same draws, kernels and order. Batch-norm networks too, which cannot be stacked."""
    images, targets = _problem()
    training = ReferenceTraining(3, 24, reference_ops(True), CPU, width=8, batch_size=8, arch=arch)
    streams = [f"eval/model{i}" for i in range(3)]
    together = train_reference_models_on_streams(images, targets, training, [generator(7, s) for s in streams])
    for m, s in enumerate(streams):
        alone = train_reference_model(images, targets, training, generator(7, s)).state_dict()
        mine = together[m].state_dict()
        assert alone.keys() == mine.keys()
        assert all(torch.equal(alone[k], mine[k]) for k in alone), m


def _set(images, labels, classes=3) -> DistilledSet:
    pre = Preprocessing("none", torch.zeros(3), torch.ones(3))
    meta = {"dataset": "made-up", "classes": [str(c) for c in range(classes)], "mirror_invariant": True}
    return DistilledSet(images, labels, pre, meta)


@pytest.mark.parametrize("arch, stacked", [("conv", True), ("conv_bn", False)])
def test_evaluate_set_together_equals_one_by_one(arch, stacked):
    images, targets = _problem()
    test_x, _ = _problem(n=30, seed=1)
    test_y = torch.arange(30) % 3
    ds = _set(images, targets)
    runs = {}
    for together in ("on", "off", "streams"):
        config = EvalConfig.build(models=3, width=8, steps=24, together=together, arch=arch, device="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[together] = evaluate_set(ds, test_x, test_y, config)
        # --together on that cannot stack (batch-norm statistics) says so; it was silent
        said = [str(w.message) for w in caught if "cannot; its networks train one after the other" in str(w.message)]
        assert len(said) == (together == "on" and not stacked), said
    assert runs["on"].extra["together"] is stacked and runs["off"].extra["together"] is False
    assert runs["on"].extra["together_mode"] == ("stacked" if stacked else None)
    assert runs["streams"].extra["together"] is True and runs["streams"].extra["together_mode"] == "streams"
    assert runs["on"].accuracies == pytest.approx(runs["off"].accuracies, abs=100 / 30 + 1e-9)  # ≤ 1 image
    assert runs["streams"].accuracies == runs["off"].accuracies  # the same networks, bit for bit


def test_auto_stacks_only_where_it_measured_faster():
    """`--together auto` follows the H200 measurements (eval/config.py): stacked on CUDA up to 100 MNIST
    images' pixels per batch, one after the other beyond (slower stacked at 500) and on the CPU."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    auto = EvalConfig.build()

    def mnist(n):
        return torch.empty(n, 1, 28, 28)

    assert auto.together_mode(cuda, mnist(10)) == auto.together_mode(cuda, mnist(100)) == "stacked"
    assert auto.together_mode(cuda, mnist(101)) is None and auto.together_mode(cuda, mnist(500)) is None
    assert auto.together_mode(cuda, torch.empty(25, 3, 32, 32)) == "stacked"
    assert auto.together_mode(cuda, torch.empty(100, 3, 32, 32)) is None  # 100 CIFAR images: 4× the pixels
    assert auto.together_mode(cpu, mnist(10)) is None
    assert EvalConfig.build(together="on").together_mode(cpu, mnist(500)) == "stacked"
    assert EvalConfig.build(together="streams").together_mode(cpu, mnist(10)) == "streams"
    assert EvalConfig.build(together="off").together_mode(cuda, mnist(10)) is None
    # Protocols that train no networks together refuse an explicit request (it was ignored, the JSON said false)
    for protocol, does in (("krr", "trains nothing"), ("dsa", "one after the other")):
        for together in ("on", "streams"):
            with pytest.raises(FrepoError, match=f"--together {together} applies to --protocol frepo.*{does}"):
                EvalConfig.build(protocol=protocol, together=together)
        assert EvalConfig.build(protocol=protocol, together="off").together == "off"


def test_a_network_with_nan_outputs_is_named_in_a_warning_one_by_one_and_stacked(caplog):
    """A network that diverged gives NaN logits, whose argmax scores near chance: a number that looks like
    a (bad) result. Both accuracy paths say so; healthy networks warn nothing."""
    from frepo.eval.protocol import accuracy

    images, targets = _problem()
    test_x, test_y = images, torch.arange(12) % 3
    training = ReferenceTraining(num_classes=3, steps=0, ops=(), device=CPU, width=8)
    stacked = train_reference_models(images, targets, training, [generator(0, f"m{i}") for i in range(3)])
    single = train_reference_model(images, targets, training, generator(0, "m0"))
    with caplog.at_level("WARNING", logger="frepo"):
        stacked.accuracies(test_x, test_y, CPU)
        accuracy(single, test_x, test_y, CPU)
    assert not caplog.records
    stacked.params["classifier.bias"][1, 0] = float("nan")
    with torch.no_grad():
        single.classifier.bias[2] = float("inf")
    with caplog.at_level("WARNING", logger="frepo"):
        stacked.accuracies(test_x, test_y, CPU)
        accuracy(single, test_x, test_y, CPU)
    assert [r.getMessage() for r in caplog.records] == [
        "frepo: evaluation network 2 of 3 gave NaN or infinite outputs on 12 of 12 test images (it diverged in "
        "training): its accuracy is meaningless",
        "frepo: an evaluation network gave NaN or infinite outputs on 12 of 12 test images (it diverged in "
        "training): its accuracy is meaningless",
    ]
