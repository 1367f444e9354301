"""A recorded comparison of every result frepo writes, for refactors that must not change a bit.

    python benchmarks/bit_identity.py record --src SRC --out FINGERPRINTS.json
    python benchmarks/bit_identity.py compare BEFORE.json AFTER.json

`record` runs small real jobs through the command line (`python -m frepo`, with `SRC` first on
PYTHONPATH, so a git worktree of an older commit can be recorded too) in a fresh temporary folder:
a distillation with validation, best set and a snapshot; the frepo, stacked, dsa and kernel
evaluations of its set; the three subset methods; a continual and a privacy experiment. It records
a fingerprint of each output: the SHA-256 of every tensor of a set file (its values, not its file
bytes, so the metadata's checksums and environment stay aside) with the set's metadata, and the JSON
results with what depends on the clock or the machine's path removed (seconds, dates, timings, peak
memory, environment). `compare` prints the differing entries and exits 1 when any differs.
Digits only (no download); about 4 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Keys whose values depend on the clock, the machine or the folder, not on what was computed.
VOLATILE = {"seconds", "date", "elapsed_s", "steps_per_s", "peak_mem_mb", "environment", "frepo_version", "checksum"}

DISTILL = "distill --dataset digits --ipc 2 --steps 30 --batch-size 64 --eval-every 10 --eval-steps 40 "
DISTILL += "--checkpoint-every 10 --snapshot-every 15 --log-every 5 --out run"
JOBS = {
    "distill": DISTILL,
    "evaluate_frepo": "evaluate run/distilled.safetensors --models 2 --steps 60 --together off --json eval_frepo.json",
    "evaluate_stacked": "evaluate run/distilled.safetensors --models 2 --steps 60 --together on "
    "--json eval_stacked.json",
    "evaluate_dsa": "evaluate run/distilled.safetensors --protocol dsa --epochs 6 --models 1 --json eval_dsa.json",
    "evaluate_krr": "evaluate run/distilled.safetensors --protocol krr --models 2 --width 16 --json eval_krr.json",
    "subset_random": "subset --dataset digits --ipc 3 --method random --out random.safetensors",
    "subset_herding": "subset --dataset digits --ipc 3 --method herding --feature-steps 12 --feature-width 16 "
    "--out herding.safetensors",
    "subset_kcenter": "subset --dataset digits --ipc 3 --method kcenter --feature-steps 12 --feature-width 16 "
    "--out kcenter.safetensors",
    "continual": "continual --dataset digits --tasks 2 --ipc 2 --orders 0 --steps 4 --batch-size 64 --lr 0.01 "
    "--eval-models 1 --eval-steps 10 --feature-steps 2 --feature-width 16 --out cl",
    "privacy": "privacy --dataset digits --chunk 1 --chunk-size 300 --ipc 2 --steps 4 --batch-size 64 --lr 0.01 "
    "--victim-steps 5,20 --victim-batch 64 --victim-width 8 --out mia",
}


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, str) and os.sep in value:
        return Path(value).name  # a path: the folder is the temporary one
    return value


def _set_fingerprint(path: Path) -> dict:
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), "pt") as fh:
        for name in sorted(fh.keys()):
            tensor = fh.get_tensor(name).contiguous()
            out[name] = f"{tuple(tensor.shape)} {tensor.dtype} " + hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
        meta = fh.metadata() or {}
    out["meta"] = _stable({k: json.loads(v) if v[:1] in "{[" else v for k, v in meta.items()})
    return out


def fingerprints(root: Path) -> dict[str, object]:
    """Every output under `root` by its relative path: sets, JSON, metrics lines and pictures (the
    Markdown and CSV tables are derived from the JSON; checkpoints hold timings)."""
    found: dict[str, object] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        if path.suffix == ".safetensors":
            found[rel] = _set_fingerprint(path)
        elif path.suffix == ".json":
            found[rel] = _stable(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            found[rel] = [_stable(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.suffix in (".png", ".gif", ".npy"):
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def record(src: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in JOBS.items():
            done = subprocess.run(
                [sys.executable, "-m", "frepo", *command.split()], cwd=tmp, env=env, capture_output=True, text=True
            )
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            print(f"ran {name}", flush=True)
        found = fingerprints(Path(tmp))
    out.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(f"wrote {out}")


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    for k in sorted(set(a) | set(b)):
        print(f"{'DIFFERS' if k in differ else 'same   '}  {k}")
    print(f"{len(differ)} of {len(set(a) | set(b))} outputs differ")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--src", type=Path, required=True, help="the src/ folder of the code to record")
    rec.add_argument("--out", type=Path, required=True)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.src, args.out)
    else:
        sys.exit(compare(args.before, args.after))


if __name__ == "__main__":
    main()
