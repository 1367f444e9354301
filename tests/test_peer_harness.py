"""The peer harnesses' own machinery (benchmarks/peers): the wall clock and its snapshots, the dataset
stand-ins, and a harness driving a peer's script through its hook. The peers themselves (the official
FRePo in JAX, MTT, DM) are not run here: CI has no checkout of them; docs/peers.md records the runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NOT_GLIBC_AS_IT_COMES, linux_only

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import common  # noqa: E402


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_clock_saves_at_each_mark_and_stops_at_the_budget():
    now = FakeTime()
    clock = common.Clock(budget_s=100.0, marks=(0.25, 0.5, 1.0), now=now)
    saved = []

    def save(tag: str) -> str:
        saved.append(tag)
        return f"sets/{tag}"

    now.t = 5.0
    clock.start_steps()
    for t in (10.0, 20.0, 30.0, 40.0, 70.0):  # 30 passes 25 s, 70 passes 50 s
        now.t = t
        clock.tick(save)
    assert saved == ["step000003", "step000005"]
    now.t = 110.0
    with pytest.raises(common.BudgetReached):
        clock.tick(save)
    assert saved[-1] == "step000006"
    assert [(s["mark"], s["steps"]) for s in clock.snapshots] == [(0.25, 3), (0.5, 5), (1.0, 6)]
    assert clock.step_times() == [5.0, 10.0, 10.0, 10.0, 30.0, 40.0]
    summary = clock.summary(warmup=2)
    assert summary["steps"] == 6 and summary["setup_s"] == 5.0
    assert summary["step_s_median"] == 20.0  # the median of 10, 10, 30, 40: the warm-up steps left out


def test_clock_records_marks_passed_in_one_step_with_one_save():
    now = FakeTime()
    clock = common.Clock(budget_s=100.0, marks=(0.25, 0.5, 1.0), now=now)
    clock.start_steps()
    saved = []
    now.t = 60.0
    clock.tick(lambda tag: saved.append(tag) or tag)
    assert saved == ["step000001"]
    assert [s["mark"] for s in clock.snapshots] == [0.25, 0.5]


def test_clock_stops_after_max_steps_and_finish_saves_an_unsaved_last_set():
    now = FakeTime()
    clock = common.Clock(budget_s=float("inf"), max_steps=2, now=now)
    clock.start_steps()
    saved = []
    now.t = 1.0
    clock.tick(lambda tag: saved.append(tag) or tag)
    now.t = 2.0
    with pytest.raises(common.BudgetReached):
        clock.tick(lambda tag: saved.append(tag) or tag)
    assert saved == ["step000002"]
    clock.finish(lambda tag: saved.append(tag) or tag)  # already saved: nothing more
    assert saved == ["step000002"]

    ended = common.Clock(budget_s=100.0, now=now)  # a schedule that ends before the budget
    ended.start_steps()
    now.t = 3.0
    ended.tick(lambda tag: saved.append(tag) or tag)
    ended.finish(lambda tag: saved.append(tag) or tag)
    assert saved[-1] == "step000001" and ended.snapshots[-1]["mark"] == 1.0


def test_torchvision_stand_in_serves_the_arrays_as_torchvision_would(monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    from torchvision import transforms

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", torchvision.datasets.CIFAR10)  # restored after
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", torchvision.datasets.CIFAR100)
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 10,
        "x_test": rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(5),
    }
    common.install_torchvision_datasets(arrays)
    test = torchvision.datasets.CIFAR10("unused", train=False, download=True, transform=transforms.ToTensor())
    assert len(test) == 5 and len(test.classes) == 10
    image, label = test[3]
    expected = torch.from_numpy(arrays["x_test"][3]).permute(2, 0, 1).float() / 255
    assert label == 3 and torch.equal(image, expected)


def test_cifar100_stand_in_has_cifar100s_shape_and_balanced_classes():
    arrays = common.load_arrays("cifar100-standin", None)
    assert arrays["x_train"].shape == (50000, 32, 32, 3) and arrays["x_train"].dtype == np.uint8
    assert np.bincount(arrays["y_train"]).tolist() == [500] * 100
    assert arrays["x_test"].shape == (10000, 32, 32, 3)


def test_fake_wandb_keeps_the_config_a_script_rebuilds_its_arguments_from(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # removed again after the test, as it was (absent)
    logged = []
    wandb = common.install_fake_wandb(logged.append)
    wandb.init(project="p", config=types.SimpleNamespace(ipc=10, zca=True))
    assert wandb.config._items == {"ipc": 10, "zca": True}
    wandb.log({"Grand_Loss": 1.0}, step=3)
    assert logged == [{"Grand_Loss": 1.0}] and sys.modules["wandb"] is wandb


FAKE_MAIN_DM = """
import argparse
import numpy as np
import torch
from torchvision import datasets, transforms

parser = argparse.ArgumentParser()
parser.add_argument("--ipc", type=int)
parser.add_argument("--Iteration", type=int)
args, _ = parser.parse_known_args()
train = datasets.CIFAR100("data", train=True, download=True, transform=transforms.ToTensor())
label_syn = torch.tensor(np.repeat(np.arange(100), args.ipc), dtype=torch.long)
image_syn = torch.stack([train[int(i)][0] for i in label_syn]).requires_grad_(True)
target = image_syn.detach().mean()


def main():
    optimizer_img = torch.optim.SGD([image_syn], lr=0.1, momentum=0.5)
    for it in range(args.Iteration + 1):
        loss = ((image_syn - target) ** 2).sum()
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()


main()
"""


def test_dm_harness_times_the_image_optimizer_and_saves_dms_own_file(tmp_path):
    """A stand-in for DM's main_DM.py (the same optimiser, names and file layout): the harness's hook
    sees each step, stops after --max-steps, and saves the set as res_*.pt with the labels in order."""
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "main_DM.py").write_text(FAKE_MAIN_DM)
    out = tmp_path / "out"
    cmd = [sys.executable, str(PEERS / "dm.py"), "--dm", str(peer), "--dataset", "cifar100-standin"]
    subprocess.run([*cmd, "--ipc", "1", "--max-steps", "3", "--out", str(out)], check=True, capture_output=True)
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 3 and len(result["step_s_all"]) == 3
    [snap] = result["snapshots"]
    data = torch.load(snap["path"])["data"]
    images, labels = data[0]
    assert images.shape == (100, 3, 32, 32) and labels.tolist() == list(range(100))
    assert not images.requires_grad


def test_official_harness_sets_the_flip_trick_as_the_official_script_does():
    from official_frepo import official_flip

    assert official_flip("cifar10", 10, mirror=True)
    assert official_flip("cifar100", 1, mirror=True) and official_flip("cifar100-standin", 1, mirror=True)
    assert not official_flip("cifar100", 10, mirror=True) and not official_flip("cifar100-standin", 50, mirror=True)
    assert not official_flip("mnist", 10, mirror=True)


def test_official_harness_starts_from_real_images_with_the_official_scaled_centred_labels():
    from official_frepo import starting_set

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4, 4, 3)).astype(np.float32)
    y = np.arange(300) % 30
    images, labels = starting_set(x, y, num_classes=30, ipc=2, seed=0)
    assert images.shape == (60, 4, 4, 3)
    classes = labels.argmax(1)
    assert classes.tolist() == np.repeat(np.arange(30), 2).tolist()
    for image, c in zip(images, classes):  # each image is a training image of its class
        matches = np.flatnonzero((x == image).all(axis=(1, 2, 3)))
        assert len(matches) == 1 and y[matches[0]] == c
    scale = np.sqrt(30 / 10)  # init_proto(scale_y=True): (one-hot - 1/C) / sqrt(C/10)
    np.testing.assert_allclose(labels.max(1), (1 - 1 / 30) / scale, rtol=1e-6)
    np.testing.assert_allclose(labels.min(1), (-1 / 30) / scale, rtol=1e-6)


def test_official_harness_batches_cover_an_epoch_with_centred_one_hot_labels():
    from official_frepo import Batches

    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.arange(10) % 5
    batches = Batches(x, y, num_classes=5, batch=4, seed=0).as_numpy_iterator()
    first, second = next(batches), next(batches)  # an epoch of 10 images holds two batches of 4
    seen = np.concatenate([first["image"].ravel(), second["image"].ravel()]).astype(int)
    assert len(set(seen.tolist())) == 8
    for batch in (first, second):
        ids = batch["image"].ravel().astype(int)
        expected = np.full((4, 5), -0.2, dtype=np.float32)
        expected[np.arange(4), y[ids]] = 0.8
        np.testing.assert_array_equal(batch["label"], expected)


def test_mtt_harness_cpu_copies_so_a_recorded_trajectory_does_not_alias_the_live_weights():
    """MTT's buffer.py records each epoch with `p.detach().cpu()`: on a CPU that is the live parameter,
    and every recorded epoch became the final weights (distill.py's first loss: inf)."""
    from mtt import copying_cpu

    weights = torch.nn.Parameter(torch.ones(3))
    recorded = copying_cpu(weights.detach())
    with torch.no_grad():
        weights.add_(1.0)  # the optimiser's in-place update
    assert recorded.tolist() == [1.0, 1.0, 1.0]


def test_a_peer_stopped_by_the_budget_or_out_of_memory_is_a_result_other_errors_are_not(tmp_path):
    script = tmp_path / "peer.py"
    cases = {
        "from common import BudgetReached\nraise BudgetReached": "stopped by the harness",
        "raise RuntimeError('DefaultCPUAllocator: can\\'t allocate memory: you tried 2621440000 bytes')": (
            "out of memory: DefaultCPUAllocator: can't allocate memory: you tried 2621440000 bytes"
        ),
    }
    for body, outcome in cases.items():
        script.write_text(body)
        assert common.run_until_stopped(script, [], tmp_path) == outcome
    for bug in ("a bug in the peer", "some elements ... refer to a single memory location"):  # not memory
        script.write_text(f"raise RuntimeError({bug!r})")
        with pytest.raises(RuntimeError, match=bug.split()[-1]):
            common.run_until_stopped(script, [], tmp_path)


def test_compare_evaluates_the_frepos_sets_under_both_protocols_and_tabulates_them(tmp_path, monkeypatch):
    import compare

    commands = []

    def fake_run(cmd: list[str]) -> None:  # stands in for `frepo evaluate ... --json OUT`
        commands.append(cmd)
        protocol = cmd[cmd.index("--protocol") + 1]
        models = int(cmd[cmd.index("--models") + 1])
        mean = {"dsa": 40.0, "frepo": 50.0}[protocol] + models
        Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps({"mean": mean, "std": 0.5 if models > 1 else None}))

    monkeypatch.setattr(compare, "run", fake_run)
    args = types.SimpleNamespace(dataset="cifar10", seed=0, models=2, frepo_protocol=True)
    snaps = [
        {"mark": 0.5, "minutes": 7.5, "steps": 5, "path": str(tmp_path / "half.safetensors")},
        {"mark": 1.0, "minutes": 15.0, "steps": 9, "path": str(tmp_path / "end.safetensors")},
    ]
    frepo = compare.curve_points("frepo", {"snapshots": snaps}, args)
    dm = compare.curve_points("dm", {"snapshots": [{**s, "path": s["path"] + ".pt"} for s in snaps]}, args)
    assert [(p["accuracy"], p["frepo_protocol"]["accuracy"]) for p in frepo] == [(41.0, 51.0), (42.0, 52.0)]
    assert all("frepo_protocol" not in p for p in dm)  # DM's hard-labelled sets: the DSA protocol only
    assert len(commands) == 6
    compare.curve_points("frepo", {"snapshots": snaps}, args)
    assert len(commands) == 6  # resumed: every evaluation's JSON is kept and read back

    rows = [{"label": "frepo", "steps": 9, "step_s_median": 1.5, "setup_s": 3.0, "peak_rss_mb": 2048, "points": frepo}]
    rows.append({"label": "DM", "steps": 9, "step_s_median": 1.0, "setup_s": 3.0, "peak_rss_mb": 1024, "points": dm})
    lines = compare.table(rows, curve=True).splitlines()
    assert lines[2].endswith(
        "| 41.00 (1 model, 7.5 min) | 42.00 ± 0.50 (2 models, 15.0 min) "
        "| 51.00 (1 model, 7.5 min) | 52.00 ± 0.50 (2 models, 15.0 min) |"
    )
    assert lines[3].endswith("| 42.00 ± 0.50 (2 models, 15.0 min) | – | – |")


def test_aliased_assignment_is_copied_first_as_torch_1_did(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "__setitem__", torch.Tensor.__setitem__)  # restored after the test
    one = torch.full((1, 1, 1, 1), 0.25)  # DSA's per-image brightness draw for a batch of one image
    with pytest.raises(RuntimeError, match="single memory location"):
        one[:] = one[0]  # its Siamese branch: refused by torch 2
    common.install_aliased_assignment_clone()
    one[:] = one[0]
    assert one.flatten().tolist() == [0.25]
    many = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)
    many[:] = many[0]
    assert many.flatten().tolist() == [1.0, 1.0, 1.0]
    other = torch.zeros(3)
    other[1:] = many[:2].flatten()  # no aliasing: the ordinary assignment
    assert other.tolist() == [0.0, 1.0, 1.0]


def test_summary_puts_every_method_against_every_setting_in_one_table():
    import summary

    def record(dataset, ipc, rows, mtt_flags=""):
        return {"args": {"dataset": dataset, "ipc": ipc, "mtt_flags": mtt_flags}, "rows": rows}

    frepo = {"key": "frepo", "label": "frepo", "step_s_median": 1.19, "peak_rss_mb": 2252.8}
    mtt_oom = {"key": "mtt", "label": "MTT", "peak_rss_mb": 17408.0, "outcome": "out of memory: [enforce fail]"}
    mtt_b100 = {"key": "mtt", "label": "MTT", "step_s_median": 22.86, "peak_rss_mb": 10444.8}
    text = summary.summary(
        [
            record("cifar10", 1, [frepo]),
            record("cifar100-standin", 10, [{**frepo, "step_s_median": 10.08}, mtt_oom]),
            record("cifar100-standin", 10, [mtt_b100], mtt_flags="--syn-steps 20 --batch-syn 100"),
        ]
    )
    assert text.splitlines() == [
        "| method | CIFAR-10 IPC 1 | CIFAR-100 (stand-in) IPC 10 |",
        "|---|---|---|",
        "| frepo | 1.19 s · 2.2 GB | 10.08 s · 2.2 GB |",
        "| MTT | not run | out of memory (at 17.0 GB) |",
        "| MTT, batch_syn 100 | not run | 22.86 s · 10.2 GB |",
    ]


@linux_only
def test_allocator_heap_keeps_freed_memory_in_every_peers_heap_as_frepo_does(tmp_path, monkeypatch):
    import compare

    from frepo.base import perf

    # The same setting as frepo's own mallopt calls, given through glibc's environment instead.
    assert compare.HEAP_ALLOCATOR_ENV == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(perf.TRIM_THRESHOLD)}
    # How much of a freed 64 MB block (an activation's size) the process still holds. Resident memory, not
    # page faults: numpy asks for transparent huge pages, so a fresh mapping's faults are ~32 or ~16 000
    # depending on the kernel's free huge pages (a fault count failed here 1 run in 5).
    script = tmp_path / "kept.py"
    script.write_text(
        "import os, sys\nimport numpy as np\n"
        "def resident():\n    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "before = resident()\n"
        "a = np.ones(8 << 20)  # 64 MB, written\ndel a\n"
        "open(sys.argv[1], 'w').write(str(resident() - before))\n"
    )
    # glibc's malloc as it comes
    for name in [*NOT_GLIBC_AS_IT_COMES, *(k for k in os.environ if k.startswith("MALLOC_"))]:
        monkeypatch.delenv(name, raising=False)
    kept = {}
    for allocator, env in (("default", None), ("heap", compare.HEAP_ALLOCATOR_ENV)):
        out = tmp_path / allocator
        compare.run([sys.executable, str(script), str(out)], env)
        kept[allocator] = int(out.read_text()) / 2**20
    # glibc's default maps the block afresh and unmaps it on free (the next one page-faults it all again);
    # the heap setting keeps it for reuse.
    assert kept["default"] < 16 and kept["heap"] > 48, kept
