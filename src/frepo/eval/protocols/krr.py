"""The `krr` protocol: kernel ridge regression on the features of freshly initialised networks, no
training. Cheap enough for curves. (The reference's `eval_on_proto_krr` regresses on the features of the
network it is training on the set; this one, on fresh networks: the set's kernel at initialisation.)

Support set: the distilled images, plus their horizontal flips with the same labels when the set was
distilled with the flip trick. λ = krr_reg · trace(K_ss) / n; the prediction for a test image is
f(x) F_s^T (K_ss + λI)^-1 Y_s (`frepo.method.krr`), and its argmax is the predicted class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...base.device import host_to_device
from ...base.fields import check_fields, check_finite, opt
from ...base.rng import generator
from ...method.krr import krr_weights
from ...models import build_model, embed_batched, inference_batch
from ..protocol import EvalSetup, Plan, Protocol

KRR_REG = 1e-6


@dataclass
class KrrOptions:
    krr_reg: float = opt(KRR_REG, "krr protocol: ridge, krr_reg * trace(K_ss) / n (the reference's 1e-6)")

    def validate(self) -> None:
        check_fields(self)
        check_finite("krr_reg", self.krr_reg, low=0.0)


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
    batch: int | None = None,
) -> float:
    """Percent of eval images classified correctly by KRR on `model`'s features.

    support_x: N×C×H×W, support_y: N×K targets (learned labels or centred one-hot), eval_x: M×C×H×W,
    eval_y: (M,) class ids.
    """
    if use_flip:
        support_x, support_y = torch.cat([support_x, support_x.flip(-1)]), torch.cat([support_y, support_y])
    batch = batch or inference_batch(eval_x)
    weights = krr_weights(
        embed_batched(model, support_x, device, batch), host_to_device(support_y, device).float(), reg
    )
    correct = torch.zeros((), dtype=torch.long, device=device)  # counted on the device, read once
    for start in range(0, len(eval_x), batch):
        pred = embed_batched(model, eval_x[start : start + batch], device, batch) @ weights
        correct += (pred.argmax(-1) == host_to_device(eval_y[start : start + batch], device)).sum()
    return 100.0 * int(correct) / max(len(eval_x), 1)


def _use_flip(setup: EvalSetup) -> bool:
    return bool((setup.ds.meta.get("config") or {}).get("use_flip") or False)


def plan(setup: EvalSetup, options: KrrOptions) -> Plan:
    return Plan(0, {"use_flip": _use_flip(setup)})


def train_and_test(setup: EvalSetup, options: KrrOptions, stream: str) -> float:
    ds = setup.ds
    shape = tuple(ds.images.shape[1:])
    gen = generator(setup.seed, stream)
    model = build_model(setup.arch, shape, ds.num_classes, generator=gen, width=setup.width, depth=setup.depth)
    return krr_accuracy(
        model.to(setup.device),
        setup.images,
        setup.targets(),
        setup.test_x,
        setup.test_y,
        device=setup.device,
        use_flip=_use_flip(setup),
        reg=options.krr_reg,
    )


PROTOCOL = Protocol(
    name="krr",
    summary="kernel regression on random-network features",
    options=KrrOptions,
    default_arch="conv",
    stream="krr",
    plan=plan,
    train_and_test=train_and_test,
)
