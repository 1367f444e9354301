"""The victims of `frepo privacy`: a fresh network trained on a set as the official `script/mia.py`
trains its victims, and the per-example outputs the attacks score."""

from __future__ import annotations

import torch

from ..base.device import host_to_device
from ..eval.training import NetworkUpdate, Schedule, fresh_network, train
from ..method.krr import centered_one_hot, mse_loss


def train_victim(
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    width: int,
    num_classes: int,
    ops: tuple[str, ...],
    gen: torch.Generator,
    device: torch.device,
) -> torch.nn.Module:
    """A fresh Conv (no norm) trained `steps` Adam steps (constant lr) with MSE on (images N×C×H×W,
    targets N×K), shuffled batches (a fresh permutation every epoch) and one reference augmentation op
    per step."""
    model, images = fresh_network("conv", images, num_classes, gen=gen, device=device, width=width)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    update = NetworkUpdate(model, optimizer, mse_loss, ops, gen)
    train(update, images, targets.to(device), Schedule(steps, batch_size, "epochs"), gen=gen, device=device)
    return model


@torch.no_grad()
def outputs(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, device) -> dict:
    """Per example: logits (N×K), MSE loss against the centred one-hot label, the label, and whether the
    prediction is right (numpy arrays)."""
    model.eval()
    logits = torch.cat([model(host_to_device(images[s : s + 1000], device)).cpu() for s in range(0, len(images), 1000)])
    target = centered_one_hot(labels, num_classes)
    loss = 0.5 * (logits - target).square().sum(-1)
    return {
        "logits": logits.double().numpy(),
        "loss": loss.double().numpy(),
        "labels": labels.numpy(),
        "correct": (logits.argmax(-1) == labels).numpy(),
    }
