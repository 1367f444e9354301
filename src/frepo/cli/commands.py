"""The subcommands: each builds its settings from the flags, calls one library function and prints what
it made. Flags of `distill` and `evaluate` are generated from their settings (`frepo.cli.flags`); only
flags given on the command line override a preset, so presets and flags compose. The flags themselves are
declared in `frepo.cli.parser`; `HANDLERS` at the bottom maps each subcommand's name to its function here.
Library modules are imported inside each command, so `frepo --help` stays fast and a command loads only
what it runs (distillation never loads the readers of other tools' files)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base.atomic import check_output_file
from ..base.errors import FrepoError
from ..config import DistillConfig
from .flags import explicit
from .parser import DISTILL_SPECIAL, build_parser

# build_parser is re-exported: callers that build the parser with the commands (tests/test_presets.py) import it
# from here, as they did before the parser got its own module.
__all__ = ["HANDLERS", "build_parser", "distill_config"]


def distill_config(args: argparse.Namespace) -> DistillConfig:
    """The run's settings: the preset (or dataset table) under the flags given on the command line. A
    preset brings its dataset and IPC (`--preset cifar10-ipc1-cpu` alone is CIFAR-10 at IPC 1); a
    --dataset or --ipc that contradicts it is an error, not a silent other run."""
    from ..config import presets

    overrides = explicit(args, DistillConfig(), skip=DISTILL_SPECIAL)
    given = {k: v for k, v in (("dataset", args.dataset), ("ipc", args.ipc)) if v is not None}
    config = presets.configure(args.preset, {**overrides, **given})
    if "train_chunk_size" in overrides and config.data.train_chunk is None:  # it distilled the whole split
        raise FrepoError("--train-chunk-size is the size of --train-chunk's block; give --train-chunk too")
    return config


def cmd_distill(args: argparse.Namespace) -> int:
    from ..eval.results import count_of
    from ..jobs.distill import distill
    from ..jobs.runs import default_run_dir

    config = distill_config(args)
    if args.out is not None and not args.out.strip():
        raise FrepoError("--out must name a run directory (leave it out for runs/<dataset>-ipc<N>)")
    out = Path(args.out) if args.out is not None else default_run_dir(config)
    result = distill(config, out, progress=True, resume_with_changes=args.resume_with_changes)
    lines = [f"distilled set: {result.distilled_path} (step {result.step}, {result.seconds:.0f} s of training)"]
    if result.val_accuracy is not None:
        models = count_of(config.eval_models, "model")
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
    from ..jobs.runs import check_not_kept

    # Built and validated once, and the output paths checked, before any data is loaded.
    config, source = configure(**explicit(args, EvalConfig(), SourceConfig()))
    for flag, path, writes in (("--json", args.json, "json"), ("--csv", args.csv, "text")):
        if path is not None:
            check_output_file(path, flag)
            check_not_kept(path, flag, inputs=(args.file,), writes=writes)
    if args.json is not None and args.csv is not None and Path(args.json).resolve() == Path(args.csv).resolve():
        raise FrepoError(f"--json and --csv both name {args.json}: the second would replace the first")

    def deliver(results: list) -> None:  # before the record of finished networks is removed
        first = results[0].extra
        described = f" ({first['source']})" if first.get("source") else ""
        print(f"{args.file}: {first['num_images']} images of {first['dataset']}{described}; {config.split} split")
        print(results_table(results))
        if args.field_metrics:
            from ..jobs.field_metrics import field_table

            print(field_table(results))
        if args.json:
            write_json(results, args.json)
        if args.csv:
            write_csv(results, args.csv)

    run(args.file, config, source, progress=True, field_metrics=args.field_metrics, resume=True, deliver=deliver)
    return 0


def cmd_subset(args: argparse.Namespace) -> int:
    from ..config import DataConfig
    from ..eval.results import count_of
    from ..io.artifact import check_replaceable, save_distilled, set_kind
    from ..jobs.runs import check_not_kept
    from ..jobs.subset import make_subset

    check_output_file(args.out, "--out")
    check_not_kept(args.out, "--out", writes_a_set=True)
    check_replaceable(args.out, f"--out {args.out}")  # before the subset is made (herding: minutes)
    kind = set_kind(Path(args.out))
    if kind is not None and not kind.startswith("subset"):  # hours of distillation, for a draw of seconds
        raise FrepoError(
            f"--out {args.out} holds a {kind} set, which the subset would replace; give another name, or move it"
        )
    if Path(args.out).suffix not in ("", ".safetensors"):  # sub/x.png held a safetensors file
        raise FrepoError(f"--out {args.out}: the subset is written as a frepo set; name it .safetensors")
    data = DataConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        download=args.download,
        preprocess=args.preprocess,
        val_size=args.val_size,
        mirror_invariant=args.mirror_invariant,
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
    images = count_of(len(ds.images), "image")
    print(f"{args.method} subset of {ds.dataset}: {images} ({args.ipc} per class) -> {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..jobs.report import write_report

    path = write_report(args.run_dir, Path(args.run_dir) / args.out if args.out else None)
    print(f"report -> {path}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..jobs.reproduce import RowsFailed, reproduce

    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()] if args.datasets is not None else None
    try:
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
            strict=True,
        )
    except RowsFailed as exc:  # the table first, then the error line and exit 2
        print(exc.text, end="")
        raise
    print(text, end="")
    if not args.dry_run:
        print(f"table -> {args.out}", file=sys.stderr)
    else:  # where the real command writes, before it is run (relative to this folder), and whether it may
        from ..jobs.reproduce import BUDGETS, check_rewrite

        table = Path(args.out)
        print(
            f"without --dry-run: the table -> {table} (with {table.with_suffix('.json').name} and "
            f"{table.with_suffix('.png').name} beside it), the runs -> {Path(args.runs_dir)}/<preset>",
            file=sys.stderr,
        )
        try:
            check_rewrite(table, args.table, BUDGETS[args.budget])
        except FrepoError as exc:
            print(f"frepo: warning: the real command would refuse: {exc}", file=sys.stderr)
    return 0


def _read_set(path: str | Path, args: argparse.Namespace):
    """The set at `path` for `show` and `export`, read as `frepo evaluate` reads it (`jobs.evaluate.read_set`)."""
    from ..jobs.evaluate import SourceConfig, configure, read_set

    return read_set(path, configure(**explicit(args, SourceConfig()))[1])


def cmd_show(args: argparse.Namespace) -> int:
    from ..io.export import find_manifest
    from ..io.foreign.load import is_run, run_set
    from ..jobs.runs import RunDir, check_not_kept
    from ..jobs.visualize import animate, grid_format, is_grid, save_grid

    if args.per_class < 1:
        raise FrepoError(f"--per-class must be >= 1, got {args.per_class}")
    if args.fps is not None and not args.animate:  # ignored before
        raise FrepoError("--fps is the frame rate of --animate; give both, or neither")
    if args.out is not None:
        check_output_file(args.out, "--out")  # as typed: '', '.', a folder or `dir/` name no file
        if not Path(args.out).suffix:  # as matplotlib's savefig: `--out grid` is grid.png (grid.gif animated)
            args.out = str(Path(args.out).with_suffix(".gif" if args.animate else ".png"))
            check_output_file(args.out, "--out")
        # the file written: `--out exp/continual` was checked as typed, then wrote the experiment's continual.png
        check_not_kept(args.out, "--out", inputs=(args.path,))
        if not args.animate:
            grid_format(args.out)  # before the set is read
    if args.animate:
        run = RunDir(args.path)
        if not is_run(run.path):  # a file, an export, a folder of images
            given = "a folder that holds no run" if run.path.is_dir() else "a file"
            raise FrepoError(f"--animate makes a film of a run's snapshots: pass a run directory, not {given}")
        if args.out is not None and Path(args.out).absolute().parent == run.images_dir.absolute():
            raise FrepoError(f"--out {args.out} is in the run's snapshots folder, which the film is made of")
        out = animate(run.images_dir, args.out or run.path / "distilled.gif", fps=8.0 if args.fps is None else args.fps)
        print(f"animation -> {out}")
        return 0
    file = run_set(args.path)
    ds = _read_set(file, args)
    step = ds.meta.get("step")
    title = f"{Path(ds.dataset).name}: {ds.meta.get('kind', 'set')}, {len(ds.images)} images"
    title += f", step {step}" if step is not None else ""
    most = int(ds.class_ids().bincount().max()) if len(ds.images) else 0  # a grid row holds --per-class of them
    partial = most > args.per_class
    title += f", {args.per_class} of {most} per class shown" if partial else ""
    # beside an export folder (or class folders), not in it: a file the export did not write makes it another's
    manifest = find_manifest(file)
    if manifest is not None:  # a file of an export: beside its folder
        file = manifest.parent
    beside = file.parent / f"{file.name}.png" if file.is_dir() else file.with_suffix(".png")
    own = beside.name == "distilled.png" and is_run(beside.parent)  # a run's own grid (an older run's: no mark)
    if not args.out and beside.exists() and not is_grid(beside) and not own:
        # a file of that name that frepo did not draw is the user's
        raise FrepoError(f"{beside} exists and is no image grid frepo drew: name the grid with --out, or move it")
    out = Path(args.out) if args.out else beside
    save_grid(ds, out, per_class=args.per_class, title=title)
    hint = f" ({args.per_class} of {most} images per class; --per-class {most} shows all)" if partial else ""
    print(f"image grid -> {out}{hint}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..jobs.evaluate import SourceConfig, configure
    from ..jobs.export import export

    # the set read as `show` reads it, and its dataset (ddranking-zca's fit) found where --data-dir says
    source = configure(**explicit(args, SourceConfig()))[1]
    manifest = export(args.file, args.to, args.format, args.space, source=source)
    space = json.loads(manifest.read_text())["images"]["space"]
    print(f"{args.format} export of {args.file} -> {manifest.parent} (images: {space}; manifest: {manifest.name})")
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    from ..apps.continual import ContinualConfig, continual

    return _run_experiment(args, "continual", continual, ContinualConfig())


def cmd_privacy(args: argparse.Namespace) -> int:
    from ..apps.privacy import PrivacyConfig, privacy

    return _run_experiment(args, "privacy", privacy, PrivacyConfig())


def _run_experiment(args: argparse.Namespace, name: str, experiment: Callable[..., Any], settings: Any) -> int:
    """Run a downstream experiment (`continual` or `privacy`) into --out and print its table; its files are
    named after it."""
    if not args.out.strip():
        raise FrepoError("--out must name an experiment folder")
    out = Path(args.out)
    experiment(preset=args.preset, out=out, progress=True, **explicit(args, settings))
    print((out / f"{name}.md").read_text(), end="")
    print(f"results -> {out / f'{name}.json'}, {out / f'{name}.csv'}, {out / f'{name}.png'}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..apps.continual import PRESETS as CONTINUAL_PRESETS
    from ..apps.privacy import PRESETS as PRIVACY_PRESETS
    from ..config import presets

    for name in presets.names():
        values = ", ".join(f"{k}={v}" for k, v in presets.PRESETS[name].items() if k not in ("dataset", "ipc"))
        print(f"{name:28s} {values}")
    for table, command in ((CONTINUAL_PRESETS, "continual"), (PRIVACY_PRESETS, "privacy")):
        for name, settings in sorted(table.items()):
            print(f"{name:28s} (frepo {command}) " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return 0


# What `frepo <name>` runs: `frepo.cli.main` calls HANDLERS[args.command](args). Keep it in step with
# `frepo.cli.parser.SUBCOMMANDS`.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "subset": cmd_subset,
    "report": cmd_report,
    "reproduce": cmd_reproduce,
    "show": cmd_show,
    "export": cmd_export,
    "continual": cmd_continual,
    "privacy": cmd_privacy,
    "presets": cmd_presets,
}
