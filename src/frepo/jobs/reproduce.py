"""`frepo reproduce --table 1`: the paper's main table, measured here, next to the published numbers.

Each row (dataset × IPC) runs its preset (`frepo.presets`) through `distill` and evaluates the final
set with the frepo protocol. A budget chooses the presets and the evaluation:
  paper      the paper's settings (500k steps × batch 1024; 5 models, reference step table); needs a GPU
  cpu-small  the `*-cpu` presets (hundreds of steps × batch 256; 3 models × 1000 steps), runs on a CPU
  gpu-small  the `*-gpu` presets (MNIST and Fashion-MNIST, IPC 1/10/50: 1000-2000 steps × batch 256;
             5 models × 1000 steps), minutes on one GPU
Rows that cannot run here are listed with the reason (no loader or no data for the dataset, no preset
for the budget, no GPU for the paper budget), never silently dropped. Finished runs are reused: the
run directories resume, and an evaluation JSON already written for the same file is read back.
"""

from __future__ import annotations

import json
import logging
import platform
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..base.atomic import atomic_write_json, atomic_write_text, check_output_file, writable_folder
from ..base.errors import FrepoError, out_of_memory
from ..data import BUILTIN, default_data_dir
from ..data.layouts import LAYOUTS, find_root
from ..data.registry import offline_copy
from ..eval.results import count_of, mean_std
from .runs import check_not_kept
from .visualize import png_marked

DEFAULT_OUT, DEFAULT_RUNS_DIR = "docs/reproduction.md", "runs/reproduce"  # the command line's defaults too
log = logging.getLogger(__name__)

# Published test accuracy (%, mean ± std; ConvNet) of FRePo's Table 1, from the project's reference notes
# (not shipped), which say that the MNIST, Fashion-MNIST, ImageNet and CUB rows still need checking
# against the paper itself (marked `checked=False`); the CIFAR and Tiny ImageNet rows agree with later
# papers that copy FRePo's Table 1 (PAD, arXiv 2408.03360, Table 1; GSDD, Table 15). None of these rows was
# read in the paper itself.
TABLE1 = (
    ("mnist", "MNIST", {1: (93.0, 0.4), 10: (98.6, 0.1), 50: (99.2, 0.0)}, False),
    ("fashion_mnist", "Fashion-MNIST", {1: (75.6, 0.3), 10: (86.2, 0.2), 50: (89.6, 0.1)}, False),
    ("cifar10", "CIFAR-10", {1: (46.8, 0.7), 10: (65.5, 0.4), 50: (71.7, 0.2)}, True),
    ("cifar100", "CIFAR-100", {1: (28.7, 0.1), 10: (42.5, 0.2), 50: (44.3, 0.2)}, True),
    ("tiny_imagenet", "Tiny ImageNet", {1: (15.4, 0.3), 10: (25.4, 0.2)}, True),
    ("imagenet64", "ImageNet-1K (64×64)", {1: (7.5, 0.3), 2: (9.7, 0.2)}, False),
    ("cub200", "CUB-200", {1: (12.4, 0.2), 10: (16.8, 0.1)}, False),
)
TABLES = {1: TABLE1}

# Where torchvision keeps each dataset under the data folder (to tell "on disk" without loading it).
TORCHVISION_FILES = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "svhn": "train_32x32.mat",
}


@dataclass(frozen=True)
class Budget:
    name: str
    preset_suffix: str
    eval_models: int
    eval_steps: int | None  # None: the reference step table
    needs_gpu: bool
    description: str


BUDGETS = {
    "paper": Budget(
        "paper",
        "",
        5,
        None,
        True,
        "the paper's settings: 500k outer steps (ImageNet: 2M), real batch 1024; evaluation with 5 models and "
        "the reference step table",
    ),
    "cpu-small": Budget(
        "cpu-small",
        "-cpu",
        3,
        1000,
        False,
        "the `*-cpu` presets: 100 to 1000 outer steps at real batch 256; evaluation with 3 models of "
        "1000 steps each (the reference schedule: 500 warm-up steps, then cosine decay). Far below the "
        "paper's budget: expect lower numbers",
    ),
    "gpu-small": Budget(
        "gpu-small",
        "-gpu",
        5,
        1000,
        True,
        "the `*-gpu` presets: MNIST and Fashion-MNIST at IPC 1, 10 and 50, 1000 (IPC 1 and 50) or 2000 "
        "(IPC 10) outer steps at real batch 256; evaluation with 5 models of 1000 steps each. Minutes on one "
        "GPU, far below the paper's 500k steps",
    ),
}


@dataclass
class Row:
    dataset: str
    label: str
    ipc: int
    published: tuple[float, ...]  # (mean, std); read back from a table's JSON as its list was
    checked: bool
    preset: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    status: str = "planned"
    measured: tuple[float, ...] | None = None  # (mean, std), as `published`
    run_dir: str | None = None
    ran_on: str | None = None  # where its run ran, as the run records it ("cuda: NVIDIA H100 ..."; "cpu")


def ran_on(run_dir: str | None) -> str | None:
    """Where the run at `run_dir` ran, from its config.json's environment (None: no record). A table written by
    --finished-only on another machine described only the machine that wrote it."""
    if run_dir is None:
        return None
    from .runs import ENVIRONMENT, RunDir

    env = RunDir(run_dir).settings().get(ENVIRONMENT)
    if not isinstance(env, dict) or not env.get("device"):
        return None
    return f"{env['device']}: {env['gpu']}" if env.get("gpu") else str(env["device"])


def data_source(name: str, data_dir: str | Path | None, download: bool) -> tuple[bool, str]:
    """(usable, where) for dataset `name`, without loading it."""
    if name not in BUILTIN:
        return False, "no data: frepo has no loader for it (an ImageFolder copy can be distilled by path)"
    if name == "digits":
        return True, "scikit-learn"
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    offline = offline_copy(name, folder)  # the file load_dataset reads first
    if offline is not None:
        return True, str(offline)
    if name in LAYOUTS:
        try:
            return True, str(find_root(name, folder))
        except FrepoError as exc:
            if download and LAYOUTS[name].archive:
                return True, f"download ({LAYOUTS[name].archive})"
            return False, f"no data: {exc}"
    if (folder / TORCHVISION_FILES[name]).exists():
        return True, str(folder)
    if download:
        return True, "download (torchvision)"
    return False, "no data offline (downloads are off)"


def device_is_cuda(device: str) -> bool:
    """Whether rows run with `--device device` run on a GPU: `auto` where one is present, `cuda[:N]` where CUDA
    is (a device that does not exist is refused by each row's distillation, in that row)."""
    import torch

    if device == "auto":
        return torch.cuda.is_available()
    try:
        return torch.device(device).type == "cuda" and torch.cuda.is_available()
    except RuntimeError:
        return False


def plan(
    table: int = 1,
    budget: str = "paper",
    datasets: list[str] | None = None,
    *,
    data_dir: str | Path | None = None,
    download: bool = True,
    cuda: bool | None = None,
    reading: bool = False,
) -> list[Row]:
    """The rows of `table` under `budget`, each marked planned or with the reason it cannot run; `reading` (the
    finished rows are read, nothing runs): every row with a preset is planned, data and GPU or not."""
    from ..config import presets

    if table not in TABLES:
        raise FrepoError(f"only table {', '.join(map(str, TABLES))} can be reproduced, not table {table}")
    if budget not in BUDGETS:
        raise FrepoError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    spec = BUDGETS[budget]
    known = [entry[0] for entry in TABLES[table]]
    if datasets:
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise FrepoError(f"dataset(s) {', '.join(unknown)} are not in table {table}; known: {', '.join(known)}")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    rows = []
    for name, label, published, checked in TABLES[table]:
        if datasets and name not in datasets:
            continue
        usable, where = data_source(name, data_dir, download)
        for ipc, numbers in published.items():
            row = Row(name, label, ipc, numbers, checked)
            preset = f"{name}-ipc{ipc}{spec.preset_suffix}"
            if preset in presets.PRESETS:
                row.preset = preset
                row.steps = presets.PRESETS[preset]["steps"]
                row.batch_size = presets.PRESETS[preset]["batch_size"]
            if row.preset is not None and reading:
                row.status = "planned (read from its run)"
            elif not usable:
                row.status = f"not run: {where}"
            elif row.preset is None:
                row.status = f"not run: no {budget} preset ({preset})"
            elif spec.needs_gpu and not cuda:
                row.status = f"not run: needs a GPU ({row.steps} steps × batch {row.batch_size})"
            else:
                row.status = f"planned (data: {where})"
            rows.append(row)
    return rows


def _evaluation_json(run_dir: Path, budget: Budget) -> Path:
    return run_dir / f"eval-reproduce-{budget.name}.json"


def finished_evaluation(run_dir: Path, budget: Budget, preset: str, steps: int) -> tuple[float, float] | None:
    """(mean, std) of this budget's evaluation of the run's final set, if it was evaluated at this budget;
    None otherwise (no finished set, no evaluation, a set of other than `steps` distillation steps or of other
    settings than `preset`'s, an evaluation of another file, model count or training steps: a row's budget
    cell says what ran; a file that cannot be read: distilling writes a damaged set again)."""
    from ..config import presets
    from .runs import finished_set

    saved, final = _evaluation_json(run_dir, budget), run_dir / "distilled.safetensors"
    if not (saved.is_file() and final.is_file()):
        return None
    try:
        previous = json.loads(saved.read_text())
    except (OSError, ValueError):
        return None
    ds = finished_set(final, presets.get(preset), steps)
    if ds is None or not isinstance(previous, dict) or previous.get("file_checksum") != ds.meta.get("checksum"):
        return None
    if previous.get("models") != budget.eval_models:
        return None
    if budget.eval_steps is not None and previous.get("steps") != budget.eval_steps:
        return None
    # what `reproduce` evaluates with (an evaluation of another protocol, network, seed or split written to this file
    # by hand was read back as the row's); depth: results before 2026-12-08 record none, and were of depth 3
    from ..eval import EvalConfig

    made = {"protocol": "frepo", "arch": "conv", "seed": 0, "split": "test"}
    if any(previous.get(key) != value for key, value in made.items()):
        return None
    if previous.get("depth", 3) != EvalConfig().network_depth(ds.meta):  # a Tiny ImageNet set's 4 is evaluated again
        return None
    mean, std = _number(previous.get("mean")), _number(previous.get("std"))  # else the evaluation runs again
    return None if mean is None or std is None else (mean, std)


def _number(value: object) -> float | None:
    """A JSON number (not true or false) as a float, else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def planned_run(row: Row) -> tuple[str, int]:
    """The preset of a planned row and its steps: `plan` plans only the rows that have a preset."""
    assert row.preset is not None and row.steps is not None, f"{row.label} IPC {row.ipc} is not planned"
    return row.preset, row.steps


def run_row(
    row: Row,
    budget: Budget,
    runs_dir: Path,
    *,
    data_dir: str | None,
    download: bool,
    device: str,
    progress: bool,
) -> None:
    """Distil (or resume) and evaluate one planned row, in place; a failure is recorded, not raised, but an
    interruption (Ctrl-C, SIGTERM) is: it stops the whole table."""
    from ..config import presets
    from ..eval.results import write_json
    from .distill import distill
    from .evaluate import evaluate
    from .runs import OtherSettings

    preset, steps = planned_run(row)
    config = presets.get(preset)
    config.device = device
    config.data.data_dir, config.data.download = data_dir, download
    out = runs_dir / preset
    row.run_dir = str(out)
    try:
        # A finished, evaluated run is read first (of the preset's settings: another is distill's to refuse).
        previous = finished_evaluation(out, budget, preset, steps)
        if previous is not None:
            mean, std = previous
        else:
            result = distill(config, out, progress=progress)
            evaluation = evaluate(
                result.distilled_path,
                models=budget.eval_models,
                steps=budget.eval_steps,
                data_dir=data_dir,
                download=download,
                device=device,
                progress=progress,
                resume=True,
                # written before the record of finished networks goes: a full disk here retrains none
                deliver=lambda results: write_json(results[:1], _evaluation_json(out, budget)),
            )
            mean, std = evaluation.mean, evaluation.std
        row.measured, row.status = (mean, std), "done"
    # said now too: the next row may take half an hour before the table shows it (Ctrl-C or SIGTERM, an
    # Interrupted, is no FrepoError: it stops the command, its run checkpointed)
    except FrepoError as exc:
        # distill's words name its --out, which here is a row's folder under --runs-dir
        reason = str(exc).replace(f"--out {out}", str(out)).replace("another --out", "another --runs-dir")
        if isinstance(exc, OtherSettings):  # its advice named distill's flags, which reproduce has not
            reason = f"{out} holds a run of other settings ({exc.detail}); delete it to run the {budget.name} preset"
        row.status = f"failed: {reason}"
        log.warning(f"frepo: {row.label} IPC {row.ipc} failed: {reason}; going on with the next row")
    except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        said = out_of_memory(exc)  # a row too large for the device (CIFAR-100 IPC 50): the smaller rows still run
        if said is None:
            raise
        reason = said.split(". The settings ask")[0]
        row.status = f"failed: {reason}; this row's settings need more memory than the device has"
        log.warning(f"frepo: {row.label} IPC {row.ipc} failed: {reason}; going on with the next row")
    if row.status.startswith("failed: out of memory"):  # out of the except: its traceback held the row's tensors
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():  # the failed row's cached blocks, back to the device for the next row
            torch.cuda.empty_cache()


def evaluation_words(budget: Budget) -> str:
    """How a row of `budget` is evaluated, in words: the table's evaluation cell and its plot's title."""
    steps = f"{budget.eval_steps} steps" if budget.eval_steps else "the reference step table"
    return f"frepo protocol, {count_of(budget.eval_models, 'model')} × {steps}"


def render(
    rows: list[Row],
    table: int,
    budget: Budget,
    *,
    dry_run: bool,
    device: str = "auto",
    command: str = "",
) -> str:
    import torch

    from ..base.version import __version__

    evaluation = evaluation_words(budget)
    lines = [
        f"{TABLE_TITLE.decode()}{table}: published vs measured",
        "",
        f"Budget **{budget.name}**: {budget.description}.",
        "",
        f"{'Plan (dry run)' if dry_run else 'Written'} with frepo {__version__}, torch {torch.__version__}, "
        f"device {device}, {platform.machine()}, {time.strftime('%Y-%m-%d')}; each measurement names the device "
        "its run recorded. "
        f"Command: `{command or command_line(table, budget)}`.",
        "",
        "| dataset | IPC | preset | distillation (steps × batch) | evaluation | published (%) | measured (%) "
        "| status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        published = f"{r.published[0]:.1f} ± {r.published[1]:.1f}" + ("" if r.checked else "*")
        measured = mean_std(r.measured[0], r.measured[1], budget.eval_models) if r.measured else "–"
        measured += f" ({r.ran_on})" if r.measured and r.ran_on else ""
        budget_cell = f"{r.steps} × {r.batch_size}" if r.steps else "–"
        lines.append(
            f"| {r.label} | {r.ipc} | {r.preset or '–'} | {budget_cell} | {evaluation if r.preset else '–'} | "
            f"{published} | {measured} | {r.status.replace('|', '/')} |"
        )
    lines += [
        "",
        "Published: FRePo (Zhou, Nezhadarya, Ba, NeurIPS 2022) Table 1, ConvNet, mean ± std, as later papers copy "
        "it (unmarked values: PAD, arXiv 2408.03360, Table 1); * = not confirmed by any source yet, to be checked "
        "against the paper's own Table 1. Measured: final-step distilled set (no "
        "selection on the test split), test accuracy under the frepo protocol, mean ± std over models. "
        "ImageNet-1K's second column is IPC 2.",
        "Offline copies: `$FREPO_DATA_DIR/cifar10.npz` is decoded from JPEG (lossy; see its README), so "
        "CIFAR-10 numbers measured on it are not a faithful reproduction of the published ones.",
    ]
    return "\n".join(lines) + "\n"


def reproduce(
    table: int = 1,
    budget: str = "paper",
    datasets: list[str] | None = None,
    *,
    out: str | Path | None = DEFAULT_OUT,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    dry_run: bool = False,
    finished_only: bool = False,
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    progress: bool = False,
    strict: bool = False,
) -> str:
    """Plan (and unless `dry_run`, run) the rows of `table`; returns the Markdown, written to `out`
    when not a dry run. `finished_only` runs nothing: it reports the rows already distilled and
    evaluated in `runs_dir` and marks the others as not run. `strict` (the command line) raises once the
    table is written if a row failed, so that a script sees the failure."""
    if dry_run and finished_only:  # each runs nothing, and they disagree on what the table says
        raise FrepoError("--dry-run plans the table and --finished-only reports the finished rows: pass one of them")
    if datasets is not None and not datasets:  # --datasets "" meant every dataset
        raise FrepoError("--datasets names no dataset; leave it out for every dataset of the table")
    if not dry_run and Path(runs_dir).exists() and not Path(runs_dir).is_dir():
        raise FrepoError(f"--runs-dir {runs_dir} is not a folder")
    if out is not None and not str(out).strip():  # wrote nothing, and said "table -> "
        raise FrepoError("--out names no file; give the table's path (its .json and .png are written beside it)")
    if not dry_run and out and Path(out).suffix.lower() in (".json", ".png"):  # the table's 3 files are 1
        raise FrepoError(
            f"--out {out}: the table is Markdown, written beside its .json and .png of the same stem; a "
            f"{Path(out).suffix} --out was overwritten by them (give e.g. reproduction.md)"
        )
    if not dry_run and out:  # before the rows' hours of work, not once they are done
        check_output_file(out, "--out")
        for written in (Path(out), Path(out).with_suffix(".json"), Path(out).with_suffix(".png")):  # the table's 3
            check_not_kept(written, "--out")
        check_rewrite(Path(out), table, BUDGETS.get(budget))
    # --finished-only reads finished evaluations: neither the data nor a GPU is needed to look a row up
    # the GPU rows need the device the rows will run on, not just one in the machine (--device cpu with a GPU
    # present planned them, and ran the paper's budgets on the CPU)
    cuda = device_is_cuda(device)
    rows = plan(table, budget, datasets, data_dir=data_dir, download=download, cuda=cuda, reading=finished_only)
    spec = BUDGETS[budget]
    if not dry_run and not finished_only and any(row.status.startswith("planned") for row in rows):
        writable_folder(runs_dir, "--runs-dir")  # each row failed on its own, naming its run's --out

    # A table of some datasets (--datasets) keeps the other datasets' rows of the table it rewrites.
    every = {entry[0] for entry in TABLES[table]}
    others: list[Row] = []
    if datasets and not every <= set(datasets) and out and not dry_run:  # rows of other datasets to keep
        others = kept_rows(Path(out), table, spec, datasets)

    command = command_line(
        table,
        spec,
        datasets,
        finished_only,
        out=out,
        runs_dir=runs_dir,
        data_dir=data_dir,
        download=download,
        device=device,
    )

    def write() -> str:
        shown = sorted(rows + others, key=lambda r: (order(table, r.dataset), r.ipc))
        for row in shown:
            row.ran_on = (ran_on(row.run_dir) or row.ran_on) if row.measured else None
        text = render(shown, table, spec, dry_run=dry_run, device=device, command=command)
        if not dry_run and out:  # the JSON first: a table without it is refused by the next call (check_rewrite)
            atomic_write_json(Path(out).with_suffix(".json"), summary(shown, table, spec, device, command))
            atomic_write_text(out, text + kept_notes(Path(out)))
            try:  # a plot that fails loses neither the table nor the rows still to run
                plot(shown, table, spec, Path(out).with_suffix(".png"))
            except Exception as exc:
                log.warning(f"frepo: the plot {Path(out).with_suffix('.png')} was not written: {exc}")
        return text

    # What a row without a finished run would meet here (no data, no GPU): it said only "no finished run".
    unread = (
        {
            (r.dataset, r.ipc): r.status
            for r in plan(table, budget, datasets, data_dir=data_dir, download=download, cuda=cuda)
        }
        if finished_only
        else {}
    )
    # A row the table holds measured keeps that measurement until this command measures it again: a rerun
    # where a row cannot run (no GPU, no data), fails, or is still to come (the table is written after each
    # row) replaced it with "not run" (--finished-only refuses instead, below).
    earlier = earlier_measurements(Path(out)) if out and not dry_run and not finished_only else {}
    for row in rows:
        carry(row, earlier)
    if not dry_run:
        for row in rows:
            if row.status.startswith("planned") and finished_only:
                preset, steps = planned_run(row)
                run_dir = Path(runs_dir) / preset
                measured = finished_evaluation(run_dir, spec, preset, steps)
                if measured is None:
                    here = unread[(row.dataset, row.ipc)]
                    why = f"; here: {here.removeprefix('not run: ')}" if here.startswith("not run") else ""
                    row.status = f"not run: no finished, evaluated run in {runs_dir} (--finished-only){why}"
                else:
                    row.measured, row.status, row.run_dir = measured, "done", str(run_dir)
            elif row.status.startswith("planned"):
                row.measured = row.run_dir = None  # what this command measures, not what it carried
                run_row(
                    row, spec, Path(runs_dir), data_dir=data_dir, download=download, device=device, progress=progress
                )
                carry(row, earlier)
                write()  # after every row: a table cut short (a time limit, Ctrl-C) keeps its finished rows
    if finished_only and out:  # it runs nothing: a row measured before and not found now would be lost
        lost = lost_rows(Path(out), rows)
        if lost:
            raise FrepoError(
                f"--finished-only found no finished, evaluated run in --runs-dir {runs_dir} for {len(lost)} rows "
                f"that {out} holds measured ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}): pass the "
                "--runs-dir they were measured in, or give another --out"
            )
    text = write()
    failed = [row for row in rows if row.status.startswith("failed")]
    if strict and failed:
        where = f"; the table, with every row's reason, is in {out}" if out else ""
        raise RowsFailed(
            f"{len(failed)} of {len(rows)} rows failed (first: {failed[0].label} IPC {failed[0].ipc}, "
            f"{failed[0].status}){where}",
            text,
        )
    return text


# The keys of the JSON written beside the table (`--out` with .json); each row's keys are `Row`'s fields.
JSON_KEYS = {
    "table": "the paper's table reproduced (1)",
    "budget": "the budget: name, preset_suffix, eval_models, eval_steps (null: the reference step table), "
    "needs_gpu, description",
    "command": "the command that wrote it, every setting away from its default named (--runs-dir, --data-dir...)",
    "environment": "frepo and torch versions, device (as asked), machine, date: of the process that wrote the table; "
    "each row's ran_on says where its run ran",
    "rows": "one per dataset and IPC: dataset, label, ipc, published [mean, std], checked (the published value "
    "confirmed by a later paper that copies FRePo's table), preset, steps and batch_size of its distillation, "
    "status, measured [mean, std] or null, run_dir, ran_on (where its run ran, as its config.json records: "
    '"cpu", "cuda: <GPU>"; null: no record)',
}


def order(table: int, dataset: str) -> int:
    """The place of `dataset` in `table`."""
    return [entry[0] for entry in TABLES[table]].index(dataset)


def kept_rows(path: Path, table: int, budget: Budget, datasets: list[str]) -> list[Row]:
    """The rows of datasets other than `datasets` in the JSON beside an earlier table at `path` of the same
    table and budget; none where no table stands at `path`. A table whose rows cannot be kept (no JSON beside
    it, another table's or budget's, an unreadable one) is refused before any row runs: rewriting it lost
    them."""
    source = path.with_suffix(".json")
    try:
        earlier = json.loads(source.read_text())
        if earlier.get("table") != table or earlier.get("budget", {}).get("name") != budget.name:
            why = f"{source} is of table {earlier.get('table')}, budget {earlier.get('budget', {}).get('name')}"
            return _dropped(path, why)
        # what the table says of each row now (its published number, label, whether checked), not what the earlier
        # table said: a corrected number reached only the datasets rewritten
        known = {name: (label, published, checked) for name, label, published, checked in TABLES[table]}
        rows = []
        for row in earlier["rows"]:
            name, ipc = row["dataset"], row["ipc"]
            if name in datasets or name not in known or ipc not in known[name][1]:
                continue
            label, published, checked = known[name]
            rows.append(Row(**{**row, "label": label, "published": published[ipc], "checked": checked}))
    except FileNotFoundError:
        return _dropped(path, f"no {source.name} beside it (a table written before frepo wrote one)")
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return _dropped(path, f"{source} is unreadable ({exc})")
    for row in rows:  # JSON lists back to the tuples a Row holds
        row.published = tuple(row.published)
        row.measured = tuple(row.measured) if row.measured else None
    return rows


# The PNG text chunk of the table's plot: a PNG of that name without it is not frepo's to replace.
PLOT_MARK = ("Software", "frepo reproduce plot")


TABLE_TITLE = b"# FRePo Table "  # how `render`'s tables begin


def _is_table(path: Path) -> bool:
    """Whether `path` begins as the tables `render` writes do."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(TABLE_TITLE)) == TABLE_TITLE
    except OSError:
        return False


def check_rewrite(path: Path, table: int, budget: Budget | None) -> None:
    """Before any row runs: a table at `path` is rewritten only when the JSON beside it says it is this table
    at this budget (a cpu-small table was replaced by a gpu-small one of rows not run, and the repository's
    docs/reproduction.md, which had no JSON beside it, by whatever the current folder's runs gave). Without a
    table there, a JSON or PNG of the names it writes beside it is replaced only when frepo wrote it (a
    user's paper/table1.png beside a new paper/table1.md was replaced by the plot)."""
    if budget is None:  # an unknown budget: plan() says so
        return
    source = path.with_suffix(".json")
    keep = "give another --out, or move it away to rewrite it"
    named = f"--out {path}"
    if not path.exists():
        figure = path.with_suffix(".png")
        if figure.exists() and not png_marked(figure, PLOT_MARK):
            raise FrepoError(f"{named}: {figure.name} beside it is no plot frepo drew, and would be replaced: {keep}")
        if not source.exists():
            return
        named = f"{named}: beside it, {source.name}"  # checked as a table's JSON is
    try:
        earlier = json.loads(source.read_text())
    except FileNotFoundError:
        if not _is_table(path):  # a user's notes.txt was called "a table without notes.json beside it"
            raise FrepoError(f"--out {path} is a file frepo did not write (no reproduction table): {keep}") from None
        raise FrepoError(
            f"--out {path} holds a table without {source.name} beside it (one written before frepo wrote one), "
            f"so its measured rows cannot be kept: {keep}"
        ) from None
    except (OSError, ValueError) as exc:
        raise FrepoError(f"--out {path}: {source} is unreadable ({exc}): {keep}") from None
    spec = earlier.get("budget") if isinstance(earlier, dict) else None
    said = (earlier.get("table"), spec.get("name")) if isinstance(spec, dict) else None
    if said != (table, budget.name):
        shown = f"table {said[0]} at budget {said[1]}" if said else f"a {source.name} frepo did not write"
        raise FrepoError(f"{named} holds {shown}, not table {table} at budget {budget.name}: {keep}")


def lost_rows(path: Path, rows: list[Row]) -> list[str]:
    """The rows of `rows` that the table at `path` holds measured and that have no measurement now."""
    try:
        earlier = json.loads(path.with_suffix(".json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # check_rewrite refused a table it cannot read back
    now: dict[tuple, tuple[float, ...] | None] = {(row.dataset, row.ipc): row.measured for row in rows}
    return [
        f"{row.get('label', row.get('dataset'))} IPC {row.get('ipc')}"
        for row in earlier
        if isinstance(row, dict) and row.get("measured") and now.get((row.get("dataset"), row.get("ipc")), 0) is None
    ]


def earlier_measurements(path: Path) -> dict[tuple, tuple[tuple[float, ...], str | None]]:
    """(dataset, ipc, preset, steps, batch_size) -> (measured, run_dir) of the rows the table at `path` holds
    measured (by the JSON beside it, which `check_rewrite` found to be of this table and budget); none where
    there is no such table."""
    try:
        rows = json.loads(path.with_suffix(".json").read_text())["rows"]
        return {
            _measured_as(row): (tuple(row["measured"]), row.get("run_dir"))
            for row in rows
            if isinstance(row, dict) and row.get("measured")
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _measured_as(row: dict) -> tuple:
    """What a row's measurement stands for: its dataset and IPC, and the run its budget made (preset, steps,
    batch): a budget redefined under the same name measures another."""
    return tuple(row.get(k) for k in ("dataset", "ipc", "preset", "steps", "batch_size"))


def carry(row: Row, earlier: dict[tuple, tuple[tuple[float, ...], str | None]]) -> None:
    """A row without a measurement now shows the earlier table's of the same run, if it had one, its status
    saying so (and still beginning with what happened now: "failed", "not run", "planned")."""
    key = _measured_as(asdict(row))
    if row.measured is None and key in earlier:
        row.measured, row.run_dir = earlier[key]
        row.status += f"; shown: the measurement of the table this rewrote (run {row.run_dir or 'unknown'})"


def _dropped(path: Path, why: str) -> list[Row]:
    if path.exists():
        raise FrepoError(
            f"{path} holds rows of other datasets than --datasets that a rewrite cannot keep: {why}. Rewrite it "
            "without --datasets, or give another --out"
        )
    return []


def command_line(
    table: int,
    budget: Budget,
    datasets: list[str] | None = None,
    finished_only: bool = False,
    *,
    out: str | Path | None = DEFAULT_OUT,
    runs_dir: str | Path = DEFAULT_RUNS_DIR,
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
) -> str:
    """The `frepo reproduce` command that repeats this one: every setting away from its default named (the
    table's rows are read from --runs-dir: a command without it found none)."""
    return (
        f"frepo reproduce --table {table} --budget {budget.name}"
        + (f" --datasets {','.join(datasets)}" if datasets else "")
        + (" --finished-only" if finished_only else "")
        + (f" --out {shlex.quote(str(out))}" if out and Path(out) != Path(DEFAULT_OUT) else "")
        + (f" --runs-dir {shlex.quote(str(runs_dir))}" if Path(runs_dir) != Path(DEFAULT_RUNS_DIR) else "")
        + (f" --data-dir {shlex.quote(str(data_dir))}" if data_dir is not None else "")
        + ("" if download else " --no-download")
        + (f" --device {shlex.quote(device)}" if device != "auto" else "")
    )


def summary(rows: list[Row], table: int, budget: Budget, device: str, command: str) -> dict:
    """The table as JSON (`JSON_KEYS`)."""
    import torch

    from ..base.version import __version__

    return {
        "table": table,
        "budget": asdict(budget),
        "command": command,
        "environment": {
            "frepo": __version__,
            "torch": torch.__version__,
            "device": device,
            "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "rows": [asdict(row) for row in rows],
    }


def plot(rows: list[Row], table: int, budget: Budget, path: Path) -> None:
    """Measured against published accuracy, one point per measured row, with the budget in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..base.atomic import atomic_write

    done = [(r, r.measured) for r in rows if r.measured]
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    for r, measured in done:
        # a row shown from the table this one rewrote (its run failed or is gone now): hollow
        fresh = r.status == "done"
        marker = {"fmt": "o", "capsize": 3} if fresh else {"fmt": "o", "capsize": 3, "mfc": "none"}
        ax.errorbar(r.published[0], measured[0], xerr=r.published[1], yerr=measured[1], **marker)
        ax.annotate(
            f"{r.label} {r.ipc}",
            (r.published[0], measured[0]),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8, label="measured = published")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("published test accuracy (%)")
    ax.set_ylabel("measured test accuracy (%)")
    steps = sorted({r.steps for r, _ in done if r.steps})
    ax.set_title(
        f"Table {table}, budget {budget.name}: {len(done)} of {len(rows)} rows measured\n"
        + (f"{'/'.join(map(str, steps))} distillation steps; " if steps else "")
        + evaluation_words(budget)
        + ("; hollow: carried from the table it rewrote" if any(r.status != "done" for r, _ in done) else ""),
        fontsize=8,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", metadata=dict([PLOT_MARK])))
    finally:
        plt.close(fig)


class RowsFailed(FrepoError):
    """`reproduce(strict=True)`: a row failed; `text` is the table, written all the same."""

    def __init__(self, message: str, text: str):
        super().__init__(message)
        self.text = text


# Hand-written notes below this line of the output file survive a rewrite of the table.
NOTES_MARKER = "<!-- notes below this line are kept when `frepo reproduce` rewrites the table above -->"


def kept_notes(path: Path) -> str:
    """The marker and everything after it in an existing `path`, or nothing."""
    try:
        old = path.read_text() if path.is_file() else ""
    except (OSError, UnicodeDecodeError):  # not a table frepo wrote: it has no notes to keep
        old = ""
    return "\n" + old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else ""
