"""Model registry: FRePo's Conv (distillation and the reference evaluation) and the cross-architecture
evaluation networks of the DC/DSA literature (`zoo.py`). Every network has `embed` (flattened
features) and `forward` (logits) and is initialised from an explicit generator.

Each architecture registers its builder with `register_model` next to its definition (registry.py);
`ARCHS` lists them in import order, `conv` before `zoo`, the order the CLI shows."""

from __future__ import annotations

import torch
from torch import nn

from ..base.device import host_to_device
from .conv import CONV_ARCHS, Conv, FlaxBatchNorm2d, conv_arch
from .init import INIT_SCHEMES, init_flax_defaults_, init_torch_defaults_, lecun_normal_
from .registry import ARCHS, SIZED, ModelBuilder, ModelSpec, build_model, check_arch, register_model
from .zoo import MLP, VGG11, AlexNet, ConvNet, ResNet18

__all__ = [
    "ARCHS",
    "SIZED",
    "CONV_ARCHS",
    "INIT_SCHEMES",
    "MLP",
    "AlexNet",
    "Conv",
    "ConvNet",
    "FlaxBatchNorm2d",
    "ModelBuilder",
    "ModelSpec",
    "ResNet18",
    "VGG11",
    "build_model",
    "check_arch",
    "conv_arch",
    "embed_batched",
    "inference_batch",
    "eval_layout",
    "init_flax_defaults_",
    "init_torch_defaults_",
    "lecun_normal_",
    "register_model",
]


def eval_layout(images: torch.Tensor) -> torch.memory_format:
    """Memory layout for training an evaluation network on N×C×H×W `images`: channels-last from
    16×16 up (same maths, 1.1-1.2x faster at 28×28 and 32×32 on CPU), contiguous below, where it
    was 1.2x slower (8×8 digits: 69 vs 56 ms per step)."""
    return torch.channels_last if min(images.shape[-2:]) >= 16 else torch.contiguous_format


def inference_batch(images: torch.Tensor, base: int = 1000) -> int:
    """Images per forward batch when networks only infer: `base` up to 32×32, fewer for larger images so that
    a batch's activations stay those of `base` CIFAR images (64×64: 250, 128×128: 62). At 64×64 a batch of
    1000 made 8 GB of activations on a CPU (frepo evaluate on ImageNet 64's test split)."""
    h, w = images.shape[-2:]
    return max(1, base * 1024 // max(h * w, 1024))


@torch.no_grad()
def embed_batched(model: nn.Module, x: torch.Tensor, device: torch.device, batch: int | None = None) -> torch.Tensor:
    """Features of x (N×C×H×W, any device) in eval mode -> N×D on `device`, `batch` images (default
    `inference_batch`) at a time."""
    model.eval()
    batch = batch or inference_batch(x)
    # A host batch is queued from page-locked memory: a plain `.to` made the host wait for the GPU each batch.
    return torch.cat([model.embed(host_to_device(x[s : s + batch], device)) for s in range(0, len(x), batch)])
