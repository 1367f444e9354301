"""The registry of evaluation protocols: name -> `Protocol` (see `frepo.eval.protocol`).

  frepo  the reference (script/eval.py): Conv without norm, Adam, MSE on the learned labels
  dsa    the DC/DSA/DM/MTT/DD-Ranking standard: ConvNet-3 with instance norm, SGD, DSA augmentation
  krr    kernel ridge regression on the features of freshly initialised networks
A new protocol is a module with an options dataclass, `plan` and `train_and_test`, added here.
"""

from __future__ import annotations

from ..protocol import Protocol
from . import dsa, frepo, krr

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (frepo.PROTOCOL, dsa.PROTOCOL, krr.PROTOCOL)}
