"""Time the kernel solve of a large support set: the float64 dual (n×n) against the primal (D×D) form.

    python benchmarks/bench_solve.py [--device cuda] [--n 10000] [--d 8192] [--classes 100] [--repeats 5]

For n support features (D each, as CIFAR-100 IPC 50 with flip: 10 000 × 8192) and C label columns,
the forward (W = F^T (K + λI)^-1 Y, frepo's `krr_weights`) and its backward into F and Y, timed as
median wall ms (synchronised) for the dual form (the n×n kernel, which frepo used for every n before)
and for `krr_weights` itself (the D×D primal system when n > D), with the relative difference of the
two weights; the float64 matrix-product rate (n×D times D×n) and the float64 Cholesky of n×n and D×D
of the same run give the ceilings. Prints a table; --json writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from frepo.method.krr import krr_weights


def dual_weights(feat_s: torch.Tensor, y_s: torch.Tensor, reg: float) -> torch.Tensor:
    """The n×n form, as frepo computed it for 2n >= D before the primal form (float64 kernel)."""
    wide = feat_s.double()
    k = wide @ wide.T
    k.diagonal().add_(abs(reg) * k.diagonal().sum() / len(feat_s))
    chol, _ = torch.linalg.cholesky_ex(k)
    return feat_s.T @ torch.cholesky_solve(y_s.double(), chol).to(feat_s.dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median wall ms of `repeats` synchronised calls of fn() after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--d", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)  # drawn on the host: a CPU and a GPU solve the same problem
    # Non-negative features with a common component, like pooled ReLU features (a badly conditioned kernel).
    feat = (torch.rand(args.n, args.d, generator=gen).to(device) ** 2).requires_grad_()
    y = torch.randn(args.n, args.classes, generator=gen).to(device).requires_grad_()
    target = torch.randn(args.d, args.classes, generator=gen).to(device)

    def forward_backward(form):
        def run():
            w = form(feat, y, 1e-6)
            torch.autograd.grad((w * target).sum(), (feat, y))

        return run

    rows = {}
    for name, form in (("dual (n×n)", dual_weights), ("krr_weights", krr_weights)):
        with torch.no_grad():
            rows[name] = {"forward_ms": timed(lambda f=form: f(feat, y, 1e-6), device, args.repeats)}
        rows[name]["forward_backward_ms"] = timed(forward_backward(form), device, args.repeats)
    with torch.no_grad():
        a, b = dual_weights(feat, y, 1e-6), krr_weights(feat, y, 1e-6)
        difference = float((a - b).norm() / a.norm())
        wide = feat.double()
        gemm_ms = timed(lambda: wide @ wide.T, device, args.repeats)
        spd_n = wide @ wide.T + torch.eye(args.n, device=device, dtype=torch.float64)
        spd_d = wide.T @ wide + torch.eye(args.d, device=device, dtype=torch.float64)
        chol_n_ms = timed(lambda: torch.linalg.cholesky_ex(spd_n), device, args.repeats)
        chol_d_ms = timed(lambda: torch.linalg.cholesky_ex(spd_d), device, args.repeats)
    result = {
        "n": args.n,
        "d": args.d,
        "classes": args.classes,
        "device": str(device),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "forms": rows,
        "relative_difference_of_weights": difference,
        "float64_gemm_tflops": 2 * args.n**2 * args.d / (gemm_ms / 1000) / 1e12,
        "float64_cholesky_ms": {"n": chol_n_ms, "d": chol_d_ms},
    }
    print(f"n {args.n}, D {args.d}, C {args.classes}, {device}, torch {torch.__version__}")
    print("| form | forward ms | forward + backward ms |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['forward_ms']:.1f} | {row['forward_backward_ms']:.1f} |")
    print(
        f"weights differ by {difference:.2e} (relative norm); float64 GEMM {result['float64_gemm_tflops']:.1f} "
        f"TFLOP/s; Cholesky {chol_n_ms:.1f} ms (n×n), {chol_d_ms:.1f} ms (D×D)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
