"""Writes a tiny synthetic 3-class image set as HDF5 for examples/train_classifier.

Each 1x8x8 image is noise plus a bright band of two rows whose position is the class. Run from
the repository root (the solver's paths are relative to the working directory, as in Caffe):
    python examples/train_classifier/make_data.py      # -> classifier-data/{train,test}.{h5,txt}
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np


def write(folder: Path, name: str, n: int, rng: np.random.Generator) -> None:
    labels = rng.integers(0, 3, n)
    images = rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)
    for image, c in zip(images, labels, strict=True):
        image[0, 2 * c : 2 * c + 2, :] += 2.0
    with h5py.File(folder / f"{name}.h5", "w") as f:
        f["data"] = images
        f["label"] = labels.astype(np.float32)
    # HDF5Data lists .h5 paths as Caffe opens them: relative to the working directory.
    (folder / f"{name}.txt").write_text(f"{folder / name}.h5\n")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "classifier-data")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    write(folder, "train", 256, rng)
    write(folder, "test", 64, rng)
    print(f"wrote {folder}/train.h5 (256 images), {folder}/test.h5 (64 images)")


if __name__ == "__main__":
    main()
