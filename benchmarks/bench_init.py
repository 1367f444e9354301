"""Time one network's LeCun re-initialisation (a pool reset: `init_flax_defaults_`), frepo's truncated normal
against torch's `nn.init.trunc_normal_`, and check both give the same distribution.

A reset draws every weight on the host from the pool's CPU generator and queues the copies (on a GPU the
host time is what the step waits for when the GPU is faster). Each arm re-initialises the same width-128 Conv
`--repeats` times after `--warmup`; the table gives the median and the minimum in ms.

    python benchmarks/bench_init.py [--device cpu|cuda] [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
from torch import nn

from frepo.models import build_model
from frepo.models import init as init_module
from frepo.models.conv import conv_arch

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "tiny": (3, 64, 64)}


def torch_truncated_normal_(tensor: torch.Tensor, std: float, *, generator: torch.Generator) -> torch.Tensor:
    """The draw frepo made before: torch's own (its algorithm is the torch release's)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)


def time_resets(model: nn.Module, device: torch.device, repeats: int, warmup: int) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        init_module.init_flax_defaults_(model, generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    frepo_draw = init_module.truncated_normal_
    rows = []
    for name, shape in SHAPES.items():
        model = build_model(conv_arch("batch"), shape, 10, generator=torch.Generator().manual_seed(0), width=128)
        model = model.to(device)
        for arm, draw in (("frepo", frepo_draw), ("torch trunc_normal_", torch_truncated_normal_)):
            init_module.truncated_normal_ = draw  # lecun_normal_ looks it up at each call
            try:
                times = time_resets(model, device, args.repeats, args.warmup)
                weight = next(m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 3)
                spread = float(weight.detach().std()) / (math.sqrt(1 / weight[0].numel()))  # 1.0: variance 1/fan_in
            finally:
                init_module.truncated_normal_ = frepo_draw
            rows.append(
                {
                    "shape": name,
                    "arm": arm,
                    "median_ms": statistics.median(times),
                    "min_ms": min(times),
                    "weight_std_over_target": spread,
                }
            )
    print(f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| shape | draw | median ms | min ms | std / sqrt(1/fan_in) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['shape']} | {r['arm']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{r['weight_std_over_target']:.3f} |"
        )
    if args.json:
        meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
        meta["machine"] = cpu_name()
        meta["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
