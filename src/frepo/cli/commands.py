"""The subcommands: each builds its settings from the flags, calls one library function and prints what
it made. Flags of `distill` and `evaluate` are generated from their settings (`frepo.cli.flags`); only
flags given on the command line override a preset, so presets and flags compose."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..base.atomic import check_output_file
from ..base.errors import FrepoError
from ..config import PREPROCESS_KINDS, DistillConfig
from .flags import Parser, add_settings_flags, choice, explicit

# distill: fields that get dedicated flags instead of generated ones.
_DISTILL_SPECIAL = frozenset({"dataset", "ipc"})


def _default_out(dataset: str, ipc: int) -> Path:
    return Path("runs") / f"{Path(dataset).stem if ('/' in dataset or dataset.endswith('.npz')) else dataset}-ipc{ipc}"


def distill_config(args: argparse.Namespace) -> DistillConfig:
    """The run's settings: the preset (or dataset table) under the flags given on the command line."""
    from ..config import presets

    overrides = explicit(args, DistillConfig(), skip=_DISTILL_SPECIAL)
    return presets.resolve(args.dataset, args.ipc, args.preset, overrides)


def cmd_distill(args: argparse.Namespace) -> int:
    from ..jobs.distill import distill

    config = distill_config(args)
    if args.out is not None and not args.out.strip():
        raise FrepoError("--out must name a run directory (leave it out for runs/<dataset>-ipc<N>)")
    out = Path(args.out) if args.out is not None else _default_out(args.dataset, args.ipc)
    result = distill(config, out, progress=True, resume_with_changes=args.resume_with_changes)
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
    from ..eval import EvalConfig
    from ..eval.results import results_table, write_csv, write_json
    from ..jobs.evaluate import SourceConfig, configure, run

    # Built and validated once, and the output paths checked, before any data is loaded.
    config, source = configure(**explicit(args, EvalConfig(), SourceConfig()))
    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path is not None:
            check_output_file(path, flag)
    results = run(args.file, config, source, progress=True)
    first = results[0].extra
    described = f" ({first['source']})" if first.get("source") else ""
    print(f"{args.file}: {first['num_images']} images of {first['dataset']}{described}; {config.split} split")
    print(results_table(results))
    if args.json:
        write_json(results, args.json)
    if args.csv:
        write_csv(results, args.csv)
    return 0


def cmd_subset(args: argparse.Namespace) -> int:
    from ..config import DataConfig
    from ..io.artifact import save_distilled
    from ..jobs.subset import make_subset

    check_output_file(args.out, "--out")
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
    from ..jobs.report import write_report

    path = write_report(args.run_dir, Path(args.run_dir) / args.out if args.out else None)
    print(f"report -> {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..jobs.reproduce import reproduce

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
        progress=True,
    )
    print(text, end="")
    if not args.dry_run:
        print(f"table -> {args.out}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..io.artifact import load_distilled
    from ..jobs.runs import RunDir
    from ..jobs.visualize import animate, save_grid

    if args.per_class < 1:
        raise FrepoError(f"--per-class must be >= 1, got {args.per_class}")
    if args.out is not None:
        check_output_file(args.out, "--out")
    path = Path(args.path)
    run = RunDir(path) if path.is_dir() else None
    if args.animate:
        if run is None:
            raise FrepoError("--animate makes a film of a run's snapshots: pass a run directory, not a file")
        out = animate(run.images_dir, args.out or run.path / "distilled.gif", fps=args.fps)
        print(f"animation -> {out}")
        return 0
    file = run.distilled_path if run is not None else path
    ds = load_distilled(file)
    title = (
        f"{Path(ds.dataset).name}: {ds.meta.get('kind', 'set')}, {len(ds.images)} images, step {ds.meta.get('step')}"
    )
    out = Path(args.out) if args.out else file.with_suffix(".png")
    save_grid(ds, out, per_class=args.per_class, title=title)
    print(f"image grid -> {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..io.export import export

    manifest = export(args.file, args.to, args.format)
    print(f"{args.format} export of {args.file} -> {manifest.parent} (manifest: {manifest.name})")
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    from ..apps.continual import ContinualConfig, continual

    out = _experiment_out(args.out)
    continual(preset=args.preset, out=out, progress=True, **explicit(args, ContinualConfig()))
    print((out / "continual.md").read_text(), end="")
    print(f"results -> {out / 'continual.json'}, {out / 'continual.csv'}, {out / 'continual.png'}")
    return 0


def cmd_privacy(args: argparse.Namespace) -> int:
    from ..apps.privacy import PrivacyConfig, privacy

    out = _experiment_out(args.out)
    privacy(preset=args.preset, out=out, progress=True, **explicit(args, PrivacyConfig()))
    print((out / "privacy.md").read_text(), end="")
    print(f"results -> {out / 'privacy.json'}, {out / 'privacy.csv'}, {out / 'privacy.png'}")
    return 0


def _experiment_out(out: str) -> Path:
    if not out.strip():
        raise FrepoError("--out must name an experiment folder")
    return Path(out)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..apps.continual import PRESETS as CONTINUAL_PRESETS
    from ..apps.privacy import PRESETS as PRIVACY_PRESETS
    from ..config import presets

    for name in presets.names():
        values = ", ".join(f"{k}={v}" for k, v in presets.PRESETS[name].items() if k not in ("dataset", "ipc"))
        print(f"{name:28s} {values}")
    for table, command in ((CONTINUAL_PRESETS, "continual"), (PRIVACY_PRESETS, "privacy")):
        for name, values in sorted(table.items()):
            print(f"{name:28s} (frepo {command}) " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0


def _add_data_access(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="dataset download/cache folder (default: ~/.cache/frepo)")
    p.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let torchvision download a missing dataset (default: on)",
    )


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    from ..base.version import __version__
    from ..eval import EvalConfig
    from ..io.export import LAYOUTS
    from ..jobs.evaluate import SourceConfig
    from ..jobs.reproduce import BUDGETS
    from ..jobs.runs import CONTINUABLE
    from ..jobs.subset import METHODS

    parser = Parser(
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
    p.add_argument(
        "--resume-with-changes",
        action="store_true",
        help="let a resumed run continue with changed settings that are safe to continue with: "
        + ", ".join(sorted(CONTINUABLE))
        + " (e.g. a lower --lr after a NaN stop)",
    )
    add_settings_flags(p, DistillConfig(), skip=_DISTILL_SPECIAL)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "evaluate",
        help="train fresh networks on a distilled set and report test accuracy",
        description="Train fresh networks on a distilled set (frepo's, or another tool's with --dataset) and "
        "report their accuracy, one row per architecture.",
    )
    p.add_argument(
        "file",
        help="a distilled set: frepo .safetensors, a `frepo export` folder, official FRePo np/stepNNNNNN.npz, "
        "MTT images_*.pt or DD-Ranking images.pt (labels beside it), DC/DSA res_*.pt, or a folder of class "
        "folders of images",
    )
    add_settings_flags(p, EvalConfig())
    add_settings_flags(p, SourceConfig())
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.add_argument("--csv", help="also write the results as CSV to this path")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("subset", help="write a same-format file of real images (a baseline)")
    p.add_argument("--dataset", required=True, help="dataset name, .npz file or ImageFolder directory")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument(
        "--method",
        default="random",
        type=choice("subset method", METHODS),
        choices=METHODS,
        help="random (default), herding or kcenter (herding and k-center greedy per class on network features)",
    )
    p.add_argument("--seed", type=int, default=0, help="selection seed (default: 0, as distill's init)")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument(
        "--preprocess",
        default="auto",
        type=choice("preprocess", PREPROCESS_KINDS),
        choices=PREPROCESS_KINDS,
        help="auto (standardise, plus ZCA for colour images), standard, zca or none (default: auto)",
    )
    p.add_argument("--val-size", type=int, default=None, help="validation hold-out (default: as distill)")
    p.add_argument(
        "--feature-steps",
        type=int,
        default=300,
        help="herding/kcenter: Adam steps (batch 256) training the feature network (default: 300; 0 = random init)",
    )
    p.add_argument("--feature-width", type=int, default=128, help="herding/kcenter: feature Conv width (default: 128)")
    _add_data_access(p)
    _add_device(p)
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
        type=choice("budget", tuple(BUDGETS)),
        choices=tuple(BUDGETS),
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
    _add_device(p)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "show",
        help="save an image grid of a distilled set as PNG, or a run's snapshots as an animated GIF",
    )
    p.add_argument("path", help="a distilled-set file, or a run directory (its distilled.safetensors)")
    p.add_argument("--out", help="output path (default: the file with .png, or RUN/distilled.gif with --animate)")
    p.add_argument("--per-class", type=int, default=10, help="images per class row (default: 10)")
    p.add_argument(
        "--animate",
        action="store_true",
        help="an animated GIF of the run's snapshots (RUN/images): the synthetic set over training",
    )
    p.add_argument("--fps", type=float, default=8.0, help="--animate: frames per second (default: 8)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "export",
        help="write a distilled set in a layout other tools read (PNG folders, .pt for DD-Ranking/MTT, FRePo .npz)",
        description="Write a distilled set into a folder: imagefolder (PNGs per class in pixel space, labels "
        "beside), pt (images.pt, labels.pt, lr.pt as DD-Ranking reads them, and data.safetensors) or npz (the "
        "official FRePo layout). Each export carries its preprocessing and a manifest (export.json), so "
        "`frepo evaluate FOLDER` reads it back.",
    )
    p.add_argument("file", help="a frepo distilled-set file (.safetensors)")
    p.add_argument("--to", required=True, help="output folder (new, or a previous export to overwrite)")
    p.add_argument(
        "--format", required=True, type=choice("format", LAYOUTS), choices=LAYOUTS, help="imagefolder, pt or npz"
    )
    p.set_defaults(func=cmd_export)

    from ..apps.continual import PRESETS as CONTINUAL_PRESETS
    from ..apps.continual import ContinualConfig
    from ..apps.privacy import PRESETS as PRIVACY_PRESETS
    from ..apps.privacy import PrivacyConfig

    for name, settings, presets, default_out, text in (
        (
            "continual",
            ContinualConfig(),
            CONTINUAL_PRESETS,
            "runs/continual",
            "class-incremental learning: distil each task's classes, train fresh networks on the memories so far "
            "(frepo, random and herding exemplars at the same memory, one trainer), test on the classes seen",
        ),
        (
            "privacy",
            PrivacyConfig(),
            PRIVACY_PRESETS,
            "runs/privacy",
            "membership inference: distil a chunk of the training split, train victims on the learned set and on "
            "the real chunk, attack them (AUC and TPR at 1%% and 0.1%% FPR)",
        ),
    ):
        p = sub.add_parser(name, help=text.split(":")[0], description=text + ". Rerun the same command to resume.")
        p.add_argument("--preset", type=choice("preset", tuple(presets)), choices=tuple(presets), help="named settings")
        p.add_argument("--out", default=default_out, help=f"experiment folder (default: {default_out})")
        add_settings_flags(p, settings)
        p.set_defaults(func=cmd_continual if name == "continual" else cmd_privacy)

    p = sub.add_parser("presets", help="list the named settings")
    p.set_defaults(func=cmd_presets)
    return parser
