"""Reference augmentations against closed forms: identities, integer shifts, hole sizes, colour maths."""

from __future__ import annotations

import math

import torch

from frepo.eval import augment
from frepo.eval.augment import affine_resample, reference_ops


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_identity_transform_is_exact():
    x = torch.randn(3, 2, 7, 9)
    eye = torch.eye(2, dtype=torch.float64).expand(3, 2, 2)
    torch.testing.assert_close(affine_resample(x, eye, torch.zeros(3, 2, dtype=torch.float64)), x, atol=1e-5, rtol=0)


def test_integer_translation_shifts_with_edge_replication():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6)
    eye = torch.eye(2, dtype=torch.float64).expand(1, 2, 2)
    # input = output + (1, 0): output pixel (r, c) reads input column c + 1; the last column repeats.
    out = affine_resample(x, eye, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    expected = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    out = affine_resample(x, eye, torch.tensor([[0.0, -2.0]], dtype=torch.float64))
    expected = torch.cat([x[..., :1, :], x[..., :1, :], x[..., :-2, :]], dim=-2)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)


def test_rotation_by_90_degrees_about_the_centre():
    # input = R(90°) @ output about the image centre (in x, y order) is a counter-clockwise quarter turn.
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    linear = torch.tensor([[[c, -s], [s, c]]], dtype=torch.float64)
    out = affine_resample(x, linear, torch.zeros(1, 2, dtype=torch.float64))
    torch.testing.assert_close(out, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_flip_is_per_sample_and_exact():
    x = torch.randn(64, 1, 4, 4)
    out = augment.flip(x, _gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 10 < int(flipped.sum()) < 54


def test_cutout_zeroes_one_square_of_size_res_over_4_inside_the_image():
    x = torch.ones(50, 3, 32, 32)
    out = augment.cutout(x, _gen())
    zeros = (out == 0).all(1)  # all channels of a hole pixel are zero
    assert bool((zeros.flatten(1).sum(1) == 64).all())  # 8×8 holes, never cut by the border
    assert bool(((out == 0) | (out == 1)).all())


def test_color_matches_its_formula():
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, generator=_gen(1))
    out = augment.color(x, _gen(3))
    # The draws by hand, not by the module's samplers: brightness uniform in ±0.25, contrast and saturation
    # log-uniform in [e^-0.25, e^0.25], each from one float64 uniform in [0, 1) per image, in this order.
    g = _gen(3)
    u = [torch.rand(5, generator=g, dtype=torch.float64).view(-1, 1, 1, 1) for _ in range(3)]
    b, c, s = 0.5 * u[0] - 0.25, (0.5 * u[1] - 0.25).exp(), (0.5 * u[2] - 0.25).exp()
    y = x + b
    y = (y - y.mean((1, 2, 3), keepdim=True)) * c + y.mean((1, 2, 3), keepdim=True)
    y = (y - y.mean(1, keepdim=True)) * s + y.mean(1, keepdim=True)
    torch.testing.assert_close(out, y)
    assert bool((c >= math.exp(-0.25)).all() and (c <= math.exp(0.25)).all())


def test_geometric_ops_are_seeded_and_bounded():
    x = torch.randn(8, 3, 16, 16)
    for name in ("crop", "rotate", "translate"):
        a = augment.OPS[name](x, _gen(1))
        b = augment.OPS[name](x, _gen(1))
        assert torch.equal(a, b)
        assert a.shape == x.shape
        # Bilinear interpolation with edge replication never leaves the input's range.
        assert a.min() >= x.min() - 1e-5 and a.max() <= x.max() + 1e-5


def test_no_flip_for_flip_sensitive_datasets():
    assert "flip" not in reference_ops(False)
    assert reference_ops(True) == ("flip", "color", "crop", "rotate", "translate", "cutout")


def test_geometric_ops_draw_the_reference_s_ranges():
    """On a ramp image (each pixel's value its centred x coordinate; in y for the second channel), each op's
    drawn parameter reads off the centre: translate shifts by at most size/8, crop zooms by 0.8..1.25, rotate
    turns by at most 15 degrees; and each range is used to its end (a narrower one passes a bound alone)."""
    n, size = 400, 32
    centred = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    ramp = torch.stack([centred.view(1, -1).expand(size, size), centred.view(-1, 1).expand(size, size)])
    x = ramp.expand(n, 2, size, size).contiguous()
    mid = size // 2

    def gradient(out: torch.Tensor, channel: int) -> tuple[torch.Tensor, torch.Tensor]:  # d/dx, d/dy at the centre
        c = out[:, channel]
        return c[:, mid, mid] - c[:, mid, mid - 1], c[:, mid, mid] - c[:, mid - 1, mid]

    moved = augment.translate(x, torch.Generator().manual_seed(0)) - x
    for channel in (0, 1):  # x, then y
        shift = moved[:, channel, mid, mid].abs()
        assert shift.max() <= size / 8 + 1e-4 and shift.max() > 0.95 * size / 8
    scale, _ = gradient(augment.crop(x, torch.Generator().manual_seed(1)), 0)  # 1 / zoom
    assert scale.min() >= 0.8 - 1e-4 and scale.max() <= 1.25 + 1e-4
    assert scale.min() < 0.82 and scale.max() > 1.22
    cos, minus_sin = gradient(augment.rotate(x, torch.Generator().manual_seed(2)), 0)
    degrees = torch.rad2deg(torch.atan2(-minus_sin, cos)).abs()
    assert degrees.max() <= 15 + 1e-3 and degrees.max() > 14


def test_random_op_applies_one_of_the_ops_each_as_often():
    """The frepo protocol's augmentation: per batch, one op drawn uniformly from the set's ops (the reference's
    choice), with that op's own per-sample draws. Each output is one op's, and over 600 batches each of the 5
    ops of a flip-sensitive set is drawn 120 ± 4·sqrt(120·0.8) times (a binomial's 4 standard deviations)."""
    x = torch.randn(4, 3, 16, 16, generator=_gen(9))
    ops = reference_ops(False)
    counts = dict.fromkeys(ops, 0)
    for seed in range(600):
        out = augment.random_op(x, ops, _gen(seed))
        after_the_draw = _gen(seed)
        torch.randint(len(ops), (1,), generator=after_the_draw)  # the op's draws follow the choice's
        state = after_the_draw.get_state()
        matches = []
        for name in ops:
            gen = torch.Generator()
            gen.set_state(state)
            if torch.equal(out, augment.OPS[name](x, gen)):
                matches.append(name)
        assert len(matches) == 1, (seed, matches)
        counts[matches[0]] += 1
    assert all(abs(c - 120) <= 4 * math.sqrt(120 * 0.8) for c in counts.values()), counts
