"""The `krr` evaluation protocol: kernel ridge regression on the features of freshly initialised
networks, no training (the reference's `eval_on_proto_krr`). Cheap enough for curves.

Support set: the distilled images, plus their horizontal flips with the same labels when the set was
distilled with the flip trick. λ = 1e-6 · trace(K_ss) / n; the prediction for a test image is
f(x) F_s^T (K_ss + λI)^-1 Y_s (`frepo.krr`), and its argmax is the predicted class.
"""

from __future__ import annotations

import torch
from torch import nn

from .krr import krr_weights

KRR_REG = 1e-6


@torch.no_grad()
def embed_batched(model: nn.Module, x: torch.Tensor, device: torch.device, batch: int = 1000) -> torch.Tensor:
    """Features of x (N×C×H×W, any device) in eval mode -> N×D on `device`."""
    model.eval()
    return torch.cat([model.embed(x[s : s + batch].to(device)) for s in range(0, len(x), batch)])


@torch.no_grad()
def krr_accuracy(
    model: nn.Module,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    *,
    device: torch.device,
    use_flip: bool = False,
    reg: float = KRR_REG,
    batch: int = 1000,
) -> float:
    """Percent of eval images classified correctly by KRR on `model`'s features.

    support_x: N×C×H×W, support_y: N×K targets (learned labels or centred one-hot), eval_x: M×C×H×W,
    eval_y: (M,) class ids.
    """
    if use_flip:
        support_x, support_y = torch.cat([support_x, support_x.flip(-1)]), torch.cat([support_y, support_y])
    weights = krr_weights(embed_batched(model, support_x, device, batch), support_y.to(device).float(), reg)
    correct = 0
    for start in range(0, len(eval_x), batch):
        pred = embed_batched(model, eval_x[start : start + batch], device, batch) @ weights
        correct += int((pred.argmax(-1).cpu() == eval_y[start : start + batch]).sum())
    return 100.0 * correct / max(len(eval_x), 1)
