"""The command line's shape: one small function per subcommand, adding its arguments in the order `--help`
lists them. Nothing here runs a command (`frepo.cli.commands` does, by the name argparse stores in
`args.command`), so the parser can be built and read on its own. Library names needed only for a help text
or a list of choices are imported inside the function that needs them, so importing the CLI stays light."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias

from ..config import DATA_DIR_HELP, PREPROCESS_KINDS, DistillConfig
from .flags import Parser, add_settings_flags, choice

Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"  # add_subparsers makes Parsers too

# distill: fields that get dedicated flags instead of generated ones.
DISTILL_SPECIAL = frozenset({"dataset", "ipc"})


def _add_choice(p: argparse.ArgumentParser, flag: str, name: str, choices: tuple[str, ...], **kwargs: Any) -> None:
    """A flag that takes one of `choices`; a wrong value gets the message the settings' own check gives."""
    p.add_argument(flag, type=choice(name, choices), choices=choices, **kwargs)


def _add_data_and_device(p: argparse.ArgumentParser) -> None:
    """Where the real dataset comes from and where the networks run, for commands that load one."""
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download a missing dataset (torchvision's downloader, or the layout's public archive) (default: on)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def _distill(sub: Subcommands) -> None:
    from ..jobs.runs import CONTINUABLE

    p = sub.add_parser(
        "distill",
        help="distil a dataset into a few synthetic images per class",
        description="Distil a dataset. Settings resolve as: reference defaults -> the preset "
        "named <dataset>-ipc<N> (or --preset) -> the flags you give. The defaults below are the "
        "reference's (the paper's 500 000-step GPU setting): a preset replaces some of them (`frepo presets`), "
        "and a run that names no --lr, neither in a flag nor in its preset, gets the learning rate of its "
        "budget (1e-2 up to 1000 steps, 3e-4 at the paper's). Rerun the same command to resume an "
        "interrupted run.",
    )
    p.add_argument(
        "--dataset",
        help="dataset name, .npz file or ImageFolder directory (default: the preset's, else digits, offline)",
    )
    p.add_argument("--ipc", type=int, help="synthetic images per class (default: the preset's, else 10)")
    p.add_argument("--preset", help="named settings, with their dataset and IPC; see `frepo presets`")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-ipc<N>)")
    p.add_argument(
        "--resume-with-changes",
        action="store_true",
        help="let a resumed run continue with changed settings that are safe to continue with: "
        + ", ".join(sorted(CONTINUABLE))
        + " (e.g. a lower --lr after a NaN stop)",
    )
    add_settings_flags(p, DistillConfig(), skip=DISTILL_SPECIAL)


def _evaluate(sub: Subcommands) -> None:
    from ..eval import EvalConfig
    from ..jobs.evaluate import SourceConfig

    p = sub.add_parser(
        "evaluate",
        help="train fresh networks on a distilled set and report test accuracy",
        description="Train fresh networks on a distilled set (frepo's, or another tool's with --dataset) and "
        "report their accuracy, one row per architecture.",
    )
    p.add_argument(
        "file",
        help="a distilled set: frepo .safetensors, a run directory (its distilled.safetensors), a `frepo export` "
        "folder, official FRePo np/stepNNNNNN.npz, MTT images_*.pt or DD-Ranking images.pt (labels beside it), "
        "DC/DSA res_*.pt, or a folder of class folders of images",
    )
    add_settings_flags(p, EvalConfig())
    add_settings_flags(p, SourceConfig())
    p.add_argument(
        "--field-metrics",
        action="store_true",
        help="also report DD-Ranking's IOR, HLR and LRS under the same recipe: the set on its class ids against "
        "a random subset of as many images per class and against the full training split (both cached once per "
        "dataset, preprocessing, recipe and machine)",
    )
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.add_argument("--csv", help="also write the results as CSV to this path")


def _subset(sub: Subcommands) -> None:
    from ..jobs.subset import METHODS

    p = sub.add_parser("subset", help="write a same-format file of real images (a baseline)")
    p.add_argument("--dataset", required=True, help="dataset name, .npz file or ImageFolder directory")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    _add_choice(
        p,
        "--method",
        "subset method",
        METHODS,
        default="random",
        help="random (default), herding or kcenter (herding and k-center greedy per class on network features)",
    )
    p.add_argument("--seed", type=int, default=0, help="selection seed (default: 0, as distill's init)")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    _add_choice(
        p,
        "--preprocess",
        "preprocess",
        PREPROCESS_KINDS,
        default="auto",
        help="auto (standardise, plus ZCA for colour images), standard, zca, zca_block (ZCA per block of pixels) or "
        "none (default: auto)",
    )
    p.add_argument("--val-size", type=int, default=None, help="validation hold-out (default: as distill)")
    p.add_argument(
        "--mirror-invariant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="whether a horizontal flip keeps an image's class, recorded in the set for its evaluations "
        "(default: as distill: the dataset's)",
    )
    p.add_argument(
        "--feature-steps",
        type=int,
        default=None,  # 300; None tells an explicit flag (refused with --method random) from the default
        help="herding/kcenter: Adam steps (batch 256) training the feature network (default: 300; 0 = random init)",
    )
    p.add_argument("--feature-width", type=int, help="herding/kcenter: feature Conv width (default: 128)")
    _add_data_and_device(p)


def _report(sub: Subcommands) -> None:
    p = sub.add_parser(
        "report",
        help="write a Markdown report of a run (curves, images, evaluations) into its directory",
    )
    p.add_argument("run_dir", help="a run directory of frepo distill")
    p.add_argument("--out", help="report file name inside the run directory (default: report.md)")


def _reproduce(sub: Subcommands) -> None:
    from ..jobs.reproduce import BUDGETS

    p = sub.add_parser(
        "reproduce",
        help="run the paper's table through its presets and write measured vs published numbers",
    )
    p.add_argument("--table", type=int, default=1, help="the paper's table (default: 1)")
    _add_choice(
        p,
        "--budget",
        "budget",
        tuple(BUDGETS),
        default="paper",
        help="paper (the paper's settings; needs a GPU), cpu-small (the *-cpu presets) or gpu-small (the *-gpu "
        "presets: MNIST and Fashion-MNIST in minutes on one GPU) (default: paper)",
    )
    p.add_argument("--datasets", help="comma-separated datasets of the table (default: all)")
    p.add_argument("--out", default="docs/reproduction.md", help="Markdown output (default: docs/reproduction.md)")
    p.add_argument("--runs-dir", default="runs/reproduce", help="run directories (default: runs/reproduce)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="run nothing; write the table from the runs already distilled and evaluated in --runs-dir",
    )
    _add_data_and_device(p)


def _show(sub: Subcommands) -> None:
    from ..jobs.evaluate import SourceConfig

    p = sub.add_parser(
        "show",
        help="save an image grid of a distilled set (PNG, or the format --out's suffix names), or a run's "
        "snapshots as an animated GIF",
    )
    p.add_argument(
        "path",
        help="a distilled set (frepo's, a `frepo export` folder, or another tool's file with --dataset, as "
        "frepo evaluate reads them), or a run directory (its distilled.safetensors)",
    )
    p.add_argument(
        "--out",
        help="output path; its suffix picks the grid's format: .png, .jpg, .pdf, .svg... (a name without one gets "
        ".png, or .gif with --animate; default: the file with .png, or RUN/distilled.gif with --animate)",
    )
    p.add_argument("--per-class", type=int, default=10, help="images per class row (default: 10)")
    p.add_argument(
        "--animate",
        action="store_true",
        help="an animated GIF of the run's snapshots (RUN/images): the synthetic set over training",
    )
    p.add_argument("--fps", type=float, help="--animate: frames per second (default: 8)")
    add_settings_flags(p, SourceConfig())


def _export(sub: Subcommands) -> None:
    from ..io.export import LAYOUTS, SPACES
    from ..jobs.evaluate import SourceConfig

    p = sub.add_parser(
        "export",
        help="write a distilled set in a layout other tools read (PNG folders, .pt for DD-Ranking/MTT, FRePo .npz)",
        description="Write a distilled set into a folder: imagefolder (PNGs per class in pixel space, labels "
        "beside), pt (images.pt, labels.pt, hard_labels.pt, lr.pt as DD-Ranking's metrics take them, and "
        "data.safetensors) or npz (the official FRePo layout). Each export carries its preprocessing and a "
        "manifest (export.json), so `frepo evaluate FOLDER` reads it back.",
    )
    p.add_argument(
        "file",
        help="a distilled set: frepo's file, a run directory, an export, or another tool's file with --dataset "
        "(as frepo evaluate reads them)",
    )
    p.add_argument("--to", required=True, help="output folder (new, or a previous export to overwrite)")
    _add_choice(p, "--format", "format", LAYOUTS, required=True, help="imagefolder, pt or npz")
    _add_choice(
        p,
        "--space",
        "space",
        SPACES,
        help="pt: the space of images.pt. ddranking: DD-Ranking's normalisation (its use_zca: false; the default for "
        "CIFAR-10/100, Tiny ImageNet, ImageNette/Woof); ddranking-zca: its ZCA (use_zca: true; fitted on the full "
        "training split); frepo: the set's own space (the default for other datasets)",
    )
    add_settings_flags(p, SourceConfig())


def _add_experiment(sub: Subcommands, name: str, settings: Any, presets: dict[str, Any], text: str) -> None:
    """A downstream experiment: its named presets, its folder, and a flag for each of its settings.
    `text` is "<help>: <what it does>"; the part before the colon is the one-line help."""
    default_out = f"runs/{name}"
    # help is %-formatted by argparse, a description is not: `text` says "%" once.
    p = sub.add_parser(
        name, help=text.split(":")[0].replace("%", "%%"), description=text + ". Rerun the same command to resume."
    )
    _add_choice(p, "--preset", "preset", tuple(presets), help="named settings")
    p.add_argument("--out", default=default_out, help=f"experiment folder (default: {default_out})")
    add_settings_flags(p, settings)


def _continual(sub: Subcommands) -> None:
    from ..apps.continual import PRESETS, ContinualConfig

    _add_experiment(
        sub,
        "continual",
        ContinualConfig(),
        PRESETS,
        "class-incremental learning: distil each task's classes, train fresh networks on the memories so far "
        "(frepo, random and herding exemplars at the same memory, one trainer), test on the classes seen",
    )


def _privacy(sub: Subcommands) -> None:
    from ..apps.privacy import PRESETS, PrivacyConfig

    _add_experiment(
        sub,
        "privacy",
        PrivacyConfig(),
        PRESETS,
        "membership inference: distil a chunk of the training split, train victims on the learned set and on "
        "the real chunk, attack them (AUC and TPR at 1% and 0.1% FPR)",
    )


def _presets(sub: Subcommands) -> None:
    sub.add_parser("presets", help="list the named settings")


# In the order `frepo --help` lists them.
SUBCOMMANDS: tuple[Callable[[Subcommands], None], ...] = (
    _distill,
    _evaluate,
    _subset,
    _report,
    _reproduce,
    _show,
    _export,
    _continual,
    _privacy,
    _presets,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: `args.command` names the subcommand given, `frepo.cli.commands.HANDLERS` runs it."""
    from ..base.version import __version__

    parser = Parser(
        prog="frepo",
        description="Dataset distillation by neural feature regression with a model pool (FRePo, NeurIPS 2022).",
    )
    parser.add_argument("--version", action="version", version=f"frepo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser
