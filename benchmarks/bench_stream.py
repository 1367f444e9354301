"""Bounded memory: the outer step on an ImageNet-sized uint8 memmap against the same step on in-memory data.

    python benchmarks/bench_stream.py --memmap /path/imagenet64-synth.npy [--ipcs 1,2] [--steps 3] [--json OUT]

The memmap (1 281 167 × 64 × 64 × 3 uint8, 15.7 GB: ImageNet-1K's training split at 64×64; random
pixels, 1000 classes) is written once, in chunks, if the file does not exist. Each setting runs in its
own process, so its peak RSS (`ru_maxrss`) is its own:

- `memory`: the usual path: 50 000 images preprocessed into a float32 tensor up front (2.5 GB), batches
  indexed from it (the whole 1.28 M split would need 63 GB);
- `stream`: the 1.28 M uint8 rows stay memory-mapped; each step's batch is gathered, converted and
  preprocessed on the host by `frepo.data.StreamingImages`, the next one in a background thread.

Both with standardisation (elementwise) and with ZCA (a 12288² whitening matrix per batch: a random
symmetric matrix of the right size stands in for a fitted one, since only its cost matters here;
fitting ImageNet's is a separate, one-off cost). Model: the reference Conv (depth 3, batch norm,
width `--width`: the reference's 128 takes ~100 s a step on a 2-core CPU), pool of 10, real batch `--batch`,
flip off (the reference's ImageNet setting), float32.
Reports the median step time over `--steps` timed steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

N_IMAGES, SIDE, CLASSES = 1_281_167, 64, 1000
IN_MEMORY = 50_000


def write_memmap(path: str) -> None:
    shape = (N_IMAGES, SIDE, SIDE, 3)
    tmp = path + ".tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    rng = np.random.default_rng(0)
    chunk = 16384
    t0 = time.time()
    for start in range(0, N_IMAGES, chunk):
        out[start : start + chunk] = rng.integers(
            0, 256, size=(min(chunk, N_IMAGES - start), SIDE, SIDE, 3), dtype=np.uint8
        )
    out.flush()
    del out
    os.replace(tmp, path)
    print(f"wrote {path} ({np.prod(shape) / 1e9:.1f} GB) in {time.time() - t0:.0f} s", file=sys.stderr)


def preprocessing(kind: str):
    from frepo.data import Preprocessing

    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    if kind == "standard":
        return Preprocessing("standard", mean, std)
    d = SIDE * SIDE * 3
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=gen) / d**0.5
    whiten = (a + a.T) / 2  # symmetric, the shape and cost of a fitted whitening matrix
    return Preprocessing("zca", mean, std, 0.1, torch.zeros(d), whiten, whiten)


class AnonPeak:
    """Peak resident anonymous memory (RssAnon), sampled every 50 ms in a thread. ru_maxrss also counts the
    memmap's file pages the process has touched, which are page cache the kernel drops at will."""

    def __init__(self):
        import threading

        self.peak, self.stop = 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, anon_rss_gb() or 0.0)

    def done(self) -> float:
        self.stop.set()
        self.thread.join()
        return max(self.peak, anon_rss_gb() or 0.0)


def child(args) -> dict:
    from frepo.base.perf import peak_rss_bytes, tune_cpu_allocator
    from frepo.config import DistillConfig
    from frepo.data import StreamingImages
    from frepo.data.cache import advise_random
    from frepo.method.trainer import FRePoTrainer

    tune_cpu_allocator()  # as `frepo distill` does
    torch.manual_seed(0)
    anon = AnonPeak()
    images = advise_random(np.load(args.memmap, mmap_mode="r"))
    labels = np.arange(N_IMAGES) % CLASSES
    pre = preprocessing(args.kind)
    if args.mode == "memory":  # else stream or stream-no-prefetch
        rows = np.sort(np.random.default_rng(0).choice(N_IMAGES, IN_MEMORY, replace=False))
        x = pre(np.ascontiguousarray(images[rows]))  # float32 N×C×H×W, 2.5 GB
        y = torch.from_numpy(labels[rows])
    else:
        x = StreamingImages(images, np.arange(N_IMAGES), pre)
        y = torch.from_numpy(labels)
    config = DistillConfig(ipc=args.ipc, batch_size=args.batch, steps=1000, use_flip=False)
    config.model.width = args.width
    trainer = FRePoTrainer(config, x, y, CLASSES, torch.device("cpu"))
    if args.mode == "stream-no-prefetch":
        trainer.prefetch = None  # gather each batch in the step itself, to see what the thread buys
    trainer.step()  # warm-up
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        float(trainer.step()["loss"])
        times.append(time.perf_counter() - t)
    return {
        "mode": args.mode,
        "preprocess": args.kind,
        "ipc": args.ipc,
        "images": len(x),
        "step_s": statistics.median(times),
        "step_s_all": times,
        "peak_rss_gb": peak_rss_bytes() / 2**30,
        "peak_anon_rss_gb": anon.done(),
    }


def anon_rss_gb() -> float | None:
    """Resident anonymous memory now (RSS also counts the memmap's file pages the process touched, which
    the kernel can drop at any time)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memmap", required=True, help="the .npy memmap (written if missing)")
    p.add_argument("--ipcs", default="1,2")
    p.add_argument("--kinds", default="standard,zca")
    p.add_argument("--modes", default="memory,stream", help="memory, stream, stream-no-prefetch")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=128, help="Conv width (the reference's 128 takes ~100 s a step here)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--ipc", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if not os.path.exists(args.memmap):
        write_memmap(args.memmap)
    rows = []
    for kind in args.kinds.split(","):
        for ipc in map(int, args.ipcs.split(",")):
            for mode in args.modes.split(","):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--memmap",
                    args.memmap,
                    "--mode",
                    mode,
                    "--kind",
                    kind,
                    "--ipc",
                    str(ipc),
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--width",
                    str(args.width),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{kind:9s} IPC {ipc} {mode:7s} images {r['images']:>9,d}  step {r['step_s']:7.2f} s  "
                    f"peak RSS {r['peak_rss_gb']:5.2f} GB, anonymous {r['peak_anon_rss_gb']:5.2f} GB",
                    flush=True,
                )
    print("\n| preprocess | IPC | data | images | step (s) | stream / memory | peak RSS (GB) | peak anonymous (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(
            b for b in rows if b["mode"] == "memory" and b["ipc"] == r["ipc"] and b["preprocess"] == r["preprocess"]
        )
        print(
            f"| {r['preprocess']} | {r['ipc']} | {r['mode']} | {r['images']:,} | {r['step_s']:.2f} | "
            f"{r['step_s'] / base['step_s']:.3f} | {r['peak_rss_gb']:.2f} | {r['peak_anon_rss_gb']:.2f} |"
        )
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
