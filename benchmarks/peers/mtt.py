"""MTT (trajectory matching, `GeorgeCazenavette/mtt-distillation`) run from a checkout the user names, on
the wall clock, expert trajectories included.

    python benchmarks/peers/mtt.py --mtt DIR --dataset cifar10 --ipc 10 --budget-min 30 \
        --experts 1 --expert-train-epochs 6 --max-start-epoch 4 --out runs/peers/cifar10-ipc10/mtt

Two of the checkout's scripts run in this process, one after the other, on one wall clock:

1. `buffer.py --dataset CIFAR10 --model ConvNet --zca --num_experts E --train_epochs T` trains the
   expert trajectories (MTT's README: E = 100 experts of T = 50 epochs; a CPU budget holds a few epochs
   of one expert, so E and T are the harness's flags, and the JSON records the time per expert epoch).
   `--untrained-experts` writes trajectories of untrained networks instead (a fresh initialisation per
   epoch): for timing a distillation step only, whose cost does not depend on the parameters' values.
2. `distill.py --zca --syn_steps S --expert_epochs 2 --max_start_epoch M --lr_img 1000 --lr_lr 1e-05
   --lr_teacher 0.01` (S = 30, M = 20 at CIFAR-10 IPC 10; M is capped by T − 2) with
   `--Iteration 1000000 --num_eval 0`: no evaluation inside the loop; every method's sets are
   evaluated afterwards by `frepo evaluate`, and that time is no method's. The rates' defaults are those
   of the one command MTT's README prints (CIFAR-100 IPC 1); its table of rates per setting is an image
   outside the checkout, so `--lr-img`, `--lr-lr` and `--lr-teacher` set them.

The harness takes MTT's per-iteration `wandb.log` call as its hook: after each iteration it times it
and, at the wall-clock marks, saves the set in MTT's own layout, `images_stepNNNNNN.pt` (ZCA space) with
`labels_stepNNNNNN.pt` beside it, which `frepo evaluate --dataset <name> --preprocess mtt-zca` reads.
MTT's learned step size (`syn_lr`) is recorded in the JSON; the DSA protocol trains with its own fixed
learning rate, as for every method.

Run-time updates (the checkout is not modified):

- `wandb` is a stand-in that keeps nothing (MTT logs every iteration to it and names its run by it);
- `torchvision.datasets.CIFAR10/CIFAR100` read `<data-dir>/<name>.npz` (or the CIFAR-100 stand-in)
  instead of downloading;
- `scipy.ndimage.interpolation` (removed from SciPy) is aliased to `scipy.ndimage`;
- on a machine without CUDA, `Tensor.cuda()` returns the tensor: `distill.py` moves the set to the GPU
  with `.cuda()` before saving it at iteration 0, whatever its `--device`;
- on a machine without CUDA, `Tensor.cpu()` returns a copy, as it does from a GPU: `buffer.py` records
  each epoch's parameters with `p.detach().cpu()`, which on a CPU is the live parameter itself, so every
  recorded epoch would be the final weights, the distance between start and target parameters 0, and
  `distill.py`'s first loss inf (then NaN: measured, 2026-12-05).

Peak memory: the process's peak RSS on a CPU (buffer and distillation together), and on a GPU
`torch.cuda.max_memory_allocated` of the distillation (reset after the buffer).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import (
    T0,
    Clock,
    install_fake_wandb,
    prepare_torch_peer,
    run_script,
    run_until_stopped,
    torch_measures,
    write_result,
)
from dm import PEER_NAMES, caller_local

_cpu = torch.Tensor.cpu


def copying_cpu(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """`Tensor.cpu` that copies a tensor already on the CPU, as it copies one from a GPU."""
    out = _cpu(self, *args, **kwargs)
    return out.clone() if out.data_ptr() == self.data_ptr() else out


def untrained_trajectories(expert_dir: Path, num_classes: int, epochs: int, mtt_dir: Path) -> None:
    """One trajectory of `epochs` + 1 independent initialisations of MTT's ConvNet, in buffer.py's layout."""
    import sys

    sys.path.insert(0, str(mtt_dir))
    from utils import get_network  # the checkout's network factory

    trajectory = []
    for _ in range(epochs + 1):
        net = get_network("ConvNet", 3, num_classes, (32, 32))
        trajectory.append([p.detach().cpu() for p in net.parameters()])
    expert_dir.mkdir(parents=True, exist_ok=True)
    torch.save([trajectory], expert_dir / "replay_buffer_0.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtt", required=True, help="a checkout of GeorgeCazenavette/mtt-distillation")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(PEER_NAMES))
    parser.add_argument("--data-dir", help="folder of the .npz files (default: $FREPO_DATA_DIR)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--budget-min", type=float, default=float("inf"), help="wall-clock budget (minutes)")
    parser.add_argument("--max-steps", type=int, help="stop after this many iterations (timing runs)")
    parser.add_argument("--experts", type=int, default=1, help="buffer.py --num_experts")
    parser.add_argument("--expert-train-epochs", type=int, default=50, help="buffer.py --train_epochs")
    parser.add_argument("--untrained-experts", action="store_true", help="timing only: skip buffer.py")
    parser.add_argument("--syn-steps", type=int, default=30)
    parser.add_argument("--expert-epochs", type=int, default=2)
    parser.add_argument("--max-start-epoch", type=int, default=20)
    parser.add_argument("--batch-syn", type=int, help="distill.py --batch_syn (default: the whole set)")
    parser.add_argument("--lr-img", type=float, default=1000.0, help="distill.py --lr_img (the images' rate)")
    parser.add_argument("--lr-lr", type=float, default=1e-05, help="distill.py --lr_lr (the step size's rate)")
    parser.add_argument("--lr-teacher", type=float, default=0.01, help="distill.py --lr_teacher (initial step)")
    parser.add_argument("--memory-gb", type=float, help="cap the address space (an allocation past it fails)")
    parser.add_argument("--seed", type=int, default=0, help="torch and numpy seed (MTT seeds nothing itself)")
    parser.add_argument("--out", required=True, help="folder for images_*.pt, labels_*.pt and result.json")
    args = parser.parse_args()
    if args.max_start_epoch + args.expert_epochs > args.expert_train_epochs:
        parser.error("--max-start-epoch + --expert-epochs must not exceed --expert-train-epochs")

    clock = Clock(args.budget_min * 60, max_steps=args.max_steps)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    mtt_dir = Path(args.mtt).resolve()
    arrays = prepare_torch_peer(args.dataset, args.data_dir, args.seed, args.memory_gb)
    num_classes = int(arrays["y_train"].max()) + 1
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.Tensor.cpu = copying_cpu
    name = PEER_NAMES[args.dataset]
    buffers = out / "buffers"
    expert_dir = buffers / name / "ConvNet"  # where buffer.py writes with --zca, and distill.py reads

    def save(tag: str) -> str:
        images, labels = caller_local("image_syn"), caller_local("label_syn")
        for kind, tensor in (("labels", labels), ("images", images)):  # images last: their presence = complete
            path = out / f"{kind}_{tag}.pt"
            tmp = path.with_suffix(".tmp")
            torch.save(tensor.detach().cpu(), tmp)
            tmp.replace(path)
        return str(out / f"images_{tag}.pt")

    learned_lr = []

    def on_log(data: dict) -> None:
        if "Progress" in data and clock.first_step_start is None:
            clock.start_steps()
        if "Grand_Loss" in data:
            learned_lr[:] = [caller_local("syn_lr").item()]
            clock.tick(save)

    install_fake_wandb(on_log)
    buffer_start = time.monotonic()
    common = ["--dataset", name, "--model", "ConvNet", "--zca", "--data_path", str(out / "data")]
    common += ["--buffer_path", str(buffers)]
    if args.untrained_experts:
        untrained_trajectories(expert_dir, num_classes, args.max_start_epoch + args.expert_epochs, mtt_dir)
    else:
        argv = [*common, "--num_experts", str(args.experts), "--train_epochs", str(args.expert_train_epochs)]
        run_script(mtt_dir / "buffer.py", [*argv, "--save_interval", str(args.experts)], out)
    buffer_s = time.monotonic() - buffer_start
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    argv = [*common, "--ipc", str(args.ipc), "--syn_steps", str(args.syn_steps)]
    argv += ["--expert_epochs", str(args.expert_epochs), "--max_start_epoch", str(args.max_start_epoch)]
    argv += ["--lr_img", f"{args.lr_img:g}", "--lr_lr", f"{args.lr_lr:g}", "--lr_teacher", f"{args.lr_teacher:g}"]
    argv += ["--Iteration", "1000000", "--eval_it", "1000000", "--num_eval", "0"]
    if args.batch_syn:
        argv += ["--batch_syn", str(args.batch_syn)]
    outcome = run_until_stopped(mtt_dir / "distill.py", argv, out)
    result = {
        "method": "MTT",
        "checkout": args.mtt,
        "dataset": args.dataset,
        "ipc": args.ipc,
        "budget_min": args.budget_min,
        "memory_cap_gb": args.memory_gb,
        "outcome": outcome,
        "experts": 0 if args.untrained_experts else args.experts,
        "expert_train_epochs": args.expert_train_epochs,
        "buffer_s": buffer_s,
        "buffer_s_per_expert_epoch": None
        if args.untrained_experts
        else buffer_s / (args.experts * args.expert_train_epochs),
        "buffer_started_s": buffer_start - T0,
        "syn_steps": args.syn_steps,
        "expert_epochs": args.expert_epochs,
        "max_start_epoch": args.max_start_epoch,
        "batch_syn": args.batch_syn,
        "lr_img": args.lr_img,
        "lr_lr": args.lr_lr,
        "lr_teacher": args.lr_teacher,
        "learned_lr": learned_lr[0] if learned_lr else None,
        **torch_measures(clock),
        "set_format": "MTT images_*.pt + labels_*.pt (frepo evaluate --dataset NAME --preprocess mtt-zca)",
    }
    write_result(out / "result.json", result)


if __name__ == "__main__":
    main()
