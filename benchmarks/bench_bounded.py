"""Peak memory of frepo's commands on an ImageNet-sized dataset: subset (random, herding, k-center),
evaluate on the test split and on the hold-out, and a distillation's validation on its hold-out.

    python benchmarks/bench_bounded.py --root DIR [--json OUT] [--only "NAME;NAME..."]

The dataset: the `imagenet64` layout (ImageNet-1K at 64×64: 1 281 167 training and 50 000 test images,
1000 classes) under DIR, its images random uint8 (the memory of these commands does not depend on the
pixels): the layout's files hold the labels, and frepo's decoded cache ($FREPO_CACHE/datasets, 16.3 GB of
uint8, memory-mapped by every command) is written once through frepo's own cache builder, with the
layout reader's decoding replaced by random chunks. Every command then runs in a fresh process
(`--run`), which reports its own wall time, peak RSS (`ru_maxrss`) and the peaks of its anonymous and
file-backed resident memory (RssAnon, RssFile, sampled every 0.2 s).

Preprocessing: standardisation (`--preprocess standard`): fitting ImageNet's 12 288² ZCA on 1.28 M images
on a 2-core CPU is hours of its own (its bounded fit is measured in docs/bench_zca_fit.jsonl), and a ZCA
adds one D×D matrix (604 MB as float32) and per-batch products, not a split-sized buffer. Herding and
k-center embed 10 classes (`classes` 0..9: 12 800 images, streamed from the full 1.28 M-row cache):
embedding all 1.28 M images with a 64×64 Conv is hours on this CPU (and the feature network trains 50 steps,
not 300), and their memory is one class's features at a time. JSON rows: name, command, images (rows the
command reads), seconds, peak_rss_gb, peak_anon_gb, peak_file_gb. Run beside other jobs, the seconds are
not a timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST, SIDE, CLASSES, BATCH = 1_281_167, 50_000, 64, 1000, 10


def write_layout(root: Path) -> None:
    """The imagenet64 layout's files with labels only (1-based, as the real ones), once."""
    train, val = root / "Imagenet64_train_npz", root / "Imagenet64_val_npz"
    if (val / "val_data.npz").is_file():
        return
    train.mkdir(parents=True, exist_ok=True)
    val.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # Every class holds 1281 or 1282 training images (ImageNet: 732..1300), in a random order.
    y = rng.permutation(np.arange(N_TRAIN) % CLASSES) + 1
    for i, part in enumerate(np.array_split(y, BATCH), start=1):
        np.savez(train / f"train_data_batch_{i}.npz", labels=part, data=np.zeros((0, 3 * SIDE * SIDE), np.uint8))
    y_test = rng.permutation(np.arange(N_TEST) % CLASSES) + 1
    np.savez(val / "val_data.npz", labels=y_test, data=np.zeros((0, 3 * SIDE * SIDE), np.uint8))


def build_cache(root: Path) -> None:
    """frepo's decoded cache of the layout, filled with random uint8 chunks (in this process, once)."""
    from frepo.data import layouts

    real_read = layouts.LAYOUTS["imagenet64"].read

    def read(name: str, where: Path) -> layouts.Source:
        source = real_read(name, where)
        rng = np.random.default_rng(1)

        def decode(entries: list):
            for _, rows in entries:
                for start in range(0, rows, 16384):
                    n = min(16384, rows - start)
                    yield rng.integers(0, 256, size=(n, SIDE, SIDE, 3), dtype=np.uint8)

        return dataclasses.replace(source, decode=decode)

    layout = layouts.LAYOUTS["imagenet64"]
    layouts.LAYOUTS["imagenet64"] = dataclasses.replace(layout, read=read)
    start = time.perf_counter()
    x_train, *_ = layouts.read_layout("imagenet64", root, Path(os.environ["FREPO_CACHE"]))
    print(f"cache: {x_train.shape} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def commands(root: Path, out: Path) -> list[tuple[str, list[str], int]]:
    """(name, arguments of `--run`, rows read) of each measured command."""
    from frepo.data.splits import default_val_size

    data = ["--dataset", "imagenet64", "--data-dir", str(root)]
    subset = out / "random-ipc1.safetensors"
    val = default_val_size(N_TRAIN)  # the hold-out the commands get (no --val-size)
    api = "from frepo.jobs.subset import make_subset; from frepo.config import DataConfig; "
    herding = []
    for method in ("herding", "kcenter"):
        code = (
            api + f"make_subset(DataConfig(dataset='imagenet64', data_dir={str(root)!r}, preprocess='standard', "
            f"classes='0,1,2,3,4,5,6,7,8,9', stream='on'), 1, {method!r}, feature_steps=50, device='cpu')"
        )
        herding.append((f"subset {method}, 10 classes", ["python", code], (N_TRAIN - val) // 100))
    return [
        ("subset random", ["frepo", "subset", *data, "--method", "random", "--ipc", "1", "--preprocess", "standard",
                           "--out", str(subset)], N_TRAIN - val),
        *herding,
        ("evaluate, test split", ["frepo", "evaluate", str(subset), "--data-dir", str(root), "--models", "1",
                                  "--steps", "10"], N_TEST),
        ("evaluate, hold-out", ["frepo", "evaluate", str(subset), "--data-dir", str(root), "--models", "1",
                                "--steps", "10", "--split", "val"], val),
        ("distill, validation on the hold-out", ["frepo", "distill", *data, "--ipc", "1", "--steps", "1",
                                                 "--preprocess", "standard", "--eval-models", "1", "--eval-steps", "5",
                                                 "--out", str(out / "distill")], val),
    ]  # fmt: skip


def _status() -> dict[str, float]:
    """RssAnon (the process's own memory) and RssFile (pages of mapped files, the dataset cache's among
    them: the kernel may drop these at any time) from /proc/self/status, in GB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 2**20
    return out


def run(argv: list[str]) -> None:
    """Run one command in this process; print its wall time, its peak RSS (`ru_maxrss`: anonymous and
    file-backed pages together) and the peaks of RssAnon and RssFile sampled every 0.2 s, as JSON."""
    from frepo.base.perf import peak_rss_bytes

    peaks = {"RssAnon": 0.0, "RssFile": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for key, value in _status().items():
                peaks[key] = max(peaks[key], value)

    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    if argv[0] == "python":
        exec(argv[1], {})
        rc = 0
    else:
        from frepo.cli import main

        rc = main(argv[1:])
    seconds = time.perf_counter() - start
    done.set()
    peak = peak_rss_bytes() / 2**30  # ru_maxrss, and its value before a distillation's allocator policy reset it
    row = {"rc": rc, "seconds": round(seconds, 1), "peak_rss_gb": round(peak, 2)}
    row.update(peak_anon_gb=round(peaks["RssAnon"], 2), peak_file_gb=round(peaks["RssFile"], 2))
    print(json.dumps(row))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, help="where the layout is written")
    p.add_argument("--json", type=Path)
    p.add_argument("--only", help="names of the commands to run, separated by semicolons")
    p.add_argument("--run", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run:
        return run(args.run)
    os.environ.setdefault("FREPO_CACHE", str(args.root / "frepo-cache"))
    write_layout(args.root)
    build_cache(args.root)
    out = args.root / "out"
    out.mkdir(exist_ok=True)
    rows = []
    for name, argv, images in commands(args.root, out):
        if args.only and name not in args.only.split(";"):
            continue
        done = subprocess.run([sys.executable, __file__, "--run", *argv], capture_output=True, text=True)
        last = (done.stdout.strip().splitlines() or ["{}"])[-1]
        try:
            row = {"name": name, "command": " ".join(argv), "images": images, **json.loads(last)}
        except json.JSONDecodeError:
            row = {"name": name, "command": " ".join(argv), "images": images, "rc": done.returncode,
                   "error": done.stderr[-2000:]}  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
