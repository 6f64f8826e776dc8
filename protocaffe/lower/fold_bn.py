"""Fold BatchNorm (and the Scale after it) into the Convolution/InnerProduct before it.

At TEST time Caffe's BatchNorm is a fixed per-channel affine map, y = (x - mean) / sqrt(var +
eps), and the Scale that follows is another, y = gamma * x + beta. Both fold into the weights
of the layer that produced x:

    W' = W * s (per output channel),  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps)

The fold is a net transformation, not a patch on the fx code: the folded layers are removed from
the NetParameter, the producer gets `bias_term: true` and the last folded top, and the result is
compiled as an ordinary net (its source map still points into the original file), so shapes,
reports, reshaping and weight export all see the deployed net.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocaffe.layers.base import canonical_axis
from protocaffe.layers.normalization import uses_global_stats

if TYPE_CHECKING:
    from protocaffe.ir.graph import Graph, Layer, Value
    from protocaffe.lower.module import CaffeModule

FOLDABLE = frozenset({"Convolution", "InnerProduct"})


@dataclass
class Fold:
    """One producer with the BatchNorm (and optional Scale) folded into it."""

    producer: Layer
    batch_norm: Layer
    scale: Layer | None

    @property
    def folded(self) -> list[Layer]:
        return [self.batch_norm, *([self.scale] if self.scale else [])]


@dataclass
class FoldPlan:
    folds: list[Fold] = field(default_factory=list)

    @property
    def removed(self) -> set[Layer]:
        return {layer for f in self.folds for layer in f.folded}


def _sole_consumer(value: Value) -> Layer | None:
    consumers = value.consumers
    return consumers[0] if len(consumers) == 1 and consumers[0].inputs == [value] else None


def _producer_ok(layer: Layer) -> bool:
    proto = layer.proto
    if layer.type not in FOLDABLE or len(proto.bottom) != 1 or len(proto.top) != 1:
        return False
    if any(p.name for p in proto.param):  # shared weights serve other layers too
        return False
    shape = layer.outputs[0].shape
    if shape is None or len(shape) < 2:
        return False
    if layer.type == "Convolution":
        return canonical_axis(proto.convolution_param.axis, len(shape)) == 1
    ip = proto.inner_product_param
    return not ip.transpose and len(shape) == 2


def _scale_ok(layer: Layer, channels: int) -> bool:
    p = layer.proto.scale_param
    ndim = len(layer.inputs[0].shape or ())
    return (
        layer.type == "Scale"
        and len(layer.proto.bottom) == 1
        and canonical_axis(p.axis, ndim) == 1
        and [b.shape for b in layer.blob_specs][:1] == [(channels,)]
    )


def plan_folds(graph: Graph) -> FoldPlan:
    """Every BatchNorm (TEST statistics) whose bottom only a foldable layer feeds and only it
    reads; a Scale that alone reads the BatchNorm's top is folded with it."""
    plan = FoldPlan()
    for layer in graph.layers:
        if layer.type != "BatchNorm" or not uses_global_stats(
            layer.proto.batch_norm_param, graph.phase
        ):
            continue
        (x,) = layer.inputs
        producer = x.producer
        if producer is None or not _producer_ok(producer) or _sole_consumer(x) is not layer:
            continue
        scale = _sole_consumer(layer.outputs[0])
        channels = layer.outputs[0].shape[1] if layer.outputs[0].shape else -1
        if scale is not None and not _scale_ok(scale, channels):
            scale = None
        plan.folds.append(Fold(producer, layer, scale))
    return plan


def folded_graph(graph: Graph, plan: FoldPlan) -> tuple[Graph, list[int]]:
    """`graph`'s net without the folded layers, compiled for the same state and inputs; and
    for each layer of the new net, its index in the original one."""
    from protocaffe.frontend import ParsedFile
    from protocaffe.ir.build import build_graph
    from protocaffe.proto import caffe_pb2

    removed = {layer.path[1] for layer in plan.removed}
    last_top = {f.producer.path[1]: f.folded[-1].proto.top[0] for f in plan.folds}
    net = caffe_pb2.NetParameter()
    net.CopyFrom(graph.net)
    del net.layer[:]
    mapping = {}
    kept = []
    for i, lp in enumerate(graph.net.layer):
        if i in removed:
            mapping[("layer", i)] = ("folded_layer", i)  # keeps their spans out of the way
            continue
        mapping[("layer", i)] = ("layer", len(net.layer))
        kept.append(i)
        new = net.layer.add()
        new.CopyFrom(lp)
        if i in last_top:
            new.top[0] = last_top[i]
            field = "convolution_param" if lp.type == "Convolution" else "inner_product_param"
            getattr(new, field).bias_term = True
    source_map = graph.source_map.remap(mapping) if graph.source_map else None
    state = graph.state
    parsed = ParsedFile(net, source_map, source_map.source if source_map else None)
    shapes = {v.blob: v.shape for v in graph.inputs if v.shape is not None}
    folded = build_graph(
        parsed, state.phase, stages=sorted(state.stages), level=state.level, input_shapes=shapes
    )
    return folded, kept


def _folded_blobs(module: CaffeModule, fold: Fold) -> tuple[Any, Any]:
    """The producer's weight and bias with the BatchNorm (and Scale) folded in (float64)."""
    import torch

    def blob(layer: Layer, name: str) -> Any:
        return module.blob_tensor(layer, name).detach().to(torch.float64)

    bn = fold.batch_norm
    factor = blob(bn, "scale_factor").reshape(-1)[0]
    inv = 0.0 if factor == 0 else 1.0 / factor
    mean, var = blob(bn, "mean") * inv, blob(bn, "variance") * inv
    s = 1.0 / torch.sqrt(var + bn.proto.batch_norm_param.eps)
    shift = -mean * s
    if fold.scale is not None:
        gamma = blob(fold.scale, "weight")
        beta = (
            blob(fold.scale, "bias")
            if fold.scale.proto.scale_param.bias_term
            else torch.zeros_like(gamma)
        )
        s, shift = s * gamma, shift * gamma + beta
    producer = fold.producer
    weight = blob(producer, "weight")
    has_bias = any(b.name == "bias" for b in producer.blob_specs)
    bias = blob(producer, "bias") if has_bias else torch.zeros_like(s)
    weight = weight * s.reshape(-1, *([1] * (weight.dim() - 1)))
    return weight, bias * s + shift


def fold_batch_norm(module: CaffeModule) -> CaffeModule:
    """A new module computing the same function as `module` (TEST phase) with every foldable
    BatchNorm (+ Scale) folded into its producer; `module` itself is left as it was."""
    import torch

    from protocaffe.lower.builder import lower_graph

    graph = module.caffe_graph
    plan = plan_folds(graph)
    new_graph, kept = folded_graph(graph, plan)
    ref = next(iter(module.state_dict().values()), None)
    folded = lower_graph(
        new_graph,
        device=ref.device if ref is not None else None,
        dtype=ref.dtype if ref is not None else None,
        outputs=[n for n in module.output_names if n not in {v.blob for v in new_graph.outputs}],
        init=False,
    )
    old_at = {layer.path[1]: layer for layer in graph.layers}
    producers = {f.producer.path[1]: f for f in plan.folds}
    with torch.no_grad():
        for layer in new_graph.layers:
            index = kept[layer.path[1]]
            old = old_at[index]
            fold = producers.get(index)
            folded_blobs = _folded_blobs(module, fold) if fold is not None else None
            for spec in layer.blob_specs:
                target = folded.blob_tensor(layer, spec.name)
                if folded_blobs is not None:
                    weight, bias = folded_blobs
                    source = weight if spec.name == "weight" else bias
                else:
                    source = module.blob_tensor(old, spec.name)
                target.copy_(source.to(target.dtype))
    folded.train(module.training)
    folded.folded_layers = [layer.name for f in plan.folds for layer in f.folded]
    return folded
