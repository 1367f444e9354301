"""The `frepo` command: thin subcommands over the library.

Flags of `distill` come from the config dataclasses (one definition of names, types, defaults and
help). Only flags given on the command line override the preset, so presets and flags compose.
A user mistake prints one line on stderr and exits 2; Ctrl-C during a run exits 130 after a checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
import warnings
from pathlib import Path

from .config import DataConfig, DistillConfig, leaf_fields
from .errors import FrepoError, Interrupted

# Fields that get dedicated flags (or none) instead of the generated ones.
_SPECIAL = {"dataset", "ipc"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(owner, f: dataclasses.Field):
    hint = typing.get_type_hints(type(owner))[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _add_config_flags(parser: argparse.ArgumentParser, config, skip=frozenset()) -> None:
    for name, (owner, f) in leaf_fields(config).items():
        if name in skip:
            continue
        kind = _field_type(owner, f)
        default = getattr(owner, f.name)
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if kind is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                type=kind,
                default=argparse.SUPPRESS,
                help=help_text,
                metavar=kind.__name__.upper(),
            )


def _explicit(args: argparse.Namespace, config) -> dict:
    return {k: v for k, v in vars(args).items() if k in leaf_fields(config) and k not in _SPECIAL}


def _default_out(dataset: str, ipc: int) -> Path:
    return Path("runs") / f"{Path(dataset).stem if ('/' in dataset or dataset.endswith('.npz')) else dataset}-ipc{ipc}"


def cmd_distill(args: argparse.Namespace) -> int:
    from . import presets
    from .distill import distill

    config = presets.resolve(args.dataset, args.ipc, args.preset, _explicit(args, DistillConfig()))
    out = Path(args.out) if args.out else _default_out(args.dataset, args.ipc)
    print(
        f"frepo: distilling {config.data.dataset}, {config.ipc} images per class, {config.steps} steps, "
        f"real batch {config.batch_size}, flip {'on' if config.use_flip else 'off'} -> {out}",
        file=sys.stderr,
    )
    result = distill(config, out)
    lines = [f"distilled set: {result.distilled_path} (step {result.step}, {result.seconds:.0f} s of training)"]
    if result.val_accuracy is not None:
        models = f"{config.eval_models} model{'s' if config.eval_models != 1 else ''}"
        lines.append(f"validation accuracy (frepo protocol, {models}): {result.val_accuracy:.2f}%")
    if result.best_path:
        lines.append(f"best on validation: {result.best_path}")
    lines.append(f"image grid: {out / 'distilled.png'}")
    lines.append(f"test accuracy: frepo evaluate {result.distilled_path}")
    print("\n".join(lines))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import check_options, evaluate_archs, parse_archs
    from .results import results_table, write_csv, write_json

    # Option mistakes are reported before any data is loaded.
    check_options(args.protocol, args.models, args.steps, args.epochs, args.soft_labels, args.dsa_strategy)
    parse_archs(args.arch, args.protocol)
    results = evaluate_archs(
        args.file,
        args.arch,
        protocol=args.protocol,
        models=args.models,
        seed=args.seed,
        steps=args.steps,
        epochs=args.epochs,
        soft_labels=args.soft_labels,
        dsa_strategy=args.dsa_strategy,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
        split=args.split,
        dataset=args.dataset,
        preprocess=args.preprocess,
        entry=args.entry,
    )
    first = results[0].extra
    source = f" ({first['source']})" if first.get("source") else ""
    print(f"{args.file}: {first['num_images']} images of {first['dataset']}{source}; {args.split} split")
    print(results_table(results))
    if args.json:
        write_json(results, args.json)
    if args.csv:
        write_csv(results, args.csv)
    return 0


def cmd_subset(args: argparse.Namespace) -> int:
    from .artifact import save_distilled
    from .subset import make_subset

    data = DataConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        preprocess=args.preprocess,
        val_size=args.val_size,
    )
    ds = make_subset(
        data,
        args.ipc,
        args.method,
        args.seed,
        feature_steps=args.feature_steps,
        feature_width=args.feature_width,
        device=args.device,
    )
    save_distilled(ds, args.out)
    print(f"{args.method} subset of {ds.dataset}: {len(ds.images)} images ({args.ipc} per class) -> {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    path = write_report(args.run_dir, Path(args.run_dir) / args.out if args.out else None)
    print(f"report -> {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets else None
    text = reproduce(
        args.table,
        args.budget,
        datasets,
        out=args.out,
        runs_dir=args.runs_dir,
        dry_run=args.dry_run,
        finished_only=args.finished_only,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
    )
    print(text, end="")
    if not args.dry_run:
        print(f"table -> {args.out}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .artifact import load_distilled
    from .visualize import save_grid

    ds = load_distilled(args.file)
    title = (
        f"{Path(ds.dataset).name}: {ds.meta.get('kind', 'set')}, {len(ds.images)} images, step {ds.meta.get('step')}"
    )
    save_grid(ds, args.out, per_class=args.per_class, title=title)
    print(f"image grid -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="frepo",
        description="Dataset distillation by neural feature regression with a model pool (FRePo, NeurIPS 2022).",
    )
    parser.add_argument("--version", action="version", version=f"frepo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "distill",
        help="distil a dataset into a few synthetic images per class",
        description="Distil a dataset. Settings resolve as: reference defaults -> the preset "
        "named <dataset>-ipc<N> (or --preset) -> the flags you give. Rerun the same command to "
        "resume an interrupted run.",
    )
    p.add_argument(
        "--dataset",
        default="digits",
        help="dataset name, .npz file or ImageFolder directory (default: digits, offline)",
    )
    p.add_argument("--ipc", type=int, default=10, help="synthetic images per class (default: 10)")
    p.add_argument("--preset", help="named settings; see `frepo presets`")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-ipc<N>)")
    _add_config_flags(p, DistillConfig(), skip=_SPECIAL)
    p.set_defaults(func=cmd_distill)

    from .evaluate import PROTOCOLS
    from .formats import PREPROCESSING
    from .models import ARCHS

    p = sub.add_parser(
        "evaluate",
        help="train fresh networks on a distilled set and report test accuracy",
        description="Train fresh networks on a distilled set (frepo's, or another tool's with --dataset) and "
        "report their accuracy, one row per architecture.",
    )
    p.add_argument(
        "file",
        help="a distilled set: frepo .safetensors, official FRePo np/stepNNNNNN.npz, MTT images_*.pt "
        "(labels_*.pt beside it), DC/DSA res_*.pt, or a folder of class folders of images",
    )
    p.add_argument(
        "--dataset",
        help="the real dataset a file from another tool belongs to: its test split and preprocessing",
    )
    p.add_argument(
        "--protocol",
        default="frepo",
        help=f"{', '.join(PROTOCOLS)}: frepo = the reference (default), dsa = the DC/DSA/DM/MTT standard "
        "(ConvNet-3 IN, SGD, 1000 epochs, DSA), krr = kernel regression on random-network features",
    )
    p.add_argument(
        "--arch",
        help="comma-separated networks (default: conv for frepo and krr, convnet for dsa): " + ", ".join(ARCHS),
    )
    p.add_argument("--models", type=int, default=5, help="fresh networks per architecture (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (default: 0)")
    p.add_argument("--steps", type=int, help="frepo protocol: training steps (default: the reference step table)")
    p.add_argument("--epochs", type=int, help="dsa protocol: epochs (default: 1000)")
    p.add_argument(
        "--soft-labels",
        action="store_true",
        help="dsa protocol: cross-entropy on the set's learned labels (as class distributions) instead of hard labels",
    )
    p.add_argument(
        "--dsa-strategy",
        help="dsa protocol: augmentation groups joined by '_' as in the DSA code (default: "
        "color_crop_cutout_flip_scale_rotate, as DSA/DM/MTT use for every dataset), or none; e.g. "
        "color_crop_cutout_scale_rotate keeps digits unmirrored",
    )
    p.add_argument("--split", default="test", choices=("test", "val"), help="test (default) or the validation hold-out")
    p.add_argument(
        "--preprocess",
        default="auto",
        help="files from other tools: the preprocessing their images are in (default: auto, the tool's own): "
        + "; ".join(f"{k} = {v}" for k, v in PREPROCESSING.items()),
    )
    p.add_argument("--entry", type=int, help="DC/DSA res_*.pt: which of its distilled sets (default: 0)")
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.add_argument("--csv", help="also write the results as CSV to this path")
    _add_data_access(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("subset", help="write a same-format file of real images (a baseline)")
    p.add_argument("--dataset", required=True, help="dataset name, .npz file or ImageFolder directory")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument(
        "--method",
        default="random",
        help="random (default), herding or kcenter (herding and k-center greedy per class on network features)",
    )
    p.add_argument("--seed", type=int, default=0, help="selection seed (default: 0, as distill's init)")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--preprocess", default="auto", help="auto, standard, zca or none (default: auto)")
    p.add_argument("--val-size", type=int, default=None, help="validation hold-out (default: as distill)")
    p.add_argument(
        "--feature-steps",
        type=int,
        default=300,
        help="herding/kcenter: Adam steps (batch 256) training the feature network (default: 300; 0 = random init)",
    )
    p.add_argument("--feature-width", type=int, default=128, help="herding/kcenter: feature Conv width (default: 128)")
    _add_data_access(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_subset)

    p = sub.add_parser(
        "report",
        help="write a Markdown report of a run (curves, images, evaluations) into its directory",
    )
    p.add_argument("run_dir", help="a run directory of frepo distill")
    p.add_argument("--out", help="report file name inside the run directory (default: report.md)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "reproduce",
        help="run the paper's table through its presets and write measured vs published numbers",
    )
    p.add_argument("--table", type=int, default=1, help="the paper's table (default: 1)")
    p.add_argument(
        "--budget",
        default="paper",
        help="paper (the paper's settings; needs a GPU) or cpu-small (the *-cpu presets) (default: paper)",
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
    _add_data_access(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("show", help="save an image grid of a distilled set as PNG")
    p.add_argument("file", help="a distilled-set file")
    p.add_argument("--out", required=True, help="output PNG path")
    p.add_argument("--per-class", type=int, default=10, help="images per class row (default: 10)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("presets", help="list the named settings")
    p.set_defaults(func=cmd_presets)
    return parser


def cmd_presets(args: argparse.Namespace) -> int:
    from . import presets

    for name in presets.names():
        values = ", ".join(f"{k}={v}" for k, v in presets.PRESETS[name].items() if k not in ("dataset", "ipc"))
        print(f"{name:22s} {values}")
    return 0


def _add_data_access(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset download/cache folder (default: ~/.cache/frepo)")
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let torchvision download a missing dataset (default: on)",
    )


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"frepo: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    from .perf import tune_cpu_allocator

    tune_cpu_allocator()  # speed only: freed memory stays in the heap (see perf.py)
    try:
        return args.func(args)
    except Interrupted as exc:
        print(f"frepo: {exc}", file=sys.stderr)
        return 130
    except FrepoError as exc:
        print(f"frepo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frepo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
