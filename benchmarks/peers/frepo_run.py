"""frepo on the wall clock, as the peer harnesses run the peers: `frepo distill`'s own run (`Distiller`)
with one more action after each step, which times it and saves the set at the wall-clock marks.

    python benchmarks/peers/frepo_run.py --dataset cifar10 --ipc 10 --budget-min 30 --steps 1000 \
        --out runs/peers/cifar10-ipc10/frepo [-- any other `frepo distill` flags]

The run is `frepo distill --dataset D --ipc N --steps S --val-size 0` (the full training split, as the
official code distils from; no validation inside the loop: every method's sets are evaluated afterwards
by `frepo evaluate`, and that time is no method's), with its checkpoints as usual. Sets are saved as
`sets/stepNNNNNN.safetensors`. For the CIFAR-100 stand-in, `--dataset cifar100-standin` writes the
random images as an .npz in the output folder and distils from it.

Peak memory: the process's peak RSS on a CPU, `torch.cuda.max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import BudgetReached, Clock, load_arrays, machine, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", help="a frepo dataset name or .npz, or cifar100-standin")
    parser.add_argument("--data-dir", help="folder of the .npz files (default: $FREPO_DATA_DIR)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--steps", type=int, required=True, help="the schedule's length (frepo distill --steps)")
    parser.add_argument("--budget-min", type=float, default=float("inf"), help="wall-clock budget (minutes)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (timing runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for the run, sets/ and result.json")
    args, extra = parser.parse_known_args()

    clock = Clock(args.budget_min * 60, max_steps=args.max_steps)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from frepo.base.device import synchronize
    from frepo.base.perf import peak_rss_bytes
    from frepo.cli.commands import distill_config
    from frepo.cli.parser import build_parser
    from frepo.config.presets import FLIP_BY_IPC
    from frepo.io.artifact import save_distilled
    from frepo.jobs.actions import Action
    from frepo.jobs.distill import Distiller

    dataset, flip = args.dataset, []
    if dataset == "cifar100-standin":  # frepo's table for CIFAR-100: the flip trick at 1 image per class only
        flip = ["--use-flip" if FLIP_BY_IPC["cifar100"].get(args.ipc, True) else "--no-use-flip"]
        dataset = str(out / "cifar100-standin.npz")
        if not Path(dataset).is_file():
            np.savez(dataset, **load_arrays("cifar100-standin", None, args.seed))
    flags = ["distill", "--dataset", dataset, "--ipc", str(args.ipc), "--steps", str(args.steps)]
    flags += ["--val-size", "0", "--seed", str(args.seed), "--no-download", *flip, *extra]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    config = distill_config(build_parser().parse_args(flags))
    (out / "sets").mkdir(exist_ok=True)

    class WallClock(Action):
        def due(self, step: int) -> bool:
            return True

        def __call__(self, now) -> None:
            synchronize(distiller.device)

            def save(tag: str) -> str:
                return str(save_distilled(now.host_set(), out / "sets" / f"{tag}.safetensors"))

            clock.tick(save)

    distiller = Distiller(config, out / "run")
    distiller.actions.append(WallClock())
    clock.start_steps()
    try:
        distiller.run()
        clock.finish(lambda tag: str(save_distilled(distiller.host_set(), out / "sets" / f"{tag}.safetensors")))
    except BudgetReached:
        pass
    result = {
        "method": "frepo",
        "dataset": args.dataset,
        "ipc": args.ipc,
        "schedule_steps": args.steps,
        "budget_min": args.budget_min,
        "flags": flags,
        **clock.summary(),
        "peak_rss_mb": peak_rss_bytes() / 2**20,  # not ru_maxrss: the allocator policy resets the kernel's
        "device": str(distiller.device),
        "torch": torch.__version__,
        "machine": machine(),
        "set_format": "frepo .safetensors (preprocessing inside)",
    }
    if distiller.device.type == "cuda":
        result["device_peak_mb"] = torch.cuda.max_memory_allocated(distiller.device) / 2**20
    write_result(out / "result.json", result)


if __name__ == "__main__":
    main()
