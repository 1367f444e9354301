"""Size and error of a dense ZCA in a distilled-set file, for a 64×64 set (issue 21's target: ≤ 100 MB).

    FREPO_DATA_DIR=../shared/data python benchmarks/bench_zca_file.py --data cifar10-upsampled --images 50000
    python benchmarks/bench_zca_file.py --data random --images 16384 [--size 64] [--json OUT]

No 64×64 dataset is on these offline machines, so the data bracket real ones:
- `cifar10-upsampled`: CIFAR-10's first N training images, bilinearly upsampled to size×size (uint8) —
  natural images, but smoother than real 64×64 ones (no detail above CIFAR's resolution);
- `random`: uniform random uint8 images — no structure at all: every off-diagonal entry of W is sampling
  noise, the hardest case for packing.

The fit runs the calls `fit_preprocessing` makes (channel statistics, chunked covariance, eigendecomposition,
`quantisation_step`, `as_stored`), keeping the exact float32 W that the rounding starts from. Reported:
the file of a 100-image set (`save_distilled`) and its packed triangle, against the float16 triangle
(packed the same way) that smaller fits store; the rounding's spectral error ‖W_q − W‖₂ / ‖W‖₂ (power
iteration, 200 steps: a lower bound that converges from below), and the float16 rounding's for comparison;
the transform's error on 1 000 held-out images (max and mean abs, against their spread) and the way back
to pixels (`to_unit`) of those whitened images. Seconds are wall time on the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def images(kind: str, n: int, size: int, offset: int = 0) -> np.ndarray:
    """uint8 n×size×size×3 images of `kind` (held-out ones: the test split, or another seed)."""
    if kind == "random":
        rng = np.random.default_rng(offset)
        return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    folder = os.environ.get("FREPO_DATA_DIR")
    if not folder:
        raise SystemExit("--data cifar10-upsampled needs FREPO_DATA_DIR (the folder holding cifar10.npz)")
    with np.load(Path(folder) / "cifar10.npz") as data:
        x = data["x_train"][:n] if offset == 0 else data["x_test"][:n]
    out = np.empty((len(x), size, size, 3), dtype=np.uint8)
    for start in range(0, len(x), 2000):
        chunk = torch.from_numpy(x[start : start + 2000]).permute(0, 3, 1, 2).float()
        big = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False)
        out[start : start + 2000] = big.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def spectral_norm(matrix: torch.Tensor, steps: int = 200) -> float:
    """|largest eigenvalue| of a symmetric matrix by power iteration (a lower bound of ‖matrix‖₂)."""
    v = torch.randn(len(matrix), dtype=matrix.dtype, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        v = matrix @ v
        v /= v.norm()
    return float((matrix @ v).norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("cifar10-upsampled", "random"), required=True)
    parser.add_argument("--images", type=int, required=True, help="fitting images (at least size²·3: the dense fit)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", default=None, help="append the row to this JSON-lines file")
    args = parser.parse_args()
    from frepo.data import preprocess
    from frepo.io.artifact import DistilledSet, load_distilled, save_distilled

    d = 3 * args.size**2
    if args.images < d:
        raise SystemExit(f"--images must be at least {d} for the dense fit")
    x = images(args.data, args.images, args.size)
    held_out = images(args.data, 1000, args.size, offset=1)

    start = time.perf_counter()
    mean, std = preprocess.channel_stats(x)
    zca_mean, cov = preprocess.mean_covariance(x, preprocess.Preprocessing("standard", mean, std))
    exact, exact_inverse, gain = preprocess.whitening(cov, len(x), 0.1)
    step = preprocess.quantisation_step(gain, d)
    whiten, unwhiten = preprocess.as_stored(exact, step)
    fit_seconds = time.perf_counter() - start
    del cov
    pre = preprocess.Preprocessing("zca", mean, std, 0.1, zca_mean.float(), whiten, unwhiten, whiten_step=step)
    dense = preprocess.Preprocessing("zca", mean, std, 0.1, zca_mean.float(), exact, exact_inverse)

    error = spectral_norm(whiten.double() - exact.double()) / gain
    error_float16 = spectral_norm(exact.half().double() - exact.double()) / gain
    rows, cols = torch.triu_indices(d, d)
    float16_mb = len(preprocess.pack_floats(exact[rows, cols].half())) / 1e6
    del rows, cols

    z_dense, z = dense(held_out), pre(held_out)
    pixels_dense, pixels = dense.to_unit(z_dense), pre.to_unit(z_dense)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "set.safetensors"
        ds = DistilledSet(z[:100].clone(), torch.arange(100) % 10, pre, {"dataset": args.data, "ipc": 10})
        ds.meta["classes"] = [str(i) for i in range(10)]
        start = time.perf_counter()
        save_distilled(ds, path)
        save_seconds = time.perf_counter() - start
        file_mb = path.stat().st_size / 1e6
        start = time.perf_counter()
        back = load_distilled(path)
        same = torch.equal(back.preprocessing.whiten, whiten)
        same = same and torch.equal(back.transform(held_out[:10]), pre(held_out[:10]))
        load_seconds = time.perf_counter() - start
    row = {
        "data": args.data,
        "images": args.images,
        "dims": d,
        "gain": round(gain, 4),
        "step": step,
        "file_mb": round(file_mb, 1),
        "packed_triangle_mb": round(len(pre.tensors()["pre_whiten_upper_int32_zlib"]) / 1e6, 1),
        "float16_triangle_packed_mb": round(float16_mb, 1),
        "spectral_error": float(f"{error:.3g}"),
        "spectral_error_float16": float(f"{error_float16:.3g}"),
        "transform_max_abs": float(f"{(z - z_dense).abs().max():.3g}"),
        "transform_mean_abs": float(f"{(z - z_dense).abs().mean():.3g}"),
        "transform_spread": float(f"{z_dense.std():.3g}"),
        "pixels_max_abs": float(f"{(pixels - pixels_dense).abs().max():.3g}"),
        "loaded_bit_for_bit": same,
        "fit_seconds": round(fit_seconds, 1),
        "save_seconds": round(save_seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
