"""`EvalConfig`: what an evaluation is, as one typed object — built once, validated once, passed whole.

Shared options (protocol, architectures, models, seed, split, device, width) plus one options
dataclass per protocol (`frepo`, `dsa`, `krr`, from `frepo.eval.protocols`). A protocol's options
default to "not given"; setting one for another protocol is an error, so `--epochs` without
`--protocol dsa` is refused instead of silently ignored. The command line builds `frepo evaluate`'s
flags from these fields (`frepo.cli`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..base.errors import FrepoError
from ..base.fields import COUNT_MAX, check_fields, leaf_fields, nested, opt, set_leaf
from ..config.presets import PAPER_OVERRIDES
from ..models import ARCHS, check_arch
from .protocol import REFERENCE_BATCH
from .protocols import PROTOCOLS
from .protocols.dsa import DsaOptions
from .protocols.frepo import FrepoOptions
from .protocols.krr import KrrOptions

SPLITS = ("test", "val")
TOGETHER = ("auto", "on", "off", "streams")
# `--together auto`: stacked against one after the other, 5 networks of the frepo protocol on MNIST subsets,
# 300 steps, one NVIDIA H200 (torch 2.11, CUDA 13; benchmarks/bench_eval.py --device cuda --dataset mnist
# --sizes 10,100,500, 2026-12-04): 4.0× faster at 10 images, 1.23× at 100, 0.80× (slower) at 500; a rerun
# kept in docs/bench_eval_gpu.json gave 3.3×, 1.14× and 0.81×. The gain
# falls with the work per step, a batch of min(N, 500) images, so auto stacks on CUDA up to 100 MNIST
# images' worth of pixels per batch (25 CIFAR images), where it measured faster. Fewer than 5 networks
# were not measured.
TOGETHER_AUTO_BATCH_PIXELS = 100 * 28 * 28
DEFAULT_DEPTH = 3  # the reference's evaluation network (and the evaluation protocols' ConvNet)
MAX_DEPTH = 16  # each block halves the image: more than any image frepo reads has pixels for


@dataclass
class EvalConfig:
    protocol: str = opt(
        "frepo",
        "; ".join(f"{p.name} = {p.summary}" for p in PROTOCOLS.values()),
        choices=tuple(PROTOCOLS),
    )
    arch: str | list[str] | None = opt(  # a list of names is taken too (Python)
        None,
        "comma-separated networks (default: the protocol's: "
        + ", ".join(f"{p.default_arch} for {p.name}" for p in PROTOCOLS.values())
        + "): "
        + ", ".join(ARCHS),
    )
    models: int = opt(5, "fresh networks per architecture")
    seed: int = opt(0, "evaluation seed")
    split: str = opt("test", "test, or val: the hold-out the set was distilled without", choices=SPLITS)
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    width: int = opt(128, "channels of the first block of conv-family networks and convnet")
    depth: int | None = opt(
        None,
        "blocks of conv-family networks and convnet (default: the depth the set was distilled with, as its file "
        "records it; else its dataset's in the paper presets: 4 for Tiny ImageNet and ImageNet 64×64, else 3)",
    )
    together: str = opt(
        "auto",
        "train the --models networks of an architecture at once instead of one after the other: on (stacked, "
        "torch.func.vmap; same results up to float rounding), streams (each network on its own CUDA stream, "
        "in turn step by step on a CPU; the same results, bit for bit on a CPU, any architecture), off, or auto "
        "(stacked on CUDA where it measured faster: batches of at most 100 MNIST images' pixels; off on the CPU)",
        choices=TOGETHER,
    )
    frepo: FrepoOptions = nested(FrepoOptions)
    dsa: DsaOptions = nested(DsaOptions)
    krr: KrrOptions = nested(KrrOptions)

    @classmethod
    def build(cls, **options: Any) -> EvalConfig:
        """An EvalConfig from leaf option names (`models=5`, `epochs=300`, ...), validated."""
        config = cls()
        for name, value in options.items():
            set_leaf(config, name, value)
        config.validate()
        return config

    def validate(self) -> None:
        check_fields(self)
        for name in ("models", "width"):  # above 2**31 - 1: a list of 10^20 streams, or tqdm's OverflowError
            if not 1 <= getattr(self, name) <= COUNT_MAX:
                raise FrepoError(f"{name} must be in 1..{COUNT_MAX}, got {getattr(self, name)}")
        if self.depth is not None and not 1 <= self.depth <= MAX_DEPTH:
            raise FrepoError(f"depth must be in 1..{MAX_DEPTH} (each block halves the image), got {self.depth}")
        for name in PROTOCOLS:
            given = getattr(self, name)
            if name == self.protocol:
                given.validate()
                continue
            for flag, (owner, f) in leaf_fields(given).items():
                if getattr(owner, f.name) != f.default:
                    raise FrepoError(_misplaced(flag, name, self.protocol))
        if self.together in ("on", "streams") and PROTOCOLS[self.protocol].train_and_test_many is None:
            does = "trains nothing" if self.protocol == "krr" else "trains its networks one after the other"
            raise FrepoError(
                f"--together {self.together} applies to --protocol frepo; the {self.protocol} protocol {does}"
            )
        self.archs()

    def together_mode(self, device, images: torch.Tensor) -> str | None:
        """How `--models` networks train at once on `device` (a torch.device) on `images` (N×C×H×W):
        "stacked", "streams", or None (one after the other)."""
        if self.together != "auto":
            return {"on": "stacked", "streams": "streams", "off": None}[self.together]
        if device.type != "cuda":
            return None
        small = min(len(images), REFERENCE_BATCH) * images.shape[1:].numel() <= TOGETHER_AUTO_BATCH_PIXELS
        return "stacked" if small else None

    def network_depth(self, meta: dict) -> int:
        """The blocks of the conv-family networks that evaluate a set of metadata `meta`: --depth; else the depth
        the set was distilled with, as its file records it; else its dataset's in the paper presets (Tiny ImageNet
        and ImageNet 64×64: 4, so that a random subset, an export or another tool's set of them meets the network
        a distilled one does); else 3. (Every set was evaluated at depth 3 before 2026-12-08: a Tiny ImageNet set
        was tested on another network than it was distilled for.)"""
        if self.depth is not None:
            return self.depth
        meta = meta if isinstance(meta, dict) else {}
        recorded = ((meta.get("config") or {}).get("model") or {}).get("depth")
        if isinstance(recorded, int) and not isinstance(recorded, bool) and 1 <= recorded <= MAX_DEPTH:
            return recorded
        return PAPER_OVERRIDES.get(str(meta.get("dataset")), {}).get("depth", DEFAULT_DEPTH)

    def options(self) -> Any:
        """The options dataclass of the chosen protocol."""
        return getattr(self, self.protocol)

    def archs(self) -> list[str]:
        """'conv,alexnet' -> validated names, in order; None -> the protocol's default network."""
        if self.arch is None:
            return [PROTOCOLS[self.protocol].default_arch]
        listed = isinstance(self.arch, list | tuple) and all(isinstance(a, str) for a in self.arch)
        if not isinstance(self.arch, str) and not listed:  # 5 was "'int' object is not iterable"
            raise FrepoError(f"arch must be a name, comma-separated names or a list of names, got {self.arch!r:.60}")
        names = [a.strip() for a in self.arch.split(",")] if isinstance(self.arch, str) else list(self.arch)
        names = [a for a in names if a]
        if not names:
            raise FrepoError("--arch needs at least one architecture name")
        if len(set(names)) != len(names):
            raise FrepoError(f"--arch names an architecture twice: {','.join(names)}")
        return [check_arch(a) for a in names]

    def replace(self, **changes: Any) -> EvalConfig:
        """A copy with top-level fields changed (e.g. the seed of one validation), not re-validated."""
        return dataclasses.replace(self, **changes)


def _misplaced(flag: str, owner: str, chosen: str) -> str:
    dashed = "--" + flag.replace("_", "-")
    counts = {"frepo": "--steps", "dsa": "--epochs"}
    counting = dashed in counts.values() and chosen in counts and counts[chosen] != dashed  # --steps for dsa
    hint = f"; the {chosen} protocol counts {counts[chosen]}" if counting else ""
    if chosen == "krr":
        hint = "; the krr protocol trains nothing"
    return f"{dashed} applies to --protocol {owner}{hint}"
