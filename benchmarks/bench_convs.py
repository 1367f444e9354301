"""Time the pool network's blocks one by one, to see where a feature pass loses the matrix peak.

    python benchmarks/bench_convs.py [--device cuda] [--batch 512] [--repeats 20] [--json OUT]

The Conv of the distillation (width 128, depth 3, 32×32×3 input, batch norm off in eval), forward only
and without gradient (the real batch's features, `REAL_CHUNK` images at a time): for each block, the
convolution alone and conv + ReLU + 2×2 average pool, under each precision (fp32 strict, tf32, bf16
autocast) × memory layout (contiguous, channels-last) × cuDNN's choice (frepo's deterministic
heuristics, or `cudnn.benchmark`'s timed choice); median ms of `--repeats` and TFLOP/s of the
convolution. A table and, with --json, the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
from bench_solve import timed  # this file's folder is on sys.path

from frepo.models import Conv


def precision_context(precision: str, device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    model = Conv(3, 10, (32, 32), width=128, depth=3, generator=torch.Generator().manual_seed(0)).to(device).eval()
    layers = list(model.features)  # [conv, relu, pool] × 3
    rows = []
    cuda = device.type == "cuda"
    for precision in ("fp32", "tf32", "bf16"):
        for layout in (torch.contiguous_format, torch.channels_last):
            for choice in ("deterministic", "benchmark") if cuda else ("deterministic",):
                model.to(memory_format=layout)
                x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
                x = x.to(device).contiguous(memory_format=layout)
                if cuda:
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
                    torch.backends.cudnn.deterministic = choice == "deterministic"
                    torch.backends.cudnn.benchmark = choice == "benchmark"
                with torch.no_grad(), precision_context(precision, device):
                    h = x
                    for block in range(3):
                        conv, relu, pool = layers[3 * block : 3 * block + 3]
                        inp = h
                        conv_ms = timed(lambda c=conv, i=inp: c(i), device, args.repeats, warmup=3)
                        block_ms = timed(
                            lambda c=conv, r=relu, p=pool, i=inp: p(r(c(i))), device, args.repeats, warmup=3
                        )
                        out_hw = inp.shape[-1] * inp.shape[-2]
                        flop = 2 * args.batch * out_hw * conv.out_channels * conv.in_channels * 9
                        rows.append(
                            {
                                "precision": precision,
                                "layout": "channels_last" if layout == torch.channels_last else "contiguous",
                                "cudnn": choice,
                                "block": block,
                                "conv_ms": conv_ms,
                                "block_ms": block_ms,
                                "conv_tflops": flop / (conv_ms / 1000) / 1e12,
                            }
                        )
                        h = pool(relu(conv(inp)))
    print(f"batch {args.batch}, {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| precision | layout | cuDNN | block | conv ms | conv TFLOP/s | conv+ReLU+pool ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['precision']} | {r['layout']} | {r['cudnn']} | {r['block']} | {r['conv_ms']:.3f} | "
            f"{r['conv_tflops']:.1f} | {r['block_ms']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
