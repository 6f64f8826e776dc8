"""What a picture of a net shows: nodes (a layer with the in-place layers folded onto it),
edges (blobs with shapes), per-node key parameters, Crop alignment and diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocaffe.layers.base import shape_str

if TYPE_CHECKING:
    from protocaffe.diagnostics import Diagnostic, Span
    from protocaffe.ir.graph import Graph, Layer, Value

# Fill colours by layer family (light, so that black text stays readable).
_FAMILIES = {
    "#aec7e8": ("Convolution", "Deconvolution", "InnerProduct", "Embed", "Im2col"),
    "#ffbb78": ("Pooling", "SPP", "ROIPooling"),
    "#98df8a": (
        "ReLU",
        "PReLU",
        "ELU",
        "Sigmoid",
        "TanH",
        "Power",
        "AbsVal",
        "BNLL",
        "Exp",
        "Log",
        "Threshold",
        "Swish",
        "Clip",
        "Dropout",
    ),
    "#c5b0d5": ("BatchNorm", "Scale", "Bias", "LRN", "MVN", "Normalize"),
    "#f7b6d2": (
        "Eltwise",
        "Concat",
        "Slice",
        "Split",
        "Crop",
        "Flatten",
        "Reshape",
        "Permute",
        "Tile",
        "Reduction",
        "ArgMax",
        "Interp",
        "Upsample",
    ),
    "#ff9896": (
        "SoftmaxWithLoss",
        "EuclideanLoss",
        "SigmoidCrossEntropyLoss",
        "HingeLoss",
        "InfogainLoss",
        "MultinomialLogisticLoss",
        "ContrastiveLoss",
        "Accuracy",
    ),
    "#dbdb8d": ("Softmax",),
    "#e0e0e0": (
        "Input",
        "Data",
        "ImageData",
        "HDF5Data",
        "MemoryData",
        "DummyData",
        "WindowData",
        "Python",
    ),
}
COLOURS = {t: colour for colour, types in _FAMILIES.items() for t in types}
DEFAULT_COLOUR = "#f0f0f0"


def colour_of(layer_type: str) -> str:
    return COLOURS.get(layer_type, DEFAULT_COLOUR)


def key_params(layer: Layer) -> str:
    """A layer's defining parameters in a few characters: `k3 s2 p1 ×64`, `MAX k2 s2`."""
    from protocaffe.layers._spatial import conv_window, pool_window

    p = layer.proto
    try:
        if layer.type in ("Convolution", "Deconvolution"):
            c = p.convolution_param
            shape = layer.inputs[0].shape if layer.inputs else None
            nsp = len(shape) - 2 if shape else 2
            w = conv_window(c, nsp)
            text = f"{_window(w.kernel, w.stride, w.pad)} ×{c.num_output}"
            if c.group != 1:
                text += f" g{c.group}"
            if set(w.dilation) != {1}:
                text += f" d{_axes(w.dilation)}"
            return text
        if layer.type == "Pooling":
            from protocaffe.layers._spatial import POOL_NAMES

            q = p.pooling_param
            name = POOL_NAMES.get(q.pool, "?")
            if q.global_pooling:
                return f"{name} global"
            shape = layer.inputs[0].shape if layer.inputs else None
            w = pool_window(q, shape[2:] if shape else (1, 1))
            return f"{name} {_window(w.kernel, w.stride, w.pad)}"
        if layer.type == "InnerProduct":
            return f"×{p.inner_product_param.num_output}"
        if layer.type == "LRN":
            return f"size {p.lrn_param.local_size}"
        if layer.type == "Eltwise":
            from protocaffe.proto import caffe_pb2

            return caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.eltwise_param.operation)
        if layer.type == "Concat":
            return f"axis {p.concat_param.axis}"
        if layer.type == "Dropout":
            return f"ratio {p.dropout_param.dropout_ratio:g}"
    except Exception:  # a picture never fails on a parameter it cannot summarise
        return ""
    return ""


def _axes(values: tuple[int, ...]) -> str:
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _window(kernel: tuple[int, ...], stride: tuple[int, ...], pad: tuple[int, ...]) -> str:
    text = f"k{_axes(kernel)} s{_axes(stride)}"
    return text + (f" p{_axes(pad)}" if any(pad) else "")


@dataclass
class Node:
    id: str  # "n<index of the main layer>"
    layer: Layer
    folded: list[Layer] = field(default_factory=list)  # in-place layers drawn inside
    notes: list[str] = field(default_factory=list)  # Crop alignment
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def layers(self) -> list[Layer]:
        return [self.layer, *self.folded]

    @property
    def severity(self) -> str | None:
        kinds = {d.severity for d in self.diagnostics}
        return "error" if "error" in kinds else "warning" if "warning" in kinds else None


@dataclass
class Edge:
    source: str
    target: str
    value: Value

    @property
    def label(self) -> str:
        shape = shape_str(self.value.shape) if self.value.shape is not None else "?"
        return f"{self.value.blob}\n{shape}"


@dataclass
class DrawModel:
    nodes: list[Node]
    edges: list[Edge]
    node_of: dict[Layer, Node]  # every layer, folded ones included
    unplaced: list[Diagnostic]  # diagnostics that belong to no layer


def _all_in_place(layer: Layer) -> bool:
    return bool(layer.proto.top) and all(layer.top_in_place(j) for j in range(len(layer.proto.top)))


def layer_at(graph: Graph, span: Span | None) -> Layer | None:
    """The layer whose text (its whole `layer { ... }` block) contains `span`."""
    if span is None:
        return None
    for layer in graph.layers:
        s = graph.span_of(layer.path)
        if s is None or s.path != span.path:
            continue
        if (s.line, s.col) <= (span.line, span.col) < (s.end_line, s.end_col):
            return layer
    return None


def draw_model(graph: Graph) -> DrawModel:
    nodes: list[Node] = []
    node_of: dict[Layer, Node] = {}
    for i, layer in enumerate(graph.layers):
        producer = layer.inputs[0].producer if layer.inputs else None
        if _all_in_place(layer) and producer is not None and producer in node_of:
            node = node_of[producer]
            node.folded.append(layer)
        else:
            node = Node(f"n{i}", layer)
            nodes.append(node)
        node_of[layer] = node
    edges = []
    seen = set()
    for layer in graph.layers:
        target = node_of[layer]
        for value in layer.inputs:
            if value.producer is None:
                continue
            source = node_of[value.producer]
            if source is target:
                continue  # an in-place layer drawn inside its producer
            key = (source.id, target.id, value.id)
            if key not in seen:
                seen.add(key)
                edges.append(Edge(source.id, target.id, value))
    if graph.coords is not None:
        for crop in graph.coords.crops:
            offsets = "/".join(str(o) for o in dict.fromkeys(crop.offsets))
            status = {
                "aligned": "aligned",
                "misaligned": f"MISALIGNED, aligned offset {crop.aligned}",
            }.get(crop.status, crop.status)
            node_of[crop.layer].notes.append(f"offset {offsets}: {status}")
    unplaced = []
    for d in graph.diagnostics:
        layer = layer_at(graph, d.span)
        if layer is not None and layer in node_of:
            node_of[layer].diagnostics.append(d)
        else:
            unplaced.append(d)
    return DrawModel(nodes, edges, node_of, unplaced)
