"""Segmentation scores as FCN's score.py defines them, from one streamed confusion matrix.

Each image adds its pixels to an n x n count matrix (rows: ground truth, columns: prediction),
keeping only labels in 0..n-1 (so 255 "void" drops out), and nothing else is kept. The metrics
come from the summed matrix, not from an average of per-image scores:

    pixel accuracy = trace / total
    class accuracy = diag / row sums                  mean accuracy = nanmean over classes
    IoU            = diag / (row + column - diag)     mean IoU = nanmean over classes
    frequency-weighted IoU = sum of (row sum / total) * IoU over classes present in the truth

A class absent from both the truth and the predictions has no IoU (NaN, skipped by the means).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocaffe.diagnostics import input_error
from protocaffe.runtime.preprocess import IMAGE_SUFFIXES

VOID = 255


class Confusion:
    """An n x n pixel count matrix, summed image by image."""

    def __init__(self, classes: int, ignore: int | None = VOID) -> None:
        self.n = classes
        self.ignore = ignore
        self.hist = np.zeros((classes, classes), np.int64)
        self.ignored = 0  # pixels labelled `ignore`
        self.unknown = 0  # other labels outside 0..n-1 (dropped too, as FCN's fast_hist does)

    def add(self, label: np.ndarray, prediction: np.ndarray) -> None:
        """Count one image: `label` and `prediction` are integer maps of the same shape."""
        gt = np.asarray(label).reshape(-1).astype(np.int64)
        pred = np.asarray(prediction).reshape(-1).astype(np.int64)
        keep = (gt >= 0) & (gt < self.n)
        dropped = gt[~keep]
        ignored = int((dropped == self.ignore).sum()) if self.ignore is not None else 0
        self.ignored += ignored
        self.unknown += dropped.size - ignored
        flat = self.n * gt[keep] + pred[keep]
        self.hist += np.bincount(flat, minlength=self.n * self.n).reshape(self.n, self.n)


@dataclass
class Scores:
    pixel_accuracy: float
    mean_accuracy: float
    mean_iou: float
    frequency_weighted_iou: float
    class_accuracy: np.ndarray  # per class; NaN where the class is absent from the truth
    iou: np.ndarray  # per class; NaN where absent from both truth and predictions
    frequency: np.ndarray  # share of labelled pixels per class (row sums / total)


def scores(hist: np.ndarray) -> Scores:
    """FCN's metrics from a confusion matrix (rows: truth, columns: prediction)."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    diag, rows, cols = np.diag(hist), hist.sum(1), hist.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        class_acc = diag / rows
        iou = diag / (rows + cols - diag)
        freq = rows / total
    present = freq > 0
    return Scores(
        pixel_accuracy=float(diag.sum() / total) if total else float("nan"),
        mean_accuracy=_nanmean(class_acc),
        mean_iou=_nanmean(iou),
        frequency_weighted_iou=float((freq[present] * iou[present]).sum()),
        class_accuracy=class_acc,
        iou=iou,
        frequency=np.nan_to_num(freq),
    )


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


# ---------------------------------------------------------------------------- the dataset


def _resolve(entry: str, listing: Path) -> Path:
    """A list entry: as given when it exists (from the working directory), else next to the
    list file (ImageData lists are relative to a root folder, usually the list's)."""
    path = Path(entry)
    if path.exists() or path.is_absolute():
        return path
    return listing.parent / path


def _list_entries(listing: Path) -> list[Path]:
    """The first field of each non-empty line (ImageData's `path label` lines work as is)."""
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise input_error(f"cannot read list {listing}: {err}") from None
    return [_resolve(line.split()[0], listing) for line in lines if line.strip()]


def image_label_pairs(images: str, labels: str) -> list[tuple[Path, Path]]:
    """(image, label PNG) pairs: images from a folder or a list file; labels from a folder
    (the PNG with each image's stem) or a list file in the same order."""
    source = Path(images)
    if source.is_dir():
        found = [p for p in sorted(source.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    elif source.is_file():
        found = _list_entries(source)
    else:
        raise input_error(f"--images {images}: no such file or directory")
    if not found:
        raise input_error(f"--images {images}: no images found")
    target = Path(labels)
    if target.is_dir():
        pairs = [(p, target / f"{p.stem}.png") for p in found]
    elif target.is_file():
        label_paths = _list_entries(target)
        if len(label_paths) != len(found):
            raise input_error(
                f"--labels {labels} lists {len(label_paths)} files but --images {images} "
                f"gives {len(found)} images",
                hint="the two lists pair up line by line",
            )
        pairs = list(zip(found, label_paths, strict=True))
    else:
        raise input_error(f"--labels {labels}: no such file or directory")
    missing = [str(label) for _, label in pairs if not label.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise input_error(f"no label file {missing[0]}{more}", hint="labels pair up by file stem")
    return pairs


def load_label(path: Path) -> np.ndarray:
    """A label PNG as an HxW integer array of class ids (palettised or greyscale)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise input_error(
                    f"{path}: the label image is {im.mode}; labels are class ids, one channel",
                    hint="save labels as palettised (VOC) or greyscale PNGs of class indices",
                )
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError) as err:
        raise input_error(f"{path}: cannot read label image: {err}") from None


@dataclass
class Scored:
    """One image's result, for progress reports."""

    image: Path
    pixels: int


def score_images(
    predict: Callable[[Any], np.ndarray],
    pairs: Sequence[tuple[Path, Path]],
    prepare: Callable[[Path], Any],
    confusion: Confusion,
) -> Iterator[Scored]:
    """Add each image's prediction to `confusion`, one image at a time.

    `prepare(image path)` gives the net's input; `predict(input)` its 1xCxHxW class scores
    as an array. The output must be at the label's size (FCN ends with a Crop to the input).
    """
    for image, label_path in pairs:
        label = load_label(label_path)
        scores_map = predict(prepare(image))
        if scores_map.shape[2:] != label.shape:
            out = "x".join(map(str, scores_map.shape))
            raise input_error(
                f"{image}: the net's output is {out} but the label {label_path} is "
                f"{label.shape[0]}x{label.shape[1]}; scoring compares every pixel, so the "
                "output must be at the label's size",
                hint="end the net with a Crop of the upsampled scores to the input, as FCN "
                'does: layer { type: "Crop" bottom: "upscore" bottom: "data" top: "score" '
                "crop_param { axis: 2 offset: N } } (`protocaffe compile` checks N)",
            )
        confusion.add(label, scores_map[0].argmax(axis=0))
        yield Scored(image, label.size)
