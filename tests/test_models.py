"""The reference Conv: shapes, feature size, norm placement, init statistics, batch-norm semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from frepo.base.errors import FrepoError
from frepo.models import ARCHS, Conv, FlaxBatchNorm2d, build_model, init_flax_defaults_, lecun_normal_


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "shape, feature_dim", [((3, 32, 32), 8192), ((1, 28, 28), 8192), ((1, 8, 8), 512), ((3, 64, 64), 32768)]
)
def test_feature_size_and_logits(shape, feature_dim):
    model = Conv(shape[0], 10, shape[1:], generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, *shape)
    assert model.feature_dim == feature_dim
    assert model.embed(x).shape == (2, feature_dim)
    assert model(x).shape == (2, 10)


def test_layout_widths_padding_and_norm_placement():
    model = Conv(1, 10, (28, 28), width=128, depth=3, norm="batch", generator=gen())
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512]
    assert [c.padding for c in convs] == [(3, 3), (1, 1), (1, 1)]  # 28×28 greyscale -> 32×32
    assert all(c.bias is not None for c in convs)
    kinds = [type(m).__name__ for m in model.features]
    # No norm before the first conv; one before each later conv; ReLU then 2×2 average pooling.
    assert kinds == [
        "Conv2d",
        "ReLU",
        "AvgPool2d",
        "FlaxBatchNorm2d",
        "Conv2d",
        "ReLU",
        "AvgPool2d",
        "FlaxBatchNorm2d",
        "Conv2d",
        "ReLU",
        "AvgPool2d",
    ]
    assert Conv(3, 10, (32, 32), generator=gen()).features[0].padding == (1, 1)
    assert not any(
        isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))
        for m in Conv(3, 10, (32, 32), norm="none", generator=gen()).modules()
    )
    assert (
        sum(isinstance(m, nn.GroupNorm) for m in Conv(3, 10, (32, 32), norm="instance", generator=gen()).modules()) == 2
    )


def test_lecun_normal_init_statistics():
    model = Conv(3, 10, (32, 32), generator=torch.Generator().manual_seed(0))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            target = math.sqrt(1.0 / w[0].numel())  # variance 1/fan_in, as Flax's lecun_normal
            assert w.std().item() == pytest.approx(target, rel=0.05)
            assert w.mean().item() == pytest.approx(0.0, abs=0.05 * target)
            # Truncated at 2 standard deviations of the underlying normal (= 2.27 × target).
            assert w.abs().max().item() <= 2 / 0.87962566103423978 * target + 1e-7
            assert w.abs().max().item() > 2.0 * target
            assert torch.count_nonzero(m.bias) == 0


def test_the_truncated_normal_is_the_inverse_cdf_of_one_uniform_draw():
    """Flax's truncated normal as JAX draws it, checked against float64 scipy on the same uniform draws, and
    its distribution against scipy's truncnorm."""
    from scipy import stats
    from scipy.special import erfinv

    from frepo.models.init import truncated_normal_

    std, n = 0.05, 200_000
    x = truncated_normal_(torch.empty(n), std, generator=gen(3)).double().numpy()
    edge = 2 * stats.norm.cdf(2.0) - 1  # u on (erf(-√2), erf(√2)): the inverse CDF lands in [-2, 2]
    u = torch.empty(n).uniform_(-edge, edge, generator=gen(3)).double().numpy()
    reference = std * math.sqrt(2) * erfinv(u)
    # float32's erfinv and scaling each round to about an ulp (1.6e-7 measured): 8 ulps is a wide margin, and a
    # draw other than the inverse CDF of these uniforms is off by the weights' own size.
    assert abs(x - reference).max() <= 8 * 2**-23 * 2 * std
    assert abs(x).max() <= np.float32(2 * std)  # clipped to the bounds as float32 holds them
    assert stats.kstest(x / std, stats.truncnorm(-2, 2).cdf).pvalue > 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_truncated_normal_is_torch_2_11s_draw_bit_for_bit(dtype):
    """The weights frepo drew under torch <= 2.11, whose `trunc_normal_` was this algorithm, op for op: uniform
    on (2Φ(a/std) - 1, 2Φ(b/std) - 1), erfinv, times std·√2, plus the mean (0), clamped to [a, b]."""
    from frepo.models.init import truncated_normal_

    def torch_2_11(tensor, std, generator):
        def cdf(x):
            return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

        a, b = -2 * std, 2 * std
        tensor.uniform_(2 * cdf(a / std) - 1, 2 * cdf(b / std) - 1, generator=generator)
        return tensor.erfinv_().mul_(std * math.sqrt(2.0)).add_(0.0).clamp_(min=a, max=b)

    for std, shape in ((0.05, (64, 27)), (1.0, (10,)), (3e-3, (128, 128, 3, 3))):
        ours = truncated_normal_(torch.empty(shape, dtype=dtype), std, generator=gen(1))
        theirs = torch_2_11(torch.empty(shape, dtype=dtype), std, gen(1))
        assert torch.equal(ours, theirs), (dtype, std)


def test_weights_do_not_depend_on_torchs_trunc_normal(monkeypatch):
    """torch 2.12 changed `nn.init.trunc_normal_` from the inverse CDF to redrawing normals outside the bounds:
    the same seed gave other weights under torch 2.11 and 2.14. frepo draws its own."""
    expected = Conv(3, 10, (32, 32), generator=gen()).state_dict()

    def refuse(*args, **kwargs):
        raise AssertionError("frepo's weights must not come from torch's trunc_normal_")

    monkeypatch.setattr(nn.init, "trunc_normal_", refuse)
    rebuilt = Conv(3, 10, (32, 32), generator=gen()).state_dict()
    assert all(torch.equal(expected[name], rebuilt[name]) for name in expected)


def test_building_a_network_leaves_the_global_generator_as_it_was():
    """torch's layers draw their default weights from the global generator before frepo draws every weight
    again from its own: the caller's next draws shifted with every network a run or an evaluation built."""
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    for arch in ARCHS:
        build_model(arch, (3, 32, 32), 10, generator=gen(), width=8)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_init_is_seeded():
    a = Conv(3, 10, (32, 32), generator=torch.Generator().manual_seed(5))
    b = Conv(3, 10, (32, 32), generator=torch.Generator().manual_seed(5))
    c = Conv(3, 10, (32, 32), generator=torch.Generator().manual_seed(6))
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        if pa.abs().sum() > 0:
            assert not torch.equal(pa, pc)


def test_flax_batch_norm_running_statistics():
    bn = FlaxBatchNorm2d(2)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64) * 3 + 1
    bn.double().train()
    out = bn(x)
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    # Flax momentum 0.1: keep 0.1 of the old (0, 1), take 0.9 of the batch's biased statistics.
    torch.testing.assert_close(bn.running_mean, 0.9 * mean)
    torch.testing.assert_close(bn.running_var, 0.1 + 0.9 * var)
    torch.testing.assert_close(out, (x - mean.view(1, 2, 1, 1)) / torch.sqrt(var.view(1, 2, 1, 1) + 1e-5))
    bn.eval()
    expected = (x - bn.running_mean.view(1, 2, 1, 1)) / torch.sqrt(bn.running_var.view(1, 2, 1, 1) + 1e-5)
    torch.testing.assert_close(bn(x), expected)


def test_build_model_variants_and_errors():
    assert isinstance(build_model("conv_bn", (3, 32, 32), 10, generator=gen()), Conv)
    with pytest.raises(FrepoError, match="unknown architecture 'transformer'"):
        build_model("transformer", (3, 32, 32), 10, generator=gen())
    with pytest.raises(FrepoError, match=r"images of \(2, 2\) are too small for a Conv of depth 3"):
        Conv(3, 10, (2, 2), depth=3, generator=gen())


def test_the_registry_lists_every_architecture_in_the_clis_order():
    assert list(ARCHS) == [
        "conv",
        "conv_bn",
        "conv_in",
        "convnet",
        "alexnet",
        "vgg11",
        "resnet18",
        "resnet18_bn",
        "mlp",
    ]
    assert ARCHS["conv_bn"] == "FRePo Conv, batch norm (the distillation's pool network)"


@pytest.mark.parametrize("arch, norm", [("conv", "none"), ("conv_bn", "batch"), ("conv_in", "instance")])
def test_a_conv_arch_is_conv_with_its_norm_drawn_alike(arch, norm):
    """build_model's Conv family is Conv itself: same structure, same draws from the same seed (the
    distillation's pool builds its networks through build_model)."""
    built = build_model(arch, (3, 16, 16), 4, generator=gen(2), width=8, depth=2)
    direct = Conv(3, 4, (16, 16), 8, 2, norm, generator=gen(2))
    assert [type(m) for m in built.modules()] == [type(m) for m in direct.modules()]
    for (name, a), (_, b) in zip(built.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), name


def test_the_generator_is_required_everywhere():
    """No global-RNG fallback: leaving the generator out, or passing None, is an error, not a draw."""
    with pytest.raises(TypeError, match="takes 3 positional arguments"):
        build_model("conv", (3, 8, 8), 4, gen())  # keyword-only
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'generator'"):
        build_model("conv", (3, 8, 8), 4)
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'generator'"):
        Conv(3, 4, (8, 8))
    explicit = "weights are drawn from an explicit torch.Generator, not NoneType"
    with pytest.raises(TypeError, match=explicit):
        build_model("mlp", (3, 8, 8), 4, generator=None)
    with pytest.raises(TypeError, match=explicit):
        init_flax_defaults_(Conv(3, 4, (8, 8), width=4, generator=gen()), generator=None)
    with pytest.raises(TypeError, match=explicit):
        lecun_normal_(torch.empty(3, 3), generator=None)


def test_a_name_registers_once():
    from frepo.base.registry import registering
    from frepo.models.registry import register_model

    table: dict = {}
    registering(table, "a", "thing", entry=lambda f: ("wrapped", f))(len)
    assert table == {"a": ("wrapped", len)}
    with pytest.raises(ValueError, match="thing 'a' is registered twice"):
        registering(table, "a", "thing")(len)
    with pytest.raises(ValueError, match="architecture 'conv' is registered twice"):
        register_model("conv", "another conv")(lambda spec, *, generator: None)
    assert ARCHS["conv"] == "FRePo Conv, no norm (the frepo protocol's network)"  # untouched


def test_inference_batches_shrink_with_the_image_so_activations_stay_bounded():
    from frepo.models import inference_batch

    sizes = {8: 1000, 28: 1000, 32: 1000, 64: 250, 128: 62}
    assert {s: inference_batch(torch.zeros(1, 3, s, s)) for s in sizes} == sizes
