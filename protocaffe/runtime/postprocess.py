"""Outputs a person can use: segmentation PNGs (VOC palette), overlays, top-k, arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class i's RGB comes from spreading i's bits over R, G, B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def save_label_png(labels: np.ndarray, path: Path) -> None:
    """Class indices as a palettised PNG: pixel values are the class ids, shown in VOC colours."""
    from PIL import Image

    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    im.save(path)


def colorize(labels: np.ndarray) -> np.ndarray:
    return voc_palette()[labels.astype(np.int64) % 256]


def save_rgb_png(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(rgb.astype(np.uint8), mode="RGB").save(path)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over the image; background (class 0) stays untouched."""
    colors = colorize(labels).astype(np.float32)
    base = image.astype(np.float32)
    mask = (labels > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * base + alpha * colors, base)
    return np.clip(blended, 0, 255).astype(np.uint8)


def is_segmentation(shape: tuple[int, ...], input_hw: tuple[int, int] | None) -> bool:
    """Per-pixel class scores: NxCxHxW with C > 1 at the input's resolution."""
    return len(shape) == 4 and shape[1] > 1 and input_hw is not None and shape[2:] == input_hw


def is_classifier(shape: tuple[int, ...]) -> bool:
    """Per-image class scores: NxC, or NxCx1x1."""
    return (len(shape) == 2 and shape[1] > 1) or (
        len(shape) == 4 and shape[1] > 1 and shape[2:] == (1, 1)
    )


def class_shares(labels: np.ndarray) -> list[tuple[int, float]]:
    """Classes present in a label map with their share of pixels (%), largest first."""
    counts = np.bincount(labels.reshape(-1).astype(np.int64))
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present], kind="stable")]
    return [(int(c), 100.0 * counts[c] / labels.size) for c in order]


def top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    return [(int(i), float(flat[i])) for i in order]


def read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:  # old label files (synset_words and the like) may be Latin-1
        text = data.decode("latin-1")
    return [line.strip() for line in text.splitlines()]
