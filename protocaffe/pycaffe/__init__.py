"""A minimal pycaffe-compatible `caffe` module, so that Python layers run unchanged.

User layer files do `import caffe` and subclass `caffe.Layer`; protocaffe puts this module in
`sys.modules["caffe"]` only while it imports a Python layer the user allowed
(`protocaffe.data.pylayer`). What it offers is what Python layers use from pycaffe:

- `caffe.Layer`: `setup(bottom, top)`, `reshape(bottom, top)`, `forward(bottom, top)`,
  `backward(top, propagate_down, bottom)`, and the attributes `param_str`, `phase`, `blobs`;
- `caffe.Blob` (the items of `bottom`/`top`): `.data` and `.diff` float32 arrays,
  `.reshape(*shape)`, `.shape`, `.count`, `.num`, `.channels`, `.height`, `.width`;
- `caffe.TRAIN`, `caffe.TEST`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TRAIN, TEST = 0, 1


class Blob:
    """A pycaffe blob: data and diff arrays of one shape (zero-filled by `reshape`)."""

    def __init__(self, *shape: int) -> None:
        self.reshape(*shape)

    def reshape(self, *shape: int) -> None:
        shape = tuple(int(d) for d in shape)
        if getattr(self, "data", None) is None or self.data.shape != shape:
            self.data = np.zeros(shape, dtype=np.float32)
            self.diff = np.zeros(shape, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)

    def _legacy(self, axis: int) -> int:
        return self.shape[axis] if axis < len(self.shape) else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)


class Layer:
    """Base class of Python layers (pycaffe's caffe.Layer)."""

    def __init__(self, param: Any = None) -> None:
        self.param_str = getattr(param, "python_param", None) and param.python_param.param_str
        self.phase = TRAIN
        self.blobs: list[Blob] = []

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        pass


__all__ = ["TEST", "TRAIN", "Blob", "Layer"]
