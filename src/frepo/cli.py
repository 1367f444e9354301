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
        lines.append(f"validation accuracy (frepo protocol, {config.eval_models} model): {result.val_accuracy:.2f}%")
    if result.best_path:
        lines.append(f"best on validation: {result.best_path}")
    lines.append(f"image grid: {out / 'distilled.png'}")
    lines.append(f"test accuracy: frepo evaluate {result.distilled_path}")
    print("\n".join(lines))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    result = evaluate(
        args.file,
        models=args.models,
        seed=args.seed,
        steps=args.steps,
        arch=args.arch,
        data_dir=args.data_dir,
        download=args.download,
        device=args.device,
        split=args.split,
    )
    print(f"{args.file}: {result.summary()}")
    if args.json:
        from .io import atomic_write_json

        atomic_write_json(args.json, result.to_dict())
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
    ds = make_subset(data, args.ipc, args.method, args.seed)
    save_distilled(ds, args.out)
    print(f"{args.method} subset of {ds.dataset}: {len(ds.images)} images ({args.ipc} per class) -> {args.out}")
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

    p = sub.add_parser("evaluate", help="train fresh networks on a distilled set and report test accuracy")
    p.add_argument("file", help="a distilled-set file (.safetensors)")
    p.add_argument("--models", type=int, default=5, help="fresh networks to train (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (default: 0)")
    p.add_argument("--steps", type=int, help="training steps per network (default: the reference step table)")
    p.add_argument("--arch", default="conv", help="network: conv, conv_bn, conv_in (default: conv)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="test (default) or the validation hold-out")
    p.add_argument("--json", help="also write the result as JSON to this path")
    _add_data_access(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("subset", help="write a same-format file of real images (a baseline)")
    p.add_argument("--dataset", required=True, help="dataset name, .npz file or ImageFolder directory")
    p.add_argument("--ipc", type=int, required=True, help="images per class")
    p.add_argument("--method", default="random", help="selection method (default: random)")
    p.add_argument("--seed", type=int, default=0, help="selection seed (default: 0, as distill's init)")
    p.add_argument("--out", required=True, help="output file (.safetensors)")
    p.add_argument("--preprocess", default="auto", help="auto, standard, zca or none (default: auto)")
    p.add_argument("--val-size", type=int, default=None, help="validation hold-out (default: as distill)")
    _add_data_access(p)
    p.set_defaults(func=cmd_subset)

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
