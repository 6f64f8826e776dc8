"""A net being trained or tested: a lowered CaffeModule plus what Caffe's Net adds for it.

`TrainableNet` holds the module for one NetState, the loss weight of every top (Caffe's
blob_loss_weights_: `loss_weight` entries, else 1 for a loss layer's top[0]), its data source
(an iterator of input-blob dicts), and the blobs of the last forward pass. `forward_backward`
is Caffe's ForwardBackward: the objective is the loss-weighted sum of those tops, and its
gradients accumulate into the params until `clear_param_diffs` (Caffe's ClearParamDiffs).
The pycaffe-shaped accessors (`params`, `blobs`, `copy_from`, `share_with`, `save`) make
notebooks written for `caffe.SGDSolver` read the same.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from protocaffe.diagnostics import Diagnostics, input_error
from protocaffe.ir.graph import Graph
from protocaffe.train.params import LearnableBlob, learnable_blobs, set_requires_grad


@dataclass(frozen=True)
class Output:
    """A net output (a blob no layer consumes), as Caffe displays it after a pass."""

    key: str  # key in the module's result
    blob: str
    loss_weight: float


def loss_weights(graph: Graph) -> dict[str, float]:
    """Value id -> loss weight for every top with a non-zero one (Layer::SetLossWeights)."""
    weights: dict[str, float] = {}
    diags = Diagnostics()
    for layer in graph.layers:
        given = list(layer.proto.loss_weight)
        if given and len(given) != len(layer.outputs):
            diags.error(
                f"layer '{layer.name}' gives {len(given)} loss_weight values for "
                f"{len(layer.outputs)} tops; give one per top (or none)",
                layer.span,
            )
            continue
        if not given and layer.spec is not None and layer.spec.is_loss:
            given = [1.0]
        for value, weight in zip(layer.outputs, given, strict=False):
            if weight:
                weights[value.id] = float(weight)
    diags.check()
    return weights


def net_graph(
    parsed: Any,
    phase: int | str,
    stages: list[str],
    level: int | None,
    python_path: list[str] | None,
) -> tuple[Graph, Any]:
    """The graph of `parsed` for one NetState and its Python data layers, set up when the
    user allowed them (`python_path` not None; their tops' shapes come from their setup)."""
    from protocaffe.data.pylayer import FLAG_HINT, PythonLayers
    from protocaffe.ir.build import build_graph
    from protocaffe.ir.state import layer_included, net_state
    from protocaffe.layers.data import NATIVE_PYTHON_LAYERS

    net = parsed.message
    python = None
    state = net_state(net, phase, stages, level)
    spans = lambda i: parsed.source_map.span(("layer", i, "type"))  # noqa: E731
    for i, proto in enumerate(net.layer):
        if proto.type != "Python" or len(proto.bottom) or not layer_included(state, proto):
            continue
        if (proto.python_param.module, proto.python_param.layer) in NATIVE_PYTHON_LAYERS:
            continue  # protocaffe runs this one itself
        if python_path is None:
            p = proto.python_param
            raise input_error(
                f"layer '{proto.name}' runs Python code ({p.module}.{p.layer}); it is not "
                "imported unless you allow it",
                spans(i),
                hint=FLAG_HINT,
            )
        python = PythonLayers.load(net, phase, stages, level, python_path, spans)
        break
    shapes = python.shapes if python is not None else None
    return build_graph(parsed, phase=phase, stages=stages, level=level, input_shapes=shapes), python


class TrainableNet:
    """One Caffe Net (train or test) for the solver; see the module docstring."""

    def __init__(
        self,
        graph: Graph,
        *,
        device: Any,
        dtype: Any,
        seed: int | None,
        force_backward: bool = False,
    ) -> None:
        from protocaffe.lower.builder import lower_graph

        self.graph = graph
        self.loss_weights = loss_weights(graph)
        self.module = lower_graph(
            graph, device=device, dtype=dtype, seed=seed, outputs=list(self.loss_weights)
        )
        self.device, self.dtype = device, dtype
        self.learnable: list[LearnableBlob] = learnable_blobs(self.module)
        set_requires_grad(self.learnable, force_backward)
        self.outputs = [
            Output(v.blob, v.blob, self.loss_weights.get(v.id, 0.0)) for v in graph.outputs
        ]
        self.blobs: dict[str, Any] = {}  # the last pass's outputs, by key
        self._feed: Iterator[Mapping[str, Any]] | None = None
        self.feed_factory: Any = None  # () -> iterator, used when no feed was set

    # --- data --------------------------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        return list(self.module.input_names)

    def set_feed(self, batches: Iterable[Mapping[str, Any]]) -> None:
        """Where the input blobs come from: an iterable of {blob name: array} batches (for
        nets whose data comes from code: Input, MemoryData, or replacing a data layer)."""
        self._feed = iter(batches)

    def set_input_arrays(self, data: Any, labels: Any, layer: str | None = None) -> None:
        """pycaffe's net.set_input_arrays: the arrays a MemoryData layer serves from now on."""
        if self._feed is None and self.feed_factory is not None:
            self._feed = iter(self.feed_factory())
        setter = getattr(self._feed, "set_input_arrays", None)
        if setter is None:
            raise input_error(f"net '{self.graph.name}' has no MemoryData layer fed by protocaffe")
        setter(data, labels, layer)

    def _next_inputs(self) -> dict[str, Any]:
        if not self.input_names:
            return {}
        if self._feed is None:
            if self.feed_factory is None:
                raise input_error(
                    f"net '{self.graph.name}' ({self.graph.state.phase_name}) has input "
                    f"blob(s) {self.input_names} and no data source",
                    hint="feed it with net.set_feed(iterable of {blob: array} batches)",
                )
            self._feed = iter(self.feed_factory())
        try:
            batch = next(self._feed)
        except StopIteration:
            raise input_error(
                f"the data source of net '{self.graph.name}' "
                f"({self.graph.state.phase_name}) ran out of batches"
            ) from None
        return {name: self._as_blob(batch[name]) for name in self.input_names}

    def _as_blob(self, array: Any) -> Any:
        import torch

        t = torch.as_tensor(array)
        # Caffe blobs are all floating point (labels too).
        return t.to(device=self.device, dtype=self.dtype, non_blocking=True)

    # --- passes --------------------------------------------------------------------------

    def _run(self, inputs: Mapping[str, Any] | None = None) -> Any:
        """One pass on the next batch (or `inputs`): the weighted loss tensor, or None."""
        blobs = self._next_inputs() if inputs is None else dict(inputs)
        self.blobs = self.module(blobs)
        total = None
        for key, weight in self.loss_weights.items():
            term = self.blobs[key].sum() * weight
            total = term if total is None else total + term
        return total

    def forward(self, **inputs: Any) -> dict[str, Any]:
        """pycaffe's net.forward(): one pass without gradients (on the next batch, or on the
        input blobs given by name); returns the net's output blobs."""
        import torch

        with torch.no_grad():
            self._run({k: self._as_blob(v) for k, v in inputs.items()} if inputs else None)
        return {o.blob: self.blobs[o.key] for o in self.outputs}

    def forward_loss(self) -> float:
        """One pass without gradients on the next batch: the loss-weighted objective."""
        import torch

        with torch.no_grad():
            loss = self._run()
        return 0.0 if loss is None else float(loss)

    def forward_backward(self) -> float:
        """Forward then backward from the weighted loss; param diffs accumulate."""
        loss = self._run()
        if loss is None:
            return 0.0
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())

    def clear_param_diffs(self) -> None:
        for blob in self.learnable:
            blob.tensor.grad = None

    def output_values(self) -> list[tuple[Output, Any]]:
        """Each net output of the last pass, as a flat float array."""
        return [(o, self.blobs[o.key].detach().float().reshape(-1).cpu()) for o in self.outputs]

    # --- blobs -------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, list[Any]]:
        """pycaffe's net.params: each layer's stored blobs, by layer name, in Caffe order."""
        out: dict[str, list[Any]] = {}
        for layer in self.module._layer_attrs:
            if layer.blob_specs and layer.name not in out:
                out[layer.name] = [self.module.blob_tensor(layer, s.name) for s in layer.blob_specs]
        return out

    def share_with(self, other: TrainableNet) -> None:
        """Caffe's ShareTrainedLayersWith: every layer of this net named like a layer of
        `other` uses that layer's blobs (the same storage, not a copy)."""
        theirs: dict[str, Any] = {}
        for layer in other.module._layer_attrs:
            theirs.setdefault(layer.name, layer)
        diags = Diagnostics()
        for layer, attr in self.module._layer_attrs.items():
            source = theirs.get(layer.name)
            if source is None:
                continue
            if len(source.blob_specs) != len(layer.blob_specs):
                diags.error(
                    f"layer '{layer.name}' has {len(layer.blob_specs)} blobs in the "
                    f"{self.graph.state.phase_name} net, {len(source.blob_specs)} in the "
                    f"{other.graph.state.phase_name} net",
                    layer.span,
                )
                continue
            child = self.module.get_submodule(attr)
            for mine, spec in zip(layer.blob_specs, source.blob_specs, strict=True):
                tensor = other.module.blob_tensor(source, spec.name)
                if tuple(tensor.shape) != tuple(mine.shape):
                    diags.error(
                        f"cannot share layer '{layer.name}' blob '{mine.name}' between nets: "
                        f"shape {tuple(mine.shape)} vs {tuple(tensor.shape)}",
                        layer.span,
                    )
                elif (layer, mine.name) not in self.module._sharing:
                    setattr(child, mine.name, tensor)
        diags.check()
        self.module.__dict__.pop("_variants", None)
        self.learnable = learnable_blobs(self.module)

    def copy_from(self, path: str) -> None:
        """Load weights (binary .caffemodel or Caffe's HDF5) into the layers named in it."""
        from protocaffe.train.snapshot import load_weights

        load_weights(self.module, path)

    def save(self, path: str, hdf5: bool = False) -> None:
        from protocaffe.train.snapshot import write_weights

        write_weights(self.module, path, hdf5)
