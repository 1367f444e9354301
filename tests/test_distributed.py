"""Scale-out: 2 processes (torchrun, gloo, CPU) sharding the real batch give the 1-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frepo import presets
from frepo.base.dist import DistContext
from frepo.io.artifact import load_distilled
from frepo.jobs.distill import Distiller, distill
from frepo.jobs.runs import RunDir

OVERRIDES = dict(
    steps=5,
    width=8,
    num_models=3,
    max_online_updates=3,
    batch_size=64,
    eval_steps=10,
    checkpoint_every=5,
    log_every=1,
    device="cpu",
)


def test_two_gloo_processes_match_one_process(tmp_path):
    single = tmp_path / "single"
    distill(presets.resolve("digits", 2, overrides=OVERRIDES), single, progress=False)

    double = tmp_path / "double"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "frepo",
        "distill",
        "--dataset",
        "digits",
        "--ipc",
        "2",
        "--out",
        str(double),
    ]
    for key, value in OVERRIDES.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone speaks: each message and the summary were printed once per process.
    assert proc.stderr.count("frepo: distilling digits") == 1, proc.stderr[-3000:]
    assert "real batch 64 over 2 processes" in proc.stderr and proc.stdout.count("distilled set:") == 1

    a, b = load_distilled(single / "distilled.safetensors"), load_distilled(double / "distilled.safetensors")
    # The same maths; only the order of float additions differs (two half-batch gradients averaged, one
    # thread per process). LAMB's first steps move each element by about lr·trust·sign(gradient), so an
    # element whose gradient is at rounding level moves the other way under another order: measured on
    # a 2-core AMD EPYC at the budget lr 1e-2, 2 of 1280 pixels 0.019 apart, 0.018 of the set's movement
    # as a norm. The gap is therefore judged as a norm against that movement: 0.15 leaves room for ~70
    # such pixels, while a wrong sharding (both ranks on the same half of the batch) measured 0.68.
    initial = Distiller(presets.resolve("digits", 2, overrides=OVERRIDES), tmp_path / "initial").host_set()
    for name, start, one, two in (
        ("images", initial.images, a.images, b.images),
        ("labels", initial.labels, a.labels, b.labels),
    ):
        gap, moved = float((two - one).norm()), float((one - start).norm())
        print(f"{name}: |2 processes - 1 process| / |movement| = {gap / moved:.3g} (movement {moved:.3g})")
        assert moved > 0 and gap < 0.15 * moved, (name, gap / moved)
    assert b.meta["step"] == a.meta["step"] == 5
    # Rank 0 alone writes: one metrics line per step, not two.
    lines = (double / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in lines) == 5

    # A finished run re-entered with a damaged final file: rank 0 alone reads it (GBs on ImageNet), and both
    # ranks take its answer, so both meet in the barrier after it is written again (a rank reading the file
    # rank 0 had just rewritten skipped the barrier rank 0 waited in).
    final = double / "distilled.safetensors"
    images = b.images.clone()  # b's tensors map the file truncated next
    final.write_bytes(final.read_bytes()[:1000])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("writing it again from the final checkpoint") == 1, proc.stderr[-3000:]
    assert torch.equal(load_distilled(final).images, images)

    # Rank 0 refuses the folder (another config): every rank stops with that one line, none with a traceback
    # (rank 1 waited in the next collective and failed with "Connection closed by peer" when rank 0 left).
    at = cmd.index("--steps") + 1
    refused = [*cmd[:at], "7", *cmd[at + 1 :]]
    proc = subprocess.run(refused, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("frepo: error: ") == 1 and "different config (steps: 5 -> 7)" in proc.stderr, proc.stderr
    assert "[rank1]" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr[-3000:]


class _OneRankOfTwo(DistContext):
    """Rank r of 2 inside one process: its shard and its own pool, no communication."""

    def __init__(self, rank: int):
        super().__init__(rank, 2, 0)

    def mean_(self, tensors):
        pass

    def broadcast_(self, tensors):  # every rank's start is rank 0's already (the same seeds, one CPU)
        pass

    def gather_objects(self, obj):
        return [obj]


def test_per_rank_pool_averages_the_ranks_meta_gradients(tmp_path, monkeypatch):
    """--pool-mode per-rank (the official multi-device code): each rank's model of a slot has its own
    initialisation, and the averaged meta-gradient of 2 gloo processes equals the average of the two
    ranks' gradients computed one after the other in a single process."""
    monkeypatch.syspath_prepend(Path(__file__).parent / "helpers")
    import per_rank_step

    out = tmp_path / "step.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(Path(__file__).parent / "helpers" / "per_rank_step.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out)

    grads, models = [], []
    for rank in (0, 1):
        t = per_rank_step.trainer(_OneRankOfTwo(rank))
        models.append({k: v.clone() for k, v in t.pool.models[0].state_dict().items()})
        t.step()
        grads.append(t.syn.images.grad.clone())
    for rank in (0, 1):  # each process built exactly the model this rank builds alone
        for name, tensor in models[rank].items():
            assert torch.equal(saved["models"][rank][name], tensor), name
    first_conv = next(k for k in models[0] if k.endswith("weight"))
    assert not torch.equal(models[0][first_conv], models[1][first_conv])  # per-rank initialisations
    expected = (grads[0] + grads[1]) / 2
    # Gradients (no optimiser step in between): a summation order changes them by float rounding, ~1e-7 of
    # their norm; judged as a norm, as an element near zero carries no relative precision.
    gap = float((saved["grad"] - expected).norm() / expected.norm())
    print(f"|2 processes - average of the ranks| / |gradient| = {gap:.3g}")
    assert gap < 1e-4
    assert (grads[0] - grads[1]).norm() > 0.1 * expected.norm()  # the ranks really differ


def test_per_rank_pool_checkpoints_every_rank_s_pool(tmp_path):
    """Under torchrun a per-rank run checkpoints each rank's own pool (gathered to rank 0), and the same
    command reloads them: each rank takes its own back."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "frepo"]
    cmd += ["distill", "--dataset", "digits", "--ipc", "2", "--out", str(out), "--pool-mode", "per-rank"]
    for key, value in {**OVERRIDES, "steps": 4, "checkpoint_every": 2}.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):  # the second run finds the finished checkpoint and loads it on both ranks
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("is already complete (4 steps)" in proc.stderr + proc.stdout) == (attempt == 1)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    pools = state["pool_per_rank"]
    assert len(pools) == 2 and state["step"] == 4
    name = next(k for k in pools[0]["models"][0] if k.endswith("weight"))
    assert not torch.equal(pools[0]["models"][0][name], pools[1]["models"][0][name])
    assert pools[0]["current"] == pools[1]["current"] and pools[0]["steps"] == pools[1]["steps"]  # shared schedule


def test_a_gpu_run_keeps_a_host_backend_for_its_host_collectives():
    """NCCL takes device tensors only. A torchrun GPU run sends its stop flag as a host tensor every step
    (`DistContext.any`), plus objects and barriers: under an NCCL-only group the flag failed at step 1. The
    GPU group routes host tensors to gloo (and the flag never waits for the GPU)."""
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    from frepo.base.dist import COLLECTIVE_TIMEOUT, process_group_backend

    routes = BackendConfig(Backend(process_group_backend(use_cuda=True))).get_device_backend_map()
    assert routes == {"cpu": "gloo", "cuda": "nccl"}
    assert process_group_backend(use_cuda=False) == "gloo"
    assert COLLECTIVE_TIMEOUT.total_seconds() >= 3600  # rank 0 validates alone while the others wait


def test_each_rank_takes_a_gpu_it_can_see(monkeypatch):
    """torchrun's processes share a node's GPUs (rank N takes cuda:N); a scheduler that gives each process its
    own GPU (SLURM's --gpus-per-task=1) shows each one GPU, cuda:0: `set_device(LOCAL_RANK)` failed on every
    rank but the first with "invalid device ordinal". The whole join, with a simulated GPU count."""
    import frepo.base.dist as dist_module
    from frepo.base.errors import FrepoError

    assert [dist_module.rank_gpu(rank, 8) for rank in (0, 3, 7)] == [0, 3, 7]
    assert [dist_module.rank_gpu(rank, 1) for rank in (0, 3, 7)] == [0, 0, 0]
    with pytest.raises(FrepoError, match="LOCAL_RANK 4 sees 2 GPUs"):
        dist_module.rank_gpu(4, 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist_module.dist, "is_initialized", lambda: True)  # no group joined here
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "localhost")  # as torchrun sets it
    monkeypatch.setenv("MASTER_PORT", "29500")
    ctx, device = dist_module.init_distributed("cuda")
    assert (chosen, device, ctx.rank, ctx.world) == ([0], "cuda:0", 3, 4)
    assert dist_module.init_distributed("cuda:0")[1] == "cuda:0"  # the one GPU it sees, named


def test_a_rank_runs_on_the_device_named_or_says_why_not(monkeypatch):
    """`--device cpu:0` under torchrun picked the GPU (anything but "cpu" did), `cuda` without CUDA ran on the CPU
    unsaid, and `cuda:N` on a node of several GPUs was replaced by cuda:LOCAL_RANK unsaid."""
    import frepo.base.dist as dist_module
    from frepo.base.errors import FrepoError

    joined, chosen = [], []
    monkeypatch.setattr(dist_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist_module.dist, "init_process_group", lambda backend, timeout: joined.append(backend))
    monkeypatch.setattr(dist_module.atexit, "register", lambda f: None)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FrepoError, match="CUDA is not available"):
        dist_module.init_distributed("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for name in ("cpu", "cpu:0"):
        assert dist_module.init_distributed(name)[1] == "cpu", name
    assert (joined, chosen) == (["gloo", "gloo"], [])
    assert dist_module.init_distributed("cuda")[1] == "cuda:1" and chosen == [1]
    for name in ("cuda:0", "cuda:1"):  # the same refusal on every rank, the one whose GPU it names too
        with pytest.raises(FrepoError, match="each process takes the GPU of its LOCAL_RANK"):
            dist_module.init_distributed(name)
    with pytest.raises(FrepoError, match="runs on CPUs \\(gloo\\) or CUDA GPUs"):
        dist_module.init_distributed("mps")  # a device of another kind (a Mac's GPU) ran on the CPU unsaid


def test_every_rank_starts_from_rank_0s_set_and_pool(tmp_path):
    """Each rank builds its start from the same seeds, but on GPUs a rank's whitening or initialisation need
    not round as rank 0's; rank 0's synthetic set and replicated pool are sent to every rank. Here rank 1
    builds from another seed: it still starts from rank 0's set and pool."""
    out = tmp_path / "start.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += [str(Path(__file__).parent / "helpers" / "shared_start.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(out)
    for part in ("synthetic", "pool"):
        flat0, flat1 = torch.utils._pytree.tree_leaves(rank0[part]), torch.utils._pytree.tree_leaves(rank1[part])
        assert len(flat0) == len(flat1) > 0 and all(torch.equal(a, b) for a, b in zip(flat0, flat1)), part


def test_a_rank_that_cannot_see_the_checkpoint_stops_every_rank(tmp_path):
    """--out on each node's own disk: rank 0 resumes the checkpoint it sees, rank 1 would start afresh and
    average its gradients with rank 0's. Every rank stops instead, the one that saw the problem saying it."""
    shared, own = tmp_path / "shared", tmp_path / "own"
    distill(presets.resolve("digits", 2, overrides={**OVERRIDES, "steps": 2}), shared, progress=False)
    helper = Path(__file__).parent / "helpers" / "own_disks.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(helper)]
    cmd += [str(shared), str(own), "--dataset", "digits", "--ipc", "2"]
    for key, value in {**OVERRIDES, "steps": 2}.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("frepo (rank 1): error: rank 0 resumes") == 1, proc.stderr[-3000:]
    assert "--out must be one folder that every node shares" in proc.stderr
    assert proc.stderr.count("error:") == 1 and f"finds none at {own / 'checkpoint.pt'}" in proc.stderr
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr, proc.stderr[-3000:]  # their tracebacks

    # A damaged copy on one node: that rank cannot read it, and every rank stops (rank 0 waited in the next
    # collective, then failed with a broken connection's traceback).
    own.mkdir()
    (own / "checkpoint.pt").write_bytes(b"damaged")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("frepo (rank 1): error: ") == 1 and proc.stderr.count("error:") == 1, proc.stderr[-3000:]
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "failure, flags, said",
    [
        # rank 0 alone validates: the NaN set it found was trained on to chance and failed the best set's write
        ("nan", {"steps": 5, "log_every": 5, "eval_every": 3}, "the synthetic set became NaN/inf at step 3"),
        # rank 0 alone writes the checkpoint: the others went on to step 5's collectives
        ("disk", {"steps": 6, "checkpoint_every": 2}, "No space left on device while writing"),
        # rank 0 alone validates: its traceback-free line, and the others' broken connections
        ("oom", {"steps": 4, "eval_every": 2}, "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"),
    ],
)
def test_a_failure_on_rank_0_alone_stops_every_rank_in_one_line(tmp_path, failure, flags, said):
    """A stop raised on rank 0 alone (its validation, its writes) left the other ranks in their next collective,
    to fail with a broken connection's traceback once rank 0 exited; every rank now stops at once, and the
    failure is said once, by rank 0."""
    helper = Path(__file__).parent / "helpers" / "rank_fails.py"
    # torchrun looks at its processes every 2 s, not 0.1: on one node it ended the others with SIGTERM as soon as
    # rank 0 failed, which hid that they were left waiting (on other nodes: a broken connection's traceback)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--monitor-interval", "2", str(helper)]
    cmd += [failure, "--out", str(tmp_path / "run"), "--dataset", "digits", "--ipc", "2"]
    for key, value in {**OVERRIDES, **flags}.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("frepo: error: ") and said in errors[0], proc.stderr[-3000:]
    assert "[rank0]" not in proc.stderr and "[rank1]" not in proc.stderr, proc.stderr[-3000:]  # their tracebacks
    assert "Connection closed" not in proc.stderr, proc.stderr[-3000:]  # (torchrun's own traceback says who failed)
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_a_node_without_the_data_stops_every_rank_in_one_line(tmp_path):
    """Each rank prepares its own data: one that found none stopped alone, while rank 0 waited in the trainer's
    broadcast of its start (under NCCL up to the 2 h collective timeout), then failed with a broken connection."""
    helper = Path(__file__).parent / "helpers" / "rank_fails.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--monitor-interval", "2", str(helper), "no-data", "--out", str(tmp_path / "run")]
    cmd += ["--dataset", "digits", "--ipc", "2", "--steps", "2", "--width", "8"]
    cmd += ["--batch-size", "64", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["frepo (rank 1): error: no digits.npz in /data on this node (a stand-in)"], proc.stderr[-3000:]
    assert "[rank0]" not in proc.stderr and "Connection closed" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "settings, stopped, validated",
    [
        ({"steps": 4, "eval_every": 2, "checkpoint_every": 100}, 2, [2, 4]),  # in the loop
        ({"steps": 3, "eval_every": 0, "checkpoint_every": 2}, 3, [3]),  # the end's: SIGTERM's default killed at once
    ],
    ids=["loop", "end"],
)
def test_a_stop_in_rank_0_s_validation_checkpoints_every_rank(tmp_path, settings, stopped, validated):
    """SIGTERM to every process (a scheduler's) while rank 0 validates: rank 0 ran its validation to the end, and
    torchrun's agent killed the workers after its grace period (30 s by default) with nothing written, losing
    every step since the last checkpoint (in the end's validation SIGTERM killed at once). The validation now
    stops at once, every rank checkpoints the step with it pending and stops, and the same command validates
    that step first (stopped there again, every rank stops again) and finishes."""
    import signal
    import time

    helper = Path(__file__).parent / "helpers" / "rank_fails.py"
    mark, out = tmp_path / "validating", tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--monitor-interval", "1", "--shutdown-timeout", "15", str(helper)]
    flags = ["--out", str(out), "--dataset", "digits", "--ipc", "2"]
    for key, value in {**OVERRIDES, **settings}.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FREPO_TEST_MARK": str(mark)}

    def stopped_while_validating() -> str:
        mark.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [*cmd, "slow-validation", *flags], stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 300
            while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert mark.exists(), "rank 0 never validated"
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun and its workers, as a scheduler stops a job
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert state["step"] == stopped and state["pending"] == "Validation", err[-3000:]
        assert f"stopped in step {stopped}'s validation; checkpoint written" in err, err[-3000:]
        # every rank stopped with it: none went on into a collective rank 0 had left
        assert "[rank1]" not in err and "Connection closed" not in err and "SIGKILL" not in err, err[-3000:]
        return err

    stopped_while_validating()
    stopped_while_validating()  # the resumed run validates that step first, and is stopped there again
    done = subprocess.run([*cmd, "none", *flags], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "val_acc" in line] == validated


def test_ranks_that_see_a_finished_run_differently_stop_together(tmp_path):
    """--out on each node's own disk, one copy pruned of its checkpoint: the rank that found a finished run there
    returned "already complete" and exited, and the other waited for it in the group's start (its 2 h timeout)."""
    import shutil
    import signal

    shared, own = tmp_path / "shared", tmp_path / "own"
    distill(presets.resolve("digits", 2, overrides={**OVERRIDES, "steps": 2}), shared, progress=False)
    shutil.copytree(shared, own)
    (shared / "checkpoint.pt").unlink()  # rank 0's copy: finished, pruned; rank 1's: finished, with its checkpoint
    helper = Path(__file__).parent / "helpers" / "own_disks.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(helper)]
    cmd += [str(shared), str(own), "--dataset", "digits", "--ipc", "2"]
    for key, value in {**OVERRIDES, "steps": 2}.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("a rank waited for one that had returned") from None
    assert proc.returncode != 0
    assert err.count("error:") == 1 and f"the processes see {shared} differently: rank(s) 0 find" in err, err[-3000:]
    assert "[rank0]" not in err and "[rank1]" not in err, err[-3000:]


def test_ranks_at_different_steps_are_refused():
    """A copy of --out on each node, taken at different times: the ranks loaded different steps."""

    class Gathers(DistContext):
        def gather_objects(self, obj):
            return [obj, 2]

    distiller = Distiller.__new__(Distiller)
    distiller.ctx, distiller.step, distiller.run_dir = Gathers(0, 2, 0), 4, RunDir("runs/x")
    refusal = distiller._other_steps()
    assert refusal is not None and "at different steps (4, 2, by rank)" in str(refusal)
    distiller.step = 2
    assert distiller._other_steps() is None


@pytest.mark.parametrize(
    "env,says",
    [
        ({"WORLD_SIZE": "2"}, "RANK, MASTER_ADDR, MASTER_PORT are not set"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "localhost"}, "MASTER_PORT is not set"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}, "RANK '2' and LOCAL_RANK"),
    ],
)
def test_a_launch_without_torchrun_s_variables_is_one_line(monkeypatch, env, says):
    """WORLD_SIZE exported in a shell, or a launcher of one's own: torch's KeyError 'RANK' or ValueError
    traceback said neither what is missing nor what to do."""
    from frepo.base.dist import init_distributed
    from frepo.base.errors import FrepoError

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(FrepoError, match=says):
        init_distributed("cpu")


@pytest.mark.parametrize("local_rank, said", [("0", True), ("1", False)])
def test_a_rank_stopped_by_another_s_refusal_says_so_once_a_node(monkeypatch, capsys, local_rank, said):
    """The refusing rank says why; the others stop silently, but for the first process of each other node, whose
    log would otherwise show nothing of why its job ended."""
    from frepo.base.errors import SaidElsewhere
    from frepo.cli import commands, main

    def refused(args):
        raise SaidElsewhere("rank 0 refused: --out holds another run")

    monkeypatch.setitem(commands.HANDLERS, "distill", refused)
    for name, value in {"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(name, value)
    assert main(["distill", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err
    assert ("frepo (rank 2): stopped: rank 0 refused and said why in its own output" in err) is said
    assert "--out holds another run" not in err and err.count("\n") == int(said)


def test_a_per_rank_run_resumed_with_another_process_count_says_to_keep_the_count(monkeypatch):
    """--pool-mode per-rank checkpoints each process's pool: resumed by another number of processes, the refusal
    said "does not fit this run; delete it to restart the run", which threw the run away."""
    from frepo.base.errors import FrepoError

    monkeypatch.syspath_prepend(Path(__file__).parent / "helpers")
    import per_rank_step

    made = per_rank_step.trainer(_OneRankOfTwo(0)).state_dict()  # gathered in one process: one rank's pool
    with pytest.raises(FrepoError, match="holds the pools of 1 process, .*this launch has 2: resume with as many") as e:
        per_rank_step.trainer(_OneRankOfTwo(0)).load_state_dict(made)
    assert "delete" not in str(e.value)
    del made["pool_per_rank"]  # a run of one process: one pool
    with pytest.raises(FrepoError, match=r"holds one pool \(one process\)"):
        per_rank_step.trainer(_OneRankOfTwo(1)).load_state_dict(made)
