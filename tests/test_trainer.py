"""The outer step's performance options change speed and memory, not the maths."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import needs_cxx

from frepo.config import DistillConfig
from frepo.method.trainer import BatchSampler, FRePoTrainer, meta_step


def _grads(meta_problem, chunk_size=0, precision="fp32", use_flip=True, support_precision="fp32"):
    model, syn, x_real, y_real = meta_problem()
    metrics = meta_step(model, syn, x_real, y_real, use_flip, 1e-6, chunk_size, precision, support_precision)
    return metrics["loss"], syn.images.grad.clone(), syn.labels.grad.clone()


def test_chunked_checkpointed_forward_gives_the_same_gradient(meta_problem):
    loss, gx, gy = _grads(meta_problem, chunk_size=0)
    for chunk in (5, 7):  # the flipped support has 24 images: uneven chunks
        loss_c, gx_c, gy_c = _grads(meta_problem, chunk_size=chunk)
        torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
        # Convolutions over other batch sizes may sum in another order: judged as norms (an element near
        # zero carries no relative precision); a dropped or misplaced chunk is off by tens of percent.
        for exact, chunked in ((gx, gx_c), (gy, gy_c)):
            assert (chunked - exact).norm() < 1e-4 * exact.norm()


def test_the_chunked_forward_reads_no_rng_state(meta_problem, monkeypatch):
    """Activation checkpointing stashes the RNG states for its recompute unless told not to, and reading the
    CUDA generator's state inside a CUDA graph capture is an error: every capture of a step with a chunked
    support forward (--compile graph, the GPU's default, with more than --chunk-size support images) failed.
    The CPU generator stands in for the CUDA one here: the same checkpoint argument decides both."""

    def forbidden():
        raise AssertionError("an RNG state was read inside the step")

    monkeypatch.setattr(torch, "get_rng_state", forbidden)
    _grads(meta_problem, chunk_size=5)


def test_bf16_real_feature_pass_stays_close_to_fp32(meta_problem):
    loss, gx, _ = _grads(meta_problem, precision="fp32")
    loss_b, gx_b, _ = _grads(meta_problem, precision="bf16")
    assert abs(float(loss_b) - float(loss)) < 0.05 * abs(float(loss)) + 1e-3
    cosine = torch.nn.functional.cosine_similarity(gx.flatten(), gx_b.flatten(), dim=0)
    assert cosine > 0.95


def test_bf16_support_forward_stays_close_to_fp32(meta_problem):
    """The meta-gradient flows back through the support forward; under bf16 autocast it keeps its direction
    (a wrong cast, e.g. labels or the solve in bf16, or a lost gradient, would not)."""
    loss, gx, gy = _grads(meta_problem)
    loss_b, gx_b, gy_b = _grads(meta_problem, precision="bf16", support_precision="bf16")
    assert gx_b.dtype == gx.dtype == torch.float32
    assert abs(float(loss_b) - float(loss)) < 0.05 * abs(float(loss)) + 1e-3
    for exact, low in ((gx, gx_b), (gy, gy_b)):
        assert torch.nn.functional.cosine_similarity(exact.flatten(), low.flatten(), dim=0) > 0.95


@needs_cxx
def test_compiled_step_follows_the_eager_step_and_compiles_each_pass_once():
    """torch.compile'd network passes: the same run to float rounding, through the pool's model swaps,
    online steps and a reset, with one graph per pass (support features with gradient, real features
    without, the online step's logits): swapping or re-initialising a model recompiles nothing."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    def trainer(mode: str) -> FRePoTrainer:
        config = DistillConfig(ipc=2, batch_size=32, steps=40, use_flip=True, compile=mode)
        config.model.width = 16
        config.pool.num_models, config.pool.max_online_updates = 2, 4  # a reset within the first steps
        gen = torch.Generator().manual_seed(1)
        x, y = torch.randn(128, 3, 16, 16, generator=gen), torch.arange(128) % 4
        return FRePoTrainer(config, x, y, 4, torch.device("cpu"))

    eager, compiled = trainer("off"), trainer("on")
    start = eager.syn.images.detach().clone()
    for _ in range(10):
        me, mc = eager.step(), compiled.step()
        # inductor's reductions follow the vector width: measured (AMD EPYC, torch 2.14) a loss gap of 4e-6 at
        # ATEN_CPU_CAPABILITY=default and 9e-6 at avx2, and the images 1.6e-5..1.8e-5 of their movement
        torch.testing.assert_close(mc["loss"], me["loss"], rtol=1e-4, atol=1e-6)
    assert compiled.pool.resets == eager.pool.resets > 0
    assert (compiled.syn.images - eager.syn.images).norm() < 1e-3 * (eager.syn.images - start).norm()
    assert counters["stats"]["unique_graphs"] == 3
    torch._dynamo.reset()


def _trainer(channels_last: bool) -> FRePoTrainer:
    config = DistillConfig(ipc=2, batch_size=16, steps=10, use_flip=True, channels_last=channels_last)
    config.model.width = 8
    config.pool.num_models = 2
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 16, 16, generator=gen), torch.arange(64) % 4
    return FRePoTrainer(config, x, y, 4, torch.device("cpu"))


def test_channels_last_matches_contiguous():
    """Same maths in another memory layout: only the rounding differs. LAMB's first update is nearly a sign
    step, so an image gradient element within rounding of zero can move either way (by lr * trust); the
    comparison is therefore relative to norms (a wrong layout, e.g. permuted channels, is off by ~100%)."""
    a, b = _trainer(False), _trainer(True)
    assert b.syn.images.is_contiguous(memory_format=torch.channels_last)
    start = a.syn.images.detach().clone()
    for i in range(4):
        ma, mb = a.step(), b.step()
        torch.testing.assert_close(mb["loss"], ma["loss"], rtol=1e-4, atol=1e-6)
        if i == 0:  # the same meta-gradient (measured 5e-5 relative on an AMD EPYC with torch 2.14)
            gap = (b.syn.images.grad - a.syn.images.grad).norm() / a.syn.images.grad.norm()
            assert gap < 1e-3
    # Measured 4e-4 of the movement after 4 steps, and elementwise up to 2.2e-5 against a 3e-4 first step.
    assert (b.syn.images - a.syn.images).norm() < 1e-2 * (a.syn.images - start).norm()


def test_batch_sampler_visits_every_image_once_per_epoch():
    sampler = BatchSampler(10, 4, torch.Generator().manual_seed(0))
    drawn = torch.cat([sampler.next() for _ in range(5)])  # 20 indices = exactly 2 epochs
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))
    big = BatchSampler(3, 7, torch.Generator().manual_seed(0)).next()  # batch larger than the set
    assert len(big) == 7 and set(big.tolist()) == {0, 1, 2}


_TF32_PROBE = """
import sys, torch
import frepo.base.device as device_module
from frepo.base.device import exact_matmuls, tf32_passes
b = torch.backends
state = sys.argv[1]
if state == "legacy":
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = False
elif state == "high":  # a user's allow_tf32, or inductor's advice
    b.cuda.matmul.allow_tf32 = True
elif state == "medium":
    torch.set_float32_matmul_precision("medium")
elif state == "new":  # torch >= 2.9's API, as a user may set it before calling frepo
    b.fp32_precision = "tf32"
elif state == "conv-new":  # the legacy flag for matmuls, the newer setting for convolutions
    b.cuda.matmul.allow_tf32 = True
    b.cudnn.conv.fp32_precision = "ieee"
def attempt(read):
    try:
        return read()
    except RuntimeError:  # torch's "mix of the legacy and new APIs"
        return "refused"
def settings():
    legacy = (torch.get_float32_matmul_precision, lambda: b.cuda.matmul.allow_tf32, lambda: b.cudnn.allow_tf32)
    newer = (b.fp32_precision, b.cuda.matmul, b.cudnn.conv, b.mkldnn.matmul)
    return tuple(attempt(read) for read in legacy) + tuple(getattr(x, "fp32_precision", x) for x in newer)
def kernels():  # the TF32 that cuBLAS(Lt) and cuDNN read, through their own checks
    return attempt(torch._C._get_cublas_allow_tf32), attempt(torch._C._get_cudnn_allow_tf32)
b.cudnn.enabled, b.cudnn.benchmark_limit = False, 5  # a user's: cudnn.flags() in the block reset both
def others():
    return b.cudnn.enabled, b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.benchmark_limit
before, outside, cudnn = settings(), kernels(), others()
def agrees(read, value, was):  # frepo's blocks make no mix of the two; a mix the user made may stay theirs
    return read == value or read == was == "refused"
with tf32_passes():
    assert all(agrees(k, True, was) for k, was in zip(kernels(), outside)), (kernels(), outside)
    assert others() == cudnn, (others(), cudnn)
assert settings() == before, (before, settings())
device_module.TF32_DEVICES = {"cpu"}  # the host as a device whose float32 matmuls may run in TF32
with exact_matmuls(torch.device("cpu")):
    assert agrees(kernels()[0], False, outside[0]), (kernels(), outside)
assert settings() == before, (before, settings())
print("ok")
"""


_EXACT_PROBE = """
import sys, numpy as np, torch
from torch.utils._python_dispatch import TorchDispatchMode
import frepo.base.device as device_module
from frepo.data.preprocess import Preprocessing, channel_stats, mean_covariance
from frepo.method.krr import krr_weights
b = torch.backends
if sys.argv[1] == "tf32-host":
    device_module.TF32_DEVICES = {"cpu"}  # the host as a device whose float32 matmuls may run in TF32
b.cuda.matmul.allow_tf32 = True  # as a user's script may (or inductor's advice)
MATMULS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
class Flags(TorchDispatchMode):  # the matmul setting each float32 product was dispatched under
    seen = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS and args[0].dtype == torch.float32:
            # torch's own check of the legacy flag, as cuBLASLt's kernels make it: it raises where the two APIs
            # disagree (the block once set only the newer one)
            torch._C._get_cublas_allow_tf32()
            self.seen.append(b.cuda.matmul.fp32_precision)
        return func(*args, **(kwargs or {}))
g = torch.Generator().manual_seed(0)
feat = torch.randn(4, 64, generator=g, requires_grad=True)  # 2n < D: the float32 Gram
labels = torch.randn(4, 3, generator=g, requires_grad=True)
images = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
before = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.fp32_precision)
with Flags():
    krr_weights(feat, labels, 1e-6).square().sum().backward()
    krr_weights(feat, labels, 1e-6, solve_dtype=torch.float32).square().sum().backward()
    mean_covariance(images, Preprocessing("standard", *channel_stats(images)), device=torch.device("cpu"))
expected = "ieee" if sys.argv[1] == "tf32-host" else "tf32"  # the host has no TF32: nothing set there
assert len(Flags.seen) >= 6 and set(Flags.seen) == {expected}, Flags.seen
assert (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision, b.fp32_precision) == before  # exactly
assert b.cuda.matmul.allow_tf32 and b.cudnn.allow_tf32  # the user's API still reads as it did
b.fp32_precision = "tf32"  # the newer API afterwards: the next solve ran into torch's "mix of APIs" error
krr_weights(feat, labels, 1e-6).square().sum().backward()
print("ok")
"""


@pytest.mark.parametrize("device", ["tf32-host", "host"])
def test_the_gram_and_the_zca_covariance_are_exact_float32_whatever_the_process_allows(device):
    """A process that allows TF32 globally (a user's `allow_tf32 = True`) had the float32 kernel Gram (ridge 1e-6
    of its mean eigenvalue; TF32 rounds to 1e-3) and the cached ZCA covariance computed in TF32 on a GPU. On a
    device with TF32 (the host standing in) they run exact; on the host nothing of the process's settings is
    touched, and every setting reads back as it was. A subprocess, since the settings are the process's."""
    proc = subprocess.run([sys.executable, "-c", _EXACT_PROBE, device], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="torch < 2.9 has no fp32_precision API")
@pytest.mark.parametrize("api", ["default", "legacy", "high", "medium", "new", "conv-new"])
def test_tf32_passes_and_exact_matmuls_follow_the_processes_tf32_api(api):
    """torch refuses a mix of its two TF32 APIs: reading a legacy flag after the newer setting disagrees raises,
    and so do cuBLASLt's and cuDNN's own checks. A user who set `torch.backends.fp32_precision` had every TF32
    step fail; exact_matmuls under a user's allow_tf32 = True set only the newer one (the kernels' check raised
    inside); a legacy write left "none" as "ieee" and "medium" as "high". Each block sets each backend through
    the API the process uses for it, and every setting reads back as it was. A subprocess: they are the
    process's."""
    proc = subprocess.run([sys.executable, "-c", _TF32_PROBE, api], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_cuda_tests_exact_fp32_fixture_leaves_tf32_as_found(exact_fp32):
    """tests/test_cuda.py's fixture wrote the legacy flags back, which left the per-backend settings changed
    ("ieee" for "none"): the process guard then failed each of the 8 CUDA tests that use it. The settings are
    host state, so the host checks it; the guard (conftest) compares them after this test."""
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
