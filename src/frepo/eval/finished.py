"""The networks of an evaluation that finished before it was interrupted.

`frepo evaluate` writes each network's test accuracy as soon as it is known, so the same command, run
again after Ctrl-C, a kill or a crash, trains only the networks still missing: on a CPU one network of
a 500-image set takes minutes to hours. The record lives in `$FREPO_CACHE/evaluations/<digest>.json`
(default `~/.cache/frepo`), named by everything that decides the numbers (`evaluation_key`: the set's
content, the evaluation's settings, the architecture, the split's data, the device, the thread count
and the versions), and is removed when the evaluation completes. A network's accuracy is read back only
under the same key, so it is the number the interrupted run would have printed: evaluations repeat bit
for bit on the same machine.

Networks trained together (stacked or on streams) finish together: such an evaluation is kept whole
or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from ..base.atomic import atomic_write_json
from ..base.device import machine_key, resolve_device
from ..base.errors import FrepoError
from ..base.fields import to_dict
from .config import EvalConfig

log = logging.getLogger(__name__)


def set_digest(images: torch.Tensor, labels: torch.Tensor, preprocessing: dict[str, torch.Tensor]) -> str:
    """sha256 of a set's content: its images, labels and preprocessing tensors (host tensors)."""
    digest = hashlib.sha256()
    for tensor in (images, labels, *(preprocessing[k] for k in sorted(preprocessing))):
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# Settings that do not decide a network's numbers, or are said another way: an evaluation resumed with another of
# them trained its finished networks again. --device: the machine part says it (its kind and hardware; `auto`,
# `cuda` and `cuda:0` name one GPU). --arch: the key's `arch` is the network (the list named the others evaluated
# beside it). --models: network i is stream eval/model{i} whatever the count. --together: each network is kept
# with the mode it trained in and how many trained with it (`auto` and `off` are one mode on a CPU). --depth: the
# key's resolved `depth` (`--depth 3` and a default that resolves to 3 train the same networks).
_SAID_ELSEWHERE = ("device", "arch", "models", "together", "depth")


def evaluation_key(
    set_id: str, config: EvalConfig, arch: str, split_id: str, mirror_invariant: bool, depth: int
) -> dict:
    """What decides an evaluation's numbers on this machine, as plain JSON: the set's content, the settings and
    what they resolve to (a default, such as the dsa protocol's epochs, may change between versions of one
    number; the set's `mirror_invariant`, whether its networks see flips; `depth`, `EvalConfig.network_depth` of
    the set), the architecture, the split's data,
    and the hardware and libraries too, as a cache folder may be shared between machines."""
    from .protocols.dsa import STRATEGY, epochs_of

    machine = machine_key(resolve_device(config.device))
    resolved = {"mirror_invariant": mirror_invariant, "dsa_epochs": epochs_of(config.dsa), "depth": depth}
    settings = {name: value for name, value in to_dict(config).items() if name not in _SAID_ELSEWHERE}
    # the dsa options as they resolve: `--epochs 1000` and the default 1000 train the same networks
    settings["dsa"] = {**settings["dsa"], "epochs": None, "dsa_strategy": config.dsa.dsa_strategy or STRATEGY}
    return {
        "set": set_id,
        "settings": settings,
        "resolved": resolved,
        "arch": arch,
        "split": split_id,
        **machine,
    }


class FinishedNetworks:
    """The accuracies of an evaluation's finished networks, by random stream ("eval/model3"), kept in `path`;
    each `put` rewrites the file atomically. A file under another key, or unreadable, is ignored (and
    replaced by the next `put`)."""

    def __init__(self, key: dict, root: str | os.PathLike):
        self.key = key
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        self.path = Path(root) / "evaluations" / f"{name}.json"
        self.networks: dict[str, dict] = self._read()
        self.unwritable = False

    def _read(self) -> dict[str, dict]:
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning(f"frepo: ignoring an unreadable record of finished networks, {self.path}: {exc}")
            return {}
        networks = record.get("networks") if isinstance(record, dict) and record.get("key") == self.key else None
        if not isinstance(networks, dict):
            return {}
        return {
            stream: entry
            for stream, entry in networks.items()
            if isinstance(entry, dict) and isinstance(entry.get("accuracy"), (int, float))
        }

    def accuracy(
        self, stream: str, together_mode: str | None = None, together_count: int | None = None
    ) -> float | None:
        """The accuracy of network `stream` if it finished in the same mode (None: one by one) and, trained
        together, beside as many networks (another count may pick other kernels: other float rounding)."""
        entry = self.networks.get(stream)
        if entry is None or entry.get("together_mode") != together_mode:
            return None
        if together_mode is not None and entry.get("together_count") != together_count:
            return None
        return float(entry["accuracy"])

    def put(self, streams: list[str], accuracies: list[float], together_mode: str | None = None) -> None:
        """Keep networks `streams` as finished: one by one (`together_mode` None), or all trained together."""
        count = len(streams) if together_mode is not None else None
        for stream, accuracy in zip(streams, accuracies, strict=True):
            self.networks[stream] = {"accuracy": accuracy, "together_mode": together_mode, "together_count": count}
        if self.unwritable:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.path, {"key": self.key, "networks": self.networks})
        except (OSError, FrepoError) as exc:  # the evaluation itself goes on; only its resumption is lost
            self.unwritable = True
            log.warning(
                f"frepo: cannot keep the finished networks in {self.path} ({exc}): an interruption "
                "would train them again"
            )

    def clear(self) -> None:
        """The evaluation completed: nothing left to resume."""
        self.networks = {}
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(f"frepo: cannot remove {self.path} ({exc})")
