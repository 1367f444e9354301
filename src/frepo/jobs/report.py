"""`frepo report RUN_DIR`: a self-contained Markdown report of a run, with its PNGs, in the run dir.

It shows the run's settings (config.json), where it stands (finished, unfinished and from which step the
same command resumes it, or being distilled now), the settings changed on a resume (`--resume-with-changes`),
curves of the training loss and of the validation accuracy over steps (metrics.jsonl: lines with `loss` are
training, lines with `val_acc` validation), the image grid (distilled.png, drawn from distilled.safetensors
when missing) and a table of every evaluation JSON (`eval*.json`, as `frepo evaluate --json` writes them)
found in the run dir.
"""

from __future__ import annotations

import fnmatch
import json
import math
from pathlib import Path

from ..base.atomic import atomic_write, atomic_write_text
from ..base.errors import FrepoError
from ..base.lock import holder
from ..eval.results import count_of, mean_std
from .runs import ENVIRONMENT, RunDir, check_not_kept

LOSS_KEYS = ("loss", "kernel_loss", "online_loss")


def _plot(path: Path, series: dict[str, tuple[list[float], list[float]]], ylabel: str, log: bool) -> Path:
    """One PNG: each named (steps, values) series as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, (steps, values) in series.items():
        ax.plot(steps, values, label=name, marker="o" if len(steps) < 30 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log and all(v > 0 for _, values in series.values() for v in values):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return path


def curves(records: list[dict], out_dir: Path) -> dict[str, Path]:
    """loss.png and val_acc.png from metrics records; only those with data are drawn."""
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_acc" in r]
    made = {}
    if train:
        series = {
            key: ([r["step"] for r in train if key in r], [float(r[key]) for r in train if key in r])
            for key in LOSS_KEYS
            if any(key in r for r in train)
        }
        made["loss"] = _plot(out_dir / "loss.png", series, "loss", log=True)
    if val:
        series = {"validation accuracy": ([r["step"] for r in val], [float(r["val_acc"]) for r in val])}
        made["val_acc"] = _plot(out_dir / "val_acc.png", series, "accuracy (%)", log=False)
    return made


def load_eval_results(run_dir: Path) -> tuple[list[dict], list[str]]:
    """Rows of every eval*.json in run_dir (single objects, {"results": [...]} or lists), and the names
    of the files that could not be read."""
    rows, bad = [], []
    for path in sorted(run_dir.glob("eval*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # JSONDecodeError, and UnicodeDecodeError (bytes that are no UTF-8)
            bad.append(path.name)
            continue
        items = data.get("results", [data]) if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(map(_is_eval_row, items)):
            bad.append(path.name)
            continue
        rows += [{**item, "source": path.name} for item in items]
    return rows, bad


def _is_eval_row(item: object) -> bool:
    """Whether `item` is an evaluation as `frepo evaluate --json` writes it, as far as the report reads it."""

    def number(value: object) -> bool:  # NaN or 1e400 (JSON's Infinity) is no accuracy frepo writes
        return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]

    return (
        isinstance(item, dict)
        and number(item.get("mean"))
        and number(item.get("std", 0.0))
        and number(item.get("seconds", 0.0))
        and isinstance(item.get("accuracies", []), list)
        and type(item.get("models", 0)) is int
        and _is_field_metrics(item.get("field_metrics") or {})
        and isinstance(item.get("file") or "", str)
        and isinstance(item.get("file_checksum") or "", str)
    )


REFERENCES = ("set_hard", "random", "full")  # the accuracies field metrics are made of


def _is_field_metrics(metrics: object) -> bool:
    """Whether `metrics` is none ({}) or what `frepo evaluate --field-metrics` writes, as far as the report reads it."""
    number = (int, float)
    if not isinstance(metrics, dict):
        return False
    return not metrics or (
        all(type(metrics.get(k)) in number for k in ("ior", "hlr", "lrs"))
        and all(isinstance(metrics.get(k), dict) and type(metrics[k].get("mean")) in number for k in REFERENCES)
    )


def _config(run: RunDir) -> dict | None:
    """The run's settings (config.json); {} when it is unreadable, None without one."""
    if not run.config_path.is_file():
        return None
    try:
        config = json.loads(run.config_path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _settings(config: dict | None, made: dict) -> list[str]:
    """The run's settings as config.json holds them; a default it resolved when it ran (the hold-out's size, the
    preprocessing `auto` chose) as its set (`made`: the set's header) records it."""
    if config is None:
        return []
    if not config:
        return ["(config.json is unreadable)"]
    data, model, pool = (_object(config.get(k)) for k in ("data", "model", "pool"))  # an edited one: shown as unset
    held = data.get("val_size")  # None: the default size; 0: none (continual's and privacy's distillations)
    resolved = f" ({made['val_size']} images)" if isinstance(made.get("val_size"), int) else ""
    holdout = f"default{resolved}" if held is None else f"{held} images" if held else "none"
    chosen = (made.get("preprocessing") or {}).get("kind") if isinstance(made.get("preprocessing"), dict) else None
    preprocess = data.get("preprocess")
    preprocess = f"{preprocess} ({chosen})" if preprocess == "auto" and chosen else preprocess
    ipc = config.get("ipc")
    images = _count(ipc, "image")
    narrowed = f", classes {data['classes']}" if data.get("classes") not in (None, "") else ""
    if data.get("train_chunk") is not None:
        narrowed += f", training chunk {data['train_chunk']} of {data.get('train_chunk_size')} images"
    return [
        f"- dataset: {data.get('dataset')}{narrowed}, {images} per class, "
        f"preprocessing {preprocess}, validation hold-out {holdout}",
        f"- {config.get('steps')} steps, real batch {config.get('batch_size')}, lr {config.get('lr')}, "
        f"flip trick {'on' if config.get('use_flip') else 'off'}, learned labels {config.get('learn_labels')}",
        f"- pool: {_count(pool.get('num_models'), 'model')} of Conv width {model.get('width')}, "
        f"depth {model.get('depth')}, norm {model.get('norm')}; seed {config.get('seed')}",
    ]


def _object(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _count(value: object, noun: str) -> str:
    return count_of(value, noun) if isinstance(value, int) else f"{value} {noun}s"


def _set_meta(path: Path) -> dict:
    """A frepo set's metadata, read from its header alone ({} without one, or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["frepo"])
    except Exception:  # missing, damaged, or not frepo's
        return {}
    return meta if isinstance(meta, dict) else {}


def _evaluated(run: RunDir, made: dict, evals: list[dict]) -> list[str]:
    """Which set each evaluation is of: this run's final (`made`: its header) or best set (by its checksum), or
    another file, named: an evaluation of another run's set or of a baseline, kept in this run's folder, was
    read as this run's."""
    own = {made.get("checksum"): "distilled", _set_meta(run.best_path).get("checksum"): "best"}
    own = {checksum: name for checksum, name in own.items() if isinstance(checksum, str)}  # a header's own kind
    mine = {path.resolve(): path.stem for path in (run.distilled_path, run.best_path)}
    named = []
    for r in evals:
        name = own.get(r.get("file_checksum"))
        file = Path(r["file"]) if r.get("file") else None
        if name is None and file is not None and file.resolve() in mine:  # the run's file, rewritten since
            name = f"{mine[file.resolve()]} (an earlier one: rewritten since)"
        named.append(name if name else f"other: {file.name}" if file is not None else "other set")
    return named


def _checkpoint_step(run: RunDir) -> tuple[int | None, str | None]:
    """(the step of the run's checkpoint, None) read memory-mapped (a large set's checkpoint is not read whole),
    or (None, why it could not be read); (None, None) without one."""
    import torch

    if not run.checkpoint_path.is_file():
        return None, None
    try:
        step = int(torch.load(run.checkpoint_path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except OSError as exc:  # unreadable here (permissions, a disk): the checkpoint itself may well be good
        return None, f"its checkpoint cannot be read here ({exc.strerror or exc})"
    except Exception:  # damaged, or not frepo's
        return None, "its checkpoint is damaged; delete checkpoint.pt to restart the run"
    return step, None


def _command(config: dict | None) -> str:
    """The command that continues the run: torchrun's with as many processes as it ran on."""
    environment = (config or {}).get(ENVIRONMENT)
    processes = environment.get("processes") if isinstance(environment, dict) else None
    if isinstance(processes, int) and processes > 1:
        return f"`torchrun ... -m frepo distill` command ({processes} processes in all)"  # over one node or several
    return "`frepo distill` command"


def _standing(run: RunDir) -> tuple[str | None, int | None, str | None]:
    """(the process distilling the run now or None, its checkpoint's step or None, why that is unread or None),
    read once for a report."""
    return (holder(run.path), *_checkpoint_step(run))


def _status(run: RunDir, total: object, made: int | None, command: str, standing: tuple) -> str:
    """Where the run stands (`made`: its set's step, None without one; `standing`: `_standing`'s): finished,
    stopped (and where the same command resumes it), or running now."""
    of = f" of {total}" if isinstance(total, int) else ""
    owner, checkpoint, problem = standing
    if owner is not None:
        at = f", last checkpoint at step {checkpoint}{of}" if checkpoint is not None else ""
        return f"**Running**: frepo process {owner} is distilling it now{at}; this report shows it as of now."
    if made is not None and made == total and (checkpoint is None or checkpoint <= made):
        return f"**Finished**: its set is of step {made}{of}."
    if checkpoint is not None:
        written = f"its set is of step {made}; " if made is not None else ""
        return (
            f"**Unfinished**: {written}stopped at its checkpoint of step {checkpoint}{of} "
            f"({run.checkpoint_time()}); the same {command} resumes it from there."
        )
    if problem is not None:
        return f"**Unfinished**: {problem}."
    if made is not None:
        return f"**Unfinished**: its set is of step {made}{of}."
    return f"**Unfinished**: stopped before its first checkpoint; the same {command} starts it again."


def _changes(records: list[dict]) -> list[str]:
    """The settings changed when the run was continued (`--resume-with-changes`), one line per resume."""
    lines = []
    for r in records:
        if isinstance(r.get("changed"), dict):
            changed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in r["changed"].items())
            lines.append(f"- continued at step {r.get('step')} with {changed}")
    return ["Settings changed on a resume (--resume-with-changes):", "", *lines, ""] if lines else []


def _field_metrics(evals: list[dict]) -> list[str]:
    """DD-Ranking's metrics of the evaluations that computed them (`frepo evaluate --field-metrics`)."""
    rows = [r for r in evals if r.get("field_metrics")]
    if not rows:
        return []
    lines = [
        "",
        "DD-Ranking's metrics, every accuracy on class ids under the same recipe (LRS on 0..100):",
        "",
        "| file | architecture | set (%) | random subset (%) | full split (%) | IOR | HLR | LRS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["field_metrics"]
        lines.append(
            f"| {r['source']} | {r.get('arch', '?')} | {m['set_hard']['mean']:.2f} | {m['random']['mean']:.2f} | "
            f"{m['full']['mean']:.2f} | {m['ior']:+.2f} | {m['hlr']:.2f} | {m['lrs']:.2f} |"
        )
    return lines


def render(
    run: RunDir,
    records: list[dict],
    plots: dict[str, Path],
    grid: Path | str | None,  # the image grid, or why there is none
    evals,
    bad,
    past: int,
    standing,
) -> str:
    lines = [f"# frepo run report: {run.path.name}", ""]
    config = _config(run)
    made = _set_meta(run.distilled_path)  # the final set's header: its step, checksum and resolved settings
    settings = _settings(config, made)
    if settings:
        lines += ["## Settings", "", *settings, ""]
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_acc" in r]
    lines += ["## Training", ""]
    if config is not None or run.checkpoint_path.is_file():  # a distillation (not a folder of evaluations)
        step = made.get("step")
        lines += [
            _status(
                run, (config or {}).get("steps"), step if isinstance(step, int) else None, _command(config), standing
            ),
            "",
        ]
    lines += _changes(records)
    if past:
        lines.append(
            f"({count_of(past, 'metrics line')} past the checkpoint left out: what a kill left there, the same "
            "command discards when it resumes.)"
        )
    if train:
        last = train[-1]
        lines.append(
            f"Last logged step {last['step']}: loss {last['loss']:.4g}"
            + (f", {last['steps_per_s']:.2f} steps/s" if "steps_per_s" in last else "")
            + (f", {last['elapsed_s']:.0f} s of training" if "elapsed_s" in last else "")
            + "."
        )
    else:
        lines.append("No training metrics logged.")
    if val:
        best = max(val, key=lambda r: r["val_acc"])
        lines.append(
            f"Validation accuracy: last {val[-1]['val_acc']:.2f}% (step {val[-1]['step']}), "
            f"best {best['val_acc']:.2f}% (step {best['step']}); selection uses the validation hold-out only."
        )
    lines.append("")
    for key, title in (("loss", "Loss"), ("val_acc", "Validation accuracy")):
        if key in plots:
            lines += [f"![{title}]({plots[key].name})", ""]
    if isinstance(grid, Path):
        lines += ["## Distilled images", "", f"![distilled images]({grid.name})", ""]
    elif grid is not None:
        lines += ["## Distilled images", "", f"({grid})", ""]
    lines += ["## Evaluations", ""]
    if evals:
        lines += [
            "| file | set | architecture | width | protocol | split | models | accuracy (%) | train steps | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r, evaluated in zip(evals, _evaluated(run, made, evals)):
            models = r.get("models", len(r.get("accuracies", [])))
            accuracy = mean_std(r["mean"], r.get("std", 0.0), models)
            lines.append(
                f"| {r['source']} | {evaluated} | {r.get('arch', '?')} | {r.get('width') or '–'} | "
                f"{r.get('protocol', '?')} | {r.get('split', 'test')} | {models} | {accuracy} | "
                f"{r.get('steps') or '–'} | {float(r.get('seconds', 0.0)):.0f} |"
            )
        lines += _field_metrics(evals)
    else:
        lines.append("No `eval*.json` in the run directory (`frepo evaluate FILE --json RUN_DIR/eval.json`).")
    if bad:
        lines += ["", f"Unreadable evaluation files: {', '.join(bad)}."]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN_DIR/report.md (or `out`, which must be in the run dir so the PNG links hold) and its PNGs."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise FrepoError(
            f"{run.path} is a file, not a run directory"
            if run.path.exists()
            else f"run directory not found: {run.path}"
        )
    standing = _standing(run)
    records, past = _as_resumed(run.read_metrics(), standing)
    evals, bad = load_eval_results(run.path)
    started = run.config_path.is_file() or run.checkpoint_path.is_file()  # stopped before its first log line
    if not records and not evals and not run.distilled_path.is_file() and not started:
        if standing[0] is not None:  # its data loading (minutes for a large dataset) comes before config.json
            raise FrepoError(
                f"{run.path} is a run starting now (frepo process {standing[0]} holds it) that has written nothing "
                "yet: report it again once it has started distilling"
            )
        raise FrepoError(f"{run.path} holds no frepo run (no config.json, metrics.jsonl, distilled set or eval*.json)")
    out = Path(out) if out else run.path / "report.md"
    if out.parent.resolve() != run.path.resolve():  # a report.md linked elsewhere is written through, not refused
        raise FrepoError("the report goes into the run directory, next to its images; pass a file name inside it")
    if out.name in ("distilled.png", "loss.png", "val_acc.png") or fnmatch.fnmatch(out.name, "eval*.json"):
        raise FrepoError(f"the report's file {out} is one the report reads or draws; give another name")
    check_not_kept(out, "the report's file", writes="text")
    plots = curves(records, run.path)
    png = run.path / "distilled.png"
    grid: Path | str | None = png if png.is_file() else None
    if grid is None and run.distilled_path.is_file():
        from ..io.artifact import load_distilled
        from .visualize import save_grid

        try:  # the rest is reported, as for a damaged checkpoint (a failure lost it all)
            ds = load_distilled(run.distilled_path)
        except FrepoError as exc:
            grid = f"{run.distilled_path.name} cannot be read, so no images are shown: {exc}"
        else:
            grid = save_grid(ds, png)  # a failed write (a full disk) is the report's own failure
    atomic_write_text(out, render(run, records, plots, grid, evals, bad, past, standing))
    return out


def _as_resumed(records: list[dict], standing: tuple) -> tuple[list[dict], int]:
    """(the records the same command resumes with, how many it would drop): a stopped run resumes from its
    checkpoint, and the lines a kill left past it are discarded then (`truncate_metrics`); a running run's are
    all shown, as of now (`standing`: `_standing`'s)."""
    owner, checkpoint, _ = standing
    if owner is not None or checkpoint is None:
        return records, 0
    kept = [r for r in records if not isinstance(r.get("step"), int) or r["step"] <= checkpoint]
    return kept, len(records) - len(kept)
