"""LAMB and the schedules against optax. The expected numbers were produced by optax 0.2.8 (JAX 0.10.2,
float64) on this machine, with the script quoted in each test; a numpy re-derivation checks them too."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from frepo.method.optim import Lamb, cosine_decay, warmup_cosine

# p = {"x": [[.5, -1, 2], [0, .25, -.75]], "y": [.9, -.1, -.1]}; tx = optax.lamb(optax.cosine_decay_schedule(
# 3e-4, decay_steps=3, alpha=0.1)); three updates with the gradients below.
X0 = [[0.5, -1.0, 2.0], [0.0, 0.25, -0.75]]
Y0 = [0.9, -0.1, -0.1]
GRADS = [
    ([[0.1, 0.2, -0.3], [0.05, -0.4, 0.0]], [0.01, -0.02, 0.03]),
    ([[-0.2, 0.1, 0.3], [0.5, 0.4, -0.1]], [0.0, 0.0, 0.0]),
    ([[0.3, -0.1, 0.2], [-0.05, 0.2, 0.1]], [-0.03, 0.02, 0.01]),
]
OPTAX_X = [
    [4.9971962672442793e-01, -1.0007868173890497e00, 2.0002206526553135e00],
    [-7.8340863864400246e-04, 2.5023649281432664e-01, -7.4973046155614465e-01],
]
OPTAX_Y = [0.899767445579901, -0.09972914584637953, -0.10035453633542711]


def _numpy_lamb(params, grads, schedule, b1=0.9, b2=0.999, eps=1e-6):
    """optax.lamb written out: adam moments with bias correction, per-leaf trust ratio, -lr."""
    params = [np.array(p, dtype=np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, gs in enumerate(grads):
        for i, g in enumerate(gs):
            g = np.array(g, dtype=np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1 ** (t + 1))) / (np.sqrt(v[i] / (1 - b2 ** (t + 1))) + eps)
            pn, un = np.linalg.norm(params[i]), np.linalg.norm(u)
            trust = 1.0 if pn == 0 or un == 0 else pn / un
            params[i] = params[i] - schedule(t) * trust * u
    return params


def test_lamb_matches_optax_and_numpy():
    x = torch.tensor(X0, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(Y0, dtype=torch.float64, requires_grad=True)
    schedule = cosine_decay(3e-4, 3, 0.1)
    opt = Lamb([x, y], lr=schedule, eps=1e-6)
    for gx, gy in GRADS:
        x.grad, y.grad = torch.tensor(gx, dtype=torch.float64), torch.tensor(gy, dtype=torch.float64)
        opt.step()
    np.testing.assert_allclose(x.detach().numpy(), OPTAX_X, rtol=0, atol=1e-15)
    np.testing.assert_allclose(y.detach().numpy(), OPTAX_Y, rtol=0, atol=1e-15)
    ref_x, ref_y = _numpy_lamb([X0, Y0], GRADS, schedule)
    np.testing.assert_allclose(ref_x, OPTAX_X, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ref_y, OPTAX_Y, rtol=0, atol=1e-15)


def test_lamb_trust_ratio_is_one_for_zero_parameters():
    # A zero tensor would never move with a ratio ||p||/||u|| = 0; optax uses 1 there.
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    Lamb([p], lr=0.1).step()
    # First Adam step: m̂/ (sqrt(v̂)+eps) = sign(g) (up to eps).
    np.testing.assert_allclose(p.detach().numpy(), [-0.1, 0.1, -0.1], rtol=1e-5)


def test_lamb_state_round_trip():
    """Gradients of mixed signs and sizes: with uniform ones (as before) Adam's direction is the same whatever
    its moments hold, so a restore that dropped them passed. Against a fresh optimiser too: the state matters."""
    p = torch.ones(4, requires_grad=True)
    opt = Lamb([p], lr=cosine_decay(1e-2, 10, 0.1))
    p.grad = torch.tensor([1.0, -2.0, 0.5, 3.0])
    opt.step()
    opt2 = Lamb([q := p.detach().clone().requires_grad_()], lr=cosine_decay(1e-2, 10, 0.1))
    saved = io.BytesIO()  # through a file, as a checkpoint: loaded as is, the state's tensors would be shared
    torch.save(opt.state_dict(), saved)
    opt2.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    for key, value in opt.state[p].items():
        assert torch.equal(torch.as_tensor(opt2.state[q][key]), torch.as_tensor(value)), key
    fresh = Lamb([r := p.detach().clone().requires_grad_()], lr=cosine_decay(1e-2, 10, 0.1))
    for o, t in ((opt, p), (opt2, q), (fresh, r)):
        t.grad = torch.tensor([0.5, 0.1, -1.0, 2.0])
        o.step()
    torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.allclose(r, p)  # the moments (and step count) the restore carried changed the step


def test_cosine_decay_matches_optax():
    # optax.cosine_decay_schedule(3e-4, decay_steps=3, alpha=0.1) at t = 0..4
    expected = [0.0003, 0.00023249999999999999, 9.750000000000003e-05, 2.9999999999999997e-05, 2.9999999999999997e-05]
    schedule = cosine_decay(3e-4, 3, 0.1)
    assert [schedule(t) for t in range(5)] == pytest.approx(expected, rel=1e-12)


def test_warmup_cosine_matches_optax():
    # optax.join_schedules([linear_schedule(0, 3e-4, 500), cosine_decay_schedule(3e-4, alpha=.01,
    # decay_steps=500)], [500]) at these steps (a 1000-step evaluation run).
    steps = (0, 1, 250, 499, 500, 501, 750, 999, 1000, 1200)
    expected = [
        0.0,
        6.000000000000146e-07,
        0.00015,
        0.00029939999999999996,
        0.0003,
        0.0002999970687371363,
        0.0001515,
        3.0029312628636384e-06,
        2.9999999999999997e-06,
        2.9999999999999997e-06,
    ]
    schedule = warmup_cosine(3e-4, 500, 1000, 0.01)
    assert [schedule(t) for t in steps] == pytest.approx(expected, rel=1e-9, abs=1e-18)
