"""Presets and the budget-aware learning rate: a run that names no --lr gets one fit for its --steps."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"use_flip": "False"}, "use_flip must be True or False or None, got 'False'"),  # read as true: flip on
        ({"steps": "5"}, "steps must be an integer, got '5'"),
        ({"steps": 2.5}, "steps must be an integer, got 2.5"),  # ran 3 steps
        ({"seed": 1.0}, "seed must be an integer, got 1.0"),  # other networks than seed 1
        ({"val_size": 0.1}, "val_size must be an integer or None, got 0.1"),  # validation silently off
        ({"num_models": 2.5}, "num_models must be an integer"),
        ({"lr": "1e-3"}, "lr must be a number"),
        ({"ipc": 5}, "overrides name ipc 5, resolve's argument 1"),  # ignored: the run had IPC 1
        ({"dataset": "mnist"}, "overrides name dataset 'mnist'"),
        ({"classes": "bird,cat"}, "class ids, got 'bird,cat': numbers 0..C-1, a class's place .* not names"),
    ],
)
def test_a_setting_of_the_wrong_type_is_named(overrides, message):
    """Python callers pass what the command line's parser would have refused: each is one FrepoError naming
    the setting, where it passed silently or failed deep inside a run."""
    with pytest.raises(FrepoError, match=message.replace("(", r"\(")):
        presets.resolve("digits", 1, overrides=overrides)


def test_an_argument_of_the_wrong_kind_is_named(tmp_path):
    """The entry points' arguments, passed the wrong way round or as a dict, were AttributeErrors from deep
    inside ('dict' object has no attribute 'validate'): each is one FrepoError saying what it takes."""
    import frepo
    from frepo.config import DataConfig

    ds = frepo.make_subset(DataConfig(dataset="digits"), 1)
    cases = [
        (lambda: frepo.evaluate(42), "file must be a DistilledSet or the path of a set, got int 42"),
        (lambda: frepo.evaluate(ds, {"models": 1}), "config must be an EvalConfig .*options go as keywords"),
        (lambda: frepo.evaluate_archs(ds, None, "digits"), "source must be a SourceConfig or None"),
        (lambda: frepo.distill("digits-ipc10", tmp_path / "r"), "config must be a DistillConfig.*preset='digits-ipc1"),
        (lambda: frepo.make_subset(5, 2), "data must be a dataset or a DataConfig: make_subset"),
        (
            lambda: frepo.save_distilled(tmp_path / "x.safetensors", ds),
            "ds must be a DistilledSet: save_distilled\\(ds, path\\), got PosixPath",
        ),
        # Paths that are none, and make_subset's numbers and names: os.fspath's TypeError, or taken silently.
        (lambda: frepo.save_distilled(ds, 5), "path must be a path \\(a str or a pathlib.Path\\), got int 5"),
        (lambda: frepo.load_distilled(5), "path must be a path"),
        (lambda: frepo.export(ds, 5, "npz"), "out must be a path"),
        (lambda: frepo.export(5, tmp_path / "e", "npz"), "ds must be a DistilledSet or the path of a set"),
        (lambda: frepo.distill(presets.get("digits-ipc1"), 5), "out must be a path"),
        (lambda: frepo.make_subset(DataConfig(dataset="digits"), 1, seed=None), "seed must be an integer, got None"),
        (lambda: frepo.make_subset(DataConfig(dataset="digits"), True), "ipc must be an integer, got True"),
        (lambda: frepo.make_subset(DataConfig(dataset="digits"), 1, device=5), "device must be a string, got 5"),
        (lambda: frepo.DistillConfig(data="digits").validate(), "data must be a DataConfig, got 'digits'"),
        # Each of these was a TypeError, AttributeError or RuntimeError from inside, or taken ("no" is true).
        (lambda: frepo.export(str(tmp_path / "x.safetensors"), 5, "pt"), "out must be a path"),
        (lambda: dataclasses.replace(ds, labels=ds.labels[:5]), "one label per image; got images \\(10, 1, 8, 8\\)"),
        (lambda: frepo.load_export(5), "path must be a path"),
        (lambda: frepo.data.load_dataset(["mnist"]), "name must be a dataset name or the path"),
        (lambda: frepo.data.load_dataset("digits", data_dir=5), "data_dir must be a path"),
        (lambda: frepo.data.load_dataset("svhn", download="no"), "download must be True or False, got str 'no'"),
        (lambda: frepo.continual({"tasks": 2}), "config must be a ContinualConfig, or none with a preset"),
        (lambda: frepo.privacy(presets.resolve("digits", 1)), "config must be a PrivacyConfig, or none with a"),
        (lambda: frepo.continual(preset=["continual-mnist-cpu"]), "preset must be a string"),
        (lambda: frepo.privacy(preset="privacy-mnist-cpu", out=5), "out must be a path"),
        (lambda: frepo.distill(steps=1, out=tmp_path / "r", resume_with_changes="no"), "resume_with_changes must be"),
        (lambda: frepo.distill(steps=1, out=tmp_path / "r", progress=1), "progress must be True or False"),
        (lambda: frepo.evaluate(ds, arch=5), "arch must be a name, comma-separated names or a list of names, got 5"),
        (lambda: presets.resolve("digits", 1, overrides=[("steps", 5)]), "overrides must be a dict of settings"),
        (lambda: presets.configure("mnist-ipc1-cpu", overrides="steps=5"), "overrides must be a dict of settings"),
        (lambda: presets.resolve("digits", 1, preset=["x"]), "preset must be a string"),
        (lambda: ds.transform(None), "raw_images must be an array of images"),
        (lambda: ds.transform(ds.images.numpy().astype(object)), "an array of Python objects"),
        (lambda: ds.transform(ds.pixels().numpy(), value_range=1), "value_range must be \\(0, 1\\) or \\(0, 255\\)"),
    ]
    for call, message in cases:
        with pytest.raises(FrepoError, match=message):
            call()
    assert not (tmp_path / "r").exists()


def test_numpy_numbers_and_paths_are_taken_as_the_plain_values():
    import numpy as np

    from frepo import EvalConfig

    config = presets.resolve("digits", 1, overrides={"steps": np.int64(7), "init": Path("/x/set.safetensors"), "lr": 1})
    assert type(config.steps) is int and config.init == "/x/set.safetensors" and type(config.lr) is float
    with pytest.raises(FrepoError, match="ipc must be an integer, got '1'"):
        presets.resolve("digits", "1")
    for option in ({"models": "3"}, {"width": 8.0}, {"seed": "1"}, {"soft_labels": 1, "protocol": "dsa"}):
        with pytest.raises(FrepoError, match="must be"):
            EvalConfig.build(**option)
    taken = EvalConfig.build(device=torch.device("cpu"), arch=["conv", "mlp"])  # what a PyTorch user passes
    assert taken.device == "cpu" and taken.archs() == ["conv", "mlp"]


def test_comma_separated_settings_take_lists_and_numbers():
    """The command line's comma lists (--orders 0,1,2) were "must be a string" in Python for a list or a number."""
    import numpy as np

    from frepo import ContinualConfig, DataConfig, PrivacyConfig

    privacy = PrivacyConfig(victim_steps=300)
    privacy.validate()
    assert privacy.victim_steps == "300"
    privacy = PrivacyConfig(victim_steps=[100, np.int64(250)])
    privacy.validate()
    assert privacy.victim_steps == "100,250"
    continual = ContinualConfig(orders=(0, 1), arms=["frepo", "random"])
    continual.validate()
    assert (continual.orders, continual.arms) == ("0,1", "frepo,random")
    data = DataConfig(classes=[0, 1, 2])
    data.validate()
    assert data.classes == "0,1,2"
    for wrong in (2.5, [1.5], True, [True]):
        with pytest.raises(FrepoError, match="victim_steps must be a comma-separated string or a list of its items"):
            PrivacyConfig(victim_steps=wrong).validate()
    # Read as lists before validation too (str([0, 2]) was parsed as "[0" and " 2]")
    assert DataConfig(classes=[0, 2]).class_ids(10) == [0, 2]
    assert PrivacyConfig(victim_steps=[5, 3]).step_list() == [3, 5]
    assert ContinualConfig(orders=range(2)).order_list() == [0, 1]
    # Annotated so a type checker takes what the settings take (py.typed: mypy refused orders=[0, 1])
    import typing
    from collections.abc import Sequence

    for cls, name in ((PrivacyConfig, "victim_steps"), (ContinualConfig, "orders"), (DataConfig, "classes")):
        kinds = typing.get_args(typing.get_type_hints(cls)[name])
        assert kinds[0] is str and int in kinds and any(typing.get_origin(k) is Sequence for k in kinds), (name, kinds)


def test_a_config_built_by_hand_gets_the_reference_flip(tmp_path):
    """use_flip None is documented as the reference's per-dataset table: a DistillConfig built by hand ran
    CIFAR-10 without the flip trick (only presets.resolve filled it in)."""
    import frepo
    from frepo.config import DataConfig, DistillConfig, ModelConfig, PoolConfig

    config = DistillConfig(
        data=DataConfig(dataset="digits"),
        model=ModelConfig(width=8),
        pool=PoolConfig(num_models=1),
        ipc=1,
        steps=1,
        eval_steps=1,
        batch_size=32,
    )
    assert config.use_flip is None and presets.default_flip("digits", 1) is False
    frepo.distill(config, tmp_path / "digits")
    assert json.loads((tmp_path / "digits" / "config.json").read_text())["use_flip"] is False
    assert frepo.load_distilled(tmp_path / "digits" / "distilled.safetensors").meta["config"]["use_flip"] is False
    # A run of such a config made before this default recorded null (and ran without the flip): it goes on.
    recorded = json.loads((tmp_path / "digits" / "config.json").read_text())
    (tmp_path / "digits" / "config.json").write_text(json.dumps({**recorded, "use_flip": None}))
    assert frepo.distill(dataclasses.replace(config, use_flip=None), tmp_path / "digits").step == 1


def test_distill_takes_a_preset_and_options_as_continual_and_privacy_do(tmp_path, monkeypatch):
    """frepo.distill needed a DistillConfig and a folder where frepo.continual/privacy take preset= and options
    and have a default folder; make_subset needed a DataConfig for a dataset's name."""
    import frepo

    tiny = dict(steps=2, width=8, num_models=1, batch_size=32, eval_every=0, eval_steps=5)
    result = frepo.distill(preset="digits-ipc1", out=tmp_path / "r", **tiny)
    assert result.step == 2 and frepo.load_distilled(result.distilled_path).meta["ipc"] == 1
    monkeypatch.chdir(tmp_path)  # no out: runs/<dataset>-ipc<N>, as `frepo distill` puts it
    result = frepo.distill(dataset="digits", ipc=2, **tiny)
    assert result.distilled_path.resolve() == (tmp_path / "runs" / "digits-ipc2" / "distilled.safetensors").resolve()
    assert len(frepo.make_subset("digits", 2).images) == 20
    for call, message in (
        (lambda: frepo.distill(presets.get("digits-ipc1"), preset="digits-ipc1"), "either a DistillConfig or"),
        (lambda: frepo.distill(presets.get("digits-ipc1"), stepz=3), "not both \\(given with the config: stepz;"),
        (lambda: frepo.distill(preset="digits-ipc1", ipc=2), "preset 'digits-ipc1' is for IPC 1, not 2"),
        (lambda: frepo.distill(stepz=1), "unknown option 'stepz' for DistillConfig"),
        (lambda: frepo.distill(preset=5), "preset must be a string"),
    ):
        with pytest.raises(FrepoError, match=message):
            call()
