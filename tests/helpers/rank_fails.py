"""Run under torchrun (2 processes): `frepo distill` with argv[2:] as its flags, and one failure of the kind argv[1]
names. "nan": LAMB's third update leaves the set NaN on every rank, which rank 0's validation of step 3 (not a
log step, not a checkpoint) is the first to see. "disk": rank 0's second checkpoint write finds the disk full.
"slow-validation": rank 0's validations take minutes; each begins by creating the file $FREPO_TEST_MARK.
"none": as it is."""

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


if __name__ == "__main__":
    if sys.argv[1] == "nan":
        nan_at_third_update()
    elif sys.argv[1] == "disk" and os.environ["RANK"] == "0":
        full_disk_at_second_checkpoint()
    elif sys.argv[1] == "slow-validation":
        slow_validation()
    sys.exit(main(["distill", *sys.argv[2:]]))
