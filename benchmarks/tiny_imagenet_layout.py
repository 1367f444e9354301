"""Write a Tiny ImageNet-shaped dataset in the layout it is distributed in (`tiny-imagenet-200/` with
wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt), of random 64×64
RGB noise: for timing frepo's path on data of that shape without the 250 MB download.

    python benchmarks/tiny_imagenet_layout.py --out DIR [--classes 200] [--per-class 2] [--val-per-class 1]

Then `frepo distill --dataset tiny_imagenet --data-dir DIR --no-download ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def write(out: Path, classes: int, per_class: int, val_per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = out / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(classes)]
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tclass {i}\n" for i, w in enumerate(wnids)))

    def jpeg(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, format="JPEG", quality=90)

    for wnid in wnids:
        for i in range(per_class):
            jpeg(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for k in range(val_per_class * classes):
        jpeg(folder / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{wnids[k % classes]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--val-per-class", type=int, default=1)
    args = parser.parse_args()
    print(write(args.out, args.classes, args.per_class, args.val_per_class))


if __name__ == "__main__":
    main()
