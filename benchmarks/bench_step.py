"""Time the FRePo outer step (meta-step + online update) and measure its memory and FLOPs.

    python benchmarks/bench_step.py [--settings NAME,...] [--json OUT] [--set key=value ...] [--vs key=value]

Each setting runs in its own process (so peak memory is that setting's) on random data shaped like
the dataset and of its full training-set size, resident on the device, through `FRePoTrainer.step()`
exactly as `frepo distill` runs it: warm-up steps (with CUDA graphs, until every pool model's graph is
captured), then the median of timed steps (`--block N`: of N steps queued between two waits for the
device, as a run queues its steps between log steps; 1, a step in isolation, by default). FLOPs per step are
counted by `torch.utils.flop_counter` over one step (convolutions and matmuls, forward and backward);
the fp32 peak is measured in the same run by a 4096² float32 matrix product (on CUDA also TF32 and bf16),
and the table reports the fraction of it that the step achieves; a second table splits one profiled step
into the trainer's phases (real-batch features, support forward, solve, meta-backward, LAMB, online
update) with the ms and GFLOP/s of each. `--set` overrides config fields (e.g. `--set channels_last=true`).
`--vs key=value` also builds a second trainer with that override and alternates its timed steps with the
first's in the same process (A B A B ...): the ratio, pair by pair, holds when this shared machine's speed
drifts (e.g. `--vs compile=on`; its warm-up steps pay the compilation; peak memory is then both trainers').
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

# name -> (image shape, classes, ipc, real batch, flip, training-set size)
SETTINGS = {
    "mnist-ipc10-b256": ((1, 28, 28), 10, 10, 256, False, 60000),
    "cifar10-ipc10-b1024-flip": ((3, 32, 32), 10, 10, 1024, True, 50000),
    "cifar100-ipc1-b1024-flip": ((3, 32, 32), 100, 1, 1024, True, 50000),
    "cifar100-ipc50-flip": ((3, 32, 32), 100, 50, 1024, True, 50000),
    "cifar10-ipc1-b256": ((3, 32, 32), 10, 1, 256, False, 50000),
    "mnist-ipc1-b256": ((1, 28, 28), 10, 1, 256, False, 60000),
}
DEFAULT = "mnist-ipc10-b256,cifar10-ipc10-b1024-flip,cifar100-ipc1-b1024-flip,cifar100-ipc50-flip"


def peak_matmul_gflops(device: torch.device, n: int = 4096, repeats: int = 5, kind: str = "fp32") -> float:
    """The best of `repeats` n×n matrix products: fp32 (strict), tf32 (CUDA) or bf16 (CUDA)."""
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)  # drawn on the host: the same operands on every device
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = kind == "tf32"
    best = float("inf")
    try:
        for _ in range(repeats):
            sync(device)
            t = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 / best / 1e9


def count_flops(fn, by=None) -> int | dict[str, int]:
    """FLOPs of the convolutions and matmuls that fn() dispatches, forward and backward, using torch's
    own formulas (torch.utils.flop_counter). FlopCounterMode itself cannot be used: its module hooks
    do not support torch.autograd.grad, which the meta-step uses. With `by` (a function naming the
    current bucket), a dict of FLOPs per bucket."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    totals: dict[str, int] = {}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                key = by() if by else ""
                totals[key] = totals.get(key, 0) + formula(*args, **kwargs, out_val=out)
            return out

    # Compiled passes (`--set compile=on`) run eagerly here: the counter sees the same useful work.
    with torch._dynamo.config.patch(disable=True), Counter():
        fn()
    return totals if by else totals.get("", 0)


def device_rows(averages) -> list:
    """The rows of a profile's `key_averages()` that are the GPU's own work (kernels, copies, memsets): not the
    GPU-side ranges of `record_function` scopes (device type CUDA too), which torch's own tables leave out."""
    return [
        e
        for e in averages
        if str(getattr(e, "device_type", "")).endswith("CUDA") and not getattr(e, "is_user_annotation", False)
    ]


def scope_device_ms(events, prefix: str = "frepo/") -> dict[str, float]:
    """The device ms of each named scope (`record_function(prefix + name)`) in a profile's `events`: the
    kernels of every operator launched while the scope was open, on any thread, each counted in the
    innermost scope. A scope's own device time counts only its child operators, and CUDA's autograd runs a
    backward on a thread of its own: the meta-backward's kernels (and the online step's backward) were
    nobody's children, and the phase read 0 ms."""
    # The host's ranges of the scopes: each also has a range on the GPU's timeline, which lags the host's.
    scopes = [
        (e.time_range.start, e.time_range.end, e.name[len(prefix) :])
        for e in events
        if e.name.startswith(prefix) and str(e.device_type).endswith("CPU")
    ]
    ms: dict[str, float] = {}
    for e in events:
        if e.name.startswith(prefix) or not e.kernels:
            continue
        start = e.time_range.start
        around = [scope for scope in scopes if scope[0] <= start <= scope[1]]
        if around:
            name = max(around)[2]  # the innermost: opened last
            ms[name] = ms.get(name, 0.0) + sum(k.duration for k in e.kernels) / 1000
    return ms


def phase_split(step, device: torch.device) -> dict[str, dict[str, float]]:
    """Per phase of the trainer's step (`frepo.method.trainer.PHASES`, its named profiler scopes): the
    wall ms of one profiled step (CPU: the scope's span; CUDA: its kernels' device time) and the GFLOP
    of the convolutions and matmuls dispatched inside it, backward included (`count_flops`)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    import frepo.method.trainer as trainer_module
    from frepo.method.trainer import PHASES

    split = {name: {"ms": 0.0, "gflop": 0.0} for name in PHASES}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        for name, ms in scope_device_ms(events).items():
            if name in split:
                split[name]["ms"] += ms
        # The GPU's busy time in the step (what launching costs is the wall time minus this): the kernels'
        # rows alone (an operator's row carries its kernels' time again: the sum of all rows was ~1.5× the wall).
        kernels = device_rows(prof.key_averages())
        busy = sum(e.self_device_time_total for e in kernels)
        split["all_kernels"] = {"ms": busy / 1000, "gflop": 0.0, "kernels": sum(e.count for e in kernels)}
    else:
        for event in events:
            if event.name.startswith("frepo/") and event.name[6:] in split:
                split[event.name[6:]]["ms"] += event.cpu_time_total / 1000

    # FLOPs by phase: the trainer's scopes, wrapped to also name the phase for the counter.
    current = ["other"]

    @contextlib.contextmanager
    def scope(name: str):
        previous, current[0] = current[0], name.split("/", 1)[1]
        try:
            with record_function(name):
                yield
        finally:
            current[0] = previous

    original, trainer_module.record_function = trainer_module.record_function, scope
    try:
        flops = count_flops(step, by=lambda: current[0])
    finally:
        trainer_module.record_function = original
    for name, count in flops.items():
        split.setdefault(name, {"ms": 0.0, "gflop": 0.0})["gflop"] += count / 1e9
    if "all_kernels" in split:
        split["all_kernels"]["gflop"] = sum(count for count in flops.values()) / 1e9
    return split


def kernel_table(work, device: torch.device, steps: int, top: int = 20) -> dict:
    """Where the time of `work()`, which runs `steps` steps, goes, kernel by kernel: on CUDA the GPU kernels
    and copies (device time), on a CPU the aten operators (self time). The `top` by time, each with its
    launches and microseconds per step and its share; and per step, all launches and the busy time they
    sum to (a step's wall time minus that busy time is what the GPU waited for the host)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        work()
        sync(device)
    rows = []
    averages = prof.key_averages()
    for e in device_rows(averages) if cuda else averages:
        if not cuda and not e.key.startswith("aten::"):
            continue
        us = e.self_device_time_total if cuda else e.self_cpu_time_total
        rows.append({"name": e.key, "launches_per_step": e.count / steps, "us_per_step": us / steps})
    busy = sum(r["us_per_step"] for r in rows)
    rows.sort(key=lambda r: -r["us_per_step"])
    for r in rows:
        r["share"] = r["us_per_step"] / busy if busy else 0.0
    return {
        "steps": steps,
        "busy_ms_per_step": busy / 1000,
        "launches_per_step": sum(r["launches_per_step"] for r in rows),
        "top": rows[:top],
    }


def print_kernels(title: str, k: dict, wall_ms: float) -> None:
    """`kernel_table`'s result as a markdown table, with the step's wall time beside its busy time."""
    print(
        f"\n{title}: {k['launches_per_step']:.0f} launches and {k['busy_ms_per_step']:.2f} ms busy per step "
        f"({k['steps']} profiled steps; wall time per step, unprofiled: {wall_ms:.2f} ms)\n"
    )
    print("| kernel | launches/step | µs/step | share |")
    print("|---|---|---|---|")
    for e in k["top"]:
        print(f"| {e['name'][:90]} | {e['launches_per_step']:.1f} | {e['us_per_step']:.0f} | {e['share']:.0%} |")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def make_trainer(name: str, overrides: dict, device: torch.device):
    from frepo.base.fields import set_leaf
    from frepo.config import DistillConfig
    from frepo.method.trainer import FRePoTrainer

    shape, classes, ipc, batch, flip, n_train = SETTINGS[name]
    config = DistillConfig(ipc=ipc, batch_size=batch, use_flip=flip, steps=500_000)
    for key, value in overrides.items():
        set_leaf(config, key, value)
    gen = torch.Generator().manual_seed(0)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    x_train = torch.empty(n_train, *shape, memory_format=layout).normal_(generator=gen)  # one copy, as a run
    y_train = torch.arange(n_train) % classes
    return FRePoTrainer(config, x_train, y_train, classes, device)  # the trainer holds its own (device) copy


def peak_kind(device: torch.device, precision: str, support_precision: str) -> str:
    """The matmul peak a step's fraction is judged against: the precision its feature passes run in. On CUDA
    cuDNN runs float32 convolutions in TF32 (torch's default), so a step there was judged against the strict fp32
    peak and measured 104-117% of it; bf16 where both passes are bf16 (`--set precision=bf16 --set
    support_precision=bf16`); on a CPU, fp32."""
    if device.type != "cuda":
        return "fp32"
    if precision == "bf16" and support_precision == "bf16":
        return "bf16"
    return "tf32"


WARMUP_CAP = 2000  # steps: a pool of 10 models has every graph captured within ~50


def warm_up(trainer, steps: int) -> int:
    """`steps` outer steps, then more until every pool model's CUDA graph is captured (`--compile graph`, the
    GPU's default): a model is captured on its second use after three warm-up steps, so with 10 models
    captures and eager first uses fell inside the timed steps (9 captures in 30 timed steps after a warm-up
    of 10). Returns the steps run."""
    done = 0
    for _ in range(steps):
        trainer.step()
        done += 1
    graphs = trainer.graphs
    models = trainer.config.pool.num_models
    while graphs is not None and len(graphs.graphs) < models and done < WARMUP_CAP:
        trainer.step()
        done += 1
    if graphs is not None and len(graphs.graphs) < models:
        print(f"warning: {len(graphs.graphs)} of {models} graphs captured in {done} warm-up steps", file=sys.stderr)
    return done


def timed_steps(trainer, device: torch.device, block: int) -> tuple[float, dict]:
    """Seconds per step of `block` steps queued between two waits for the device. A run waits every
    `log_every` (10) steps, so its host work overlaps the GPU's; block 1 times a step in isolation, host and
    device time added (the figures of docs/benchmarks.md before 2026-12-06)."""
    sync(device)
    t = time.perf_counter()
    for _ in range(block):
        metrics = trainer.step()
    sync(device)
    return (time.perf_counter() - t) / block, metrics


def run_one(
    name: str,
    overrides: dict,
    warmup: int,
    repeats: int,
    device_name: str,
    tune: bool,
    vs: dict | None = None,
    top_kernels: int = 0,
    block: int = 1,
) -> dict:
    from frepo.base.device import resolve_device
    from frepo.base.perf import tune_cpu_allocator

    tuned = tune_cpu_allocator() if tune else False  # as the frepo CLI does
    device = resolve_device(device_name)
    trainer = make_trainer(name, overrides, device)
    # --vs: a second trainer with more overrides, its steps alternating with the first's (A B A B ...),
    # so that a drift of the machine's speed hits both alike; the ratio is taken pair by pair.
    other = make_trainer(name, {**overrides, **vs}, device) if vs else None
    warmed = warm_up(trainer, warmup)
    if other:
        warm_up(other, warmup)
    times, other_times = [], []
    for _ in range(repeats):
        seconds, metrics = timed_steps(trainer, device, block)
        times.append(seconds)
        if other:
            other_times.append(timed_steps(other, device, block)[0])
    assert torch.isfinite(metrics["loss"]), "non-finite loss in the benchmark"
    reserved_mb = None
    if device.type == "cuda":  # the timed trainers' peak, before an eager twin below adds its own
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        # What the allocator held at its peak: a CUDA graph's private pool keeps blocks that its capture
        # freed, which max_memory_allocated no longer counts and eager work cannot reuse.
        reserved_mb = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        import resource

        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # A graph replay dispatches nothing that the counter or the profiler's scopes see: a graphed trainer's
    # FLOPs and phases are those of an eager twin (the same work; the phases' ms are then eager ms).
    counted = trainer
    if trainer.graphs is not None:
        counted = make_trainer(name, {**overrides, "compile": "off"}, device)
        counted.step()  # lazy state and workspaces before the profiled step
    gflops = count_flops(counted.step) / 1e9
    phases = phase_split(counted.step, device)
    del counted
    kernels = None
    if top_kernels:
        kernels = kernel_table(lambda: [trainer.step() for _ in range(10)], device, steps=10, top=top_kernels)
    ms = statistics.median(times) * 1000
    kind = peak_kind(device, trainer.config.precision, trainer.config.support_precision)
    peaks = {
        k: peak_matmul_gflops(device, kind=k)
        for k in (("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32",))
    }
    peak = peaks[kind]
    row = {
        "setting": name,
        "ms_per_step": ms,
        "peak_mb": peak_mb,
        "peak_reserved_mb": reserved_mb,  # CUDA only
        "block": block,  # steps per timed sample (ms_per_step is the sample's time / block)
        "gflops_per_step": gflops,
        "achieved_gflops": gflops / (ms / 1000),
        "peak_gflops": peak,
        "peak_kind": kind,  # the matmul peak `fraction_of_peak` is judged against (`peak_kind`)
        "fraction_of_peak": gflops / (ms / 1000) / peak,
        "phases": phases,
        "kernels": kernels,
        "peak_fp32_gflops": peaks["fp32"],
        "peak_tf32_gflops": peaks.get("tf32"),
        "peak_bf16_gflops": peaks.get("bf16"),
        "repeats": repeats,
        "warmup_steps": warmed,  # --warmup, or more until every pool model's graph was captured
        "phases_of": "an eager twin" if trainer.graphs is not None else "the timed trainer",
        "times_ms": [t * 1000 for t in times],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "overrides": overrides,
        "allocator_tuned": tuned,
    }
    if other:
        ratios = [b / a for a, b in zip(times, other_times)]
        row["vs"] = {
            "overrides": vs,
            "ms_per_step": statistics.median(other_times) * 1000,
            "times_ms": [t * 1000 for t in other_times],
            "ratio_median": statistics.median(ratios),  # its time / the first's, pair by pair
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=DEFAULT, help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument(
        "--json",
        help="write a JSON list of result objects here, after every setting ({setting, error} for a failed one)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--vs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="time a second trainer with this override too, its steps alternating with the first's (paired)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--block",
        type=int,
        default=1,
        help="steps queued between two waits for the device per timed sample (a run waits every 10: --block 10)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-tune-allocator", action="store_true", help="keep glibc's default malloc behaviour")
    parser.add_argument(
        "--kernels", type=int, default=0, metavar="N", help="also profile 10 steps and list the N costliest kernels"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting in this process
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    overrides = {k: parse_value(v) for k, v in overrides.items()}
    vs = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.vs)}
    if args.one:
        tune = not args.no_tune_allocator
        row = run_one(args.one, overrides, args.warmup, args.repeats, args.device, tune, vs, args.kernels, args.block)
        print(json.dumps(row))
        return
    rows, failed = [], []

    def save() -> None:  # after every setting: a run cut by a time limit keeps the settings it finished
        if args.json:
            tmp = f"{args.json}.tmp"
            with open(tmp, "w") as fh:
                json.dump(rows + failed, fh, indent=2)
            os.replace(tmp, args.json)

    for name in args.settings.split(","):
        if name not in SETTINGS:
            sys.exit(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
        repeats = max(2, args.repeats // 3) if name == "cifar100-ipc50-flip" else args.repeats
        cmd = (
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--warmup",
                str(args.warmup),
                "--repeats",
                str(repeats),
                "--device",
                args.device,
                "--kernels",
                str(args.kernels),
                "--block",
                str(args.block),
            ]
            + [f"--set={s}" for s in args.set]
            + [f"--vs={s}" for s in args.vs]
        )
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ)  # its warnings pass through
        if proc.returncode != 0:  # one failed setting (out of memory, a failed capture) does not lose the others
            failed.append({"setting": name, "error": f"exit code {proc.returncode}"})
            print(f"{name}: failed with exit code {proc.returncode}", file=sys.stderr, flush=True)
            save()
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{name}: {r['ms_per_step']:.0f} ms/step", file=sys.stderr, flush=True)
        save()
    if not rows:
        sys.exit("every setting failed")
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, {rows[0]['threads']} threads, device "
        f"{rows[0]['device']}, overrides {overrides or 'none'}, {args.block} step(s) per timed sample, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(
        "| setting | ms/step (median) | peak memory (MB) | GFLOP/step | achieved GFLOP/s | fp32 peak GFLOP/s | "
        "fraction of peak |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['ms_per_step']:.0f} | {r['peak_mb']:.0f} | {r['gflops_per_step']:.1f} | "
            f"{r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} | {r['fraction_of_peak']:.0%} |"
        )
    if vs:
        print(f"\nPaired against {vs} (steps alternating in one process; ratio = its time / the first's):\n")
        print("| setting | ms/step | with the override | ratio (median) | ratio (min–max) |")
        print("|---|---|---|---|---|")
        for r in rows:
            v = r["vs"]
            print(
                f"| {r['setting']} | {r['ms_per_step']:.0f} | {v['ms_per_step']:.0f} | {v['ratio_median']:.2f} | "
                f"{v['ratio_min']:.2f}–{v['ratio_max']:.2f} |"
            )
    twins = [r["setting"] for r in rows if r.get("phases_of") == "an eager twin"]
    print(
        "\nWhere the step goes (one profiled step; GFLOP/s against the fp32 peak above"
        + (f"; {', '.join(twins)}: of an eager twin, a graph replay shows no phases" if twins else "")
        + "):\n"
    )
    names = list(rows[0]["phases"])
    print("| setting | " + " | ".join(f"{n} ms (GFLOP/s)" for n in names) + " |")
    print("|---" * (1 + len(names)) + "|")
    for r in rows:
        cells = []
        for n in names:
            ph = r["phases"][n]
            rate = ph["gflop"] / (ph["ms"] / 1000) if ph["ms"] else 0.0
            cells.append(f"{ph['ms']:.0f} ({rate:.0f})")
        print(f"| {r['setting']} | " + " | ".join(cells) + " |")
    for r in rows:
        if r["kernels"]:
            print_kernels(r["setting"], r["kernels"], r["ms_per_step"])
    if failed:
        sys.exit(f"failed: {', '.join(f['setting'] for f in failed)}")


if __name__ == "__main__":
    main()
