"""Cross-architecture networks: the DC/DSA definitions (layers, widths, norms, pooling, padding),
feature sizes on 32×32×3 and 28×28×1 inputs, seeded init, and a few training steps each."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import frepo.models.conv as conv_module
import frepo.models.zoo as zoo
from frepo.base.errors import FrepoError
from frepo.eval.augment_dsa import dsa_augment
from frepo.models import ARCHS, Conv, build_model

SHAPES = [(3, 32, 32), (1, 28, 28)]
FEATURES = {"convnet": 2048, "alexnet": 3072, "vgg11": 512, "resnet18": 512, "resnet18_bn": 512, "mlp": 128}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def no_init(monkeypatch):
    """Structure-only tests skip the (slow, for 11M weights) initialisation: shapes do not need it."""
    for module in (zoo, conv_module):
        monkeypatch.setattr(module, "initialise_", lambda module, **_: module)


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("shape", SHAPES)
def test_feature_sizes_and_logits(no_init, shape):
    x = torch.randn(2, *shape)
    for arch in ARCHS:
        model = build_model(arch, shape, 7, generator=gen())
        assert model(x).shape == (2, 7), arch
        expected = FEATURES.get(arch, 8192)
        assert model.feature_dim == expected and model.embed(x).shape == (2, expected), arch


def test_dc_definitions(no_init):
    net = build_model("convnet", (1, 28, 28), 10, generator=gen())
    assert [c.out_channels for c in _convs(net)] == [128, 128, 128]  # the same width at every layer
    assert [c.padding for c in _convs(net)] == [(3, 3), (1, 1), (1, 1)]  # 28×28 greyscale -> 32×32
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2d"] * 3
    assert all(g.num_groups == g.num_channels == 128 and g.affine for g in net.modules() if isinstance(g, nn.GroupNorm))

    alex = build_model("alexnet", (3, 32, 32), 10, generator=gen())
    assert [(c.out_channels, c.kernel_size[0]) for c in _convs(alex)] == [
        (128, 5),
        (192, 5),
        (256, 3),
        (192, 3),
        (192, 3),
    ]
    assert _convs(build_model("alexnet", (1, 28, 28), 10, generator=gen()))[0].padding == (4, 4)
    assert sum(isinstance(m, nn.MaxPool2d) for m in alex.modules()) == 3
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in alex.modules())

    vgg = build_model("vgg11", (1, 28, 28), 10, generator=gen())
    assert [c.out_channels for c in _convs(vgg)] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert _convs(vgg)[0].padding == (3, 3) and sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    assert sum(isinstance(m, nn.GroupNorm) for m in vgg.modules()) == 8

    for arch, norm in (("resnet18", nn.GroupNorm), ("resnet18_bn", nn.BatchNorm2d)):
        res = build_model(arch, (3, 32, 32), 10, generator=gen())
        convs = _convs(res)
        assert len(convs) == 1 + 16 + 3 and all(c.bias is None for c in convs)  # stem, 8 blocks, 3 shortcuts
        assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
        assert sum(isinstance(m, norm) for m in res.modules()) == 1 + 16 + 3
        assert not any(isinstance(m, nn.MaxPool2d) for m in res.modules())

    mlp = build_model("mlp", (1, 28, 28), 10, generator=gen())
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [128, 128, 10]
    assert isinstance(build_model("conv_in", (3, 32, 32), 10, generator=gen()), Conv)


def test_seeded_lecun_init_and_no_global_rng():
    state = torch.random.get_rng_state()
    a = build_model("convnet", (3, 32, 32), 10, generator=gen(3))
    b = build_model("convnet", (3, 32, 32), 10, generator=gen(3))
    c = build_model("convnet", (3, 32, 32), 10, generator=gen(4))
    assert torch.equal(torch.random.get_rng_state(), state)  # built on the meta device: no global draws
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    # LeCun normal, variance 1/fan_in: 0.2% sampling error at 128×128×3×3 (a truncation left uncorrected is 12% off),
    # and the first layer's fan-in (3·9) is not its fan-out (128·9): 7× apart
    w = a.features[4].weight
    assert float(w.detach().std()) == pytest.approx(math.sqrt(1 / (128 * 9)), rel=0.02)
    assert float(a.features[0].weight.detach().std()) == pytest.approx(math.sqrt(1 / (3 * 9)), rel=0.05)
    assert float(a.features[4].bias.detach().abs().max()) == 0.0


@pytest.mark.parametrize("arch", ["convnet", "conv_in", "mlp"])
def test_torch_init_is_torchs_own_reset_parameters_drawn_from_the_generator(arch):
    """Independent reference: torch's own layer constructors (reset_parameters) under a global seed
    draw exactly what init='torch' draws from a generator with that seed, module by module."""
    ours = build_model(arch, (3, 32, 32), 10, generator=gen(7), init="torch")
    with torch.random.fork_rng():
        torch.manual_seed(7)
        reference = []
        for m in ours.modules():
            if isinstance(m, nn.Conv2d):
                reference.append(nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, bias=m.bias is not None))
            elif isinstance(m, nn.Linear):
                reference.append(nn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
    layers = [m for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == len(reference) > 1
    for mine, theirs in zip(layers, reference):
        torch.testing.assert_close(mine.weight, theirs.weight, rtol=0, atol=0)
        torch.testing.assert_close(mine.bias, theirs.bias, rtol=0, atol=0)
    norms = [m for m in ours.modules() if isinstance(m, nn.GroupNorm)]
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    with pytest.raises(FrepoError, match="unknown init"):
        build_model(arch, (3, 32, 32), 10, generator=gen(), init="he")


def test_errors():
    with pytest.raises(FrepoError, match="known: conv, conv_bn"):
        build_model("transformer", (3, 32, 32), 10, generator=gen())
    with pytest.raises(FrepoError, match="too small for vgg11"):
        build_model("vgg11", (3, 16, 16), 10, generator=gen())
    with pytest.raises(FrepoError, match="instance or batch"):
        zoo.ResNet18(3, 10, (32, 32), norm="layer", generator=gen())


@pytest.mark.parametrize(
    "shape, archs",
    [
        ((3, 32, 32), tuple(ARCHS)),
        # The large networks train on one shape only (their 28×28 forward is checked above): CPU time.
        ((1, 28, 28), ("conv", "conv_bn", "conv_in", "convnet", "alexnet", "mlp")),
    ],
)
def test_every_architecture_trains_a_few_steps(shape, archs):
    augment_gen = gen(0)
    x, y = torch.randn(2, *shape), torch.tensor([0, 2])
    for arch in archs:
        model = build_model(arch, shape, 3, generator=gen(1))
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for _ in range(2):
            loss = F.cross_entropy(model(dsa_augment(x, augment_gen)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert torch.isfinite(loss), arch
        assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters())), arch
