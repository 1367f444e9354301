"""The official FRePo (JAX, `yongchaoz/FRePo`) run from a checkout the user names, on the wall clock.

    python benchmarks/peers/official_frepo.py --official DIR --dataset cifar10 --ipc 10 \
        --budget-min 30 --steps 550 --out runs/peers/cifar10-ipc10/official

What runs is the checkout's own outer loop, `lib.datadistillation.frepo.proto_train_and_evaluate`, given
what its `script/distill.py` gives it: `ProtoHolder` with learned labels, the `Conv` network (width 128,
depth 3, no normalisation, `feat_fc` output), Adam 3e-4 online states, LAMB 3e-4 decaying (cosine, to
0.1×) over `--steps`, a pool of 10 models reset after 100 online updates, the flip trick where the
script uses it (colour data; CIFAR-100 and Tiny ImageNet at 1 image per class only), a real batch of
1024. In place of its tensorflow-datasets pipeline the harness gives it:

- the data: the dataset's `.npz` in the official preprocessing, computed by frepo's
  `reference_preprocessing` (the official constants, then ZCA with regulariser 0.1 for colour data),
  in shuffled batches of 1024 with the official centred one-hot labels (1 − 1/C on, −1/C off);
- the starting set: `--ipc` random real images per class (seeded), labels one-hot − 1/C divided by
  √(C/10), as `init_proto(..., scale_y=True)` makes them;
- a metrics writer that keeps nothing, and an `image_saver` (the loop calls it after every step with
  `steps_per_save_image=1`) that waits for the step's result, times it, and at the wall-clock marks
  saves the set as the official `np/stepNNNNNN.npz` (`image` N×H×W×C, `label` N×C), which `frepo
  evaluate --dataset <name>` reads;
- no evaluation inside the loop (`num_eval=0`): every method's sets are evaluated afterwards by
  `frepo evaluate`, and its time is no method's.

Updates for today's JAX 0.10 / flax 0.12, applied at run time (the checkout is not modified):

- `jax.scipy.linalg.solve(..., sym_pos=True)`: `sym_pos` was removed; mapped to `assume_a="pos"`.
- `flax.config.update("flax_return_frozendict", True)`: `create_proto_state` calls `.unfreeze()` on
  what `Module.init` returns, a plain dict in flax ≥ 0.8.
- `tensorflow`, `clu` and `pandas` are imported at the top of `frepo.py` but not used by the loop
  driven here (its writer and datasets are given); empty stand-ins keep them from being needed.

Peak memory: the process's peak RSS on a CPU (it includes importing torch for frepo's data reader,
~300 MB, reported as `setup_peak_rss_mb`), JAX's `peak_bytes_in_use` on a GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import types
from pathlib import Path

import numpy as np
from common import BudgetReached, Clock, load_arrays, machine, peak_rss_mb, write_result


def install_jax_updates() -> None:
    import flax
    import flax.training.checkpoints  # before the stand-ins: flax.io looks for a real tensorflow
    import jax.scipy.linalg

    flax.config.update("flax_return_frozendict", True)
    solve = jax.scipy.linalg.solve

    @functools.wraps(solve)
    def solve_sym_pos(a, b, *args, sym_pos=False, **kwargs):
        if sym_pos:
            kwargs["assume_a"] = "pos"
        return solve(a, b, *args, **kwargs)

    jax.scipy.linalg.solve = solve_sym_pos
    for name in ("tensorflow", "clu", "clu.metric_writers", "pandas"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["clu"].metric_writers = sys.modules["clu.metric_writers"]


class NullWriter:
    def write_scalars(self, step, scalars) -> None:
        pass

    def flush(self) -> None:
        pass


class Batches:
    """What the loop iterates: epochs of shuffled batches of (preprocessed images N×H×W×C, centred one-hot)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, batch: int, seed: int):
        self.x, self.y, self.num_classes, self.batch = x, y, num_classes, batch
        self.rng = np.random.default_rng(seed)

    def as_numpy_iterator(self):
        eye = np.full((self.num_classes, self.num_classes), -1.0 / self.num_classes, dtype=np.float32)
        np.fill_diagonal(eye, 1.0 - 1.0 / self.num_classes)
        while True:
            order = self.rng.permutation(len(self.x))
            for start in range(0, len(order) - self.batch + 1, self.batch):
                idx = np.sort(order[start : start + self.batch])
                yield {"image": self.x[idx], "label": eye[self.y[idx]]}


def prepared(dataset: str, data_dir: str | None, seed: int):
    """(train images N×H×W×C float32 in the official preprocessing, labels, classes, mirror-invariant)."""
    import torch

    from frepo.data.recipes import reference_preprocessing
    from frepo.data.registry import RawDataset, load_dataset

    if dataset == "cifar100-standin":
        arrays = load_arrays(dataset, data_dir, seed)
        raw = RawDataset(dataset, classes=[f"class{i}" for i in range(100)], **arrays)
    else:
        raw = load_dataset(dataset, data_dir or os.environ.get("FREPO_DATA_DIR"), download=False)
    pre = reference_preprocessing(raw)
    with torch.no_grad():
        x = pre(raw.x_train, channels_last=True).permute(0, 2, 3, 1).numpy()  # N×H×W×C, no copy
    return x, np.asarray(raw.y_train, dtype=np.int64), raw.num_classes, raw.mirror_invariant


def official_flip(dataset: str, ipc: int, mirror: bool) -> bool:
    """The flip trick as the official script/distill.py sets it: off for grey digits, on for CIFAR-100 and
    Tiny ImageNet at 1 image per class only, on for other colour data."""
    if dataset.startswith("cifar100") or dataset == "tiny_imagenet":
        return ipc == 1
    return mirror and dataset not in ("mnist", "fashion_mnist")


def starting_set(x: np.ndarray, y: np.ndarray, num_classes: int, ipc: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), ipc, replace=False) for c in range(num_classes)])
    labels = np.eye(num_classes, dtype=np.float32)[y[idx]] - 1.0 / num_classes
    return x[idx].copy(), labels / np.sqrt(num_classes / 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="a checkout of yongchaoz/FRePo")
    parser.add_argument("--dataset", default="cifar10", help="<data-dir>/<name>.npz, or cifar100-standin")
    parser.add_argument("--data-dir", help="folder of the .npz files (default: $FREPO_DATA_DIR)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--steps", type=int, required=True, help="the schedule's length (num_train_steps)")
    parser.add_argument("--budget-min", type=float, default=float("inf"), help="wall-clock budget (minutes)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps (timing runs)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for np/stepNNNNNN.npz and result.json")
    args = parser.parse_args()

    clock = Clock(args.budget_min * 60, max_steps=args.max_steps)
    out = Path(args.out).resolve()
    (out / "np").mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(args.official).resolve()))
    install_jax_updates()
    import jax
    from lib.datadistillation.frepo import ProtoHolder, proto_train_and_evaluate
    from lib.models.utils import create_model
    from lib.training.utils import create_train_state

    x, y, num_classes, mirror = prepared(args.dataset, args.data_dir, args.seed)
    x_proto, y_proto = starting_set(x, y, num_classes, args.ipc, args.seed)
    online = types.SimpleNamespace(optimizer="adam", learning_rate=3e-4, img_size=x.shape[1], img_channels=x.shape[3])
    kernel = types.SimpleNamespace(optimizer="lamb", learning_rate=3e-4, eval_batch_size=1000)
    model = create_model("conv", num_classes, width=128, depth=3, normalization="identity", output="feat_fc")
    create_state = functools.partial(
        create_train_state, config=online, model=model, learning_rate_fn=lambda _: online.learning_rate, has_bn=False
    )

    def save(tag: str) -> str:
        params = jax.device_get(state_now["state"].params)
        path = out / "np" / f"{tag}.npz"
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, image=np.asarray(params["x_proto"]), label=np.asarray(params["y_proto"]))
        os.replace(tmp, path)
        return str(path)

    state_now = {}

    def after_step(state, step, use_pmap=False) -> None:
        jax.block_until_ready(state.params)
        state_now["state"] = state
        clock.tick(save)

    clock.start_steps()
    setup_peak = peak_rss_mb()
    big = 10**9  # the loop's own logging, checkpoints and evaluations: never due
    try:
        state_now["state"] = proto_train_and_evaluate(
            kernel,
            ProtoHolder(x_proto, y_proto, len(x_proto), learn_label=True),
            create_state,
            create_state,
            (Batches(x, y, num_classes, args.batch_size, args.seed), None),
            str(out / "workdir"),
            seed=args.seed,
            num_nn_state=10,
            num_train_steps=args.steps,
            use_flip=official_flip(args.dataset, args.ipc, mirror),
            num_online_eval_updates=1000,
            max_online_updates=100,
            steps_per_epoch=len(x) // args.batch_size,
            steps_per_log=big,
            steps_per_eval=big,
            steps_per_checkpoint=big,
            save_ckpt=big,
            writer=NullWriter(),
            image_saver=after_step,
            steps_per_save_image=1,
            resume=False,
            num_eval=0,
        )
        clock.finish(save)
    except BudgetReached:
        pass
    result = {
        "method": "official FRePo (JAX)",
        "checkout": args.official,
        "dataset": args.dataset,
        "ipc": args.ipc,
        "schedule_steps": args.steps,
        "budget_min": args.budget_min,
        **clock.summary(),
        "peak_rss_mb": peak_rss_mb(),
        "setup_peak_rss_mb": setup_peak,
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "machine": machine(),
        "set_format": "official np/stepNNNNNN.npz (frepo evaluate --dataset NAME reads it, claim 'reference')",
    }
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        result["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    write_result(out / "result.json", result)


if __name__ == "__main__":
    main()
