"""The model pool: models trained online on the synthetic set and re-initialised on a schedule.

Reference schedule (num_models=10, max_online_updates=100): model i starts with step counter
(100 // 10)·i. After every meta-step the current model is re-initialised if its counter exceeds
100 (counter back to 0, fresh Adam state), otherwise it takes one online Adam step on at most
1000 synthetic images (MSE against the current learned labels, batch norm in train mode). Then the
next model is drawn uniformly. All draws come from the pool's own generator; model initialisations
(at the start and at every reset) come from `init_generator`, the same generator unless a rank of a
per-rank pool initialises its own models (the official multi-device code: each device's model of a
slot has its own initialisation, while the slot drawn, the counters and the online subsample are shared).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..base.device import host_to_device
from ..base.rng import randint
from ..config import PoolConfig
from ..models import init_flax_defaults_
from .krr import mse_loss
from .optim import optax_adam


class ModelPool:
    def __init__(
        self,
        make_model: Callable[[torch.Generator], nn.Module],
        cfg: PoolConfig,
        generator: torch.Generator,
        device: torch.device,
        init_generator: torch.Generator | None = None,
        forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        capturable: bool = False,
    ):
        self.cfg = cfg
        self.capturable = capturable  # the Adams run inside CUDA graphs (frepo.method.graphs)
        self.forward = forward or (lambda model, x: model(x))  # the trainer's (maybe compiled) logits pass
        self.generator = generator
        self.init_generator = init_generator if init_generator is not None else generator
        self.models = [make_model(self.init_generator).to(device) for _ in range(cfg.num_models)]
        self.optimizers = [self._adam(m) for m in self.models]
        stagger = cfg.max_online_updates // cfg.num_models
        self.steps = [stagger * i for i in range(cfg.num_models)]
        self.current = randint(generator, cfg.num_models)
        self.resets = 0

    def _adam(self, model: nn.Module) -> torch.optim.Adam:
        return optax_adam(model.parameters(), lr=self.cfg.online_lr, capturable=self.capturable)  # constant lr

    @property
    def model(self) -> nn.Module:
        return self.models[self.current]

    def advance(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Reset or train the current model once on (images, labels), then draw the next model.

        images N×C×H×W and labels N×K are the synthetic set after the meta-update (detached).
        Returns the online loss, or None when the model was reset.
        """
        if self.reset_due():
            self.reset_current()
            loss = None
        else:
            loss = self.online_step(self.current, images, labels, self.online_subsample(len(images), images.device))
        self.finish(online=loss is not None)
        return loss

    def reset_due(self) -> bool:
        """Whether the current model is re-initialised this step instead of taking its online step."""
        return self.steps[self.current] > self.cfg.max_online_updates

    def reset_current(self) -> None:
        """Re-initialise the current model and restart its Adam, both in place (a CUDA graph holds their
        addresses): zeroed moments and step count are what a fresh Adam starts from."""
        i = self.current
        init_flax_defaults_(self.models[i], generator=self.init_generator)
        for state in self.optimizers[i].state.values():
            for value in state.values():
                value.zero_()
        self.steps[i] = 0
        self.resets += 1

    def online_subsample(self, n: int, device: torch.device) -> torch.Tensor | None:
        """The online step's images out of n (drawn on the host, from the pool's generator), or None when
        n fits one online batch. Sent without making the host wait for the GPU (`host_to_device`)."""
        if n <= self.cfg.online_batch_size:
            return None
        idx = torch.randperm(n, generator=self.generator)[: self.cfg.online_batch_size]
        return host_to_device(idx, device)

    def online_step(
        self, i: int, images: torch.Tensor, labels: torch.Tensor, subsample: torch.Tensor | None
    ) -> torch.Tensor:
        """One Adam step of model i on (images, labels)[subsample]: device work only, no draws."""
        if subsample is not None:
            images, labels = images[subsample], labels[subsample]
        model, opt = self.models[i], self.optimizers[i]
        model.train()
        loss = mse_loss(self.forward(model, images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    def finish(self, online: bool) -> None:
        """Count the current model's online step (if it took one) and draw the next model."""
        if online:
            self.steps[self.current] += 1
        self.current = randint(self.generator, self.cfg.num_models)

    def state_dict(self) -> dict:
        state = {
            "models": [m.state_dict() for m in self.models],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "steps": list(self.steps),
            "current": self.current,
            "resets": self.resets,
            "generator": self.generator.get_state(),
        }
        if self.init_generator is not self.generator:
            state["init_generator"] = self.init_generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        for model, opt, m_state, o_state in zip(self.models, self.optimizers, state["models"], state["optimizers"]):
            model.load_state_dict(m_state)
            opt.load_state_dict(with_kernel_choice(o_state, opt))
        self.steps = list(state["steps"])
        self.current = int(state["current"])
        self.resets = int(state["resets"])
        self.generator.set_state(state["generator"])
        if self.init_generator is not self.generator:
            self.init_generator.set_state(state["init_generator"])


# The settings of an Adam that choose its kernel, not its maths: they follow the device and --compile.
KERNEL_CHOICE = ("fused", "capturable", "foreach")


def with_kernel_choice(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A saved Adam state with `optimizer`'s kernel choice (this run's device and --compile) in place of the
    saved run's, which a resume may change (`device` and `compile` are resumable). torch's load_state_dict keeps
    the saved groups' settings and places each step count by them: a CPU run's checkpoint resumed on a GPU under
    CUDA graphs would keep its host step counts with capturable=True, which the first Adam step refuses; a GPU
    run's resumed on a CPU would run the fused CPU kernel, not the one a fresh CPU run uses."""
    groups = [
        {**group, **{k: current[k] for k in KERNEL_CHOICE if k in current}}
        for group, current in zip(saved["param_groups"], optimizer.param_groups, strict=True)
    ]
    return {**saved, "param_groups": groups}
