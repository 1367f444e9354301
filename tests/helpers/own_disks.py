"""Run under torchrun (2 processes): `frepo distill` where each rank's --out is its own folder, as on nodes
whose --out is a local disk: rank 0 gets argv[1], rank 1 argv[2]; the rest of argv is the command's flags."""

from __future__ import annotations

import os
import sys

from frepo.cli import main

if __name__ == "__main__":
    out = sys.argv[1 + int(os.environ["RANK"])]
    sys.exit(main(["distill", "--out", out, *sys.argv[3:]]))
