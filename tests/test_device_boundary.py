"""The host/device boundary without a GPU: the pipeline on a simulated second device (`cpu:1`, see
tests/helpers/simulated_device.py), which refuses what a GPU refuses; and the step free of the operations
that make a GPU wait for the host.

The snapshot crash of issue 18 (a host picture indexed with device class ids, at step 0 of every GPU run)
fails `test_every_command_runs_on_a_simulated_device` when reintroduced."""

from __future__ import annotations

import collections
import dataclasses
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import frepo
from frepo.base.errors import FrepoError
from frepo.cli import main
from frepo.config import DistillConfig
from frepo.data.preprocess import Preprocessing
from frepo.io.artifact import DistilledSet, load_distilled, save_distilled
from frepo.method.trainer import FRePoTrainer, meta_step

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from host_batches import HostBatches  # noqa: E402
from simulated_device import DEVICE, DeviceMixError, SimulatedDevice  # noqa: E402

# ---- the simulated device refuses what a GPU refuses, and accepts what a GPU accepts ---------------


def test_the_simulated_device_refuses_what_a_gpu_refuses():
    with SimulatedDevice() as sim:
        host = torch.arange(6.0)
        dev = host.to(DEVICE)
        assert dev.device == DEVICE and host.device.type == "cpu" and host.device != DEVICE
        assert sim.on_device(dev) and not sim.on_device(host)
        assert (dev * 2).device == DEVICE and dev[1:].device == DEVICE  # results and views stay there
        ids = torch.tensor([0, 2], device=DEVICE)
        with pytest.raises(DeviceMixError, match="indices should be either on cpu"):
            host[ids]  # the snapshot crash: host pixels, device class ids
        assert dev[torch.tensor([0, 2])].device == DEVICE  # a device tensor takes host indices
        with pytest.raises(DeviceMixError, match="same device"):
            torch.cat([host, dev])
        with pytest.raises(DeviceMixError, match="same device"):
            host + dev
        assert (dev * torch.tensor(2.0)).device == DEVICE  # a 0-dim host tensor is a scalar to a GPU
        with pytest.raises(DeviceMixError, match="numpy"):
            dev.numpy()
        with pytest.raises(DeviceMixError, match="numpy"):
            np.asarray(dev)
        back = dev.cpu()
        assert back.device.type == "cpu" and not sim.on_device(back) and back.numpy().tolist() == host.tolist()
        back.add_(1)  # a host copy, not an alias of the device tensor
        assert dev.tolist() == host.tolist() and float(dev.sum()) == 15.0
        with pytest.raises(DeviceMixError, match="generator"):
            torch.randn(3, device=DEVICE, generator=torch.Generator().manual_seed(0))
        model = torch.nn.Linear(6, 2).to(DEVICE)
        assert all(p.device == DEVICE for p in model.parameters())
        with pytest.raises(DeviceMixError, match="same device"):
            model(host)
        loss = model(dev).sum()
        loss.backward()
        assert model.weight.grad.device == DEVICE
        torch.optim.Adam(model.parameters()).step()  # optimiser states follow their parameters
        with pytest.raises(DeviceMixError, match="different device"):
            model.weight.grad = torch.zeros(2, 6)
        dev[0:2] = torch.ones(2)  # a GPU copies into a slice across devices
        assert dev.device == DEVICE and dev[:2].tolist() == [1.0, 1.0]
        with pytest.raises(DeviceMixError, match="tensor indices"):
            dev[torch.tensor([0, 1])] = torch.ones(2)  # but not through tensor indices (index_put_)


def test_a_distilled_set_holds_host_tensors_only():
    pre = Preprocessing("none", torch.zeros(1), torch.ones(1))
    meta = {"dataset": "x", "classes": ["a", "b"]}
    with SimulatedDevice():
        images, labels = torch.zeros(2, 1, 4, 4, device=DEVICE), torch.arange(2)
        with pytest.raises(FrepoError, match="host tensors.*images on cpu:1"):
            DistilledSet(images, labels, pre, meta)
        DistilledSet(images.cpu(), labels, pre, meta)


# ---- the whole pipeline on the simulated device ---------------------------------------------------

DISTILL = dict(steps=4, width=8, num_models=2, max_online_updates=2, batch_size=32, eval_steps=5, eval_every=2)
DISTILL.update(checkpoint_every=2, log_every=1, snapshot_every=1, eval_models=2)


def _flags(options: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]


def _run(args: list, capsys) -> str:
    """`frepo ARGS` in this process; a failure shows the error and its traceback."""
    try:
        code = main([str(a) for a in args])
    except Exception:  # the command line turns most errors into one line: keep the traceback here
        pytest.fail(f"frepo {' '.join(map(str, args))} raised:\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    assert code == 0, f"frepo {' '.join(map(str, args))} exited {code}: {err[-3000:]}"
    return out


def test_every_command_runs_on_a_simulated_device(tmp_path, capsys):
    """distill (snapshots every step, validation and the best set, TensorBoard, checkpoints, the final files;
    and with streamed real batches), export in every format, evaluate with every protocol (stacked and one
    by one), subset by every method, show, report, all with --device cpu:1: a host and a device tensor that
    meet where a GPU refuses them fail here."""
    run = tmp_path / "run"
    with SimulatedDevice() as sim:
        _run(["distill", "--dataset", "digits", "--ipc", 2, "--device", "cpu:1", "--tensorboard", "--out", run]
             + _flags(DISTILL), capsys)  # fmt: skip
        assert sim.placed > 0  # the run's tensors were on the device
        assert len(list((run / "images").glob("step*.png"))) == 5 and (run / "best.safetensors").is_file()
        assert any((run / "tensorboard").iterdir())
        streamed = {**DISTILL, "steps": 2, "snapshot_every": 0, "eval_every": 0}  # real batches gathered per step
        _run(["distill", "--dataset", "digits", "--ipc", 2, "--device", "cpu:1", "--stream", "on", "--out",
              tmp_path / "streamed"] + _flags(streamed), capsys)  # fmt: skip
        distilled = run / "distilled.safetensors"
        for layout in ("imagefolder", "pt", "npz"):
            _run(["export", distilled, "--to", tmp_path / layout, "--format", layout], capsys)
        for protocol, options in (("frepo", ["--steps", 5]), ("dsa", ["--epochs", 2]), ("krr", [])):
            _run(["evaluate", distilled, "--protocol", protocol, "--models", 2, "--device", "cpu:1", *options], capsys)
        learned = load_distilled(distilled)  # learned labels that are class distributions: kept as they are
        soft = dataclasses.replace(learned, labels=learned.labels.softmax(-1))
        soft_path = save_distilled(soft, tmp_path / "soft.safetensors")
        options = ["--protocol", "dsa", "--soft-labels", "--epochs", 2, "--models", 1, "--device", "cpu:1"]
        _run(["evaluate", soft_path, *options], capsys)
        for together in ("on", "off"):
            _run(["evaluate", distilled, "--models", 2, "--steps", 5, "--device", "cpu:1", "--together", together],
                 capsys)  # fmt: skip
        _run(["evaluate", tmp_path / "pt", "--models", 1, "--steps", 5, "--device", "cpu:1"], capsys)
        for method in ("random", "herding", "kcenter"):
            out = tmp_path / f"{method}.safetensors"
            # a small feature network: the boundary alone (random reads none, and refuses the flags)
            features = ["--feature-steps", 3, "--feature-width", 8] if method != "random" else []
            _run(["subset", "--dataset", "digits", "--ipc", 2, "--method", method, "--device", "cpu:1", "--out", out,
                  *features], capsys)  # fmt: skip
        _run(["show", run, "--out", tmp_path / "grid.png"], capsys)
        _run(["report", run], capsys)


def test_continual_and_privacy_run_on_a_simulated_device(tmp_path, quick_mlp):
    cl = dict(dataset="digits", tasks=2, ipc=2, orders="0", steps=3, batch_size=32, lr=0.01, eval_models=1)
    cl.update(eval_steps=5, feature_steps=2, feature_width=8, device="cpu:1")
    mia = dict(dataset="digits", chunk=1, chunk_size=200, ipc=2, steps=3, batch_size=32, lr=0.01, victim_steps="5")
    mia.update(victim_batch=32, victim_width=8, models=1, attacks="frepo", device="cpu:1")
    with SimulatedDevice() as sim:
        continual = frepo.continual(out=tmp_path / "cl", **cl)
        privacy = frepo.privacy(out=tmp_path / "mia", **mia)
        assert sim.placed > 0
    assert all(len(v) == 2 for v in continual["per_task"].values())
    assert [r["arm"] for r in privacy["rows"]] == ["distilled", "start", "real", "control"]


# ---- no operation in the step makes a GPU wait for the host -----------------------------------------

# ATen operations that read a device value on the host (a GPU synchronisation) whatever their inputs:
# a scalar read, output sizes that depend on values, and index_fill_ with a tensor value (torch.trace's
# backward uses it: torch reads the value with .item() inside the CUDA kernel's wrapper).
SYNCING = ("_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "equal", "unique", "_unique2")
SYNCING_OVERLOADS = ("aten.index_fill.int_Tensor", "aten.index_fill_.int_Tensor")


class SyncProbe(TorchDispatchMode):
    """Records the syncing operations dispatched within it (the backward's too), with the frepo line."""

    def __init__(self):
        super().__init__()
        self.seen: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in SYNCING or str(func) in SYNCING_OVERLOADS:
            frames = [f for f in traceback.extract_stack() if "frepo" in f.filename and "tests" not in f.filename]
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            self.seen[f"{func} at {where}"] += 1
        return func(*args, **(kwargs or {}))


def test_the_meta_step_reads_nothing_back_from_the_device(meta_problem):
    """Every tensor of the meta-step (forward, solve, meta-backward) is a device tensor on a GPU, so none of
    its operations may read a value on the host. (The rest of the step runs host-side code on the CPU that
    a GPU skips, e.g. one_hot's range check; tests/test_cuda.py checks the whole step on a GPU.)"""
    model, syn, x_real, y_real = meta_problem()
    with SyncProbe() as probe:
        meta_step(model, syn, x_real, y_real, True, 1e-6)
    assert not probe.seen, dict(probe.seen)
    assert syn.images.grad is not None and syn.labels.grad is not None


def test_the_probe_sees_the_trace_backward():
    a = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    with SyncProbe() as probe:
        torch.autograd.grad(torch.trace(a @ a.T), [a])
    assert any("index_fill" in k for k in probe.seen)


class _PrefetchHere:
    """The trainer's prefetcher with the gathering on this thread, where the simulated device sees it."""

    def __init__(self, gather):
        self.gather = gather

    def get(self, idx, upcoming):
        return self.gather(idx)


@pytest.mark.parametrize("source", ["in memory", "streamed", "online subsample", "graph inputs"])
def test_a_step_on_the_simulated_device_keeps_its_tensors_there(source, monkeypatch):
    """The outer step keeps its tensors on the device, and after the first step (which places the data,
    the set and the pool) no step sends anything that may make the host wait: the batch indices, a
    streamed batch, the online subsample, a pool reset's weights and `--compile graph`'s inputs (its
    bookkeeping without the captures, as tests/test_graphs.py runs it) are queued from page-locked memory."""
    from frepo.method.graphs import StepGraphs

    monkeypatch.setattr("frepo.method.trainer.Prefetcher", _PrefetchHere)
    config = DistillConfig(ipc=2, batch_size=16, steps=10, use_flip=True, device="cpu:1")
    config.model.width = 8
    config.pool.num_models, config.pool.max_online_updates = 2, 2  # a reset within the steps
    if source == "online subsample":
        config.pool.online_batch_size = 5  # of the set's 8 images
    gen = torch.Generator().manual_seed(1)
    with SimulatedDevice() as sim:
        x, y = torch.randn(64, 3, 8, 8, generator=gen), torch.arange(64) % 4  # made here: host tensors
        trainer = FRePoTrainer(config, HostBatches(x) if source == "streamed" else x, y, 4, DEVICE)
        if source == "graph inputs":
            trainer.graphs = StepGraphs(trainer._device_step, DEVICE, capture=False)
        for step in range(8):
            metrics = trainer.step()
            if step == 0:
                waits = sim.waits.copy()  # placing the data, the set and the pool's models
                reads = sim.reads.copy()
        assert trainer.pool.resets > 0
        assert sim.waits == waits, f"copies that may wait in steps 2-8: {dict(sim.waits - waits)}"
        # nor reads a value back: on a GPU the host would wait for the step's kernels before queuing the next step's
        assert sim.reads == reads, f"device values read on the host in steps 2-8: {dict(sim.reads - reads)}"
        assert all(sim.on_device(t) for t in metrics.values())
        assert sim.on_device(trainer.syn.images) and all(sim.on_device(p) for p in trainer.pool.model.parameters())


# ---- no evaluation step makes the host wait for the GPU ------------------------------------------
# On a GPU a plain `.to` of a host tensor copies it and then waits for the stream: an augmentation that
# sent its per-sample draws that way made every evaluation step drain the GPU's queue before the host
# could launch the next kernels (5 stacked networks: 5 waits a step). From pageable memory, even a
# non_blocking copy may wait for the stream to stage it: `frepo.base.device.host_to_device` pins first.


def test_the_simulated_device_counts_copies_that_may_wait():
    from frepo.base.device import host_to_device

    with SimulatedDevice() as sim:
        dev = torch.ones(3).to(DEVICE)  # blocking
        assert sum(sim.waits.values()) == 1
        torch.ones(3).to(DEVICE, non_blocking=True)  # queued, but from pageable memory
        torch.ones(3).to(DEVICE, torch.float64, True)  # non_blocking given by position
        assert sum(sim.waits.values()) == 3
        host_to_device(torch.ones(3), DEVICE, torch.float64)  # page-locked on a GPU, then queued
        dev.to(DEVICE)
        dev.cpu()
        dev.to("cpu")
        assert sum(sim.waits.values()) == 3  # device to device and device to host: none
        dev.copy_(torch.zeros(3))
        dev.copy_(torch.zeros(3), non_blocking=True)
        assert sum(sim.waits.values()) == 5
        dev.copy_(host_to_device(torch.zeros(3), DEVICE), non_blocking=True)
        torch.zeros(3).copy_(dev)
        assert sum(sim.waits.values()) == 5
        assert set(sim.waits) == {"?"}  # made here, outside frepo: no frepo line to name


def _every_op():
    from frepo.eval import augment, augment_dsa

    return [(module, name) for module in (augment, augment_dsa) for name in module.OPS]


@pytest.mark.parametrize("module, name", _every_op(), ids=lambda v: getattr(v, "__name__", v).split(".")[-1])
def test_each_augmentation_queues_its_draws_without_waiting(module, name):
    """Every op of the reference evaluation and of DSA draws its parameters on the host (a CPU generator:
    the same augmentations on every device) and sends them without a blocking copy."""
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = module.OPS[name](x, torch.Generator().manual_seed(1))
    with SimulatedDevice() as sim:
        dev = x.to(DEVICE, non_blocking=True)
        out = module.OPS[name](dev, torch.Generator().manual_seed(1))
        assert out.device == DEVICE
        assert not sim.waits, dict(sim.waits)
        out = out.cpu()
    assert torch.equal(out, expected)  # the same draws and values as on the host


def _trainings():
    """Each evaluation training of frepo, as f(steps) on device images (and the stacked networks)."""
    from frepo.apps.victims import train_victim
    from frepo.eval.augment import REFERENCE_OPS
    from frepo.eval.protocol import ReferenceTraining
    from frepo.eval.protocols.dsa import DSA_OPS, train_dsa_model
    from frepo.eval.protocols.frepo import train_reference_model, train_reference_models_on_streams
    from frepo.eval.together import train_reference_models

    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y, ids = torch.randn(12, 4, generator=torch.Generator().manual_seed(1)), torch.arange(12) % 4
    common = dict(num_classes=4, device=DEVICE, width=8)

    def reference(steps, arch="conv"):
        return ReferenceTraining(steps=steps, ops=REFERENCE_OPS, batch_size=5, warmup=2, arch=arch, **common)

    def gen(seed=0):
        return torch.Generator().manual_seed(seed)

    return {
        "frepo": lambda steps: train_reference_model(x.to(DEVICE), y.to(DEVICE), reference(steps), gen()),
        "frepo-stacked": lambda steps: train_reference_models(
            x.to(DEVICE), y.to(DEVICE), reference(steps), [gen(0), gen(1), gen(2)]
        ),
        "frepo-streams": lambda steps: train_reference_models_on_streams(
            x.to(DEVICE), y.to(DEVICE), reference(steps, "conv_bn"), [gen(0), gen(1)]
        ),
        "dsa": lambda steps: train_dsa_model(
            x.to(DEVICE),
            ids.to(DEVICE),
            arch="conv",
            init_gen=gen(),
            train_gen=gen(1),
            epochs=steps,
            batch_size=5,
            ops=DSA_OPS,
            **common,
        ),
        "privacy-victim": lambda steps: train_victim(
            x, y, steps=steps, batch_size=5, lr=1e-3, ops=REFERENCE_OPS, gen=gen(), **common
        ),
    }


@pytest.mark.parametrize("training", ["frepo", "frepo-stacked", "frepo-streams", "dsa", "privacy-victim"])
def test_evaluation_training_steps_never_wait_for_the_gpu(training):
    """Training an evaluation network (one, or several stacked; the dsa protocol's; the privacy
    experiment's victims) sends its data and networks to the device once: more steps, no more blocking
    copies. (Reintroducing one `.to(x.device)` in an augmentation op fails this.)"""
    waits, reads = [], []
    for steps in (2, 12):
        with SimulatedDevice() as sim:
            _trainings()[training](steps)
            assert sim.placed > 0
        waits.append(sim.waits)
        reads.append(sim.reads)
    assert waits[1] == waits[0], f"copies that may wait, per step: {dict(waits[1] - waits[0])}"
    assert reads[1] == reads[0], f"device values read on the host, per step: {dict(reads[1] - reads[0])}"


@pytest.mark.parametrize("networks", [1, 3])
def test_test_accuracy_sends_host_batches_without_waiting(networks):
    """The test set stays on the host; each of its batches is queued to the device from page-locked memory
    (one network's `accuracy`, and the stacked networks' `accuracies`), and the counts are read once."""
    from frepo.eval.protocol import accuracy
    from frepo.eval.together import Stacked
    from frepo.models import build_model

    gens = [torch.Generator().manual_seed(m) for m in range(networks)]
    models = [build_model("conv", (3, 8, 8), 4, generator=g, width=8) for g in gens]

    def test_set():
        return torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(9)), torch.arange(50) % 4

    expected = [accuracy(model, *test_set(), torch.device("cpu"), batch=16) for model in models]
    with SimulatedDevice() as sim:
        images, labels = test_set()  # made here: host tensors
        if networks == 1:
            model = models[0].to(DEVICE)
            sim.waits.clear()  # placing the network
            got = [accuracy(model, images, labels, DEVICE, batch=16)]
        else:
            stacked = Stacked(models, DEVICE)
            sim.waits.clear()
            got = stacked.accuracies(images, labels, DEVICE, batch=16)
        assert not sim.waits, dict(sim.waits)
    assert got == expected


def test_the_krr_protocol_sends_host_batches_without_waiting():
    """The krr protocol's support set and test batches are queued from page-locked memory too (a plain `.to`
    waited for the GPU at every batch), and it scores as on the host."""
    from frepo.eval.protocols.krr import krr_accuracy
    from frepo.method.krr import centered_one_hot
    from frepo.models import build_model

    model = build_model("conv", (3, 8, 8), 4, generator=torch.Generator().manual_seed(0), width=8)

    def sets():
        g = torch.Generator().manual_seed(3)
        support = torch.randn(8, 3, 8, 8, generator=g), centered_one_hot(torch.arange(8) % 4, 4)
        return *support, torch.randn(50, 3, 8, 8, generator=g), torch.arange(50) % 4

    expected = krr_accuracy(model, *sets(), device=torch.device("cpu"), use_flip=True, batch=16)
    with SimulatedDevice() as sim:
        host_sets = sets()  # made here: host tensors
        model = model.to(DEVICE)
        sim.waits.clear()  # placing the network
        got = krr_accuracy(model, *host_sets, device=DEVICE, use_flip=True, batch=16)
        assert not sim.waits, dict(sim.waits)
    assert got == expected


def test_the_privacy_victims_outputs_send_host_batches_without_waiting():
    """The membership-inference attacks read a victim's outputs batch by batch, queued the same way."""
    from frepo.apps.victims import outputs
    from frepo.models import build_model

    model = build_model("conv", (1, 8, 8), 3, generator=torch.Generator().manual_seed(0), width=8)

    def examples():
        return torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.arange(30) % 3

    expected = outputs(model, *examples(), 3, torch.device("cpu"))
    with SimulatedDevice() as sim:
        host_examples = examples()  # made here: host tensors
        model = model.to(DEVICE)
        sim.waits.clear()  # placing the network
        got = outputs(model, *host_examples, 3, DEVICE)
        assert not sim.waits, dict(sim.waits)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("n", [20, 300])  # fewer images than the 108 dimensions (Gram route), and more
def test_the_zca_fit_runs_on_the_device_and_returns_host_tensors(n, monkeypatch):
    from frepo.data.preprocess import fit_preprocessing

    eigh, seen = torch.linalg.eigh, []
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: (seen.append(a.device), eigh(a))[1])
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(120, 40, size=(n, 6, 6, 3)), 0, 255).astype(np.uint8)
    host = fit_preprocessing(x, "zca", 0.1)
    with SimulatedDevice():
        fitted = fit_preprocessing(x, "zca", 0.1, device=DEVICE)
        assert all(t.device == torch.device("cpu") for t in fitted.tensors().values())
    assert seen == [torch.device("cpu"), DEVICE]  # the host fit's eigendecomposition, then the device fit's
    pairs = zip((*fitted.matrices(), fitted.zca_mean), (*host.matrices(), host.zca_mean))
    for a, b in pairs:
        assert (a - b).norm() <= 1e-5 * b.norm()


def test_a_set_transforms_a_device_batch_on_the_device():
    """`transform` of a device batch: uint8 pixels came back in host memory, float ones on the device (read in an
    audit; tests/test_cuda.py moved both to the host before comparing)."""
    from frepo.data import load_dataset

    raw = load_dataset("digits")
    ds = frepo.make_subset("digits", 2)
    on_host = ds.transform(raw.x_test)
    with SimulatedDevice():
        pixels = torch.from_numpy(raw.x_test).to(DEVICE)
        for out in (ds.transform(pixels), ds.transform(pixels.float() / 255, value_range=(0, 1))):
            assert out.device == DEVICE
            torch.testing.assert_close(out.cpu(), on_host)


def test_a_gpu_the_machine_lacks_is_refused_and_a_run_measures_its_own_gpu_peak(tmp_path, monkeypatch):
    """`cuda:7` on a machine of 2 GPUs was taken, and failed as CUDA's "invalid device ordinal" once the run's
    folder was locked and its data read; a GPU run's peak memory was the process's (earlier runs included)."""
    from frepo.base import device as device_module
    from frepo.jobs import actions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device_module.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert device_module.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(FrepoError, match=r"device 'cuda:7': this process sees 2 GPU\(s\), cuda:0 to cuda:1"):
        device_module.resolve_device("cuda:7")
    assert main(["distill", "--dataset", "digits", "--device", "cuda:2", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()

    reset = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset.append)
    actions.reset_peak_memory(torch.device("cuda", 1))
    actions.reset_peak_memory(torch.device("cpu"))
    assert reset == [torch.device("cuda", 1)]
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr("frepo.jobs.distill.reset_peak_memory", calls.append)  # once, as the loop starts
    config = frepo.presets.resolve(
        "digits", 1, overrides=dict(steps=2, width=8, num_models=2, eval_steps=10, batch_size=64)
    )
    frepo.distill(config, tmp_path / "cpu-run")
    assert calls == [torch.device("cpu")]


def test_every_network_frepo_trains_trains_under_deterministic_kernels(monkeypatch):
    """cuDNN's default choices accumulate with atomics (two runs of one seed drift apart on a GPU): evaluation
    entered `deterministic_kernels`, but herding's feature network and the privacy victims trained outside it.
    The one training loop enters it now, for the device it trains on (a no-op off CUDA, so spied here)."""
    import contextlib

    from frepo.apps.victims import train_victim
    from frepo.eval import training
    from frepo.jobs.subset import feature_network

    entered: list[tuple[str, str]] = []
    depth = {"n": 0}

    @contextlib.contextmanager
    def spy(device, on=True):
        entered.append((str(device), "on" if on else "off"))
        depth["n"] += 1
        try:
            yield
        finally:
            depth["n"] -= 1

    update = training.NetworkUpdate.__call__

    def inside(self, *args, **kwargs):
        assert depth["n"] == 1, "a training step ran outside deterministic_kernels"
        return update(self, *args, **kwargs)

    monkeypatch.setattr(training, "deterministic_kernels", spy)
    monkeypatch.setattr(training.NetworkUpdate, "__call__", inside)
    gen, images = torch.Generator().manual_seed(0), torch.rand(12, 1, 8, 8, generator=torch.Generator())
    labels = torch.arange(12) % 3
    feature_network(images, labels, 3, steps=2, gen=gen, device=torch.device("cpu"), width=8, batch_size=4)
    targets = torch.nn.functional.one_hot(labels, 3).float()
    train_victim(images, targets, steps=2, batch_size=4, lr=1e-3, width=8, num_classes=3, ops=(), gen=gen,
                 device=torch.device("cpu"))  # fmt: skip
    assert entered == [("cpu", "on"), ("cpu", "on")]


@pytest.mark.parametrize("on", [True, False])
def test_deterministic_kernels_covers_inductor_on_a_gpu_and_restores_every_flag(on):
    """`--deterministic` (the default) set cuDNN's flags only: code compiled in the block (`--compile on`) chose
    its reductions' configurations by timing them, per process, so two runs of one seed could differ on a GPU.
    The flags are host state: set for a CUDA device (no GPU needed to set them), left alone for the CPU, and
    restored after the block."""
    import torch._inductor.config as inductor

    from frepo.base.device import deterministic_kernels

    if not hasattr(inductor, "deterministic"):
        pytest.skip("inductor's deterministic flag exists from torch 2.10 on")
    flags = (torch.backends.cudnn, "deterministic"), (torch.backends.cudnn, "benchmark"), (inductor, "deterministic")
    before = [getattr(owner, name) for owner, name in flags]
    with deterministic_kernels(torch.device("cpu"), on):
        assert [getattr(owner, name) for owner, name in flags] == before
    with deterministic_kernels(torch.device("cuda"), on):
        assert [getattr(owner, name) for owner, name in flags] == [on, not on, on]
    assert [getattr(owner, name) for owner, name in flags] == before


def test_deterministic_kernels_on_a_torch_without_inductor_s_flag(monkeypatch):
    """Inductor's `deterministic` exists from torch 2.10 on; reading it on an older torch (which frepo allows)
    raised AttributeError in every GPU distillation and evaluation. cuDNN's flags are still set."""
    import types

    import torch._inductor

    from frepo.base.device import deterministic_kernels

    monkeypatch.setattr(torch._inductor, "config", types.SimpleNamespace(), raising=False)  # no such flag
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    with deterministic_kernels(torch.device("cuda")):
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
