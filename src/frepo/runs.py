"""The run directory: resolved config, metrics log, atomic checkpoints, outputs.

Rerunning the same command resumes from `checkpoint.pt`; a different config in a used directory is
refused, never silently overwritten. Only settings that cannot change the result may differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .base.atomic import atomic_torch_save, atomic_write_json
from .base.errors import FrepoError
from .base.fields import from_dict, to_dict
from .config import DistillConfig

# Settings that may change between a run and its resumption: they do not change the result.
RESUMABLE_CHANGES = {
    "device",
    "log_every",
    "checkpoint_every",
    "snapshot_every",
    "tensorboard",
    "data_dir",
    "download",
    "deterministic",
}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.checkpoint_path = self.path / "checkpoint.pt"
        self.metrics_path = self.path / "metrics.jsonl"
        self.distilled_path = self.path / "distilled.safetensors"
        self.best_path = self.path / "best.safetensors"
        self.images_dir = self.path / "images"

    def claim(self, config: DistillConfig) -> bool:
        """Write the config, or check it against the one already there. True when resuming."""
        if self.path.exists() and not self.path.is_dir():
            raise FrepoError(f"--out {self.path} exists and is not a directory")
        if self.config_path.is_file():
            try:
                previous = json.loads(self.config_path.read_text())
                from_dict(DistillConfig, previous)
            except (json.JSONDecodeError, FrepoError) as exc:
                raise FrepoError(f"{self.config_path} is unreadable ({exc}); use another --out") from exc
            old, new = _flatten(previous), _flatten(to_dict(config))
            diff = sorted(
                k
                for k in old.keys() | new.keys()
                if old.get(k) != new.get(k) and k.split(".")[-1] not in RESUMABLE_CHANGES
            )
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
                raise FrepoError(
                    f"{self.path} holds a run with a different config ({detail}); "
                    "use another --out, or delete that directory to start over"
                )
            atomic_write_json(self.config_path, to_dict(config))
            return self.checkpoint_path.is_file()
        if self.path.is_dir() and any(self.path.iterdir()):
            raise FrepoError(f"--out {self.path} is not empty and holds no frepo run; use another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, to_dict(config))
        return False

    def save_checkpoint(self, state: dict) -> None:
        atomic_torch_save(state, self.checkpoint_path)

    def load_checkpoint(self) -> dict:
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FrepoError(f"cannot read {self.checkpoint_path} ({exc}); delete it to restart the run") from exc

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a crash ends the log
        return records

    def truncate_metrics(self, step: int) -> None:
        """Drop records after `step` (written after the checkpoint a resumed run restarts from)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        from .base.atomic import atomic_write_text

        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
