"""The learnable synthetic set and its initialisation from real images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..base.errors import FrepoError
from ..base.rng import generator as rng_generator
from .krr import centered_one_hot, label_scale


def init_from_real(
    images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], ipc: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick `ipc` random real images of each class of `classes` (class-major order), seeded (`pick_real`).

    images: N×C×H×W preprocessed; labels: (N,) int. Returns (ipc·K×C×H×W images, (ipc·K,) labels) for
    K = len(classes).
    """
    idx = pick_real(labels, classes, ipc, seed)
    return images[idx].clone(), labels[idx].clone()


def pick_real(labels: torch.Tensor, classes: Sequence[int], ipc: int, seed: int) -> torch.Tensor:
    """The positions (ipc·K,) `init_from_real` picks in labels (N,): `ipc` random members of each class, in
    class-major order, from the run's stream "init" of `seed` (so a streamed split gathers just those rows). The
    one draw of a run's starting images: `frepo subset --method random`, the field metrics' random baseline and
    privacy's start arm repeat it through this function."""
    check_class_sizes(labels, classes, ipc)
    generator = rng_generator(seed, "init")
    chosen = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:ipc]])
    return torch.cat(chosen)


def check_class_sizes(
    labels: torch.Tensor,
    classes: Sequence[int],
    ipc: int,
    names: Sequence[str] | None = None,
    held_out: int | None = None,
) -> None:
    """Every class of `classes` has `ipc` images in labels (N,), or a FrepoError naming the smallest one (by
    its name where `names` are given) and, for a command's IPC (`held_out`: the validation hold-out's size),
    the largest IPC every class allows."""
    counts = torch.bincount(labels.long(), minlength=max(classes) + 1) if len(labels) else torch.zeros(max(classes) + 1)
    short = [c for c in classes if counts[c] < ipc]
    if short:
        smallest = min(short, key=lambda c: int(counts[c]))
        named = f" ({names[smallest]})" if names is not None and names[smallest] != str(smallest) else ""
        fits = min(int(counts[c]) for c in classes)
        said = f"; give --ipc {fits} or less" if held_out is not None and fits else ""
        said += ", or a smaller --val-size" if said and held_out else ""
        said = said if fits else "; every class needs images to draw from (a --train-chunk may hold none of one)"
        raise FrepoError(
            f"{len(short)} of {len(classes)} classes have fewer than ipc={ipc} images to draw from: class "
            f"{smallest}{named} has {int(counts[smallest])}{said}"
        )


class SyntheticSet(nn.Module):
    """images: N×C×H×W (preprocessed space); labels: N×K learned targets.

    `labels` (N×K) starts the learned labels from given values (`--init FILE`); by default they start
    as the reference's centred one-hot of `class_ids`, divided by sqrt(C/10)."""

    def __init__(
        self,
        images: torch.Tensor,
        class_ids: torch.Tensor,
        num_classes: int,
        learn_labels: bool = True,
        labels: torch.Tensor | None = None,
    ):
        super().__init__()
        self.images = nn.Parameter(images.clone().float())
        if labels is None:
            labels = centered_one_hot(class_ids, num_classes) / label_scale(num_classes)
        self.labels = nn.Parameter(labels.clone().float(), requires_grad=learn_labels)
        self.register_buffer("class_ids", class_ids.clone().long())

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in (self.images, self.labels) if p.requires_grad]
