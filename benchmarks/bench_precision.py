"""How far bf16 autocast moves the meta-gradient from float32, on real data in a real run's state.

    python benchmarks/bench_precision.py [--dataset cifar10] [--ipc 10] [--batch 1024] [--warm-steps 20]
                                         [--models 3] [--json OUT]

A distillation (the dataset's own preprocessing, flip, seed 0) first takes `--warm-steps` float32 outer
steps, so the synthetic set and the pool's models have moved from their start. Then, for `--models` of
the pool's models and two real batches A and B of `--batch` images, the meta-gradient (of the images
and of the learned labels) and the loss are computed with the real-batch feature pass and/or the
support forward under bf16 autocast, and compared with float32 on the same model and batch A:
relative L2 error ‖g - g32‖/‖g32‖ and cosine. The yardstick is the float32 gradient of batch A
against that of batch B: the sampling noise every outer step already has.

Nothing here times bf16: on a CPU without bf16 units it is emulated. What it measures is the rounding,
which is the same on a GPU up to the order of the sums (bf16 operands, float32 accumulation).
JSON: {"environment", "config", "rows": [{"model", "variant", "loss", "loss_rel", "images_rel",
"images_cos", "labels_rel", "labels_cos"}], "summary": {variant: {"images_cos_min", "images_rel_max",
"labels_cos_min", "labels_rel_max", "loss_rel_max"}}}; variants: bf16-real, bf16-support, bf16-both,
and other-batch (float32 on batch B: the yardstick).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from frepo.config import DistillConfig
from frepo.data import prepare
from frepo.method.krr import centered_one_hot
from frepo.method.trainer import FRePoTrainer, meta_step

VARIANTS = {"fp32": ("fp32", "fp32"), "bf16-real": ("bf16", "fp32"), "bf16-support": ("fp32", "bf16")}
VARIANTS["bf16-both"] = ("bf16", "bf16")


def gradients(trainer: FRePoTrainer, model, x, y, precision: str, support: str):
    cfg = trainer.config
    loss = meta_step(model, trainer.syn, x, y, cfg.use_flip, cfg.krr_reg, 0, precision, support)["loss"]
    return float(loss), trainer.syn.images.grad.clone().flatten(), trainer.syn.labels.grad.clone().flatten()


def compare(a, b) -> tuple[float, float]:
    rel = float((a - b).norm() / b.norm())
    return rel, float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--warm-steps", type=int, default=20)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    args = parser.parse_args()
    config = DistillConfig(ipc=args.ipc, batch_size=args.batch, use_flip=True, steps=500_000, lr=3e-4)
    config.data.dataset = args.dataset
    data = prepare(config.data)
    x_train, y_train = data.train(channels_last=config.channels_last)
    device = torch.device(args.device)
    trainer = FRePoTrainer(config, x_train, y_train, data.raw.num_classes, device)
    start = time.perf_counter()
    for step in range(args.warm_steps):
        trainer.step()
        print(f"warm step {step + 1}/{args.warm_steps} ({time.perf_counter() - start:.0f} s)", flush=True)
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in "AB":
        idx = torch.randperm(len(y_train), generator=gen)[: args.batch]
        x = trainer.x_train[idx.to(device)]
        batches.append((x, centered_one_hot(trainer.y_train[idx.to(device)], data.raw.num_classes)))
    rows = []
    for m in range(args.models):
        model = trainer.pool.models[m]
        (xa, ya), (xb, yb) = batches
        ref = gradients(trainer, model, xa, ya, "fp32", "fp32")
        runs = {name: gradients(trainer, model, xa, ya, *VARIANTS[name]) for name in VARIANTS if name != "fp32"}
        runs["other-batch"] = gradients(trainer, model, xb, yb, "fp32", "fp32")
        for name, (loss, gx, gy) in runs.items():
            images_rel, images_cos = compare(gx, ref[1])
            labels_rel, labels_cos = compare(gy, ref[2])
            row = {
                "model": m, "variant": name, "loss": loss, "loss_rel": abs(loss - ref[0]) / abs(ref[0]),
                "images_rel": images_rel, "images_cos": images_cos, "labels_rel": labels_rel, "labels_cos": labels_cos,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for name in list(VARIANTS)[1:] + ["other-batch"]:
        mine = [r for r in rows if r["variant"] == name]
        summary[name] = {
            "images_cos_min": min(r["images_cos"] for r in mine),
            "images_rel_max": max(r["images_rel"] for r in mine),
            "labels_cos_min": min(r["labels_cos"] for r in mine),
            "labels_rel_max": max(r["labels_rel"] for r in mine),
            "loss_rel_max": max(r["loss_rel"] for r in mine),
        }
    print(
        f"\n{args.dataset} IPC {args.ipc}, batch {args.batch}, flip, after {args.warm_steps} float32 steps, "
        f"{args.models} pool models; {platform.machine()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n"
    )
    print("| against float32, batch A | image grad cos (min) | image grad rel. error (max) | "
          "label grad cos (min) | label grad rel. error (max) | loss rel. error (max) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['images_cos_min']:.5f} | {s['images_rel_max']:.2e} | {s['labels_cos_min']:.5f} | "
            f"{s['labels_rel_max']:.2e} | {s['loss_rel_max']:.2e} |"
        )
    if args.json:
        environment = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}
        result = {"environment": environment, "config": vars(args), "rows": rows, "summary": summary}
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
