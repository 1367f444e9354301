"""The architecture registry, in the style of timm's `register_model`: each network module registers
one builder per architecture name, with the one-line description the CLI lists, next to the network's
definition. `build_model` then needs no per-architecture branch, and a new architecture is one
decorated function in the file that defines it.

`ARCHS` (name -> description) is the registry itself, in registration order: `conv.py`'s architectures,
then `zoo.py`'s (the package imports them in that order)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..base.errors import FrepoError
from ..base.registry import registering
from .init import INIT_SCHEMES


@dataclass(frozen=True)
class ModelSpec:
    """What every builder is given besides the generator. image_shape is (C, H, W). `width` and `depth`
    apply to the architectures that have them (the Conv family, `convnet`); the others have the fixed
    sizes of their definitions and ignore them. `init` is one of `INIT_SCHEMES`."""

    image_shape: tuple[int, int, int]
    num_classes: int
    width: int = 128
    depth: int = 3
    init: str = "lecun"

    @property
    def in_channels(self) -> int:
        return self.image_shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image_shape[1], self.image_shape[2]


class ModelBuilder(Protocol):
    """A registered builder: a freshly initialised network for `spec`, its weights drawn from `generator`
    only (keyword-only and required, so that no caller can fall back on torch's global RNG)."""

    def __call__(self, spec: ModelSpec, *, generator: torch.Generator) -> nn.Module: ...


# name -> one-line description (the CLI's help and error messages list these), and name -> builder.
ARCHS: dict[str, str] = {}
_BUILDERS: dict[str, ModelBuilder] = {}
SIZED: set[str] = set()  # the architectures whose width and depth come from ModelSpec (the others are fixed)


def register_model(name: str, description: str, sized: bool = False) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register the builder under `name`, with its one-line description in `ARCHS` (once);
    `sized`: it builds the network of ModelSpec's width and depth."""

    def entry(builder: ModelBuilder) -> ModelBuilder:
        ARCHS[name] = description
        if sized:
            SIZED.add(name)
        return builder

    return registering(_BUILDERS, name, "architecture", entry)


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise FrepoError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return arch


def build_model(
    arch: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    generator: torch.Generator,
    width: int = 128,
    depth: int = 3,
    init: str = "lecun",
) -> nn.Module:
    """A freshly initialised network of architecture `arch`. image_shape is (C, H, W). `width` and
    `depth` apply to the Conv family and `convnet`; the other architectures have the fixed sizes of their
    definitions. `init`: lecun (Flax's defaults, the reference's) or torch (torch's default rule, the DC
    code's). Every weight is drawn from `generator`: the same seed gives the same network."""
    check_arch(arch)
    if init not in INIT_SCHEMES:
        raise FrepoError(f"unknown init {init!r}; use one of {', '.join(INIT_SCHEMES)}")
    c, h, w = image_shape
    # torch's layers draw their default weights from the global generator as they are built (frepo then draws
    # every weight again from `generator`): its state is put back, so the caller's own draws stay where they were.
    with torch.random.fork_rng(devices=[]):
        return _BUILDERS[arch](ModelSpec((c, h, w), num_classes, width, depth, init), generator=generator)
