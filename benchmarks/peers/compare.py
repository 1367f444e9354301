"""frepo beside its peers on one machine: each method on the same wall-clock budget, its sets evaluated by
the same `frepo evaluate`, one table and one plot of accuracy against minutes.

    python benchmarks/peers/compare.py curve --official DIR --mtt DIR --dm DIR \
        --dataset cifar10 --ipc 10 --budget-min 15 --frepo-steps 400 --official-steps 400 \
        --mtt-flags="--experts 1 --expert-train-epochs 3 --max-start-epoch 1" \
        --models 2 --out runs/peers/cifar10-ipc10 --json docs/peers_cifar10_ipc10_cpu.json \
        --plot docs/peers_cifar10_ipc10_cpu.png

    python benchmarks/peers/compare.py timing --official DIR --mtt DIR --dm DIR \
        --dataset cifar100-standin --ipc 50 --max-steps 2 --memory-gb 20 \
        --out runs/peers/cifar100-ipc50 --json docs/peers_cifar100_ipc50_cpu.json

`curve` runs frepo, the official FRePo, MTT and DM one after the other, each in its own process (so
the peak memory is that method's, and no run shares the CPU with another), each stopped when its
budget is spent; then evaluates the sets each saved at half its budget (1 model) and at its end
(`--models` models) with `frepo evaluate --protocol dsa` (ConvNet-3 with instance norm, 1000 epochs,
DSA: the protocol DC/DSA/DM/MTT report), and the two FRePos' sets also with `--protocol frepo` (FRePo's
Conv, Adam, MSE on the learned labels: the protocol of the FRePo paper; `--no-frepo-protocol` skips
it). `timing` runs each method for `--max-steps` outer steps and
reports the median step after warm-up and the peak memory (for MTT: untrained expert trajectories,
since a step's cost does not depend on them; MTT and DM under an address-space cap of `--memory-gb`,
so a run too large for the machine ends as "out of memory" instead of swapping).

Every method runs with glibc's default allocator, frepo included (`frepo distill` keeps freed memory in
the heap where it fits, `frepo.base.perf`; `frepo_run.py` does not). `--allocator heap` gives every method's
process that same setting through glibc's environment variables, so its effect on each method can be measured.

Every step is resumable: a method whose result.json exists is not rerun, an evaluation whose JSON
exists is not redone. The official FRePo runs under `--jax-python` (an interpreter with JAX, flax,
optax and frepo; default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
METHODS = ("frepo", "official", "mtt", "dm")
LABELS = {"frepo": "frepo", "official": "official FRePo (JAX)", "mtt": "MTT", "dm": "DM"}
EVAL_FLAGS = {  # how `frepo evaluate` reads each method's files
    "frepo": [],
    "official": ["--dataset", "{dataset}"],
    "mtt": ["--dataset", "{dataset}", "--preprocess", "mtt-zca"],
    "dm": ["--dataset", "{dataset}", "--preprocess", "dc"],
}
LEARNED_LABELS = ("frepo", "official")  # the methods whose sets carry learned labels: also the frepo protocol
# `--allocator heap`: what frepo.base.perf.tune_cpu_allocator sets with mallopt (no mmap for large blocks, freed
# memory returned to the kernel only beyond 1 GiB of slack), as glibc reads it from the environment at start.
HEAP_ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("$", *(f"{k}={v}" for k, v in (env or {}).items()), shlex.join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, **env} if env else None)


def harness(method: str, args, out: Path, timing: bool) -> list[str]:
    common = ["--dataset", args.dataset, "--ipc", str(args.ipc), "--out", str(out), "--seed", str(args.seed)]
    common += ["--max-steps", str(args.max_steps)] if timing else ["--budget-min", str(args.budget_min)]
    cap = ["--memory-gb", str(args.memory_gb)] if args.memory_gb else []
    if method == "frepo":
        steps = args.frepo_steps or 1000
        return [sys.executable, str(HERE / "frepo_run.py"), *common, "--steps", str(steps)]
    if method == "official":
        steps = args.official_steps or 1000
        cmd = [args.jax_python, str(HERE / "official_frepo.py"), "--official", args.official, *common]
        return [*cmd, "--steps", str(steps)]
    if method == "mtt":
        cmd = [sys.executable, str(HERE / "mtt.py"), "--mtt", args.mtt, *common, *cap, *shlex.split(args.mtt_flags)]
        return [*cmd, "--untrained-experts"] if timing else cmd
    return [sys.executable, str(HERE / "dm.py"), "--dm", args.dm, *common, *cap]


def run_methods(args, timing: bool) -> dict[str, dict]:
    results = {}
    env = HEAP_ALLOCATOR_ENV if args.allocator == "heap" else None
    for method in args.methods.split(","):
        out = Path(args.out) / method
        done = out / "result.json"
        if not done.is_file():
            try:
                run(harness(method, args, out, timing), env)
            except subprocess.CalledProcessError as exc:
                # A failure is a result too (e.g. killed for memory); it is recorded, not retried.
                out.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps({"method": LABELS[method], "outcome": f"failed: exit {exc.returncode}"}))
        results[method] = json.loads(done.read_text())
    return results


def evaluate(method: str, path: str, models: int, args, protocol: str = "dsa") -> dict:
    out = Path(path).with_suffix(f".{protocol}{models}.json")
    if not out.is_file():
        flags = [f.format(dataset=args.dataset) for f in EVAL_FLAGS[method]]
        cmd = [sys.executable, "-m", "frepo", "evaluate", path, "--protocol", protocol, "--models", str(models)]
        run([*cmd, "--seed", str(args.seed), *flags, "--json", str(out)])
    return json.loads(out.read_text())


def curve_points(method: str, result: dict, args) -> list[dict]:
    """The sets saved at half the budget (1 model) and at the end (`--models`), evaluated: `accuracy` and
    `std` under the DSA protocol; for the FRePos also `frepo_protocol` (the same keys, FRePo's protocol)."""
    snaps = result.get("snapshots", [])
    half = [s for s in snaps if s["mark"] == 0.5]
    last = snaps[-1:] if snaps else []
    points = []
    for snap, models in [(s, 1) for s in half if s not in last] + [(s, args.models) for s in last]:
        ev = evaluate(method, snap["path"], models, args)
        point = {**snap, "models": models, "accuracy": ev["mean"], "std": ev.get("std"), "eval": ev}
        if args.frepo_protocol and method in LEARNED_LABELS:
            fp = evaluate(method, snap["path"], models, args, protocol="frepo")
            point["frepo_protocol"] = {"accuracy": fp["mean"], "std": fp.get("std"), "eval": fp}
        points.append(point)
    return points


def accuracy_cell(point: dict | None) -> str:
    """'45.58 ± 0.18 (2 models, 11.4 min)' for one evaluated point (DSA keys or `frepo_protocol`'s)."""
    if not point:
        return "–"
    models = point["models"]
    std = f" ± {point['std']:.2f}" if models > 1 and point.get("std") is not None else ""  # one model: no spread
    return f"{point['accuracy']:.2f}{std} ({models} model{'s' * (models > 1)}, {point['minutes']:.1f} min)"


def table(rows: list[dict], curve: bool) -> str:
    head = "| method | outer steps | median step (s) | setup (s) | peak RSS (GB) |"
    rule = "|---|---|---|---|---|"
    if curve:
        head += (
            " DSA, ½ budget (%) | DSA, the budget (%) | frepo protocol, ½ budget (%) | frepo protocol, the budget (%) |"
        )
        rule += "---|---|---|---|"
    else:
        head += " outcome |"
        rule += "---|"
    lines = [head, rule]
    for r in rows:
        step = f"{r['step_s_median']:.2f}" if r.get("step_s_median") else "–"
        setup = f"{r['setup_s']:.0f}" if r.get("setup_s") else "–"
        rss = f"{r['peak_rss_mb'] / 1024:.1f}" if r.get("peak_rss_mb") else "–"
        line = f"| {r['label']} | {r.get('steps', '–')} | {step} | {setup} | {rss} |"
        if curve:
            by_mark = {p["mark"]: p for p in r.get("points", [])}
            for protocol in ("dsa", "frepo"):
                for mark in (0.5, 1.0):
                    point = by_mark.get(mark)
                    if point and protocol == "frepo":  # the same point, the frepo protocol's accuracy
                        point = {**point, **point["frepo_protocol"]} if "frepo_protocol" in point else None
                    line += f" {accuracy_cell(point)} |"
        else:
            line += f" {r.get('outcome', 'completed')} |"
        lines.append(line)
    return "\n".join(lines)


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4))
    for r in rows:
        pts = sorted(r.get("points", []), key=lambda p: p["minutes"])
        if not pts:
            continue
        minutes = [p["minutes"] for p in pts]
        line = ax.errorbar(
            minutes,
            [p["accuracy"] for p in pts],
            yerr=[p["std"] or 0 for p in pts],
            marker="o",
            capsize=3,
            label=r["label"],
        )
        learned = [p["frepo_protocol"] for p in pts if "frepo_protocol" in p]
        if len(learned) == len(pts):  # the same sets under the frepo protocol, dashed in the same colour
            ax.errorbar(
                minutes,
                [q["accuracy"] for q in learned],
                yerr=[q["std"] or 0 for q in learned],
                marker="s",
                capsize=3,
                linestyle="--",
                color=line[0].get_color(),
                label=f"{r['label']}, frepo protocol",
            )
    ax.set_xlabel("wall-clock minutes (setup and expert trajectories included)")
    ax.set_ylabel("test accuracy (%): DSA protocol, solid")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")  # beside the axes: hides no point
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("curve", "timing"))
    parser.add_argument("--official", help="checkout of yongchaoz/FRePo")
    parser.add_argument("--mtt", help="checkout of GeorgeCazenavette/mtt-distillation")
    parser.add_argument("--dm", help="checkout of VICO-UoE/DatasetCondensation")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--jax-python", default=sys.executable)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--budget-min", type=float, default=30.0)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--frepo-steps", type=int, help="frepo's schedule length")
    parser.add_argument("--official-steps", type=int, help="the official FRePo's schedule length")
    parser.add_argument("--mtt-flags", default="", help="extra flags for mtt.py (expert trajectories, syn steps)")
    parser.add_argument("--memory-gb", type=float, help="address-space cap for the torch peers")
    parser.add_argument(
        "--allocator",
        choices=("default", "heap"),
        default="default",
        help="glibc malloc for every method: its default, or freed memory kept in the heap "
        "(as `frepo distill` does where it fits)",
    )
    parser.add_argument("--models", type=int, default=2, help="networks per evaluation of each method's last set")
    parser.add_argument(
        "--frepo-protocol",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="curve: also evaluate the two FRePos' sets with `frepo evaluate --protocol frepo`",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", help="write everything here")
    parser.add_argument("--plot", help="curve: accuracy against minutes, here")
    args = parser.parse_args()
    for method in args.methods.split(","):
        if method in ("official", "mtt", "dm") and not getattr(args, method):
            parser.error(f"--{method} DIR: the checkout of the peer to run (or leave it out of --methods)")

    curve = args.mode == "curve"
    results = run_methods(args, timing=not curve)
    rows = []
    for method, result in results.items():
        row = {"key": method, "label": LABELS[method], **result}
        if curve and result.get("snapshots"):
            row["points"] = curve_points(method, result, args)
        rows.append(row)
    text = table(rows, curve)
    print(text)
    if args.json:
        record = {"mode": args.mode, "date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    if curve and args.plot:
        plot(rows, args.plot, f"{args.dataset} IPC {args.ipc}: {args.budget_min:g} min per method")


if __name__ == "__main__":
    main()
