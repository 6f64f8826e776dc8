"""Forward timing, like `caffe time` without the backward pass: whole-net and per-layer.

Whole-net times call the module as users do (compiled or not). Per-layer times replay the
module's fx graph node by node with `torch.fx.Interpreter` and charge each node's call (only
the call: the interpreter's own bookkeeping is measured apart, as `overhead`) to the Caffe
layer recorded in `node.meta["caffe_layer"]` by the lowering; on CUDA every node is followed by
a synchronise, so kernels are charged to the layer that launched them.

Without a fixed count, runs are timed until about `AUTO_BUDGET_S` seconds have been spent (at
least one, at most `AUTO_MAX_RUNS`), so a large net's benchmark stays quick.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

AUTO_BUDGET_S = 2.0
AUTO_MAX_RUNS = 10


@dataclass
class Stats:
    """Seconds per run: all samples, their median and minimum."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else 0.0


def synchronizer(device: Any) -> Callable[[], None]:
    """A no-op on CPU; `torch.cuda.synchronize` for CUDA devices."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def enough(samples: list[float], iterations: int | None) -> bool:
    """Whether a timing loop is done: `iterations` runs, or (None) the automatic budget."""
    if iterations is not None:
        return len(samples) >= iterations
    return len(samples) >= AUTO_MAX_RUNS or (bool(samples) and sum(samples) >= AUTO_BUDGET_S)


def time_calls(
    fn: Callable[[], Any], iterations: int | None, warmup: int, device: Any = "cpu"
) -> Stats:
    """Run `fn` `warmup` times untimed, then time synchronised calls: `iterations` of them,
    or with None as many as the automatic budget allows."""
    sync = synchronizer(device)
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    while not enough(samples, iterations):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return Stats(samples)


@dataclass
class LayerTime:
    name: str  # Caffe layer name
    type: str
    top_shapes: list[tuple[int, ...]]
    stats: Stats


@dataclass
class LayerTimes:
    """Per-layer times in network order, and what each replay spent outside the layers'
    calls (the interpreter fetching arguments and freeing values: not the net's cost)."""

    layers: list[LayerTime]
    overhead: Stats


def layer_times(
    module: Any, inputs: dict[str, Any], iterations: int | None, warmup: int, device: Any = "cpu"
) -> LayerTimes:
    """Per-layer forward times of a CaffeModule, in network order.

    Only each node's call is timed (synchronised on CUDA); nodes that the lowering did not tag
    with a Caffe layer (input lookups, parameter reads) cost next to nothing and are left
    out. Layers that emit no node (Input, Silence) are listed with zero time so that the
    table follows the prototxt.
    """
    import torch
    from torch import fx

    sync = synchronizer(device)

    class Timer(fx.Interpreter):
        def __init__(self) -> None:
            super().__init__(module, garbage_collect_values=True)
            self.spent: dict[str, float] = {}
            self.layer: str | None = None

        def run_node(self, n: fx.Node) -> Any:
            self.layer = n.meta.get("caffe_layer") if n.op.startswith("call_") else None
            return super().run_node(n)

        def _timed(self, call: Callable[[], Any]) -> Any:
            if self.layer is None:
                return call()
            start = time.perf_counter()
            result = call()
            sync()
            self.spent[self.layer] = self.spent.get(self.layer, 0.0) + time.perf_counter() - start
            return result

        def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
            return self._timed(lambda: super(Timer, self).call_function(target, args, kwargs))

        def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
            return self._timed(lambda: super(Timer, self).call_method(target, args, kwargs))

        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            return self._timed(lambda: super(Timer, self).call_module(target, args, kwargs))

    runs: list[dict[str, float]] = []
    passes: list[float] = []
    overhead: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            Timer().run(inputs)
        while not enough(passes, iterations):
            timer = Timer()
            sync()
            start = time.perf_counter()
            timer.run(inputs)
            sync()
            passes.append(time.perf_counter() - start)
            runs.append(timer.spent)
            overhead.append(max(passes[-1] - sum(timer.spent.values()), 0.0))
    out = []
    for layer in module.caffe_graph.layers:
        samples = [run.get(layer.name, 0.0) for run in runs]
        shapes = [v.shape for v in layer.outputs]
        out.append(LayerTime(layer.name, layer.type, shapes, Stats(samples)))
    return LayerTimes(out, Stats(overhead))


def activation_peak_bytes(module: Any, inputs: dict[str, Any]) -> int:
    """The most memory that blobs (inputs and intermediates, not weights) hold at once during
    one forward pass of a CaffeModule, counting each storage once (in-place results and views
    share their input's). The fx code frees every value after its last use; Caffe instead keeps
    every blob of the net allocated, so compare with the sum of all blob sizes."""
    import torch
    from torch import fx

    weights = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}

    class Meter(fx.Interpreter):
        def __init__(self) -> None:
            super().__init__(module, garbage_collect_values=True)
            self.peak = 0

        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            live: dict[int, int] = {}
            for value in [*self.env.values(), result, *inputs.values()]:
                for t in _tensors(value):
                    ptr = t.untyped_storage().data_ptr()
                    if ptr not in weights:
                        live[ptr] = t.untyped_storage().nbytes()
            self.peak = max(self.peak, sum(live.values()))
            return result

    meter = Meter()
    with torch.no_grad():
        meter.run(inputs)
    return meter.peak


def _tensors(value: Any) -> list[Any]:
    """The tensors in a node's value (a tensor, or a tuple/list/dict of them)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def blob_bytes(graph: Any, itemsize: int = 4) -> int:
    """The sum of every blob's size: what Caffe allocates for a forward pass. In-place layers
    write into their bottom's blob, so each blob name counts once."""
    import math

    shapes = {v.blob: v.shape for v in graph.values.values()}
    return sum(math.prod(s) for s in shapes.values()) * itemsize
