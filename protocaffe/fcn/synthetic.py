"""A small synthetic segmentation set, VOC-style, made in a few seconds.

    python -m protocaffe.fcn.synthetic OUT [--train 240] [--val 60] [--size 64] [--seed 0]

Each image shows one to three shapes (class 1 disc, 2 square, 3 triangle) on a textured
background (class 0): stripes and checks of random frequency, phase and tint, plus pixel noise.
A class has a colour family (reddish discs, greenish squares, bluish triangles) with per-object
jitter, so a small net learns it in minutes, but also a shape, and objects overlap.

Written like PASCAL VOC: `images/NAME.png` (RGB), `labels/NAME.png` (one channel, pixel value =
class id, 255 = "void" on a band along every object outline, which scoring and the loss ignore),
and ImageData-style lists (`path 0` per line, relative to OUT; set `root_folder` to OUT):
`train.txt`/`val.txt` for the images, `train_labels.txt`/`val_labels.txt` for the labels in the
same order, and `classes.txt` with one class name per line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

CLASSES = ("background", "disc", "square", "triangle")
VOID = 255
# Mean RGB colour of each object class; objects draw theirs with jitter.
_CLASS_RGB = {1: (200, 60, 50), 2: (60, 180, 70), 3: (60, 90, 210)}
_JITTER = 40


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: two random gratings (stripes or checks) in a muted tint."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = np.zeros((size, size), np.float32)
    for _ in range(2):
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.15, 0.9)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
        texture += np.sign(wave) if rng.random() < 0.5 else wave
    base = rng.uniform(70, 170, size=3)
    tint = rng.uniform(0.6, 1.0, size=3) * rng.uniform(10, 35)
    return base + texture[..., None] * tint


def _mask(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """Pixels of one shape of class `kind` at a random place and size."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(size * 0.1, size * 0.22)
    cy, cx = rng.uniform(r, size - r, size=2)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == 2:
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # An upright triangle: below the apex, inside both slanted edges.
    top, bottom = cy - r, cy + r * 0.8
    half = (yy - top) / (bottom - top) * r
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)


def _void_border(label: np.ndarray, width: int = 1) -> np.ndarray:
    """`label` with VOID on every pixel within `width` of a pixel of another class."""
    out = label.copy()
    h, w = label.shape
    padded = np.pad(label, width, mode="edge")
    edge = np.zeros_like(label, dtype=bool)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            edge |= padded[width + dy : width + dy + h, width + dx : width + dx + w] != label
    out[edge] = VOID
    return out


def make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (HxWx3 uint8 RGB image, HxW uint8 label) pair."""
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, len(CLASSES)))
        mask = _mask(rng, kind, size)
        colour = np.asarray(_CLASS_RGB[kind]) + rng.uniform(-_JITTER, _JITTER, size=3)
        image[mask] = colour
        label[mask] = kind
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), _void_border(label)


def write_set(out: Path, train: int, val: int, size: int, seed: int) -> dict[str, int]:
    """Write the images, labels and list files under `out`; the number of images per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for folder in ("images", "labels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    counts = {"train": train, "val": val}
    for split, n in counts.items():
        names = [f"{split}_{i:04d}" for i in range(n)]
        for name in names:
            image, label = make_sample(rng, size)
            Image.fromarray(image, "RGB").save(out / "images" / f"{name}.png")
            Image.fromarray(label, "L").save(out / "labels" / f"{name}.png")
        # ImageData lists: "path label"; the integer is unused here (the label is an image).
        (out / f"{split}.txt").write_text("".join(f"images/{n}.png 0\n" for n in names))
        (out / f"{split}_labels.txt").write_text("".join(f"labels/{n}.png 0\n" for n in names))
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m protocaffe.fcn.synthetic",
        description="Write a small synthetic VOC-style segmentation set (images, label PNGs "
        "with 255 borders, ImageData list files).",
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--train", type=int, default=240, help="training images (240)")
    p.add_argument("--val", type=int, default=60, help="validation images (60)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = p.parse_args(argv)
    if min(args.train, args.val) < 1 or args.size < 16:
        p.error("--train and --val must be at least 1 and --size at least 16")
    counts = write_set(Path(args.out), args.train, args.val, args.size, args.seed)
    print(
        f"wrote {counts['train']} train + {counts['val']} val images ({args.size}x{args.size}, "
        f"{len(CLASSES)} classes) to {args.out}/",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
