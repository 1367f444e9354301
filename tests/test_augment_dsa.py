"""DSA augmentations against closed forms: colour formulas, zero-filled integer shifts, cutout squares,
affine resampling of a linear ramp, parameter ranges, one group per batch."""

from __future__ import annotations

import math

import pytest
import torch

from frepo.eval import augment_dsa as dsa


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_colour_ops_match_their_formulas_and_draw_order():
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    g = _gen(1)
    b, s, c = (torch.rand(6, generator=g) for _ in range(3))
    y = x + (b.double().view(-1, 1, 1, 1) - 0.5) * 1.0
    m = y.mean(1, keepdim=True)
    y = (y - m) * (2.0 * s.double().view(-1, 1, 1, 1)) + m
    m = y.mean((1, 2, 3), keepdim=True)
    y = (y - m) * (c.double().view(-1, 1, 1, 1) + 0.5) + m
    torch.testing.assert_close(dsa.color(x, _gen(1)), y)


@pytest.mark.parametrize("size, shift", [(32, 4), (28, 4), (8, 1)])
def test_crop_is_a_zero_filled_integer_shift(size, shift):
    assert dsa.round_half_up(size * 0.125) == shift
    x = torch.randn(40, 2, size, size) + 5.0  # no zeros in the input
    dy, dx = dsa.draw_crop(40, size, size, _gen(2))
    assert int(dy.abs().max()) <= shift and int(dx.abs().max()) <= shift
    many = dsa.draw_crop(500, size, size, _gen(0))
    assert all(set(d.tolist()) == set(range(-shift, shift + 1)) for d in many)  # the whole range, both axes
    out = dsa.apply_crop(x, dy, dx)
    expected = torch.zeros_like(x)
    for n in range(len(x)):
        for i in range(size):
            for j in range(size):
                si, sj = i + int(dy[n]), j + int(dx[n])
                if 0 <= si < size and 0 <= sj < size:
                    expected[n, :, i, j] = x[n, :, si, sj]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(dsa.crop(x, _gen(2)), out, rtol=0, atol=0)


@pytest.mark.parametrize("size, side", [(32, 16), (28, 14), (9, 5)])
def test_cutout_zeroes_a_clipped_square_of_half_the_size(size, side):
    assert dsa.cutout_size(size, size) == (side, side)
    n = 60
    x = torch.rand(n, 3, size, size) + 1.0
    cy, cx = dsa.draw_cutout(n, size, size, _gen(3))
    assert int(cy.min()) >= 0 and int(cy.max()) <= size - side % 2
    out = dsa.apply_cutout(x, cy, cx)
    for k in range(n):
        top, left = int(cy[k]) - side // 2, int(cx[k]) - side // 2
        rows = [i for i in range(top, top + side) if 0 <= i < size]
        cols = [j for j in range(left, left + side) if 0 <= j < size]
        hole = torch.zeros(size, size, dtype=torch.bool)
        hole[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
        assert torch.equal(out[k] == 0, hole.expand(3, -1, -1))
        assert torch.equal(out[k][:, ~hole], x[k][:, ~hole])
    # Centred holes are whole: side² zeros per channel.
    centred = dsa.apply_cutout(x[:1], torch.tensor([size // 2]), torch.tensor([size // 2]))
    assert int((centred[0, 0] == 0).sum()) == side * side


def test_flip_is_per_sample_with_probability_one_half():
    x = torch.randn(400, 1, 4, 4)
    out = dsa.flip(x, _gen(4))
    flipped = (out == x.flip(3)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def _ramp(n, size):
    """x[..., i, j] = j: bilinear resampling reproduces the sampled x-coordinate exactly."""
    return torch.arange(size, dtype=torch.float64).view(1, 1, 1, size).expand(n, 1, size, size).contiguous()


def _source_pixel(u: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised coordinate (align_corners=False) -> pixel coordinate."""
    return ((u + 1) * size - 1) / 2


def test_scale_resamples_the_affine_grid_with_zeros_outside():
    size, n = 16, 30
    sx, sy = dsa.draw_scale(n, _gen(5))
    assert float(sx.min()) >= 1 / 1.2 and float(sx.max()) <= 1.2 and float(sy.min()) >= 1 / 1.2
    out = dsa.apply_affine(_ramp(n, size), dsa.scale_theta(sx, sy))
    u = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    for k in range(n):
        px = _source_pixel(sx[k].double() * u, size)  # column j reads input x-coordinate px[j]
        py = _source_pixel(sy[k].double() * u, size)
        inside = ((px >= 0) & (px <= size - 1)).view(1, -1) & ((py >= 0) & (py <= size - 1)).view(-1, 1)
        expected = px.view(1, -1).expand(size, size)
        torch.testing.assert_close(out[k, 0][inside], expected[inside], atol=1e-4, rtol=0)
    assert torch.equal(dsa.scale(_ramp(n, size), _gen(5)), out.to(torch.float64))
    # Outside the image the padding is zero, not replicated edges: the corners of a zoomed-out view of a
    # constant image fall off.
    ones = dsa.apply_affine(torch.ones(n, 1, size, size), dsa.scale_theta(sx, sy))
    big = (sx > 1.1) & (sy > 1.1)
    assert bool(big.any()) and bool((ones[big, 0, 0, 0] < 0.5).all())


def test_rotate_resamples_the_rotated_grid():
    size, n = 16, 20
    angle = dsa.draw_rotate(n, _gen(6))
    assert float(angle.abs().max()) <= math.radians(15) + 1e-7
    out = dsa.apply_affine(_ramp(n, size), dsa.rotate_theta(angle))
    u = (2 * torch.arange(size, dtype=torch.float64) + 1) / size - 1
    uu, vv = u.view(1, -1).expand(size, size), u.view(-1, 1).expand(size, size)
    for k in range(n):
        c, s = math.cos(float(angle[k])), math.sin(float(angle[k]))
        px, py = _source_pixel(c * uu - s * vv, size), _source_pixel(s * uu + c * vv, size)
        inside = (px >= 0) & (px <= size - 1) & (py >= 0) & (py <= size - 1)
        torch.testing.assert_close(out[k, 0][inside], px[inside], atol=1e-4, rtol=0)
    # A quarter turn in normalised coordinates is an exact rot90 of a square image.
    x = torch.arange(16.0).view(1, 1, 4, 4)
    quarter = dsa.apply_affine(x, dsa.rotate_theta(torch.tensor([math.pi / 2])))
    torch.testing.assert_close(quarter, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_one_group_per_batch_drawn_uniformly_and_seeded():
    x = torch.randn(8, 3, 8, 8)
    seen = set()
    for seed in range(40):
        g = _gen(seed)
        name = dsa.DSA_OPS[int(torch.randint(len(dsa.DSA_OPS), (1,), generator=g))]
        seen.add(name)
        expected = dsa.OPS[name](x, g)
        assert torch.equal(dsa.dsa_augment(x, _gen(seed)), expected)
    assert seen == set(dsa.DSA_OPS)
    assert dsa.DSA_OPS == ("color", "crop", "cutout", "flip", "scale", "rotate")
