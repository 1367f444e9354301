"""`frepo privacy`: the membership-inference defence of distilled data (the paper's §5, the official
`script/mia.py`), with the low-FPR view and a stronger attack beyond the paper.

Members are a chunk of the training split (chunk k of `chunk_size` images, in the split's order); the
non-members are test images, as many as the members (all of them in the reference setting, 10 000 of
each). The chunk alone is distilled (IPC per class, learned labels). Fresh victims then train for an
increasing number of steps on (a) the **learned** distilled set and (b) the real chunk — Conv without
norm, Adam with a constant 3e-4, MSE, the reference augmentation, shuffled batches of min(N, 256) for the
distilled set and `victim_batch` for the real chunk, as in mia.py — and each victim is tested and
attacked (`frepo.apps.attacks`: loss threshold, logistic regression, MLP, random forest, k-nearest
neighbours; with `lira_shadows` ≥ 2, offline LiRA whose shadows repeat the arm's pipeline without the
targets: real shadows train on other training images, start shadows on other chunks' starting images,
distilled shadows on the distillations of other chunks). The **start** arm trains, as the distilled arm does,
on the distillation's starting images: the ipc members per class it was initialised from, with their class
labels (what the released mia.py's distilled arm trained on, `x_proto` from `init_proto`); against it the
distilled arm shows what distilling adds or removes, at the same size. Each arm's loss threshold is also
scored on those starting members alone (`threshold_start`): they are a small share of the members, so a leak
of them barely moves the AUC over all members; and on the other members (`threshold_others`), which the start
arm's victims never saw: on those, the start arm is the distilled arm's floor at its own size (a victim of 100
images scores train against test images otherwise than one of 2 000, the control).
A last arm, **control**, separates distribution shift from leakage: a victim trained like the
real arm on as many other training images (neither members nor non-members) and attacked on the same
members and non-members. It saw neither, so what its attacks find is the shift between the members' and
the non-members' distributions: the floor the other arms are read against. `nonmembers="train"` draws
the non-members from training images outside the members' chunk instead of the test split, which
removes that shift by construction.

The released mia.py builds its distilled arm from the initial real images (`x_proto` from `init_proto`)
rather than the learned set: frepo's start arm; frepo's distilled arm trains on the file its distillation
wrote at its last step (`distilled.safetensors`), whose checksum every row of privacy.json names.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.atomic import atomic_write
from ..base.device import host_tensor, resolve_device
from ..base.errors import FrepoError
from ..base.fields import CommaList, check_choice, check_fields, check_finite, comma_items, opt
from ..base.rng import generator, stream_seed
from ..config import DATA_DIR_HELP
from ..data import load_dataset
from ..eval.augment import reference_ops
from ..eval.results import mean_std
from ..io.artifact import DistilledSet, regression_targets
from ..method.krr import centered_one_hot
from ..method.synthetic import pick_real
from .attacks import (
    ATTACK_SETS,
    ATTACKS,
    auc_difference,
    confidence,
    lira_offline,
    resampled_mean_aucs,
    roc_metrics,
    run_attacks,
)
from .common import csv_text, markdown_table
from .experiment import Experiment, run_experiment
from .victims import outputs, train_victim

log = logging.getLogger(__name__)

ARMS = ("distilled", "start", "real", "control")
# How a victim record's numbers were made; a record of another is trained and scored again. 2 (2026-12-07):
# LiRA scored by z, TPR on every ROC point, AUC's standard error, the start arm's labels scaled by 1/sqrt(C/10).
# 3 (2026-12-07): TPR at FPR below x (LiRA's reading, not at most x), the loss threshold on the other members.
SCORING = 3


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as fh:  # np.save given a path would add ".npy" to the temp file's name
        np.save(fh, values)


def _losses_name(arm: str, steps: int, model: int) -> str:
    """Where a victim's per-example losses are kept: the attacked members', then the non-members'."""
    return f"victims/{arm}-{steps}-m{model}-loss.npy"


def _scored_as_now(record: dict) -> bool:
    """Whether a victim record was scored as today's are (`scoring` SCORING; one without the field is older)."""
    return record.get("scoring") == SCORING


NONMEMBER_SPLITS = ("test", "train")
# The bootstrap of the arms' comparisons (`resampled_mean_aucs`): resamples of the examples and victims.
BOOTSTRAP_RESAMPLES = 2000
# What each arm is compared with, where both ran: the floor (a victim that saw no member), and the real
# members and the starting images themselves for the distilled arm.
COMPARISONS = (("distilled", "control"), ("start", "control"), ("real", "control"), ("distilled", "real"),
               ("distilled", "start"))  # fmt: skip


@dataclass
class PrivacyConfig:
    dataset: str = opt("mnist", "dataset name, .npz file or ImageFolder directory")
    chunk: int = opt(0, "the members: chunk `chunk` of the training split (0-based)")
    chunk_size: int = opt(10000, "training images per chunk (the members)")
    ipc: int = opt(50, "images per class of the distilled set")
    steps: int = opt(500_000, "outer steps of the distillation")
    batch_size: int = opt(1024, "real images per distillation step")
    lr: float | None = opt(
        None,
        "LAMB learning rate of the distillation (default: the one frepo distill takes for this dataset, IPC "
        "and --steps, recorded with the settings: 3e-4 at the paper's 500 000 steps, 1e-2 up to 1000)",
    )
    arms: CommaList = opt(
        ",".join(ARMS),
        "the arms, comma-separated: distilled (the learned set), start (the images it started from), real (the "
        "members), control (as many other training images: the distribution shift's floor); without distilled, "
        "nothing is distilled",
        listed=True,
    )
    victim_steps: CommaList = opt(
        "100,250,500,1000,2000,4000,8000,16000", "training steps of the victims, comma-separated", listed=True
    )
    victim_batch: int = opt(
        1024, "batch of the victims of the real and control arms (the distilled and start arms: min(N, 256))"
    )
    victim_lr: float = opt(3e-4, "Adam learning rate of the victims (constant, as mia.py)")
    victim_width: int = opt(128, "width of the victims' Conv")
    models: int = opt(5, "victims per arm and step count (the reference: 5, their mean accuracy reported)")
    attacks: str = opt(
        "reference",
        "the attack set: reference (TF-Privacy's, as mia.py: [logits, loss], a 3-fold grid search per model) or "
        "frepo (faster: [logits, loss, one-hot label], fixed hyperparameters)",
        choices=ATTACK_SETS,
    )
    lira_shadows: int = opt(0, "shadow networks per arm and step count for offline LiRA (0: off; at least 2)")
    nonmembers: str = opt(
        "test",
        "where the non-members come from: test (the reference: the test split) or train (training images outside "
        "the members' chunk: no distribution shift between members and non-members)",
        choices=NONMEMBER_SPLITS,
    )
    seed: int = opt(0, "seed of the distillation, the victims and the attacks")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    data_dir: str | None = opt(None, DATA_DIR_HELP)
    download: bool = opt(True, "download a missing dataset (torchvision's downloader, or the layout's public archive)")

    def arm_list(self) -> list[str]:
        """The arms given, in ARMS' order (the tables' and the plot's)."""
        given = comma_items(self.arms)
        for arm in given:
            check_choice("arm", arm, ARMS)
        if not given:
            raise FrepoError(f"arms must name at least one of {', '.join(ARMS)}")
        if len(set(given)) != len(given):
            raise FrepoError(f"arms must name each of {', '.join(ARMS)} at most once, got {self.arms!r}")
        return [a for a in ARMS if a in given]

    def step_list(self) -> list[int]:
        try:
            given = [int(s) for s in comma_items(self.victim_steps)]
        except ValueError as exc:
            raise FrepoError(f"victim_steps must be comma-separated integers, got {self.victim_steps!r}") from exc
        steps = sorted(set(given))
        if not steps or steps[0] < 1 or len(steps) != len(given):  # as distinct as continual's orders
            raise FrepoError(f"victim_steps must be distinct integers >= 1, got {self.victim_steps!r}")
        return steps

    def validate(self) -> None:
        check_fields(self)
        for name in ("chunk_size", "ipc", "steps", "batch_size", "victim_batch", "victim_width", "models"):
            if getattr(self, name) < 1:
                raise FrepoError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.chunk < 0:
            raise FrepoError(f"chunk must be >= 0, got {self.chunk}")
        # the attacks seed scikit-learn's models and folds with it (random_state: 0..2**32-1): another seed was a
        # traceback after the distillation and the first victim had run
        if not 0 <= self.seed < 2**32:
            raise FrepoError(f"seed must be in 0..2**32-1 (it seeds scikit-learn's attack models), got {self.seed}")
        if self.lira_shadows < 0 or self.lira_shadows == 1:
            raise FrepoError(f"lira_shadows must be 0 (off) or at least 2, got {self.lira_shadows}")
        for name in ("lr", "victim_lr"):
            if getattr(self, name) is None:  # lr: the budget's
                continue
            check_finite(name, getattr(self, name), positive=True)
        self.step_list()
        self.arm_list()


# The reference (official README): MNIST, chunks of 10 000, IPC 50, 500k steps; victims of 100 … 16 000
# steps; a GPU job. The CPU preset runs here in under half an hour: a chunk of 2 000 members, IPC 10, 200
# outer steps, victims of 100 … 1 600 steps with a Conv of width 32 instead of 128.
PRESETS: dict[str, dict[str, Any]] = {
    "privacy-mnist": {"dataset": "mnist"},
    "privacy-mnist-cpu": {
        "dataset": "mnist",
        "chunk_size": 2000,
        "ipc": 10,
        "steps": 200,
        "batch_size": 128,
        "lr": 1e-2,
        "victim_steps": "100,400,1600",
        "victim_batch": 128,
        "victim_width": 32,
        "models": 1,  # the reference's 5 victims and attacks: most of an hour on 2 cores (docs/downstream.md)
        "attacks": "frepo",
    },
}


class Privacy(Experiment):
    """One experiment: the distilled chunk, the members and non-members, and the victims of each arm."""

    kind, settings_type, presets = "privacy", PrivacyConfig, PRESETS
    may_change = frozenset({"victim_steps", "models", "arms"})  # more step counts, victims or arms only add units
    # A folder from before --arms ran the arms of its time (before the start arm: distilled, real, control).
    held_before_record = {"arms": lambda folder: ",".join(a for a in ARMS if any((folder / "victims").glob(f"{a}-*")))}

    def __init__(self, config: PrivacyConfig, out: str | Path, progress: bool = False):
        super().__init__(config, out, progress)
        self.raw = load_dataset(config.dataset, config.data_dir, config.download)
        self._said_scoring = False
        self._stale_shadows: set[tuple[str, int]] = set()  # (arm, steps) whose shadows an old scoring made
        n = len(self.raw.y_train)
        start = config.chunk * config.chunk_size
        if start >= n:
            chunks = -(-n // config.chunk_size)
            raise FrepoError(
                f"chunk {config.chunk} is beyond the training split: {n} images make {chunks} chunks of "
                f"{config.chunk_size} (0..{chunks - 1})"
            )
        self.member_idx = np.arange(start, min(start + config.chunk_size, n))
        # Every configuration error before any work: the members' chunk and, with LiRA, the shadows' chunks
        # (the distilled arm's shadow j distils another chunk, the start arm's trains on its starting images)
        # must each give `ipc` images of every class.
        chunks = -(-n // config.chunk_size)
        other_chunks = bool({"distilled", "start"} & set(config.arm_list())) and config.lira_shadows > 0
        if other_chunks and config.lira_shadows > chunks - 1:
            raise FrepoError(
                f"lira_shadows {config.lira_shadows} needs as many chunks besides the members' chunk {config.chunk}, "
                f"and {n} training images make {chunks} chunks of {config.chunk_size}: at most {chunks - 1} shadows"
            )
        shadow_chunks = [j if j < config.chunk else j + 1 for j in range(config.lira_shadows if other_chunks else 0)]
        for chunk in [config.chunk, *shadow_chunks]:
            labels = self.raw.y_train[chunk * config.chunk_size : (chunk + 1) * config.chunk_size]
            counts = np.bincount(labels, minlength=self.raw.num_classes)
            if config.ipc > counts.min():
                role = "the members' chunk" if chunk == config.chunk else "a LiRA shadow's chunk"
                raise FrepoError(
                    f"ipc {config.ipc} is more than class {int(counts.argmin())} of chunk {chunk} ({role}) can give "
                    f"({int(counts.min())} images)"
                )
        # As many non-members as members (all of the test split in the reference setting), and the control
        # arm's training images: as many again, from outside the members' chunk and the non-members.
        outside = np.setdiff1d(np.arange(n), self.member_idx)
        if config.nonmembers == "train":
            if other_chunks:
                raise FrepoError(
                    "nonmembers=train with lira_shadows: the distilled and start arms' shadows train on other chunks "
                    "of the training split, which hold the non-members; use nonmembers=test for LiRA, or --arms "
                    "without them"
                )
            count = min(len(self.member_idx), len(outside) // 2)
            perm = torch.randperm(len(outside), generator=generator(config.seed, "privacy/nonmembers")).numpy()
            self.nonmember_idx = np.sort(outside[perm[:count]])
            outside = np.setdiff1d(outside, self.nonmember_idx)
        else:
            count = min(len(self.member_idx), len(self.raw.y_test))
            perm = torch.randperm(len(self.raw.y_test), generator=generator(config.seed, "privacy/nonmembers"))
            self.nonmember_idx = np.sort(perm[:count].numpy())
        # Found only after the distillation otherwise: attacks with no non-members, a control arm with no images.
        if count == 0:
            train = config.nonmembers == "train"
            where = "the training split outside the members' chunk" if train else "the test split"
            raise FrepoError(
                f"no non-members: {where} has too few images; use a smaller --chunk-size or the other --nonmembers"
            )
        self.attacked_member_idx = self.member_idx[:count]
        perm = torch.randperm(len(outside), generator=generator(config.seed, "privacy/control")).numpy()
        self.control_idx = np.sort(outside[perm[: len(self.member_idx)]])
        if not len(self.control_idx) and "control" in config.arm_list():
            raise FrepoError(
                f"no images for the control arm: the members' chunk {config.chunk} takes {len(self.member_idx)} of "
                f"the {n} training images (--chunk-size {config.chunk_size}), and the control arm trains on others; "
                "use a smaller --chunk-size"
            )
        if count < len(self.member_idx):
            log.info(
                f"frepo: {len(self.member_idx)} members, {count} non-members available: the attacks use "
                f"the first {count} members (the distillation and the real arm use all of them)"
            )
        self.outside = outside  # training images in neither the members' chunk nor the non-members
        self.start_idx = self._start_idx(config.chunk)  # the members the distillation starts from
        self.device = resolve_device(config.device)

    # ---- the sets the victims train on -----------------------------------------------------------------
    def _distilled(self, chunk: int, folder: str) -> DistilledSet:
        """The distillation of training chunk `chunk` in `out/folder`."""
        return self.distillation(folder, train_chunk=chunk, train_chunk_size=self.config.chunk_size)

    def _starting_set(self) -> DistilledSet:
        """The distillation's starting images of the members' chunk, with its preprocessing (nothing learned)."""
        from ..jobs.subset import make_subset

        run = self.distill_config(train_chunk=self.config.chunk, train_chunk_size=self.config.chunk_size)
        return make_subset(run.data, run.ipc, seed=run.seed, device=run.device)

    def _start_idx(self, chunk: int) -> np.ndarray:
        """The training images the distillation of chunk `chunk` starts from: its trainer's very draws
        (`pick_real` over the chunk's labels, every class, the run's seed)."""
        size, n = self.config.chunk_size, len(self.raw.y_train)
        rows = np.arange(chunk * size, min((chunk + 1) * size, n))
        labels = host_tensor(np.asarray(self.raw.y_train[rows]))
        picked = pick_real(labels, range(self.raw.num_classes), self.config.ipc, self.config.seed)
        return rows[picked.numpy()]

    def _training_set(self, arm: str, ds: DistilledSet, shadow: int | None = None) -> tuple[torch.Tensor, ...]:
        """(images, targets, batch) the arm's victim (or its shadow number `shadow`) trains on."""
        cfg = self.config
        if arm == "distilled":
            source = ds if shadow is None else self._shadow_distilled(shadow)
            return source.images.float(), source.targets(), min(len(source.images), 256)
        if arm == "start":  # the batch and labels of mia.py's x_proto: min(N, 256), class ids
            idx = self.start_idx if shadow is None else self._start_idx(self._shadow_chunk(shadow))
            labels = host_tensor(self.raw.y_train[idx])
            # scaled as init_proto(scale_y=True) scales them: by 1/sqrt(C/10) (1 for MNIST's 10 classes)
            return (
                ds.transform(self.raw.x_train[idx]),
                regression_targets(labels, self.raw.num_classes),
                min(len(idx), 256),
            )
        if shadow is not None:
            idx = self._shadow_real_idx(shadow)
        else:
            idx = self.member_idx if arm == "real" else self.control_idx
        labels = host_tensor(self.raw.y_train[idx])
        return ds.transform(self.raw.x_train[idx]), centered_one_hot(labels, self.raw.num_classes), cfg.victim_batch

    def _shadow_chunk(self, shadow: int) -> int:
        """Another chunk than the members' (`__init__` checked it): shadow j's is chunk j, or j+1 from theirs on."""
        return shadow if shadow < self.config.chunk else shadow + 1

    def _shadow_distilled(self, shadow: int) -> DistilledSet:
        """The distillation of shadow `shadow`'s chunk."""
        return self._distilled(self._shadow_chunk(shadow), f"shadow{shadow}-distill")

    def _shadow_real_idx(self, shadow: int) -> np.ndarray:
        """As many training images as the members, drawn at random from outside the members' chunk (and
        the non-members, when they are training images): no target is in a shadow's training set."""
        perm = torch.randperm(len(self.outside), generator=generator(self.config.seed, f"privacy/shadow{shadow}"))
        return np.sort(self.outside[perm[: len(self.member_idx)].numpy()])

    # ---- victims ----------------------------------------------------------------------------------------
    def _victim_outputs(self, arm: str, ds: DistilledSet, steps: int, stream: str, shadow: int | None = None):
        cfg, raw = self.config, self.raw
        images, targets, batch = self._training_set(arm, ds, shadow)
        device = self.device
        model = train_victim(
            images,
            targets,
            steps=steps,
            batch_size=batch,
            lr=cfg.victim_lr,
            width=cfg.victim_width,
            num_classes=raw.num_classes,
            ops=reference_ops(raw.mirror_invariant),
            gen=generator(cfg.seed, stream),
            device=device,
        )
        members = outputs(
            model,
            ds.transform(raw.x_train[self.attacked_member_idx]),
            host_tensor(raw.y_train[self.attacked_member_idx]),
            raw.num_classes,
            device,
        )
        x_non, y_non = (raw.x_train, raw.y_train) if cfg.nonmembers == "train" else (raw.x_test, raw.y_test)
        nonmembers = outputs(
            model,
            ds.transform(x_non[self.nonmember_idx]),
            host_tensor(y_non[self.nonmember_idx]),
            raw.num_classes,
            device,
        )
        test = outputs(model, ds.transform(raw.x_test), host_tensor(raw.y_test), raw.num_classes, device)
        return members, nonmembers, 100.0 * float(test["correct"].mean())

    def _victim(self, arm: str, ds: DistilledSet, steps: int, model: int) -> dict:
        name = f"victims/{arm}-{steps}-m{model}.json"
        done = self.folder.done(name)
        if done is not None and _scored_as_now(done):
            return done
        if done is not None:  # averaged with today's, it mixed two scorings
            if not self._said_scoring:
                log.warning(
                    f"frepo: {self.out / 'victims'} holds victims scored by an older frepo (before scoring "
                    f"{SCORING}: TPR at FPR up to x, not below it; no threshold_others; before 2 also LiRA as Φ(z), "
                    "TPR on sklearn's reduced ROC, the start arm's labels unscaled); they are trained and scored again"
                )
                self._said_scoring = True
            unscaled = done.get("scoring", 1) < 2  # scoring 2 scaled the start arm's labels, its shadows' too
            if arm == "start" and unscaled and self.raw.num_classes != 10 and (arm, steps) not in self._stale_shadows:
                # its shadows trained on those unscaled labels too (the same for 10 classes): once, not per victim
                self._stale_shadows.add((arm, steps))
                for path in (self.out / "shadows").glob(f"{arm}-{steps}-s*.npy"):
                    path.unlink()
        start = time.perf_counter()
        members, nonmembers, accuracy = self._victim_outputs(arm, ds, steps, f"privacy/{arm}/{steps}/m{model}")
        losses = np.concatenate([members["loss"], nonmembers["loss"]]).astype(np.float64)
        # kept before the record, which marks the victim done
        atomic_write(self.out / _losses_name(arm, steps, model), functools.partial(_save_npy, values=losses))
        parts = ("logits", "loss", "labels")
        if self.config.attacks == "reference":  # said, as it runs a minute or more with nothing else shown
            log.info(
                f"frepo: {arm} victim {model + 1}, {steps} steps: TF-Privacy's grid-searched attacks "
                "(about a minute per victim on 2 CPU cores; --attacks frepo: seconds)"
            )
        attacks = run_attacks(
            tuple(members[p] for p in parts),
            tuple(nonmembers[p] for p in parts),
            self.raw.num_classes,
            self.config.seed,
            self.config.attacks,
        )
        starting = np.isin(self.attacked_member_idx, self.start_idx)
        # the loss threshold on the starting members alone, and on the others, each against every non-member
        chosen_sets = {"threshold_start": starting, "threshold_others": ~starting} if starting.any() else {}
        for attack, chosen in chosen_sets.items():
            if chosen.any():
                loss = np.concatenate([members["loss"][chosen], nonmembers["loss"]])
                truth = np.concatenate([np.ones(int(chosen.sum())), np.zeros(len(nonmembers["loss"]))])
                attacks[attack] = roc_metrics(truth, -loss)
        if self.config.lira_shadows:
            attacks["lira"] = self._lira(arm, ds, steps, members, nonmembers)
        log.info(
            f"frepo: {arm} victim, {steps} steps: test {accuracy:.2f}%, AUC "
            + ", ".join(f"{k} {v['auc']:.3f}" for k, v in attacks.items())
        )
        return self.folder.record(
            name,
            {
                "arm": arm,
                "steps": steps,
                "model": model,
                "scoring": SCORING,
                "test_accuracy": accuracy,
                "attacks": attacks,
                "seconds": time.perf_counter() - start,
            },
        )

    def _lira(self, arm: str, ds: DistilledSet, steps: int, members: dict, nonmembers: dict) -> dict:
        """Offline LiRA: the victim's confidences against shadows of the same arm trained without the targets."""

        def target(o: dict) -> np.ndarray:
            return confidence(o["logits"], o["labels"])

        victim = np.concatenate([target(members), target(nonmembers)])
        shadows = []
        for shadow in range(self.config.lira_shadows):
            path = self.out / "shadows" / f"{arm}-{steps}-s{shadow}.npy"
            if path.is_file():
                shadows.append(np.load(path))
                continue
            m, nm, _ = self._victim_outputs(arm, ds, steps, f"privacy/{arm}/{steps}/shadow{shadow}", shadow)
            scores = np.concatenate([target(m), target(nm)])

            atomic_write(path, functools.partial(_save_npy, values=scores))
            shadows.append(scores)
        truth = np.concatenate([np.ones(len(members["loss"])), np.zeros(len(nonmembers["loss"]))])
        return roc_metrics(truth, lira_offline(victim, np.stack(shadows)))

    # ---- the experiment -------------------------------------------------------------------------------
    def work(self) -> dict:
        cfg = self.config
        arms = cfg.arm_list()
        # Without the distilled arm nothing is distilled: the starting images (the same draw) carry the chunk's
        # preprocessing, which every arm's images go through.
        ds = self._distilled(cfg.chunk, "distill") if "distilled" in arms else self._starting_set()
        rows = []
        for steps in cfg.step_list():
            for arm in arms:
                victims = [self._victim(arm, ds, steps, m) for m in range(cfg.models)]
                rows.append(self._row(arm, steps, victims))
        return {**self.results(ds, rows), "comparisons": self._comparisons()}

    def _comparisons(self) -> list[dict]:
        """Each pair of COMPARISONS at each step count, on the loss threshold over every member
        (`threshold`), over the starting members alone (`threshold_start`) and over the others
        (`threshold_others`), against every non-member:
        the AUC difference of the victims' means, and its 95% interval (`resampled_mean_aucs`). Kept in
        comparisons/<steps>-<attack>.json under a digest of the victims' losses: computed again only when
        they change (more victims, an arm added), not on every run (minutes at the paper's size)."""
        cfg = self.config
        members = len(self.attacked_member_idx)
        starting = np.isin(self.attacked_member_idx, self.start_idx)
        examples = {  # attack -> the examples it scores (of the members, then the non-members, as saved)
            "threshold": np.ones(members + len(self.nonmember_idx), bool),
            "threshold_start": np.r_[starting, np.ones(len(self.nonmember_idx), bool)],
            "threshold_others": np.r_[~starting, np.ones(len(self.nonmember_idx), bool)],
        }
        truth = np.r_[np.ones(members, bool), np.zeros(len(self.nonmember_idx), bool)]
        arms = cfg.arm_list()
        pairs = [pair for pair in COMPARISONS if set(pair) <= set(arms)]
        out, missing = [], []
        for steps in cfg.step_list():
            losses = {arm: self._losses(arm, steps) for arm in arms}
            lost = [pair for pair in pairs if any(losses[a] is None for a in pair)]
            missing += [f"{arm}/{other} at {steps} steps" for arm, other in lost]
            scored_arms = sorted({a for pair in pairs if pair not in lost for a in pair})
            for attack, scored in examples.items():
                if (
                    not scored_arms
                    or not scored[: len(starting)].any()
                    or (attack != "threshold" and not starting.any())
                ):
                    continue
                kept = {arm: loss for arm, loss in losses.items() if loss is not None}
                scores = {arm: -kept[arm][:, scored] for arm in scored_arms}  # lower loss: member
                digest = hashlib.sha256(f"{BOOTSTRAP_RESAMPLES}|{cfg.seed}".encode())
                for arm in scored_arms:
                    digest.update(arm.encode() + scores[arm].tobytes())
                name = f"comparisons/{steps}-{attack}.json"
                done = self.folder.done(name)
                if done is None or done.get("key") != digest.hexdigest():
                    log.info(f"frepo: comparing the arms at {steps} steps, {attack} ({BOOTSTRAP_RESAMPLES} resamples)")
                    seed = stream_seed(cfg.seed, f"privacy/bootstrap/{steps}/{attack}")
                    means = resampled_mean_aucs(scores, truth[scored], BOOTSTRAP_RESAMPLES, seed)
                    rows = [
                        {"steps": steps, "arm": arm, "against": other, "attack": attack,
                         **auc_difference(means[arm], means[other])}
                        for arm, other in pairs if (arm, other) not in lost
                    ]  # fmt: skip
                    done = self.folder.record(name, {"key": digest.hexdigest(), "rows": rows})
                out += done["rows"]
        if missing:
            log.warning(
                f"frepo: no comparison of {', '.join(missing)}: victims recorded before 2026-12-07 kept no "
                "per-example losses; delete their victims/*.json to train them again, or use a new --out"
            )
        order = {pair: i for i, pair in enumerate(COMPARISONS)}  # by step count, pair, then attack
        return sorted(out, key=lambda c: (c["steps"], order[c["arm"], c["against"]], c["attack"]))

    def _losses(self, arm: str, steps: int) -> np.ndarray | None:
        """The victims' per-example losses of arm `arm` at `steps` (models × examples), or None if one is
        missing (a victim recorded before they were kept) or does not fit these members and non-members."""
        expected = len(self.attacked_member_idx) + len(self.nonmember_idx)
        losses = []
        for model in range(self.config.models):
            try:
                loss = np.load(self.out / _losses_name(arm, steps, model), allow_pickle=False)
            except (OSError, ValueError):
                return None
            if loss.shape != (expected,):
                return None
            losses.append(loss)
        return np.stack(losses)

    @staticmethod
    def _row(arm: str, steps: int, victims: list[dict]) -> dict:
        """One arm at one step count: the victims' test accuracy and every attack's metrics, as the mean over
        the victims and (`<metric>_std`) their population std."""
        attacks: dict[str, dict[str, float]] = {}  # attack -> metric (and metric_std) -> value
        # In ATTACKS' order (then lira, threshold_others, threshold_start): a victim read back from its record
        # has its attacks in name order, and the table's columns and the plot's lines followed whichever came first.
        # Victims recorded by an older frepo may lack an attack added since: only those every victim has (a
        # mean over some of them was a KeyError, or a column over fewer victims than `models` says).
        every = set.intersection(*(set(v["attacks"]) for v in victims))
        left_out = sorted(set().union(*(set(v["attacks"]) for v in victims)) - every)
        if left_out:
            log.warning(f"frepo: {arm}, {steps} steps: {', '.join(left_out)} left out: not every victim has it")
        order = sorted(every, key=lambda a: (ATTACKS.index(a) if a in ATTACKS else len(ATTACKS), a))
        for name in order:
            attacks[name] = {}
            # (and the metrics every victim has: auc_se came after some victims were recorded)
            for metric in [m for m in victims[0]["attacks"][name] if all(m in v["attacks"][name] for v in victims)]:
                values = [v["attacks"][name][metric] for v in victims]
                attacks[name].update({metric: float(np.mean(values)), f"{metric}_std": float(np.std(values))})
        accs = [v["test_accuracy"] for v in victims]
        return {
            "arm": arm,
            "steps": steps,
            "test_accuracy": float(np.mean(accs)),
            "test_accuracy_std": float(np.std(accs)),
            "models": len(victims),
            "attacks": attacks,
        }

    # ---- the results --------------------------------------------------------------------------------
    def results(self, ds: DistilledSet, rows: list[dict]) -> dict:
        """What privacy.json holds beside the settings: the rows, the members, the non-members, the set."""
        return {
            "rows": rows,
            "members": {
                "split": "train",
                "chunk": self.config.chunk,
                "indices": [int(self.member_idx[0]), int(self.member_idx[-1]) + 1],
                "count": int(len(self.member_idx)),
                "attacked": int(len(self.attacked_member_idx)),
                # the distillation's starting images (the start arm's set), and those of them attacked
                "start": int(len(self.start_idx)),
                "start_attacked": int(np.isin(self.attacked_member_idx, self.start_idx).sum()),
            },
            "nonmembers": {"split": self.config.nonmembers, "count": int(len(self.nonmember_idx))},
            "control": {"split": "train", "count": int(len(self.control_idx))},
            "distilled": {
                "file": str(self.out / "distill" / "distilled.safetensors"),
                "checksum": ds.meta.get("checksum"),
                "images": int(len(ds.images)),
                "step": ds.meta.get("step"),
                "kind": ds.meta.get("kind"),
            }
            if "distilled" in self.config.arm_list()
            else None,
        }

    def budget(self) -> str:
        cfg = self.config
        arms = cfg.arm_list()
        distillation = (
            f"distillation: {cfg.steps} steps × real batch {cfg.batch_size}, "
            if "distilled" in arms
            else "no distillation, the starting images: "
        )
        small = [a for a in arms if a in ("distilled", "start")]  # trained on ipc images per class
        batches = [f"{cfg.victim_batch}"] if len(small) < len(arms) else []
        if small:
            size = min(cfg.ipc * self.raw.num_classes, 256)
            batches.append(f"the {' and '.join(small)} arm{'s' if len(small) > 1 else ''}: {size}")
        batch = f"{batches[0]} ({batches[1]})" if len(batches) == 2 else batches[0].split(": ")[-1]
        return (
            f"arms: {', '.join(arms)}; {distillation}IPC {cfg.ipc} of "
            f"{len(self.member_idx)} members; victims: {cfg.models} per arm and step count, "
            f"Conv width {cfg.victim_width}, batch {batch}, Adam {cfg.victim_lr:g}; attacks: the "
            f"{cfg.attacks} set"
            + (f" and LiRA with {cfg.lira_shadows} shadows" if cfg.lira_shadows else "")
            + f"; non-members from the {cfg.nonmembers} split"
        )

    def tables(self, summary: dict) -> tuple[str, str]:
        # Every row's attacks, in their order: victims recorded before threshold_start existed lack it (a folder
        # resumed with more step counts or the start arm), and the columns of the first row alone lost it or
        # failed on the others.
        attacks = list(dict.fromkeys(a for r in summary["rows"] for a in r["attacks"]))
        header = ["arm", "steps", "test accuracy (%)"] + [f"{a} AUC / TPR@1% / TPR@0.1%" for a in attacks]

        def cell(metrics: dict | None) -> str:  # the std over victims where there are several
            if metrics is None:
                return "–"
            spread = f" ± {metrics['auc_std']:.3f}" if metrics.get("auc_std") else ""
            sampling = f" (SE {metrics['auc_se']:.3f})" if "auc_se" in metrics else ""
            rates = " / ".join(f"{metrics[m]:.3f}" for m in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"))
            return f"{metrics['auc']:.3f}{spread}{sampling} / {rates}"

        rows = [
            [r["arm"], str(r["steps"]), mean_std(r["test_accuracy"], r["test_accuracy_std"], r["models"])]
            + [cell(r["attacks"].get(a)) for a in attacks]
            for r in summary["rows"]
        ]
        title = f"# Membership inference: {self.raw.name}, chunk {self.config.chunk}, IPC {self.config.ipc}\n\n"
        note = "AUC ± its std over the victims (SE: its sampling error over the examples scored, Hanley-McNeil)"
        markdown = title + markdown_table(header, rows) + f"\n{note}. Budget: {summary['budget']}.\n"
        if summary.get("comparisons"):
            compared = [
                [c["arm"], c["against"], str(c["steps"]), c["attack"], f"{c['delta_auc']:+.3f}",
                 f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]", f"{c['share_at_or_below_zero']:.3f}"]
                for c in summary["comparisons"]
            ]  # fmt: skip
            header = ["arm", "against", "steps", "attack", "ΔAUC", "95% interval", "resamples ≤ 0"]
            markdown += (
                "\n## The arms compared\n\n" + markdown_table(header, compared) + f"\nΔAUC: the arm's mean AUC over "
                "its victims minus the other's; the interval: a bootstrap of the examples (the same draw for both "
                f"arms, which score the same examples) and of each arm's victims, {BOOTSTRAP_RESAMPLES} resamples.\n"
            )
        metrics = [f"{m}{std}" for m in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr") for std in ("", "_std")]
        csv_rows = [  # each row with its budget: a CSV travels without the table's note
            [r["arm"], r["steps"], r["test_accuracy"], a]
            + [r["attacks"][a].get(m, "") for m in metrics]
            + [r["test_accuracy_std"], r["models"], summary["budget"], r["attacks"][a].get("auc_se", "")]
            for r in summary["rows"]
            for a in attacks
            if a in r["attacks"]
        ]
        # later columns after the earlier ones (a reader by position keeps its columns)
        header = ["arm", "steps", "test_accuracy", "attack", *metrics, "test_accuracy_std", "models", "budget"]
        header.append("auc_se")
        return markdown, csv_text(header, csv_rows)

    def plot(self, plt, summary: dict):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        every_attack = list(dict.fromkeys(a for r in summary["rows"] for a in r["attacks"]))
        for arm, style in (("distilled", "-"), ("start", "-."), ("real", "--"), ("control", ":")):
            rows = [r for r in summary["rows"] if r["arm"] == arm]
            if not rows:
                continue
            steps = [r["steps"] for r in rows]
            names = list(dict.fromkeys(a for r in rows for a in r["attacks"]))
            for name in names:  # one colour per attack (the same in every arm), one line style per arm
                i = every_attack.index(name)
                points = [(r["steps"], r["attacks"][name]["auc"]) for r in rows if name in r["attacks"]]
                left.plot(*zip(*points), style, color=f"C{i}", marker="o", label=f"{arm}: {name}")
            right.plot(steps, [r["test_accuracy"] for r in rows], style, color="C0", marker="o", label=arm)
        for ax, label in ((left, "attack ROC AUC"), (right, "test accuracy (%)")):
            ax.set_xscale("log")
            ax.set_xlabel("victim training steps")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        left.axhline(0.5, color="grey", lw=0.8)
        left.legend(fontsize=6, ncol=2)
        right.legend(fontsize=8)
        fig.suptitle(f"{self.raw.name}, budget: {summary['budget']}", fontsize=7, wrap=True)
        return fig, (left, right)


def privacy(
    config: PrivacyConfig | None = None,
    out: str | Path = "runs/privacy",
    *,
    preset: str | None = None,
    progress: bool = False,
    **overrides: Any,
) -> dict:
    """Run (or resume) a membership-inference experiment into `out`; returns what privacy.json holds.
    `frepo.privacy(preset="privacy-mnist-cpu", out="runs/mia")`, or `dataset=..., chunk=..., ipc=...`."""
    return run_experiment(Privacy, config, out, preset, progress, overrides)


__all__ = ["ARMS", "ATTACKS", "PRESETS", "PrivacyConfig", "privacy", "train_victim"]
