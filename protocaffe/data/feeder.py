"""The feeder: every data layer's batches, together, prefetched in the background.

`make_feeder(graph)` -> `Feeder`, an endless iterator of `dict[blob name, torch.Tensor]` with
exactly the lowered module's inputs (`module.input_names`), so a training step is
`outputs = module(next(feeder))`. The batches are made by `protocaffe.data.sources` (numpy),
wrapped as a `torch.utils.data.IterableDataset` and read through a `DataLoader` on a
background thread that stays up to `prefetch` batches ahead (Caffe's data_param.prefetch,
default 4); sources that must see the caller's latest state (MemoryData arrays, Python layers)
are read on the calling thread at `next()`.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from protocaffe.data.pylayer import PythonLayers, refuse
from protocaffe.data.sources import SOURCES, MemoryDataSource, PythonSource, Source
from protocaffe.diagnostics import input_error

if TYPE_CHECKING:
    from protocaffe.ir.graph import Graph

# Background threads still running at exit are stopped first: a daemon thread killed inside
# an h5py/lmdb call during interpreter shutdown can hang the process.
_RUNNING: weakref.WeakSet[Feeder] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for feeder in list(_RUNNING):
        feeder.close()


class _Batches(IterableDataset):
    """The prefetchable sources' batches, one dict per step, as numpy arrays."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        streams = [(s, s.batches()) for s in self.sources]
        while True:
            yield _step(streams)


def _step(streams: list[tuple[Source, Iterator[list[np.ndarray]]]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for source, stream in streams:
        arrays = next(stream)
        for value, array in zip(source.layer.outputs, arrays, strict=True):
            out[value.blob] = array
    return out


class Feeder:
    """An endless iterator of input batches for one net (see `make_feeder`)."""

    def __init__(self, sources: list[Source], input_names: list[str], prefetch: int) -> None:
        self.sources = sources
        self.input_names = input_names
        background = [s for s in sources if s.prefetch]
        self._inline = [(s, s.batches()) for s in sources if not s.prefetch]
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            loader = DataLoader(_Batches(background), batch_size=None, num_workers=0)
            self._thread = threading.Thread(
                target=self._fill, args=(loader,), name="protocaffe-feeder", daemon=True
            )
            self._thread.start()
            _RUNNING.add(self)

    def _fill(self, loader: DataLoader) -> None:
        try:
            for batch in loader:
                if not self._put(batch):
                    return
        except Exception as err:  # bad data (CompileError) or a bug: raised at next()
            self._put(err)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Feeder:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch: dict[str, Any] = {}
        if self._thread is not None:
            if self._stop.is_set():
                raise StopIteration
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.close()
                raise item
            batch.update(item)
        batch.update(_step(self._inline))
        return {name: _tensor(batch[name]) for name in self.input_names}

    def set_input_arrays(self, data: Any, labels: Any, layer: str | None = None) -> None:
        """pycaffe's `net.set_input_arrays`: the arrays a MemoryData layer serves from now
        (N x C x H x W data, N labels, N a multiple of its batch_size). `layer` names the
        MemoryData layer when the net has several."""
        memory = [s for s in self.sources if isinstance(s, MemoryDataSource)]
        if layer is not None:
            memory = [s for s in memory if s.layer.name == layer]
        if len(memory) != 1:
            names = [s.layer.name for s in self.sources if isinstance(s, MemoryDataSource)]
            raise ValueError(f"name one MemoryData layer (layer=...); this net has {names}")
        memory[0].set_arrays(data, labels)

    def close(self) -> None:
        """Stop the background thread (it also stops with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tensor(array: Any) -> torch.Tensor:
    """float32 CPU tensor (the DataLoader already turned prefetched arrays into tensors)."""
    if isinstance(array, torch.Tensor):
        return array.to(torch.float32).contiguous()
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _seeded(seed: int | None, rank: int, index: int) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else [seed, rank, index])


def make_feeder(
    graph: Graph,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int | None = None,
    prefetch: int | None = None,
    python_layers: PythonLayers | None = None,
) -> Feeder:
    """A `Feeder` for `graph` (from `protocaffe.ir.build_graph`, TRAIN or TEST phase).

    Contract:
    - yields, forever, `dict[str, torch.Tensor]` keyed by every input blob of the net
      (`graph.inputs`, i.e. the lowered module's `input_names`: the tops of its Data,
      ImageData, HDF5Data, MemoryData and Python data layers), float32 on the CPU, batch
      axis first,
      each layer's records in Caffe's order (wrapping at the end of the source, as Caffe);
      `module(next(feeder))` runs one forward pass. DummyData tops are not in it: the module
      fills them itself on every pass, as Caffe does;
    - at TRAIN, `Data`/`HDF5Data` records are strided by `rank` of `world_size` (Caffe's
      multi-GPU rule); TEST never skips;
    - `seed` fixes the random crops, mirrors and shuffles (per layer and rank); None draws
      fresh entropy, like Caffe without `random_seed`;
    - bad data (a missing source, a corrupt record, a dataset that disagrees with the net)
      raises `CompileError` naming the file and record, at `next()`;
    - Python data layers run only from `python_layers` (`pylayer.PythonLayers.load`, the
      user's opt-in); without it a net that has one is an error naming the flag to pass;
    - `prefetch` batches are read ahead on one background thread (default: the largest
      data_param.prefetch, else 4); call `close()` (or use `with`) to stop it early.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    sources: list[Source] = []
    depths = []
    for index, layer in enumerate(graph.layers):
        if layer.spec is None or not layer.spec.is_input:
            continue
        args = (layer, graph.phase, rank, world_size, _seeded(seed, rank, index))
        if layer.type == "Python":
            if python_layers is None or layer.name not in python_layers.layers:
                raise refuse(layer)
            sources.append(PythonSource(*args, layer=python_layers.layers[layer.name]))
            continue
        kind = SOURCES.get(layer.type)
        if kind is None:
            raise input_error(
                f"{layer.type} layer '{layer.name}' has no data source protocaffe can read "
                f"(it reads {', '.join(SOURCES)})",
                layer.span,
                hint="an Input layer is fed by the caller: pass its blobs to the module",
            )
        sources.append(kind(*args))
        if layer.type == "Data":
            depths.append(int(layer.proto.data_param.prefetch))
    if prefetch is None:
        prefetch = max(depths, default=4)
    return Feeder(sources, [v.blob for v in graph.inputs], prefetch)
