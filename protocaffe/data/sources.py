"""One batch stream per data layer, in Caffe's record order (numpy only, no torch).

Each `Source` turns a data layer of the graph into an endless iterator of batches, one array
per top in top order, as the layer's Forward would fill them:

- `Data`: database records in key order, wrapping at the end; each record a Datum, transformed
  by `transform_param`; label top (N,).
- `ImageData`: the list file's images (root_folder + path), optionally shuffled at the start
  and at every wrap, resized to new_height x new_width, transformed; label top (N,).
- `HDF5Data`: the rows of the listed files' datasets named after the tops; with `shuffle`, file
  order and row order shuffled (rows never mix across files); no transform (Caffe rejects one).
- `MemoryData`: arrays handed in through `Feeder.set_input_arrays`, batch after batch.
- `Python`: a user's data layer the user allowed (`protocaffe.data.pylayer`): its tops after
  each reshape + forward.

Multi-process training (Caffe's multi-GPU): `Data` and `HDF5Data` keep, at TRAIN, only the
records whose running offset (counting every record visited, across wraps) is `rank` modulo
`world_size`; `ImageData` and `MemoryData` are not strided, as in Caffe. TEST never strides.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from protocaffe.data import records
from protocaffe.diagnostics import input_error
from protocaffe.runtime.transform import TRAIN, Transform

if TYPE_CHECKING:
    from protocaffe.ir.graph import Layer

T = TypeVar("T")
Batch = list[np.ndarray]


def forever(passes: Callable[[], Iterable[T]]) -> Iterator[T]:
    """`passes()` again and again: a source that restarts from its first record at the end."""
    while True:
        empty = True
        for item in passes():
            empty = False
            yield item
        if empty:
            return


def strided(items: Iterable[T], rank: int, world_size: int) -> Iterator[T]:
    """Caffe's Skip(): keep the items whose offset (counting every item) is rank mod world."""
    for offset, item in enumerate(items):
        if offset % world_size == rank:
            yield item


class Source:
    """A data layer's endless batch stream. `prefetch`: may run ahead in a background thread."""

    prefetch = True

    def __init__(
        self, layer: Layer, phase: int, rank: int, world_size: int, rng: np.random.Generator
    ) -> None:
        self.layer = layer
        self.phase = phase
        # Only TRAIN-phase readers skip records for other ranks (TEST runs on rank 0 alone).
        self.rank, self.world_size = (rank, world_size) if phase == TRAIN else (0, 1)
        self.rng = rng
        self.param = getattr(layer.proto, layer.spec.param_field)
        self.span = layer.span

    def batches(self) -> Iterator[Batch]:
        raise NotImplementedError

    def transform(self, base: str | Path | None = None) -> Transform:
        proto = self.layer.proto
        return Transform.from_param(proto.transform_param, self.phase, self.span, base)

    def stack(self, items: list[np.ndarray], wheres: list[str]) -> np.ndarray:
        """The items of one batch as one array; Caffe needs them all of one shape."""
        for item, where in zip(items, wheres, strict=True):
            if item.shape != items[0].shape:
                raise input_error(
                    f"{where}: gives a {_shape(item.shape)} item but {wheres[0]} gave "
                    f"{_shape(items[0].shape)}; the items of one batch of layer "
                    f"'{self.layer.name}' must have one shape",
                    self.span,
                    hint="crop (transform_param.crop_size) or resize them to one size",
                )
        return np.stack(items)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _batch_size(source: Source) -> int:
    n = int(source.param.batch_size)
    if n <= 0:
        raise input_error(f"layer '{source.layer.name}': batch_size must be positive", source.span)
    return n


class DataSource(Source):
    def batches(self) -> Iterator[Batch]:
        p = self.param
        step = self.transform()
        force_color = self.layer.proto.transform_param.force_color
        force_gray = self.layer.proto.transform_param.force_gray
        stream = strided(
            forever(lambda: records.db_records(p.source, p.backend, self.span)),
            self.rank,
            self.world_size,
        )
        n = _batch_size(self)
        while True:
            items, labels, wheres = [], [], []
            for key, value in _take(stream, n, p.source):
                where = f"{p.source} record {key.decode(errors='replace')}"
                chw, label = records.decode_datum(value, where, force_color, force_gray)
                items.append(step(chw, self.rng, where))
                labels.append(label)
                wheres.append(where)
            batch = [self.stack(items, wheres), np.asarray(labels, dtype=np.float32)]
            yield batch[: len(self.layer.outputs)]


class ImageDataSource(Source):
    def batches(self) -> Iterator[Batch]:
        p = self.param
        if (p.new_height > 0) != (p.new_width > 0):
            raise input_error("new_height and new_width must be set together", self.span)
        size = (p.new_height, p.new_width) if p.new_height > 0 else None
        step = self.transform()
        lines = records.read_labelled_list(p.source, self.span)
        n = _batch_size(self)
        stream = self._lines(lines)
        while True:
            items, labels, wheres = [], [], []
            for (path, label), number in _take(stream, n, p.source):
                where = f"{p.source}:{number}"
                chw = records.read_image(p.root_folder + path, where, p.is_color, size)
                items.append(step(chw, self.rng, where))
                labels.append(label)
                wheres.append(where)
            yield [self.stack(items, wheres), np.asarray(labels, dtype=np.float32)]

    def _lines(self, lines: list[tuple[str, int]]) -> Iterator[tuple[tuple[str, int], int]]:
        """(line, 1-based line number) in Caffe's order: shuffled at setup and at every wrap
        with `shuffle`; the first pass starts at a random line below `rand_skip`."""
        order = np.arange(len(lines))
        shuffle = self.param.shuffle
        if shuffle:
            self.rng.shuffle(order)
        start = int(self.rng.integers(self.param.rand_skip)) if self.param.rand_skip else 0
        if start >= len(lines):  # Caffe CHECKs it too
            raise input_error(
                f"rand_skip skipped {start} of the {len(lines)} images {self.param.source} lists",
                self.span,
            )
        while True:
            for i in order[start:]:
                yield lines[i], int(i) + 1
            start = 0
            if shuffle:
                self.rng.shuffle(order)


class HDF5DataSource(Source):
    def batches(self) -> Iterator[Batch]:
        p = self.param
        if self.layer.proto.HasField("transform_param"):
            raise input_error(
                f"HDF5Data layer '{self.layer.name}' does not transform its data "
                "(Caffe rejects transform_param here)",
                self.span,
            )
        files = records.read_list(p.source, self.span)
        n = _batch_size(self)
        rows = strided(self._rows(files), self.rank, self.world_size)
        while True:
            picked = list(_take(rows, n, p.source))
            tops = range(len(picked[0][0]))
            yield [np.stack([arrays[j][r] for arrays, r in picked]) for j in tops]

    def _rows(self, files: list[str]) -> Iterator[tuple[list[np.ndarray], int]]:
        """(the current file's arrays, row) in Caffe's order."""
        shuffle = self.param.shuffle
        order = np.arange(len(files))
        if shuffle:
            self.rng.shuffle(order)
        loaded: dict[int, list[np.ndarray]] = {}
        while True:
            for f in order:
                arrays = loaded.get(int(f)) or self._load(files[f])
                if len(files) == 1:  # one file stays in memory, as Caffe keeps it
                    loaded[int(f)] = arrays
                rows = np.arange(arrays[0].shape[0])
                if shuffle:
                    self.rng.shuffle(rows)
                for r in rows:
                    yield arrays, int(r)
            if shuffle:
                self.rng.shuffle(order)

    def _load(self, path: str) -> list[np.ndarray]:
        tops = list(self.layer.proto.top)
        arrays = records.read_hdf5(path, tops, self.span)
        for top, array, value in zip(tops, arrays, self.layer.outputs, strict=True):
            want = tuple(value.shape[1:]) if value.shape else None
            if want is not None and tuple(array.shape[1:]) != want:
                raise input_error(
                    f"{path}: dataset '{top}' has rows of shape {_shape(array.shape[1:]) or '()'} "
                    f"but the net's '{top}' is {_shape(value.shape)} (batch first)",
                    self.span,
                    hint="every listed file must hold rows of the shape the net was built for",
                )
        return arrays


class MemoryDataSource(Source):
    """pycaffe's `net.set_input_arrays(data, labels)`: consumed batch_size rows at a time,
    wrapping; the arrays are used as given (Caffe's Reset does not transform them)."""

    prefetch = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.position = 0

    def set_arrays(self, data: Any, labels: Any) -> None:
        p = self.param
        data = np.asarray(data, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        want = (p.channels, p.height, p.width)
        name = self.layer.name
        if data.ndim != 4 or data.shape[1:] != want:
            raise input_error(
                f"MemoryData '{name}': data must be Nx{_shape(want)}, got {_shape(data.shape)}",
                self.span,
            )
        if labels.shape[0] != data.shape[0]:
            raise input_error(
                f"MemoryData '{name}': {labels.shape[0]} labels for {data.shape[0]} items",
                self.span,
            )
        if data.shape[0] % p.batch_size:
            raise input_error(
                f"MemoryData '{name}': {data.shape[0]} items is not a multiple of batch_size "
                f"{p.batch_size}",
                self.span,
            )
        self.arrays, self.position = (data, labels), 0

    def batches(self) -> Iterator[Batch]:
        # A callable iterator, not a generator: it still works after raising "no data".
        return iter(self._next, None)

    def _next(self) -> Batch:
        if self.arrays is None:
            raise input_error(
                f"MemoryData layer '{self.layer.name}' has no data: call "
                "feeder.set_input_arrays(data, labels) first",
                self.span,
            )
        data, labels = self.arrays
        n, start = _batch_size(self), self.position
        self.position = (start + n) % data.shape[0]
        return [data[start : start + n], labels[start : start + n]]


class PythonSource(Source):
    """A set-up user layer (`pylayer.PythonLayer`); run on the caller's thread, as Caffe runs
    Python layers on the net's own."""

    prefetch = False

    def __init__(self, *args: Any, layer: Any) -> None:
        super().__init__(*args)
        self.user = layer

    def batches(self) -> Iterator[Batch]:
        return iter(self.user.forward, None)


def _take(stream: Iterator[T], n: int, source: str) -> Iterator[T]:
    for _ in range(n):
        try:
            yield next(stream)
        except StopIteration:
            raise input_error(f"data source {source}: holds no records") from None


SOURCES: dict[str, type[Source]] = {
    "Data": DataSource,
    "ImageData": ImageDataSource,
    "HDF5Data": HDF5DataSource,
    "MemoryData": MemoryDataSource,
}
