"""Presets and the budget-aware learning rate: a run that names no --lr gets one fit for its --steps."""

from __future__ import annotations

import math

import pytest

from frepo import presets
from frepo.base.errors import FrepoError
from frepo.cli.commands import build_parser, distill_config


def test_budget_lr_is_the_paper_lr_at_the_budget_and_the_short_lr_below_1000_steps():
    assert presets.budget_lr(500_000) == presets.PAPER_LR == 3e-4
    assert presets.budget_lr(2_000_000) == 3e-4
    assert presets.budget_lr(1) == presets.budget_lr(1000) == presets.SHORT_BUDGET_LR == 1e-2
    # In between: log lr linear in log steps, falling monotonically.
    mid = math.sqrt(1000 * 500_000)
    assert presets.budget_lr(round(mid)) == pytest.approx(math.sqrt(1e-2 * 3e-4), rel=1e-3)
    values = [presets.budget_lr(s) for s in (1000, 3000, 10_000, 100_000, 499_999)]
    assert values == sorted(values, reverse=True)
    # ImageNet's budget is 2M steps: 500k steps there is still short of it.
    assert presets.budget_lr(500_000, paper_steps=2_000_000) > 3e-4


@pytest.mark.parametrize(
    "flags, lr",
    [
        (["--dataset", "mnist", "--ipc", "1", "--steps", "300"], 1e-2),  # the natural command
        (["--dataset", "mnist", "--ipc", "1"], 3e-4),  # the paper budget
        (["--dataset", "mnist", "--ipc", "1", "--steps", "300", "--lr", "3e-4"], 3e-4),  # named: kept
        (["--preset", "cifar10-ipc10", "--dataset", "cifar10", "--steps", "1000"], 1e-2),
        (["--preset", "mnist-ipc1-cpu", "--dataset", "mnist", "--ipc", "1", "--steps", "50000"], 1e-2),  # preset's
        (["--dataset", "imagenet64", "--ipc", "1", "--steps", "500000"], presets.budget_lr(500_000, 2_000_000)),
    ],
)
def test_the_command_line_gets_the_budget_lr_unless_an_lr_is_named(flags, lr):
    config = distill_config(build_parser().parse_args(["distill", *flags]))
    assert config.lr == pytest.approx(lr)


def test_a_preset_brings_its_dataset_and_ipc_and_refuses_others():
    """`--preset cifar10-ipc1-cpu` alone is CIFAR-10 at IPC 1 (it once ran IPC 10, the --ipc default, with
    IPC 1's budget); a --dataset or --ipc that contradicts the preset is an error, not another run."""

    def config(*flags):
        return distill_config(build_parser().parse_args(["distill", *flags]))

    named = config("--preset", "cifar10-ipc1-cpu")
    assert (named.data.dataset, named.ipc, named.steps) == ("cifar10", 1, 300)
    assert config("--preset", "cifar10-ipc1-cpu", "--dataset", "cifar10", "--ipc", "1") == named
    plain = config()
    assert (plain.data.dataset, plain.ipc) == ("digits", 10)
    with pytest.raises(FrepoError, match="'cifar10-ipc1-cpu' is for IPC 1, not 10"):
        config("--preset", "cifar10-ipc1-cpu", "--ipc", "10")
    with pytest.raises(FrepoError, match="is for dataset 'cifar10', not 'mnist'"):
        config("--preset", "cifar10-ipc1-cpu", "--dataset", "mnist")
    with pytest.raises(FrepoError, match="unknown preset"):
        config("--preset", "cifar10-ipc3")
