"""The `frepo` protocol: the reference evaluation of the official code (script/eval.py).

Conv without normalisation, Adam 3e-4 with a 500-step linear warm-up then cosine decay to 0.01×, MSE
against the set's (learned) labels, batches of min(N, 500) taken in order without shuffling, one
random augmentation op per step with per-sample parameters (`frepo.eval.augment`), a step count from
the reference table, final-step accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ...base.compiler import torch_compile
from ...base.errors import FrepoError
from ...base.fields import COUNT_MAX, check_fields, opt
from ...base.rng import generator
from ...method.krr import mse_loss
from ...method.optim import optax_adam
from ...models import build_model
from ..augment import reference_ops
from ..protocol import EvalSetup, Plan, Protocol, ReferenceTraining, accuracy
from ..together import stackable, train_reference_models
from ..training import Interleaved, NetworkUpdate, fresh_network, train

# Reference: training steps by total number of distilled images.
REFERENCE_STEPS = {10: 1000, 100: 2000, 200: 20000, 400: 5000, 500: 5000, 1000: 10000, 2000: 40000, 5000: 40000}


def reference_steps(num_images: int) -> int:
    """The reference table; between its entries, the entry below (the 200-image row, specific to
    Tiny ImageNet IPC 1, is used only for exactly 200 images)."""
    if num_images in REFERENCE_STEPS:
        return REFERENCE_STEPS[num_images]
    below = [k for k in REFERENCE_STEPS if k <= num_images and k != 200]
    return REFERENCE_STEPS[max(below)] if below else REFERENCE_STEPS[10]


# `--compile auto` compiles a network where it measured faster and its training repays the compilation
# (15-45 s on a 2-core CPU): 9% faster per step at 100 and 500 CIFAR-10 images, 2% at 10
# (docs/benchmarks.md). Smaller work per step (fewer or smaller images) was not measured: left eager.
COMPILE_AUTO_PIXELS, COMPILE_AUTO_STEPS = 100 * 32 * 32, 1000


@dataclass
class FrepoOptions:
    steps: int | None = opt(None, "frepo protocol: training steps (default: the reference step table)")
    compile: str = opt(
        "auto",
        "frepo protocol: torch.compile each network: on, off, or auto (on for CPU evaluations of at least "
        f"100 32×32 images or as many pixels, and {COMPILE_AUTO_STEPS} steps; same results up to float rounding)",
        choices=("auto", "on", "off"),
    )

    def validate(self) -> None:
        check_fields(self)
        if self.steps is not None and not 1 <= self.steps <= COUNT_MAX:
            raise FrepoError(f"steps must be in 1..{COUNT_MAX}, got {self.steps}")

    def compiles(self, images: torch.Tensor, steps: int, device: torch.device) -> bool:
        """Whether the networks trained on `images` (N×C×H×W) for `steps` run compiled on `device`."""
        if self.compile != "auto":
            return self.compile == "on"
        pixels = len(images) * images.shape[-2] * images.shape[-1]
        return device.type == "cpu" and pixels >= COMPILE_AUTO_PIXELS and steps >= COMPILE_AUTO_STEPS


def train_reference_model(
    images: torch.Tensor, targets: torch.Tensor, training: ReferenceTraining, gen: torch.Generator
) -> torch.nn.Module:
    """Train one fresh network, built from `gen`, with the reference protocol. images N×C×H×W, targets N×K
    on `training.device`."""
    model, images, update = reference_network(images, training, gen)
    train(update, images, targets, training.schedule(), gen=gen, device=training.device, progress=training.progress)
    return model


def train_reference_models_on_streams(
    images: torch.Tensor, targets: torch.Tensor, training: ReferenceTraining, gens: list[torch.Generator]
) -> list[torch.nn.Module]:
    """`train_reference_model` for len(gens) networks at once, each on its own CUDA stream (`Interleaved`):
    the same networks as one after the other (bit for bit on a CPU; on a GPU up to cuBLAS, which may choose
    another kernel when several streams run), and any architecture."""
    models, updates = [], []
    for g in gens:
        model, placed, update = reference_network(images, training, g)
        models.append(model)
        updates.append(update)
    interleaved = Interleaved(updates, training.device)
    # The batch order draws nothing (`cycle`): gens[0] only stands in for the loop's generator.
    train(
        interleaved,
        placed,
        targets,
        training.schedule(),
        gen=gens[0],
        device=training.device,
        progress=training.progress,
    )
    interleaved.join()
    return models


def reference_network(
    images: torch.Tensor, training: ReferenceTraining, gen: torch.Generator
) -> tuple[torch.nn.Module, torch.Tensor, NetworkUpdate]:
    """A fresh network built from `gen`, the images on the device in its layout, and its training step (Adam,
    MSE, one augmentation op per step drawn from `gen`; the network under torch.compile with
    `training.compile`)."""
    t = training
    model, images = fresh_network(t.arch, images, t.num_classes, gen=gen, device=t.device, width=t.width, depth=t.depth)
    forward = torch_compile(model, dynamic=False) if t.compile else model  # the same parameters
    return model, images, NetworkUpdate(forward, optax_adam(model.parameters(), lr=0.0), mse_loss, t.ops, gen)


def plan(setup: EvalSetup, options: FrepoOptions) -> Plan:
    return Plan(options.steps or reference_steps(len(setup.ds.images)))


def reference_training(setup: EvalSetup, options: FrepoOptions) -> ReferenceTraining:
    """How every network of this set trains."""
    ds, device, steps = setup.ds, setup.device, plan(setup, options).steps
    return ReferenceTraining(
        num_classes=ds.num_classes,
        steps=steps,
        ops=reference_ops(ds.mirror_invariant),
        device=device,
        arch=setup.arch,
        width=setup.width,
        depth=setup.depth,
        compile=options.compiles(setup.images, steps, device),
        progress=setup.progress,
    )


def train_and_test(setup: EvalSetup, options: FrepoOptions, stream: str) -> float:
    training = reference_training(setup, options)
    model = train_reference_model(setup.images, setup.targets(), training, generator(setup.seed, stream))
    return accuracy(model, setup.test_x, setup.test_y, setup.device)


def train_and_test_many(setup: EvalSetup, options: FrepoOptions, streams: list[str], how: str) -> list[float] | None:
    """`train_and_test` for every stream at once, `how` = stacked (`frepo.eval.together`; None when the
    architecture cannot be stacked, batch-norm buffers, so the caller trains the networks one after the
    other) or streams (`train_reference_models_on_streams`)."""
    ds, device = setup.ds, setup.device
    training = reference_training(setup, options)
    gens = [generator(setup.seed, s) for s in streams]
    if how == "streams":
        models = train_reference_models_on_streams(setup.images, setup.targets(), training, gens)
        return [accuracy(model, setup.test_x, setup.test_y, device) for model in models]
    shape = tuple(ds.images.shape[1:])
    probe = torch.Generator().manual_seed(0)  # a throwaway network, asked whether it stacks
    probed = build_model(setup.arch, shape, ds.num_classes, generator=probe, width=setup.width, depth=setup.depth)
    if not stackable(probed):
        return None
    stacked = train_reference_models(setup.images, setup.targets(), replace(training, compile=False), gens)
    return stacked.accuracies(setup.test_x, setup.test_y, device)


PROTOCOL = Protocol(
    name="frepo",
    summary="the reference (Conv without norm, Adam, MSE on the learned labels, the reference augmentation)",
    options=FrepoOptions,
    default_arch="conv",
    stream="eval",
    plan=plan,
    train_and_test=train_and_test,
    train_and_test_many=train_and_test_many,
)
