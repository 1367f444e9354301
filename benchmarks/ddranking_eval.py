"""DD-Ranking's own evaluation of frepo sets: its hard-label (IOR, HLR, LRS of `LabelRobustScoreHard`) or
soft-label metric (`LabelRobustScoreSoft`), run by the `ddranking` package itself on the offline data.

    python benchmarks/ddranking_eval.py SET [SET ...] --metric hard|soft --work DIR --json OUT
        [--space ddranking|ddranking-zca|frepo] [--epochs 300] [--aug cutmix|dsa] [--num-eval 1]
        [--test-every 10] [--lr file|search] [--teacher-epochs 3] [--full-acc X] [--seed 0]

Run it with an interpreter that has `ddranking` (0.2.0 pins numpy<2, so beside frepo's own venv:
`python -m venv .venv-ddranking && .venv-ddranking/bin/pip install -e . ddranking`). SET: a frepo file,
exported here with `frepo export --format pt --space SPACE` (the metric's DD-Ranking space by default:
`ddranking` for hard labels, `ddranking-zca` for soft), or a `frepo export` pt folder as it is. Every set
of one run is scored against the same random subsets (drawn and trained once per evaluation).

What DD-Ranking does, and the harness leaves to it: the dataset and its test transform
(`ddranking.utils.get_dataset`, from a torchvision CIFAR layout this script writes under WORK from
$FREPO_DATA_DIR/<dataset>.npz), the random subsets (`get_random_data_tensors`), the networks
(`build_model`), each training run and its test accuracy (the scorer's `_compute_*_metrics` methods:
SGD, step schedule, the augmentation, the best test accuracy over the evaluations every `test_interval`
epochs) and the learning-rate search over [0.001, 0.005, 0.01, 0.05, 0.1], which picks on the test split.
What the harness does instead of `compute_metrics`, because ddranking 0.2.0 cannot run it here:
  - seeds: `set_seed(seed + i)` before evaluation i (0.2.0 seeds from the clock);
  - the full-dataset accuracy of HLR: `--full-acc X` (0.2.0 caches none for CIFAR; training ConvNet-3 on
    the full split for 200 epochs is hours on a CPU); without it HLR and LRS are null;
  - no `save_results` (0.2.0 appends each LRS twice, and pandas refuses the uneven columns);
  - soft labels: the random subsets are labelled by the teacher here (0.2.0's `_get_random_data_helper`
    passes its arguments to `get_random_data_tensors` shifted by one, and `_generate_soft_labels` reads an
    attribute that does not exist); the teacher is ConvNet-3 trained with DD-Ranking's CIFAR real-data
    recipe (SGD 0.01, momentum 0.9, wd 5e-4, batch 512, step schedule at half) for `--teacher-epochs`, in
    the soft metric's space, saved where DD-Ranking looks (WORK/teacher_models/<DATASET>/ConvNet-3);
  - the random subsets' class map also takes tensor labels (with `use_zca` 0.2.0's training split yields
    them, and `get_random_data_tensors` looks them up in an int-keyed dict);
  - CIFAR files: torchvision's integrity check is skipped for the files written from the offline copy.
Then, as DD-Ranking defines them: IOR = acc(set) − acc(random) (soft: both with soft labels), HLR =
full − acc(set, hard labels), LRS = (e^a − e^-1)/(e^1 − e^-1) with a = λ·IOR − (1 − λ)·HLR, λ = 0.5.

The JSON: "settings" (everything above that was chosen), "teacher" (soft: epochs, test accuracy),
"random" (per evaluation: accuracy, lr), "sets" (per set: the export's manifest space and ddranking
settings, per evaluation: the accuracies, lrs, ior, hlr, lrs; and their means and stds), "seconds".
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}  # what this harness writes a torchvision layout for


def write_cifar(npz_path: Path, root: Path, dataset: str) -> None:
    """The torchvision CIFAR layout (python pickles) from an offline .npz, once."""
    with np.load(npz_path) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))

    def rows(x: np.ndarray) -> np.ndarray:  # N×H×W×C uint8 -> N×3072, channel-major as CIFAR stores it
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))

    def dump(obj: dict, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh)
        tmp.replace(path)

    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        if (folder / "test_batch").is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        for b, part in enumerate(np.array_split(np.arange(len(x_train)), 5), start=1):
            dump({"data": rows(x_train[part]), "labels": y_train[part].tolist()}, folder / f"data_batch_{b}")
        dump({"label_names": [str(i) for i in range(10)]}, folder / "batches.meta")
        dump({"data": rows(x_test), "labels": y_test.tolist()}, folder / "test_batch")
    else:
        folder = root / "cifar-100-python"
        if (folder / "test").is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        dump({"data": rows(x_train), "fine_labels": y_train.tolist()}, folder / "train")
        dump({"fine_label_names": [str(i) for i in range(100)]}, folder / "meta")
        dump({"data": rows(x_test), "fine_labels": y_test.tolist()}, folder / "test")


def load_export(path: Path, space: str, work: Path) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(manifest, images, soft labels, hard labels, lr) of a pt export, exporting a frepo file first."""
    from frepo.io.export import export

    if path.is_file():
        folder = work / f"export-{path.parent.name}-{path.stem}-{space}"
        export(path, folder, "pt", space)
        path = folder
    manifest = json.loads((path / "export.json").read_text())
    if manifest.get("layout") != "pt":
        raise SystemExit(f"{path}: a pt export is needed, this is {manifest.get('layout')}")
    load = lambda name: torch.load(path / name, map_location="cpu")  # noqa: E731
    return manifest, load("images.pt"), load("labels.pt"), load("hard_labels.pt"), float(load("lr.pt"))


class IntKeys(dict):
    """DD-Ranking's class map, also for tensor keys (its ZCA'd training split yields tensor labels)."""

    def __getitem__(self, key):
        return super().__getitem__(int(key))


def mean_std(values: list[float | None]) -> dict:
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def lrs_of(ior: float, hlr: float | None, lam: float = 0.5) -> float | None:
    if hlr is None:
        return None
    alpha = lam * ior - (1 - lam) * hlr
    return float((np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1)))


def train_teacher(args, dd_name: str, use_zca: bool, device: str) -> dict:
    """ConvNet-3 on the full training split with DD-Ranking's real-data recipe for `--teacher-epochs`."""
    from ddranking.utils import build_model, get_dataset, get_lr_scheduler, get_optimizer, train_one_epoch, validate
    from ddranking.utils.train_and_eval import REAL_DATA_TRAINING_CONFIG
    from torch.utils.data import DataLoader

    path = args.work / "teacher_models" / dd_name / "ConvNet-3" / "ckpt_best.pt"
    record = path.with_suffix(".json")
    if path.is_file() and record.is_file():
        return json.loads(record.read_text())
    recipe = REAL_DATA_TRAINING_CONFIG[f"{dd_name}-ConvNet-3"]
    *_, num_classes, dst_train, dst_test, _, class_map, _ = get_dataset(
        dd_name, str(args.work / "dataset"), (32, 32), use_zca, None, device
    )
    torch.manual_seed(args.seed)
    model = build_model("ConvNet-3", num_classes, (32, 32), device=device)
    optimizer = get_optimizer("sgd", model, recipe["lr"], recipe["weight_decay"], recipe["momentum"])
    scheduler = get_lr_scheduler("step", optimizer, args.teacher_epochs, max(1, args.teacher_epochs // 2))
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(dst_train, batch_size=recipe["batch_size"], shuffle=True, generator=generator)
    start = time.perf_counter()
    for epoch in range(args.teacher_epochs):
        train_one_epoch(
            epoch,
            model,
            loader,
            torch.nn.CrossEntropyLoss(),
            optimizer,
            lr_scheduler=scheduler,
            class_map=class_map,
            device=device,
        )
    acc = validate(model, DataLoader(dst_test, batch_size=512), device=device, class_map=class_map)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    out = {
        "epochs": args.teacher_epochs,
        "test_accuracy": float(acc),
        "seconds": time.perf_counter() - start,
        "recipe": {**recipe, "num_epochs": args.teacher_epochs, "step_size": max(1, args.teacher_epochs // 2)},
    }
    record.write_text(json.dumps(out, indent=2))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sets", nargs="+", type=Path)
    p.add_argument("--metric", choices=("hard", "soft"), required=True)
    p.add_argument("--work", type=Path, required=True, help="dataset layout, exports, random subsets, teacher")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--space", choices=("ddranking", "ddranking-zca", "frepo"), help="default: the metric's")
    p.add_argument("--dataset", default="cifar10", choices=tuple(DATASETS))
    p.add_argument("--ipc", type=int, required=True)
    p.add_argument("--epochs", type=int, default=300, help="DD-Ranking's class default (its configs: 1000)")
    p.add_argument("--aug", choices=("cutmix", "dsa"), default="cutmix")
    p.add_argument("--num-eval", type=int, default=1)
    p.add_argument("--test-every", type=int, help="epochs between test evaluations (default: DD-Ranking's)")
    p.add_argument("--lr", choices=("file", "search"), default="file", help="the sets' lr: lr.pt or the search")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--full-acc", type=float, help="full-dataset accuracy for HLR (not measured here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import ddranking.utils.misc as dd_misc
    import torchvision.datasets.cifar
    from ddranking.metrics import LabelRobustScoreHard, LabelRobustScoreSoft
    from ddranking.utils import get_random_data_tensors, set_seed

    started = time.perf_counter()
    data_dir = Path(os.environ.get("FREPO_DATA_DIR", "../shared/data"))
    args.work.mkdir(parents=True, exist_ok=True)
    dd_name = DATASETS[args.dataset]
    write_cifar(data_dir / f"{args.dataset}.npz", args.work / "dataset", args.dataset)
    # written from the offline copy, not the published archive: torchvision's md5 checks would refuse them
    torchvision.datasets.cifar.check_integrity = lambda *a, **k: True
    dd_misc.save_results = lambda *a, **k: None
    space = args.space or ("ddranking" if args.metric == "hard" else "ddranking-zca")
    use_zca = space == "ddranking-zca"  # a frepo-space export is scored as DD-Ranking's hard config would
    dsa = {"flip": 0.5, "rotate": 15.0, "saturation": 2.0, "brightness": 1.0, "contrast": 0.5, "scale": 1.2}
    dsa.update(crop=0.125, cutout=0.5, latestseed=-1, siamese=False)  # its configs' values, its class's keys
    aug_params = {"beta": 1.0} if args.aug == "cutmix" else dsa
    common = dict(
        dataset=dd_name,
        real_data_path=str(args.work / "dataset"),
        ipc=args.ipc,
        model_name="ConvNet-3",
        data_aug_func=args.aug,
        aug_params=aug_params,
        num_eval=args.num_eval,
        im_size=(32, 32),
        num_epochs=args.epochs,
        use_zca=use_zca,
        num_workers=0,
        device=args.device,
        save_path=str(args.work / "results" / "unused.csv"),
        step_size=args.epochs // 2,
    )
    teacher = None
    if args.metric == "hard":
        scorer = LabelRobustScoreHard(**common, random_data_format="tensor")
    else:
        teacher = train_teacher(args, dd_name, use_zca, args.device)
        scorer = LabelRobustScoreSoft(
            **common,
            soft_label_mode="S",
            use_aug_for_hard=True,
            soft_label_criterion="mse_gt",
            loss_fn_kwargs={"mse_weight": 1.0, "ce_weight": 0.0},
            teacher_dir=str(args.work / "teacher_models"),
            teacher_model_names=["ConvNet-3"],
            random_data_format="tensor",
        )
    if args.test_every:
        scorer.test_interval = args.test_every
    sets = {str(path): load_export(path, space, args.work) for path in args.sets}

    def syn_hard(images, hard, lr, search):
        return scorer._compute_hard_label_metrics_helper(
            image_tensor=images, image_path=None, hard_labels=hard, lr=lr, mode="syn", hyper_param_search=search
        )

    random_runs, results = [], {name: [] for name in sets}
    for i in range(args.num_eval):
        set_seed(args.seed + i)
        x, y = get_random_data_tensors(
            dd_name,
            scorer.dst_train,
            scorer.class_to_indices,
            args.ipc,
            IntKeys(scorer.class_map),
            i,
            str(args.work / "random_data" / f"{dd_name}_IPC{args.ipc}" / f"iter{i}"),
        )
        if args.metric == "hard":
            acc, lr = syn_hard(x, y, None, True)
        else:
            with torch.no_grad():
                soft = torch.stack([t(x.to(args.device)) for t in scorer.teacher_models]).mean(0).cpu()
            acc, lr = scorer._compute_soft_label_metrics_helper(x, None, soft, None, hyper_param_search=True)
        random_runs.append({"accuracy": float(acc), "lr": lr})
        print(f"eval {i}: random subset {acc:.2f}% (lr {lr})", flush=True)
        for name, (_manifest, images, labels, hard, lr_file) in sets.items():
            set_seed(args.seed + i)
            search = args.lr == "search"
            row = {}
            if args.metric == "hard":
                row["accuracy"], row["lr"] = syn_hard(images, hard, lr_file, search)
                row["hard_accuracy"] = row["accuracy"]
            else:
                row["hard_accuracy"], row["hard_lr"] = syn_hard(images, hard, None, True)
                set_seed(args.seed + i)
                row["accuracy"], row["lr"] = scorer._compute_soft_label_metrics_helper(
                    images, None, labels.float(), None if search else lr_file, hyper_param_search=search
                )
            row["ior"] = row["accuracy"] - random_runs[-1]["accuracy"]
            row["hlr"] = None if args.full_acc is None else args.full_acc - row["hard_accuracy"]
            row["lrs"] = lrs_of(row["ior"], row["hlr"])
            results[name].append(
                {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in row.items()}
            )
            print(f"eval {i}: {name}: {row}", flush=True)

    out = {
        "settings": {
            **{k: v for k, v in common.items() if k not in ("save_path",)},
            "metric": args.metric,
            "space": space,
            "test_interval": scorer.test_interval,
            "lr": args.lr,
            "seed": args.seed,
            "full_acc": args.full_acc,
            "ddranking": __import__("ddranking").__version__
            if hasattr(__import__("ddranking"), "__version__")
            else "0.2.0",
            "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
            "command": " ".join(sys.argv),
        },
        "teacher": teacher,
        "random": {"runs": random_runs, **mean_std([r["accuracy"] for r in random_runs])},
        "sets": {
            name: {
                "space": sets[name][0]["images"]["space"],
                "ddranking": sets[name][0].get("ddranking"),
                "runs": rows,
                **{key: mean_std([r[key] for r in rows]) for key in ("accuracy", "hard_accuracy", "ior", "hlr", "lrs")},
            }
            for name, rows in results.items()
        },
        "seconds": time.perf_counter() - started,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(args.json)
    print(
        json.dumps(
            {name: {k: s[k] for k in ("accuracy", "ior", "hlr", "lrs")} for name, s in out["sets"].items()}, indent=1
        )
    )
    print(f"random: {out['random']['mean']}; {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
