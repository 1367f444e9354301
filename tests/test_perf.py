"""frepo.base.perf: whether freed memory stays in glibc's heap, and the per-run choice a CPU distillation makes
from its first step's peak (faster with the heap kept, but up to ~2x the step's memory with a large support
set)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import glibc_env, linux_only

from frepo.base import perf
from frepo.cli import main

GB = 2**30

# How much of a freed 64 MB block (an activation's size) the process still holds, in MB, under each setting.
# Resident memory, not page faults (numpy asks for transparent huge pages, which makes fault counts vary).
FREED_BLOCK = """
import json
import numpy as np
from frepo.base import perf

def freed_block_kept():
    before = perf.rss_bytes()
    block = np.ones(8 << 20)  # 64 MB, written
    del block
    return (perf.rss_bytes() - before) / 2**20
"""
PROBE = (
    FREED_BLOCK
    + """
out = {"glibc": freed_block_kept(), "applied": perf.keep_freed_memory(True)}
out["kept"] = freed_block_kept()
held = perf.rss_bytes()
out["given_back_applied"] = perf.keep_freed_memory(False)
out["returned"] = (held - perf.rss_bytes()) / 2**20  # the kept block, returned by the trim
out["after"] = freed_block_kept()
print(json.dumps(out))
"""
)


def _probe(env_value: str | None, script: str = PROBE) -> dict:
    env = glibc_env()
    if env_value is not None:
        env["FREPO_TUNE_ALLOCATOR"] = env_value
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@linux_only
def test_freed_memory_is_kept_then_given_back():
    probe = _probe(None)
    # glibc maps a 64 MB block afresh and unmaps it on free; kept, it stays for reuse (no page faults next
    # time); given back, the trim returns it and the next one is mapped afresh again.
    assert probe["applied"] and probe["given_back_applied"], probe
    assert probe["glibc"] < 16 and probe["kept"] > 48, probe
    assert probe["returned"] > 48 and probe["after"] < 16, probe


@linux_only
def test_tune_allocator_0_leaves_glibc_alone():
    probe = _probe("0")
    assert not probe["applied"] and not probe["given_back_applied"], probe
    assert probe["kept"] < 16 and probe["after"] < 16, probe


# The CLI's kept heap between two distillations: a freed 64 MB block stays, the release returns it, and
# freed memory is kept again afterwards. Without the CLI's opt-in, the release leaves the heap alone.
RELEASE = (
    FREED_BLOCK
    + """
perf.keep_freed_memory(True)  # kept, as under the CLI, but not opted in: a library caller's settings
out = {"held": freed_block_kept()}
before = perf.rss_bytes()
out["library_released"] = perf.release_free_heap()
out["library_returned"] = (before - perf.rss_bytes()) / 2**20
perf.tune_cpu_allocator()
before = perf.rss_bytes()
out["released"] = perf.release_free_heap()
out["returned"] = (before - perf.rss_bytes()) / 2**20
out["kept_after"] = freed_block_kept()
print(json.dumps(out))
"""
)


@linux_only
def test_the_heap_a_distillation_freed_is_given_back_and_freed_memory_kept_after():
    out = _probe(None, RELEASE)
    assert out["held"] > 48 and not out["library_released"] and out["library_returned"] < 16, out
    assert out["released"] and out["returned"] > 48 and out["kept_after"] > 48, out


# A data preparation that peaks far above the first step (here 400 MB freed before the run), then a step that
# grows by 50 MB: the choice reads the step's own peak; the process's peak is still reported.
STEP_PEAK = """
import json
import numpy as np
from frepo.base import perf

perf.tune_cpu_allocator()
block = np.ones(50 << 20)  # 400 MB, written: the data preparation's peak
del block
policy = perf.AllocatorPolicy()
policy.before_first_step()
before = policy.rss_before
# Within reach: room for the step's growth kept (2.5 x 50 MB plus slack), not for the preparation's.
perf.memory_within_reach = lambda: int((before + perf.HEAP_GROWTH * (100 << 20)) / perf.MEMORY_SHARE)
step = np.ones(50 << 17)  # 50 MB, written: the first step
del step
print(json.dumps({"kept": policy.after_first_step(), "step_growth": (perf.recent_peak_bytes() - before) / 2**20,
                  "peak_resets": perf.reset_peak(),
                  "process_growth": (perf.peak_rss_bytes() - before) / 2**20}))
"""


@linux_only
def test_the_choice_reads_the_first_steps_own_peak():
    env = glibc_env()
    proc = subprocess.run([sys.executable, "-c", STEP_PEAK], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["peak_resets"]:  # gVisor, WSL1: no /proc/self/clear_refs or VmHWM
        pytest.skip("this kernel cannot reset a process's peak memory; the first step's own peak is unmeasured")
    assert 40 < out["step_growth"] < 90, out  # the step's 50 MB, not the preparation's 400
    assert out["process_growth"] > 300, out  # the reported peak keeps the preparation's
    assert out["kept"] is True, out


@pytest.mark.parametrize(
    "value, mode",
    [("0", "0"), ("off", "0"), ("False", "0"), ("1", "1"), ("ON", "1"), (" yes ", "1"), ("auto", "auto"), ("", "auto")],
)
def test_tune_allocator_reads_the_usual_spellings(monkeypatch, value, mode):
    monkeypatch.setenv("FREPO_TUNE_ALLOCATOR", value)
    assert perf._mode() == mode


def test_an_unknown_tune_allocator_value_is_auto_with_one_warning(monkeypatch, caplog):
    monkeypatch.setenv("FREPO_TUNE_ALLOCATOR", "sometimes")
    perf._warn_unknown_mode.cache_clear()  # once per value and process: a rerun in this worker warned nothing
    try:
        with caplog.at_level("WARNING", logger="frepo"):
            assert perf._mode() == perf._mode() == "auto"
    finally:
        perf._warn_unknown_mode.cache_clear()
    assert [r.getMessage().count("'sometimes'") for r in caplog.records] == [1]


def test_the_kept_heap_fits_when_its_growth_stays_within_the_share():
    # A step from 1.5 to 5.5 GB would grow by 2.5 x 4 = 10 GB with the heap kept: 11.5 GB in all.
    assert perf.kept_heap_fits(int(1.5 * GB), int(5.5 * GB), reach=15 * GB)  # 11.5 <= 0.8 x 15
    assert not perf.kept_heap_fits(int(1.5 * GB), int(5.5 * GB), reach=14 * GB)  # 11.5 > 11.2
    assert not perf.kept_heap_fits(GB, 2 * GB, reach=None)  # memory unknown: glibc's default
    assert perf.kept_heap_fits(2 * GB, GB, reach=4 * GB)  # no growth below `before` (clamped)


@linux_only
def test_memory_within_reach_is_this_machines_and_shared_by_its_ranks(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(perf, "_cgroup_limit_bytes", lambda: None)
    monkeypatch.setattr(perf, "rss_bytes", lambda: 3 * GB)
    monkeypatch.setattr(perf, "_proc_kib_bytes", lambda path, key: {"MemAvailable": 20 * GB}.get(key))
    assert perf.memory_within_reach() == 23 * GB
    monkeypatch.setattr(perf, "_cgroup_limit_bytes", lambda: 16 * GB)
    assert perf.memory_within_reach() == 16 * GB  # the container's limit
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's four processes share both
    assert perf.memory_within_reach() == 4 * GB
    monkeypatch.setattr(perf, "_cgroup_limit_bytes", lambda: None)
    assert perf.memory_within_reach() == 8 * GB


def test_cgroup_limits_of_containers_and_batch_jobs(tmp_path):
    def limit(cgroup_lines: str, files: dict[str, str]) -> int | None:
        """/proc/self/cgroup's lines, and the files under /sys/fs/cgroup: a machine of its own per call."""
        machine = tmp_path / str(len(list(tmp_path.iterdir())))
        (machine / "sys").mkdir(parents=True)
        (machine / "cgroup").write_text(cgroup_lines)
        for name, text in files.items():
            (machine / "sys" / name).parent.mkdir(parents=True, exist_ok=True)
            (machine / "sys" / name).write_text(text + "\n")
        return perf._cgroup_limit_bytes(machine / "cgroup", machine / "sys")

    assert limit("0::/slurm/job_7\n", {"slurm/job_7/memory.max": str(8 * GB)}) == 8 * GB  # v2, e.g. a SLURM job
    slurm = "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n"  # the limit is the job's, higher up
    job = "system.slice/slurmstepd.scope/job_7"
    files = {f"{job}/memory.max": str(8 * GB), f"{job}/step_0/memory.max": str(6 * GB)}
    assert limit(slurm, {**files, f"{job}/step_0/user/task_0/memory.max": "max"}) == 6 * GB
    assert limit("0::/\n", {"memory.max": "max"}) is None  # v2 without a limit
    assert limit("0::/a\n", {"memory.max": str(2 * GB)}) == 2 * GB  # a container: its cgroup is the root
    v1 = "5:devices:/\n4:memory,hugetlb:/docker/abc\n"
    assert limit(v1, {"memory/docker/abc/memory.limit_in_bytes": str(3 * GB)}) == 3 * GB
    assert limit(v1, {"memory/memory.limit_in_bytes": "9223372036854771712"}) is None  # v1's "unlimited"
    assert limit("4:memory:/x\n", {}) is None  # no file to read


@linux_only
def test_memory_within_reach_reads_this_machine(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    reach = perf.memory_within_reach()
    total = perf._proc_kib_bytes("/proc/meminfo", "MemTotal")
    assert reach is not None and total is not None
    assert perf.rss_bytes() < reach <= total + perf.rss_bytes()


def _distill(tmp_path, monkeypatch, reach: float, env: str | None = None) -> list[bool]:
    """`frepo distill` on the offline default for 2 steps, recording the allocator choices it makes."""
    calls: list[bool] = []
    monkeypatch.setattr(perf, "_opted_in", False)  # restored after the test; the CLI's start sets it
    if env is None:
        monkeypatch.delenv("FREPO_TUNE_ALLOCATOR", raising=False)
    else:
        monkeypatch.setenv("FREPO_TUNE_ALLOCATOR", env)
    monkeypatch.setattr(perf, "keep_freed_memory", lambda keep: calls.append(keep) or perf._mode() != "0")
    monkeypatch.setattr(perf, "memory_within_reach", lambda: int(reach * GB))
    args = ["distill", "--dataset", "digits", "--ipc", "1", "--steps", "2", "--width", "8", "--eval-steps", "5"]
    args += ["--out", str(tmp_path / "run")]
    assert main(args) == 0
    return calls


@linux_only
def test_a_cpu_distillation_keeps_freed_memory_where_it_fits(tmp_path, monkeypatch, capsys):
    # The CLI keeps freed memory from its start; the distillation gives it back for its first step, measures
    # it, and keeps it again: this process's peak is far below 0.8 x 1000 GB.
    assert _distill(tmp_path, monkeypatch, reach=1000) == [True, False, True]
    assert "freed memory goes back" not in capsys.readouterr().err


@linux_only
def test_a_cpu_distillation_gives_freed_memory_back_where_it_would_not_fit(tmp_path, monkeypatch, capsys):
    # Within reach: less than this process already holds, so the kept heap cannot fit; the run says so once.
    assert _distill(tmp_path, monkeypatch, reach=perf.rss_bytes() / GB) == [True, False]
    err = capsys.readouterr().err
    assert err.count("freed memory goes back to the system in this run") == 1, err
    assert "FREPO_TUNE_ALLOCATOR=1 keeps it anyway" in err


@linux_only
@pytest.mark.parametrize("env, expected", [("1", [True, True]), ("0", [True])])
def test_tune_allocator_fixes_the_choice(tmp_path, monkeypatch, env, expected):
    # 1: kept from the start and through the run (no measured first step); 0: never (the recorder stands in
    # for keep_freed_memory, which refuses under 0: only the CLI's start asks).
    assert _distill(tmp_path, monkeypatch, reach=0.001, env=env) == expected


def test_without_glibc_there_is_nothing_to_choose_or_say(monkeypatch, caplog):
    monkeypatch.delenv("FREPO_TUNE_ALLOCATOR", raising=False)
    monkeypatch.setattr(perf, "_opted_in", True)
    monkeypatch.setattr(perf, "_libc", lambda: None)  # macOS, or musl
    monkeypatch.setattr(perf, "memory_within_reach", lambda: None)  # no /proc either
    policy = perf.AllocatorPolicy()
    policy.before_first_step()
    with caplog.at_level("INFO", logger="frepo"):
        assert policy.after_first_step() is False
    assert caplog.records == []


def test_a_library_callers_allocator_settings_stay_its_own(tmp_path, monkeypatch):
    # frepo.distill without the CLI (no tune_cpu_allocator in this process): no choice made, nothing set.
    from frepo import distill, presets

    calls: list[bool] = []
    monkeypatch.setattr(perf, "_opted_in", False)
    monkeypatch.delenv("FREPO_TUNE_ALLOCATOR", raising=False)
    monkeypatch.setattr(perf, "keep_freed_memory", lambda keep: calls.append(keep) or True)
    distill(presets.resolve("digits", 1, overrides={"steps": 2, "width": 8, "eval_steps": 5}), tmp_path / "run")
    assert calls == []
