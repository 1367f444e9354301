"""Named random streams derived from one seed. No global RNG is used anywhere in frepo.

Generators live on the CPU (draws are small), so a seed gives the same streams on every device.
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed for stream `name`, stable across Python versions and platforms."""
    return int.from_bytes(hashlib.sha256(f"frepo/{seed}/{name}".encode()).digest()[:8], "little") >> 1


def generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, name))


def randint(gen: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (1,), generator=gen))
