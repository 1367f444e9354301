"""Time and peak memory of frepo's ZCA fit (`fit_preprocessing(kind="zca")`) on random uint8 images.

    python benchmarks/bench_zca_fit.py --images 400 --size 64 [--json OUT]

Each fit runs in a fresh process (peak RSS is the process's own): the data are drawn there, then the fit
is timed. Fewer images than dimensions (N < D = size²·3) take the N×N Gram route; more take the chunked
D×D covariance and its eigendecomposition. Random data are enough for the cost (not for the spectrum).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from frepo.data.preprocess import fit_preprocessing

    x = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    pre = fit_preprocessing(x, "zca", 0.1)
    seconds = time.perf_counter() - start
    d = 3 * args.size**2
    row = {
        "images": args.images,
        "dims": d,
        "route": "gram" if args.images < d else "covariance",
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rss_before_fit_gb": round(before, 2),
        "threads": torch.get_num_threads(),
        "finite": all(bool(torch.isfinite(t).all()) for t in pre.tensors().values()),
        "file_mb": round(sum(t.numel() for t in pre.tensors().values()) * 4 / 2**20, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    print("| images | dims | route | seconds | peak RSS (GB) | RSS before the fit (GB) |")
    print("|---|---|---|---|---|---|")
    cells = [row["images"], d, row["route"], row["seconds"], row["peak_rss_gb"], row["rss_before_fit_gb"]]
    print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
