"""Train the N evaluation networks of one architecture at once: their parameters stacked along a new
leading dimension, one `torch.func.vmap` over `functional_call` for the forward and backward of all N,
one Adam over the stacked tensors (Adam is elementwise, so it is N independent Adams).

Each network keeps its own initialisation and its own augmentation draws: network m is built from its
own generator, which then draws its augmentations, in the same order as when the networks train one
after the other (`frepo.eval.protocols.frepo.train_reference_model`). The results agree with the
sequential runs up to float rounding (batched kernels sum in another order).

Only networks without buffers (no batch-norm running statistics) are stacked: `stackable` says which.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from ..base.device import host_to_device
from ..method.krr import mse_loss
from ..method.optim import optax_adam, set_lr
from ..models import build_model, inference_batch
from .augment import random_op
from .protocol import ReferenceTraining, not_finite_rows, warn_not_finite
from .training import train


def stackable(model: nn.Module) -> bool:
    """True when `model` has no buffers (running statistics would need per-network in-place updates)."""
    return not any(True for _ in model.buffers())


class Stacked:
    """N networks of one architecture as stacked parameters (each N×...) and one stateless template."""

    def __init__(self, models: list[nn.Module], device: torch.device):
        self.template = copy.deepcopy(models[0]).to("meta")
        params, _ = stack_module_state(models)
        self.params = {k: v.detach().to(device).requires_grad_(False) for k, v in params.items()}
        self.n = len(models)

        def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.template, p, (x,))

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return mse_loss(forward(p, x), y)

        self.forward_shared = vmap(forward, in_dims=(0, None))  # B×C×H×W -> N×B×K
        self.grads = vmap(grad(loss), in_dims=(0, 0, None))  # targets shared: the same batch indices

    @torch.no_grad()
    def accuracies(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch: int | None = None):
        """Percent correct of each network on images M×C×H×W with class ids (M,) (any device: each batch,
        `inference_batch` images by default, goes to `device`). Counted on the device, read once at the end."""
        self.template.eval()
        batch = batch or inference_batch(images)
        counts = torch.zeros(2, self.n, dtype=torch.long, device=device)  # correct, outputs not finite
        for start in range(0, len(images), batch):
            part = slice(start, start + batch)
            x, y = host_to_device(images[part], device), host_to_device(labels[part], device)
            logits = self.forward_shared(self.params, x)  # N×B×K
            hits = (logits.argmax(-1) == y).sum(-1)
            counts += torch.stack((hits, not_finite_rows(logits).sum(-1)))
        correct, not_finite = counts.tolist()
        warn_not_finite(not_finite, len(images))
        return [100.0 * c / max(len(images), 1) for c in correct]


def train_reference_models(
    images: torch.Tensor, targets: torch.Tensor, training: ReferenceTraining, gens: list[torch.Generator]
) -> Stacked:
    """`train_reference_model` for len(gens) networks at once. images N×C×H×W, targets N×K on
    `training.device`. The networks run stacked, never compiled: `training.compile` must be False."""
    t = training
    if t.compile:
        raise ValueError("stacked networks are not compiled: pass a ReferenceTraining with compile=False")
    shape = tuple(images.shape[1:])
    models = [build_model(t.arch, shape, t.num_classes, generator=g, width=t.width, depth=t.depth) for g in gens]
    stacked = Stacked(models, t.device)
    stacked.template.train()
    # The batch order draws nothing (`cycle`): gens[0] only stands in for the loop's generator.
    update = StackedUpdate(stacked, t.ops, gens)
    train(update, images, targets, t.schedule(), gen=gens[0], device=t.device, progress=t.progress)
    return stacked


class StackedUpdate:
    """One Adam step of every stacked network: one augmentation op per network and step, drawn from that
    network's own generator (as when they train one after the other), the step's learning rate, the
    gradients of all N by one vmap."""

    def __init__(self, stacked: Stacked, ops: tuple[str, ...], gens: list[torch.Generator]):
        self.stacked, self.ops, self.gens = stacked, ops, gens
        self.params = list(stacked.params.values())
        self.optimizer = optax_adam(self.params, lr=0.0)

    def __call__(self, batch: torch.Tensor, targets: torch.Tensor, lr: float | None) -> None:
        x = torch.stack([random_op(batch, self.ops, g) if self.ops else batch for g in self.gens])
        assert lr is not None  # the reference schedule sets every step's rate (the optimiser starts at 0)
        set_lr(self.optimizer, lr)
        for p, g in zip(self.params, self.stacked.grads(self.stacked.params, x, targets).values()):
            # Fused Adam (CUDA) takes gradients laid out as their parameters; autograd's backward arranges
            # that, a vmap'd gradient need not (a batched kernel may return other strides).
            p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
        self.optimizer.step()
