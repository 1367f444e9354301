"""Run under torchrun (2 processes): `frepo distill` with argv[2:] as its flags, and one failure of the kind argv[1]
names. "nan": LAMB's third update leaves the set NaN on every rank, which rank 0's validation of step 3 (not a
log step, not a checkpoint) is the first to see. "disk": rank 0's second checkpoint write finds the disk full.
"slow-validation": rank 0's validations take minutes; each begins by creating the file $FREPO_TEST_MARK.
"no-data": rank 1's node lacks the dataset. "oom": rank 0's validations run out of GPU memory. "none": as it is."""

from __future__ import annotations

import errno
import os
import sys

import torch

from frepo.cli import main
from frepo.method import optim


def nan_at_third_update() -> None:
    original, calls = optim.Lamb.update, {"n": 0}

    def poisoned(self, *scalars):
        original(self, *scalars)
        calls["n"] += 1
        if calls["n"] == 3:
            self.param_groups[0]["params"][0].data.fill_(float("nan"))

    optim.Lamb.update = poisoned


def full_disk_at_second_checkpoint() -> None:
    original, calls = torch.save, {"n": 0}

    def fills_the_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(obj, f, *args, **kwargs)

    torch.save = fills_the_disk


def slow_validation() -> None:
    import time
    from pathlib import Path

    from frepo.jobs.actions import Validation

    def accuracy(self, now, progress=False):
        Path(os.environ["FREPO_TEST_MARK"]).touch()
        time.sleep(600)

    Validation.accuracy = accuracy


def no_data_here() -> None:
    from frepo.base.errors import FrepoError
    from frepo.jobs import distill

    def prepare(config, device):
        raise FrepoError("no digits.npz in /data on this node (a stand-in)")

    distill.prepare = prepare


def validation_out_of_memory() -> None:
    from frepo.jobs.actions import Validation

    def accuracy(self, now, progress=False):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity")

    Validation.accuracy = accuracy


if __name__ == "__main__":
    if sys.argv[1] == "nan":
        nan_at_third_update()
    elif sys.argv[1] == "disk" and os.environ["RANK"] == "0":
        full_disk_at_second_checkpoint()
    elif sys.argv[1] == "no-data" and os.environ["RANK"] == "1":
        no_data_here()
    elif sys.argv[1] == "oom":
        validation_out_of_memory()
    elif sys.argv[1] == "slow-validation":
        slow_validation()
    sys.exit(main(["distill", *sys.argv[2:]]))
