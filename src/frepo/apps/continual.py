"""`frepo continual`: class-incremental continual learning with distilled memories (the paper's §5, on
the protocol of DM and the official `script/distill_cl.py` / `script/eval_cl.py`).

The classes are put in the order `numpy.random.RandomState(s).permutation(C)` for each order s (the DM
and FRePo convention) and split into T tasks of C/T classes. Task k distils only its own classes'
training images (IPC per class, learned labels over all C classes, as the reference does) in a run
directory of its own, so an interrupted experiment resumes at the task and the step where it stopped.
After task k, fresh networks train on the union of the memories of tasks 0..k and are tested on the test
images of every class seen so far. Every arm holds the same memory (IPC images per class) and trains
with the same trainer: `frepo` (the distilled sets), `random` and `herding` exemplars (real images,
`frepo.subset`). The trainer is the reference evaluation (`--protocol frepo`: Conv without norm, Adam
3e-4 with warm-up and cosine decay, MSE, the reference augmentation; the reference CL evaluation trains
10 000 steps — its `adam` optimiser ignores the weight decay it is given) or the DC/DSA one
(`--protocol dsa`), for every arm alike. The reference has no validation hold-out here: every task
distils from all of its classes' training images, and the preprocessing is fitted on the whole training
split, as in the official code.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..base.atomic import atomic_write_json
from ..base.errors import FrepoError
from ..base.fields import CommaList, check_choice, check_fields, check_finite, comma_items, opt, to_dict
from ..base.rng import stream_seed
from ..config import DATA_DIR_HELP, DataConfig
from ..config.presets import FLIP_OFF
from ..data import load_dataset
from ..eval import EvalConfig, evaluate_set
from ..eval.finished import FinishedNetworks, evaluation_key
from ..eval.results import count_of, mean_std
from ..io.artifact import DistilledSet, load_distilled, save_distilled
from ..jobs.runs import NOT_RECORDED, RunDir
from ..jobs.subset import make_subset
from .common import csv_text, markdown_table, sharing_preprocessing, test_split_of, union
from .experiment import Experiment, run_experiment

log = logging.getLogger(__name__)

ARMS = ("frepo", "random", "herding")


@dataclass
class ContinualConfig:
    dataset: str = opt("cifar100", "dataset name, .npz file or ImageFolder directory")
    tasks: int = opt(5, "tasks: the classes split into this many groups of equal size")
    ipc: int = opt(20, "images per class in every arm's memory (distilled or real)")
    orders: CommaList = opt(
        "0,1,2,3,4", "class orders, comma-separated: numpy.random.RandomState(s).permutation(C)", listed=True
    )
    steps: int = opt(500_000, "outer steps of each task's distillation")
    batch_size: int = opt(1024, "real images per distillation step")
    lr: float | None = opt(
        None,
        "LAMB learning rate of the distillations (default: the one frepo distill takes for this dataset, IPC "
        "and --steps, recorded with the settings: 3e-4 at the paper's 500 000 steps, 1e-2 up to 1000)",
    )
    arms: CommaList = opt(",".join(ARMS), "arms, comma-separated: frepo (distilled), random, herding", listed=True)
    protocol: str = opt("frepo", "the trainer of every arm: frepo (the reference) or dsa", choices=("frepo", "dsa"))
    eval_models: int = opt(5, "fresh networks per order, task and arm")
    eval_steps: int = opt(10_000, "frepo protocol: training steps (the reference CL evaluation's 10 000)")
    eval_epochs: int = opt(1000, "dsa protocol: epochs")
    feature_steps: int = opt(300, "herding: training steps of its feature network")
    feature_width: int = opt(128, "herding: width of its feature network (a Conv)")
    seed: int = opt(
        0,
        "base seed: with 0, class order s seeds its distillations, exemplars and evaluation networks with s (the "
        "reference seeds each order's memory by the order); another base seed gives each order a seed of its own "
        "derived from both (a replicate by --seed shares no order's draws with another)",
    )
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    data_dir: str | None = opt(None, DATA_DIR_HELP)
    download: bool = opt(True, "download a missing dataset (torchvision's downloader, or the layout's public archive)")

    def order_seed(self, order: int) -> int:
        """The seed of everything drawn for class order `order`: the order itself with base seed 0 (official
        distill_cl.py: init_proto(seed=order)); otherwise one derived from both (`seed + order` made --seed 1's
        order 0 draw what --seed 0's order 1 drew)."""
        return order if self.seed == 0 else stream_seed(self.seed, f"continual/order{order}")

    def order_list(self) -> list[int]:
        try:
            orders = [int(s) for s in comma_items(self.orders)]
        except ValueError as exc:
            raise FrepoError(f"orders must be comma-separated integers, got {self.orders!r}") from exc
        # below 2**32: an order seeds numpy's RandomState (`class_order`), which took 5000000000 as a traceback
        if not orders or len(set(orders)) != len(orders) or min(orders) < 0 or max(orders) >= 2**32:
            raise FrepoError(f"orders must be distinct integers in 0..2**32-1, got {self.orders!r}")
        return orders

    def arm_list(self) -> list[str]:
        """The arms given, in ARMS' order (the tables', the CSV's and the plot's, whatever order they came in)."""
        arms = comma_items(self.arms)
        for arm in arms:
            check_choice("arm", arm, ARMS)
        if not arms or len(set(arms)) != len(arms):
            raise FrepoError(f"arms must name each of {', '.join(ARMS)} at most once, got {self.arms!r}")
        return [a for a in ARMS if a in arms]

    def check_given(self, given: set[str]) -> None:
        """A given eval_steps under the dsa protocol, which counts epochs, was silently ignored (a preset's may
        be: the CPU presets set it for the default protocol, and the budget names the epochs that ran)."""
        if "eval_steps" in given and self.protocol != "frepo":
            raise FrepoError("--eval-steps applies to the frepo protocol; --protocol dsa counts --eval-epochs")

    def validate(self) -> None:
        check_fields(self)
        check_choice("protocol", self.protocol, ("frepo", "dsa"))
        for name in (
            "tasks",
            "ipc",
            "steps",
            "batch_size",
            "eval_models",
            "eval_steps",
            "eval_epochs",
            "feature_width",
        ):
            if getattr(self, name) < 1:
                raise FrepoError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.feature_steps < 0:
            raise FrepoError(f"feature_steps must be >= 0, got {self.feature_steps}")
        # As evaluate's --epochs: ignored silently otherwise (no preset sets it; CPU presets set eval_steps)
        if self.protocol == "frepo" and self.eval_epochs != ContinualConfig.eval_epochs:
            raise FrepoError("--eval-epochs applies to --protocol dsa; the frepo protocol counts --eval-steps")
        if self.lr is not None:
            check_finite("lr", self.lr, positive=True)
        self.order_list()
        self.arm_list()


# The paper's setting (official README: CIFAR-100, 5 steps of 20 classes, 20 images per class, 500k
# steps, 5 models × 10 000 evaluation steps) and its 10-task variant need a GPU; the *-cpu presets run
# here: a few hundred outer steps per task, 1 model per order, task and arm.
CPU = {"steps": 150, "batch_size": 128, "lr": 1e-2, "eval_models": 1, "eval_steps": 200}
CPU.update(feature_steps=50, feature_width=64)
PRESETS: dict[str, dict[str, Any]] = {
    "continual-cifar100": {"dataset": "cifar100", "tasks": 5, "ipc": 20},
    "continual-cifar100-10": {"dataset": "cifar100", "tasks": 10, "ipc": 20},
    "continual-cifar10-cpu": {"dataset": "cifar10", "tasks": 5, "ipc": 5, "orders": "0", **CPU},
    "continual-mnist-cpu": {"dataset": "mnist", "tasks": 5, "ipc": 5, "orders": "0", **CPU},
    "continual-fashion_mnist-cpu": {"dataset": "fashion_mnist", "tasks": 5, "ipc": 5, "orders": "0", **CPU},
}


def class_order(num_classes: int, order: int) -> list[int]:
    """The DM/FRePo class order `order`: numpy.random.RandomState(order).permutation(num_classes)."""
    return [int(c) for c in np.random.RandomState(order).permutation(num_classes)]


def task_splits(order: list[int], tasks: int) -> list[list[int]]:
    """The classes of each task: consecutive groups of len(order) / tasks in the class order."""
    size = len(order) // tasks
    return [order[k * size : (k + 1) * size] for k in range(tasks)]


class Continual(Experiment):
    """One experiment: its folder, the dataset, and the memories and evaluations of each order and task."""

    kind, settings_type, presets = "continual", ContinualConfig, PRESETS
    # more (or other) class orders, and more arms (in any order), only add units beside the ones there: a unit
    # is one order's task of one arm (`order{o}/task{t}-{arm}.json`)
    may_change = frozenset({"orders", "arms"})

    def __init__(self, config: ContinualConfig, out: str | Path, progress: bool = False):
        super().__init__(config, out, progress)
        self.raw = load_dataset(config.dataset, config.data_dir, config.download)
        self._said_flip = self._said_herding = False
        c = self.raw.num_classes
        if config.tasks > c:
            raise FrepoError(f"{config.tasks} tasks are more than the {c} classes of {self.raw.name}")
        if c % config.tasks:
            raise FrepoError(f"the {c} classes of {self.raw.name} do not split into {config.tasks} tasks of equal size")
        counts = np.bincount(self.raw.y_train, minlength=c)
        if config.ipc > counts.min():
            raise FrepoError(
                f"ipc {config.ipc} is more than class {int(counts.argmin())} can give "
                f"({int(counts.min())} training images)"
            )

    def _eval_config(self, arm: str, order: int) -> EvalConfig:
        """The evaluation of order `order`: its own seed; under dsa the distilled arm trains on its learned
        labels (soft targets), the real arms on their class ids."""
        cfg = self.config
        options: dict = {"steps": cfg.eval_steps} if cfg.protocol == "frepo" else {"epochs": cfg.eval_epochs}
        if cfg.protocol == "dsa" and arm == "frepo":
            options["soft_labels"] = True
        return EvalConfig.build(
            protocol=cfg.protocol, models=cfg.eval_models, seed=cfg.order_seed(order), device=cfg.device, **options
        )

    # ---- the memories -------------------------------------------------------------------------------
    def _data(self, classes: list[int]) -> DataConfig:
        cfg = self.config
        return DataConfig(
            dataset=cfg.dataset,
            data_dir=cfg.data_dir,
            download=cfg.download,
            val_size=0,
            classes=",".join(map(str, sorted(classes))),
        )

    def distilled(self, order: int, task: int, classes: list[int]) -> DistilledSet:
        """Task `task`'s distillation of its own classes (resumed where it stopped)."""
        folder, seed = Path(f"order{order}") / f"task{task}", self.config.order_seed(order)
        return self.distillation(folder, classes=self._data(classes).classes, seed=seed, **self._flip(folder))

    def _flip(self, folder: Path) -> dict:
        """The flip trick on every task where a flip keeps the class and the dataset's table does not turn it off
        for good: the official continual script distils each CIFAR-100 task so, whatever the IPC (frepo's
        preset at IPC 20 took the IPC 10 distillation's off). A task distilled before keeps what it recorded
        (its run would not resume with another), said once."""
        recorded = RunDir(self.out / folder).recorded("use_flip", absent=NOT_RECORDED)
        wanted = self.raw.mirror_invariant and self.config.dataset not in FLIP_OFF
        if isinstance(recorded, bool):
            if recorded != wanted and not self._said_flip:
                log.warning(
                    f"frepo: {self.out / folder} was distilled with the flip trick {'on' if recorded else 'off'} "
                    f"(before 2026-12-07); the tasks distilled so keep it, new ones take it "
                    f"{'on' if wanted else 'off'}: this folder's summary may mix the two"
                )
                self._said_flip = True
            return {"use_flip": recorded}
        return {"use_flip": True} if wanted else {}

    def exemplars(self, arm: str, order: int, task: int, classes: list[int]) -> DistilledSet:
        """`ipc` real images per class of the task, chosen at random (the distillation's own starting
        images) or by herding; written once, read back after."""
        path = self.out / f"order{order}" / f"task{task}-{arm}.safetensors"
        if path.is_file():
            kept = load_distilled(path)
            unnormalised = arm == "herding" and (kept.meta.get("config") or {}).get("features") != "l2-normalised"
            if unnormalised and not self._said_herding:  # its units were evaluated on it: kept, and said
                log.warning(
                    f"frepo: {path} was chosen on unnormalised features (before 2026-12-07); the exemplars made "
                    "so are kept, new ones are chosen on L2-normalised features: this folder's herding arm may mix "
                    "the two"
                )
                self._said_herding = True
            return kept
        cfg = self.config
        # Herding's feature network; random has none, and refuses its settings.
        features = {} if arm == "random" else {"feature_steps": cfg.feature_steps, "feature_width": cfg.feature_width}
        ds = make_subset(self._data(classes), cfg.ipc, arm, cfg.order_seed(order), **features, device=cfg.device)
        save_distilled(ds, path)
        return load_distilled(path)

    def memory(self, arm: str, order: int, task: int, classes: list[int]) -> DistilledSet:
        if arm == "frepo":
            return self.distilled(order, task, classes)
        return self.exemplars(arm, order, task, classes)

    # ---- the experiment ---------------------------------------------------------------------------------
    @property
    def _seeds_path(self) -> Path:
        return self.out / "continual-seeds.json"

    def run(self) -> dict:
        # A folder an earlier frepo made drew each order with seed + order: with a base seed other than 0 its
        # units would be mixed with units of the seeds derived now (`order_seed`). Said before the folder opens.
        made_before = self.folder.config_path.is_file() and not self._seeds_path.is_file()
        if self.config.seed != 0 and made_before:
            raise FrepoError(
                f"{self.out} was made by an earlier frepo, whose class orders drew with seed + order (--seed "
                f"{self.config.seed}); orders now draw with a seed derived from both: use another --out (or --seed 0, "
                "whose seeds are unchanged, in another folder)"
            )
        if made_before:  # before 2026-12-04 every order drew with the seed itself: order k > 0 with 0, not k
            self._refuse_orders_of_one_seed()
        return super().run()

    def _refuse_orders_of_one_seed(self) -> None:
        """A folder made before 2026-12-04 drew every class order with --seed itself (order 1 with seed 0, now 1):
        its distilled arm's runs record that seed, so a resume was refused by distill with advice (a flag) that
        continual has not, and its random and herding units would be summed with units drawn otherwise. Found
        by the runs' recorded seeds, every run on disk (not only the orders asked for now: this check runs once,
        before the folder is marked); a folder without the distilled arm keeps no record of its seeds (docs)."""
        for run in sorted(self.out.glob("order*/task*")):
            order_name, task_name = run.parent.name.removeprefix("order"), run.name.removeprefix("task")
            if not (order_name.isdigit() and task_name.isdigit()):
                continue
            order, task = int(order_name), int(task_name)
            recorded = RunDir(run).recorded("seed")
            if recorded is not None and recorded != self.config.order_seed(order):
                raise FrepoError(
                    f"{self.out} was made by an earlier frepo, whose class orders all drew with the seed "
                    f"itself (order {order}'s task {task} was distilled with seed {recorded}; the order now draws "
                    f"with seed {self.config.order_seed(order)}): use another --out, or delete that folder to "
                    "start over"
                )

    def work(self) -> dict:
        atomic_write_json(self._seeds_path, {"order_seeds": "the order with seed 0, else derived from seed and order"})
        for order in self.config.order_list():
            self._order(order)
        return self.results()

    def _order(self, order: int) -> None:
        cfg, c = self.config, self.raw.num_classes
        splits = task_splits(class_order(c, order), cfg.tasks)
        memories: dict[str, list[DistilledSet]] = {arm: [] for arm in cfg.arm_list()}
        pre = None  # the training split's preprocessing, which every memory carries: held once
        for task, classes in enumerate(splits):
            seen = [cls for split in splits[: task + 1] for cls in split]
            log.info(f"frepo: continual, order {order}, task {task + 1}/{cfg.tasks}: classes {classes}")
            for arm in cfg.arm_list():
                ds = self.memory(arm, order, task, classes)
                pre = ds.preprocessing if pre is None else pre
                memories[arm].append(sharing_preprocessing(ds, pre))
                name = f"order{order}/task{task}-{arm}.json"
                if self.folder.done(name) is None:
                    self._evaluate(name, arm, order, task, seen, memories[arm])

    def _evaluate(
        self, name: str, arm: str, order: int, task: int, seen: list[int], memory: list[DistilledSet]
    ) -> None:
        """Fresh networks on the union of the memories of tasks 0..task, tested on the seen classes only; the
        unit `name` recorded. Each network's accuracy is kept as it finishes (in the experiment folder), so an
        interruption costs the network it cut short, not the unit's others (the dsa protocol: 1000 epochs each)."""
        start = time.perf_counter()
        ds = union(memory)
        test_x, test_y = test_split_of(ds, self.raw, seen)
        config = self._eval_config(arm, order)
        checksums = [m.meta.get("checksum") for m in memory]
        split_id = f"{self.raw.test_fingerprint()}:{seen}"
        depth = config.network_depth(ds.meta)
        key = evaluation_key(json.dumps(checksums), config, config.archs()[0], split_id, ds.mirror_invariant, depth)
        finished = FinishedNetworks(key, self.out)
        result = evaluate_set(ds, test_x, test_y, config, progress=self.progress, finished=finished)
        log.info(f"frepo: order {order}, task {task + 1}, {arm}: {mean_std(result.mean, result.std, result.models)}%")
        self.folder.record(name, {
            "order": order,
            "task": task,
            "arm": arm,
            "classes_seen": seen,
            "num_images": int(len(ds.images)),
            "test_images": int(len(test_y)),
            "memory_checksums": checksums,
            "seconds": time.perf_counter() - start,
            **result.to_dict(),
        })  # fmt: skip
        finished.clear()  # the unit is recorded: nothing of it left to resume

    # ---- the results --------------------------------------------------------------------------------
    def results(self) -> dict:
        """What continual.json holds beside the settings: the accuracies per task, arm and order."""
        cfg = self.config
        per_model: dict[str, list[list[float]]] = {arm: [[] for _ in range(cfg.tasks)] for arm in cfg.arm_list()}
        orders = {}
        for order in cfg.order_list():
            accs: dict[str, list[list[float]]] = {arm: [] for arm in cfg.arm_list()}  # per task, per model
            for task in range(cfg.tasks):
                for arm in cfg.arm_list():
                    result = self.folder.done(f"order{order}/task{task}-{arm}.json")
                    assert result is not None  # work() recorded every unit (`_order`) before it asks for these
                    accs[arm].append(result["accuracies"])
                    per_model[arm][task] += result["accuracies"]
            splits = task_splits(class_order(self.raw.num_classes, order), cfg.tasks)
            orders[str(order)] = {"tasks": splits, "accuracies": accs}
            if "frepo" in cfg.arm_list():  # per task: a folder distilled before 2026-12-07 may mix the two
                folders = [self.out / f"order{order}" / f"task{task}" for task in range(cfg.tasks)]
                orders[str(order)]["use_flip"] = [RunDir(folder).recorded("use_flip") for folder in folders]
        size = self.raw.num_classes // cfg.tasks
        return {
            "per_task": {arm: [float(np.mean(a)) for a in per_model[arm]] for arm in per_model},
            "per_task_std": {arm: [float(np.std(a)) for a in per_model[arm]] for arm in per_model},
            "final": {arm: float(np.mean(per_model[arm][-1])) for arm in per_model},
            "classes_seen": [size * (k + 1) for k in range(cfg.tasks)],
            "orders": orders,
        }

    def settings(self) -> dict:
        orders = self.config.order_list()
        return {
            **super().settings(),
            "evaluation": to_dict(self._eval_config("frepo", orders[0])),  # its seed: the first order's
            "order_seeds": {str(order): self.config.order_seed(order) for order in orders},
        }

    def budget(self) -> str:
        cfg = self.config
        distilled = "frepo" in cfg.arm_list()  # the other arms distil nothing
        return (
            f"{count_of(len(cfg.order_list()), 'class order')}; "
            + (
                f"{count_of(cfg.steps, 'distillation step')} × real batch {cfg.batch_size} per task; "
                if distilled
                else ""
            )
            + f"{count_of(cfg.eval_models, 'model')} per order, task and arm, "
            + (count_of(cfg.eval_steps, "step") if cfg.protocol == "frepo" else count_of(cfg.eval_epochs, "epoch"))
            + f" of the {cfg.protocol} protocol"
        )

    def tables(self, summary: dict) -> tuple[str, str]:
        arms = list(summary["per_task"])
        header = ["task", "classes seen", *arms]

        def count(arm: str, task: int) -> int:  # the measurements of a cell: every order's models
            return sum(len(order["accuracies"][arm][task]) for order in summary["orders"].values())

        def cell(arm: str, task: int) -> str:
            return mean_std(summary["per_task"][arm][task], summary["per_task_std"][arm][task], count(arm, task))

        rows = [[str(k + 1), str(seen)] + [cell(a, k) for a in arms] for k, seen in enumerate(summary["classes_seen"])]
        title = f"# Continual learning: {self.raw.name}, {self.config.tasks} tasks, IPC {self.config.ipc}\n\n"
        note = (
            "\nTest accuracy (%) on the classes seen so far, mean ± std over orders and models. "
            f"Budget: {summary['budget']}.\n"
        )
        csv_rows = [  # each row with its budget (a CSV travels without the table's note) and, last (a column
            # added after the others), its count of measurements (a std of one is 0.0, no spread)
            [k + 1, seen, a, summary["per_task"][a][k], summary["per_task_std"][a][k], summary["budget"], count(a, k)]
            for k, seen in enumerate(summary["classes_seen"])
            for a in arms
        ]
        markdown = title + markdown_table(header, rows) + note
        return markdown, csv_text(["task", "classes_seen", "arm", "mean", "std", "budget", "count"], csv_rows)

    def plot(self, plt, summary: dict):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        x = summary["classes_seen"]
        for arm, means in summary["per_task"].items():
            mean, std = np.asarray(means), np.asarray(summary["per_task_std"][arm])
            ax.plot(x, mean, marker="o", label=arm)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_xlabel("classes seen")
        ax.set_ylabel("test accuracy on seen classes (%)")
        ax.set_title(
            f"{self.raw.name}: {self.config.tasks} tasks, IPC {self.config.ipc}\nbudget: {summary['budget']}",
            fontsize=7,
            wrap=True,
        )
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        return fig, ax


def continual(
    config: ContinualConfig | None = None,
    out: str | Path = "runs/continual",
    *,
    preset: str | None = None,
    progress: bool = False,
    **overrides: Any,
) -> dict:
    """Run (or resume) a continual-learning experiment into `out`; returns what continual.json holds.
    `frepo.continual(preset="continual-cifar10-cpu", out="runs/cl")`, or `dataset=..., tasks=..., ipc=...`."""
    return run_experiment(Continual, config, out, preset, progress, overrides)
