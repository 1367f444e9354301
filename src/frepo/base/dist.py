"""torch.distributed glue: one process per device, launched by torchrun.

Each rank takes a contiguous shard of the global real batch; the synthetic-set gradients (and the
online gradients of the replicated pool) are averaged with all-reduce, so every rank holds the same
synthetic set and the same pool. Rank 0 alone writes checkpoints, logs and outputs.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import FrepoError, SaidElsewhere


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch of indices."""
        if not self.enabled:
            return batch
        per_rank = len(batch) // self.world
        return batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """In place: average over ranks (identical result on every rank)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(self.world)

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """In place: rank 0's values on every rank."""
        if not self.enabled:
            return
        for t in tensors:
            dist.broadcast(t, src=0)

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank (so all ranks stop at the same step)."""
        return self.any_of(flag)[0]

    def any_of(self, *flags: bool) -> list[bool]:
        """For each flag, True on every rank if it is True on any rank: several in one collective."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([1.0 if flag else 0.0 for flag in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(value > 0) for value in t.tolist()]

    def gather_objects(self, obj) -> list:
        """[rank 0's obj, rank 1's, ...] on every rank (tensors are moved to the CPU first)."""
        if not self.enabled:
            return [obj]
        obj = _to_cpu(obj)
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def agree(self, refusal: FrepoError | None) -> None:
        """Every rank stops if any refused: the first that refused with its own refusal, the others with
        `SaidElsewhere` naming it (a rank whose refusal says the same words too: said once). A collective, so every
        rank must call it: a refusal raised on one rank alone left the others waiting in their next collective
        until the refusing process exited, and then failing with a traceback ("Connection closed by peer")."""
        if not self.enabled:
            if refusal is not None:
                raise refusal
            return
        said = self.gather_objects(None if refusal is None else str(refusal))
        first = next(((rank, text) for rank, text in enumerate(said) if text is not None), None)
        if first is None:
            return
        rank, text = first
        # the same refusal on several ranks (a NaN every rank sees): said once, by the first
        if refusal is not None and (rank == self.rank or str(refusal) != text):
            raise refusal
        raise SaidElsewhere(f"rank {rank} refused: {text}")

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# How long a rank waits in a collective for the others: while rank 0 alone validates, writes a checkpoint or
# the outputs, the other ranks wait in the next step's collectives (NCCL's default is 10 minutes, gloo's 30).
COLLECTIVE_TIMEOUT = timedelta(hours=2)


def process_group_backend(use_cuda: bool) -> str:
    """NCCL for the device tensors of a GPU run, with gloo beside it for what stays on the host (the stop
    flag of `DistContext.any`, objects, barriers): NCCL alone refuses host tensors, and a flag sent to the
    GPU would make the host wait for it every step."""
    return "cpu:gloo,cuda:nccl" if use_cuda else "gloo"


def world_size() -> int:
    """The processes torchrun launched (its WORLD_SIZE); 1 where unset or not a whole number (then
    `init_distributed` says so, and commands that never join a group run as one process)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def init_distributed(device_name: str) -> tuple[DistContext, str]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick this rank's device."""
    given = os.environ.get("WORLD_SIZE", "1")
    if not given.strip().isdigit():
        raise FrepoError(f"WORLD_SIZE must be the number of processes (torchrun sets it), got {given!r}")
    world = world_size()
    if world <= 1:
        return DistContext(), device_name
    rank, local_rank = _launched_as(world)
    # The device as one process would resolve it: `cpu:0` picked the GPU ("not 'cpu'"), and `cuda` without CUDA
    # ran every rank on the CPU unsaid.
    device = resolve_device(device_name)
    if device.type not in ("cpu", "cuda"):  # an `mps` rank ran on the CPU unsaid
        raise FrepoError(f"--device {device_name}: under torchrun frepo runs on CPUs (gloo) or CUDA GPUs (NCCL)")
    use_cuda = device.type == "cuda"
    if use_cuda and device.index is not None and torch.cuda.device_count() > 1:
        # Each process takes its own GPU (rank_gpu); a named one was replaced by it unsaid. Refused on every rank
        # alike (one GPU visible to each process, a scheduler's way, is its cuda:0, which rank_gpu picks).
        raise FrepoError(
            f"--device {device_name}: under torchrun each process takes the GPU of its LOCAL_RANK (cuda:LOCAL_RANK); "
            "pass --device cuda, and CUDA_VISIBLE_DEVICES to choose the GPUs"
        )
    gpu = rank_gpu(local_rank, torch.cuda.device_count()) if use_cuda else 0
    if use_cuda:  # before the group: NCCL's communicator then lives on this rank's GPU, not on GPU 0
        torch.cuda.set_device(gpu)
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(use_cuda), timeout=COLLECTIVE_TIMEOUT)
        # Destroyed at exit rather than left to interpreter shutdown, as torch asks of every process group.
        atexit.register(_destroy)
    return DistContext(rank, world, local_rank), f"cuda:{gpu}" if use_cuda else "cpu"


def _launched_as(world: int) -> tuple[int, int]:
    """(RANK, LOCAL_RANK) of a process of a `world`-process launch, or a FrepoError saying what the launch lacks
    (WORLD_SIZE exported in a shell, a hand-written launcher): torch's KeyError or ValueError said neither."""
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise FrepoError(
            f"WORLD_SIZE is {world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: launch "
            "the processes with torchrun (torchrun --nproc-per-node N -m frepo ...), or unset WORLD_SIZE to run one"
        )
    rank, local_rank = os.environ["RANK"].strip(), os.environ.get("LOCAL_RANK", "0").strip()
    if not (rank.isdigit() and local_rank.isdigit()) or int(rank) >= world:
        raise FrepoError(
            f"RANK {rank!r} and LOCAL_RANK {local_rank!r} must be process numbers below WORLD_SIZE {world} "
            "(torchrun sets all three)"
        )
    return int(rank), int(local_rank)


def rank_gpu(local_rank: int, visible: int) -> int:
    """The GPU of the process with this LOCAL_RANK among the `visible` ones: its own index where the processes of
    a node share the node's GPUs (torchrun's way), the one it sees where a scheduler gives each its own (SLURM's
    --gpus-per-task=1, Kubernetes: every process sees one GPU as cuda:0, and cuda:LOCAL_RANK does not exist).
    Several processes on a node of one GPU get it too, and NCCL refuses them at the first collective
    ("Duplicate GPU detected"), as it refused LOCAL_RANK's GPU before ("invalid device ordinal")."""
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise FrepoError(
            f"process of LOCAL_RANK {local_rank} sees {visible} GPUs: launch at most {visible} processes per node, "
            "or give each its own GPU (CUDA_VISIBLE_DEVICES)"
        )
    return local_rank
