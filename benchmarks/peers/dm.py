"""DM (distribution matching, `VICO-UoE/DatasetCondensation`'s `main_DM.py`) run from a checkout the user
names, on the wall clock.

    python benchmarks/peers/dm.py --dm DIR --dataset cifar10 --ipc 10 --budget-min 30 \
        --out runs/peers/cifar10-ipc10/dm

What runs is the checkout's `main_DM.py` itself, as `python main_DM.py --dataset CIFAR10 --model ConvNet
--ipc N --init real --num_exp 1 --num_eval 0 --Iteration 1000000` would (its defaults otherwise: SGD
lr 1 momentum 0.5 on the images, real batch 256 per class, DSA `color_crop_cutout_flip_scale_rotate`),
in this process. `--num_eval 0`: no evaluation inside the loop; every method's sets are evaluated
afterwards by `frepo evaluate`, and that time is no method's. The harness hooks the image optimiser
(`torch.optim.SGD` over the N×C×H×W images): after each of its steps it times the iteration and, at
the wall-clock marks, saves the set as DM's own `res_DM_<DATASET>_ConvNet_<N>ipc_stepNNNNNN.pt`
({'data': [[images, labels]]}), which `frepo evaluate --dataset <name> --preprocess dc` reads.

Run-time updates (the checkout is not modified):

- `torchvision.datasets.CIFAR10/CIFAR100` read `<data-dir>/<name>.npz` (or the CIFAR-100 stand-in)
  instead of downloading;
- `scipy.ndimage.interpolation` (removed from SciPy) is aliased to `scipy.ndimage`;
- `t[idx] = v` with `v` a view of `t` copies `v` first: DSA's `randb[:] = randb[0]` with one image per
  class (IPC 1) is refused by torch 2 ("... refer to a single memory location"; measured 2026-12-05).

Peak memory: the process's peak RSS on a CPU, `torch.cuda.max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import torch
from common import (
    Clock,
    install_aliased_assignment_clone,
    prepare_torch_peer,
    run_until_stopped,
    torch_measures,
    write_result,
)

PEER_NAMES = {"cifar10": "CIFAR10", "cifar100-standin": "CIFAR100"}


def caller_local(name: str):
    """`name` in the nearest calling frame that has it (the peer's main loop)."""
    frame = inspect.currentframe()
    while frame is not None:
        if name in frame.f_locals:
            return frame.f_locals[name]
        frame = frame.f_back
    raise RuntimeError(f"no caller holds {name!r}")


def hook_image_optimizer(clock: Clock, save) -> None:
    """Subclass torch.optim.SGD so that the optimiser of the distilled images (its one parameter is a
    4-d tensor) ticks the clock after each step; the first such optimiser's creation starts the steps."""
    base = torch.optim.SGD

    class TimedSGD(base):
        def __init__(self, params, *args, **kwargs):
            params = list(params)
            super().__init__(params, *args, **kwargs)
            first = self.param_groups[0]["params"][0]
            self.images = len(params) == 1 and first.dim() == 4
            if self.images and clock.first_step_start is None:
                clock.start_steps()

        def step(self, *args, **kwargs):
            loss = super().step(*args, **kwargs)
            if self.images:
                if self.param_groups[0]["params"][0].is_cuda:
                    torch.cuda.synchronize()
                clock.tick(save)
            return loss

    torch.optim.SGD = TimedSGD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dm", required=True, help="a checkout of VICO-UoE/DatasetCondensation")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(PEER_NAMES))
    parser.add_argument("--data-dir", help="folder of the .npz files (default: $FREPO_DATA_DIR)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--budget-min", type=float, default=float("inf"), help="wall-clock budget (minutes)")
    parser.add_argument("--max-steps", type=int, help="stop after this many iterations (timing runs)")
    parser.add_argument("--memory-gb", type=float, help="cap the address space (an allocation past it fails)")
    parser.add_argument("--seed", type=int, default=0, help="torch and numpy seed (DM seeds nothing itself)")
    parser.add_argument("--out", required=True, help="folder for res_*.pt and result.json")
    args = parser.parse_args()

    clock = Clock(args.budget_min * 60, max_steps=args.max_steps)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepare_torch_peer(args.dataset, args.data_dir, args.seed, args.memory_gb)
    install_aliased_assignment_clone()
    name = PEER_NAMES[args.dataset]

    def save(tag: str) -> str:
        images, labels = caller_local("image_syn"), caller_local("label_syn")
        path = out / f"res_DM_{name}_ConvNet_{args.ipc}ipc_{tag}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"data": [[images.detach().cpu(), labels.cpu()]], "accs_all_exps": {}}, tmp)
        tmp.replace(path)
        return str(path)

    hook_image_optimizer(clock, save)
    argv = ["--dataset", name, "--model", "ConvNet", "--ipc", str(args.ipc), "--init", "real", "--num_exp", "1"]
    argv += ["--num_eval", "0", "--Iteration", "1000000", "--data_path", str(out / "data")]
    argv += ["--save_path", str(out / "dm_results")]
    outcome = run_until_stopped(Path(args.dm).resolve() / "main_DM.py", argv, out)
    result = {
        "method": "DM",
        "checkout": args.dm,
        "dataset": args.dataset,
        "ipc": args.ipc,
        "budget_min": args.budget_min,
        "memory_cap_gb": args.memory_gb,
        "outcome": outcome,
        **torch_measures(clock),
        "set_format": "DC/DSA/DM res_*.pt (frepo evaluate --dataset NAME --preprocess dc)",
    }
    write_result(out / "result.json", result)


if __name__ == "__main__":
    main()
