"""Lowering: Graph (SSA values, shapes, blob specs) -> CaffeModule (a torch.fx.GraphModule).

Built directly, node by node (no tracing): input layers become `blobs[name]` lookups on the
single `blobs` argument, every other layer's `LayerDef.lower(ctx)` emits the nodes for its
tops, and the output node returns a dict of the net's outputs by Caffe blob name. fx's code
generator frees each intermediate as soon as its last user has run.
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import fx

from protocaffe.diagnostics import CompileError, Diagnostic, Diagnostics, suggestion_hint
from protocaffe.ir.graph import Graph, Layer, Value
from protocaffe.layers.base import BlobSpec, LowerContext, shape_str
from protocaffe.layers.normalization import fuse_scale_into_batch_norm
from protocaffe.lower import fillers
from protocaffe.lower.module import CaffeModule, LayerBlobs

# Calls whose result may share storage with their first argument: an in-place op on such a
# result would also change the argument, so `can_modify_input` follows them back.
_VIEW_FUNCTIONS: set[Any] = {
    operator.getitem,
    torch.reshape,
    torch.flatten,
    torch.narrow,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    torch.split,
    torch.chunk,
    torch.unbind,
    torch.select,
    torch.Tensor.view,
    torch.Tensor.reshape,
    torch.Tensor.expand,
    torch.Tensor.flatten,
    torch.Tensor.narrow,
    torch.Tensor.squeeze,
    torch.Tensor.unsqueeze,
    torch.Tensor.permute,
    torch.Tensor.transpose,
    torch.Tensor.split,
    torch.Tensor.chunk,
    torch.Tensor.select,
    torch.Tensor.expand_as,
    torch.Tensor.view_as,
    torch.Tensor.reshape_as,
}
_VIEW_METHODS = {
    "view",
    "reshape",
    "expand",
    "expand_as",
    "flatten",
    "narrow",
    "squeeze",
    "unsqueeze",
    "permute",
    "transpose",
    "split",
    "chunk",
    "select",
    "view_as",
    "reshape_as",
    "contiguous",
    "detach",
    "to",
    "type_as",
    "float",
}

_REDUCED = (torch.float16, torch.bfloat16)


def local_response_norm(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """F.local_response_norm, computed in float32 (and cast back) for a half or bfloat16 CPU
    tensor: PyTorch has no such CPU kernel for the avg_pool3d it runs."""
    if x.device.type == "cpu" and x.dtype in _REDUCED:
        return torch.nn.functional.local_response_norm(x.float(), *args, **kwargs).to(x.dtype)
    return torch.nn.functional.local_response_norm(x, *args, **kwargs)


# Lowerings call the PyTorch function; the graph gets the stand-in that also runs on CPU.
_CPU_FLOAT32_STANDINS: dict[Any, Callable[..., Any]] = {
    torch.nn.functional.local_response_norm: local_response_norm,
}

_IDENT = re.compile(r"[^0-9a-zA-Z_]+")


def sanitize(name: str) -> str:
    """A Python identifier for a Caffe name: 'inception_3a/1x1' -> 'inception_3a_1x1'."""
    out = _IDENT.sub("_", name).strip("_") or "blob"
    if out[0].isdigit():
        out = "_" + out
    if keyword.iskeyword(out):
        out += "_"
    return out


class _Context(LowerContext):
    """The LowerContext handed to `LayerDef.lower` for one layer."""

    def __init__(self, builder: _Builder, layer: Layer, index: int) -> None:
        self._builder = builder
        self._index = index
        self.layer = layer
        spec = layer.spec
        self.param = getattr(layer.proto, spec.param_field) if spec and spec.param_field else None
        self.inputs = [builder.nodes[v.id] for v in layer.inputs]
        if builder.graph.phase == 0 and False in layer.proto.propagate_down:
            # Caffe's `propagate_down: false` sends no gradient to that bottom (TRAIN only).
            down, g = layer.proto.propagate_down, builder.fx_graph
            self.inputs = [
                node if i >= len(down) or down[i] else g.call_method("detach", (node,))
                for i, node in enumerate(self.inputs)
            ]
        self.bottom_shapes = [v.shape for v in layer.inputs]
        self.top_shapes = [v.shape for v in layer.outputs]
        self.phase = builder.graph.phase
        self.graph = builder.fx_graph

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        fn = _CPU_FLOAT32_STANDINS.get(fn, fn)
        node = self.graph.call_function(fn, args, kwargs)
        node.meta["caffe_layer"] = self.layer.name
        return node

    def blob(self, name: str) -> fx.Node:
        return self._builder.blob_node(self.layer, name)

    def can_modify_input(self, index: int) -> bool:
        return self._builder.can_modify(self.layer, self._index, self.layer.inputs[index])


class _Builder:
    def __init__(
        self, graph: Graph, attrs: dict[Layer, str], sharing: dict, outputs: dict[str, Value]
    ) -> None:
        self.graph = graph
        self.attrs = attrs
        self.sharing = sharing  # (layer, blob name) -> owner's attribute path
        self.outputs = outputs
        self.fx_graph = fx.Graph()
        self.nodes: dict[str, fx.Node] = {}  # Value.id -> node
        self.order = {layer: i for i, layer in enumerate(graph.layers)}
        self._attr_nodes: dict[str, fx.Node] = {}

    def blob_node(self, layer: Layer, name: str) -> fx.Node:
        owner = self.sharing.get((layer, name))
        path = owner or f"{self.attrs[layer]}.{name}"
        node = self._attr_nodes.get(path)
        if node is None:
            node = self._attr_nodes[path] = self.fx_graph.get_attr(path)
        if owner:
            # Caffe's permissive sharing: equal counts, different shapes, one storage.
            node = self.fx_graph.call_function(torch.reshape, (node, _spec(layer, name).shape))
        return node

    def _root(self, node: Any) -> Any:
        while isinstance(node, fx.Node):
            is_view = (node.op == "call_function" and node.target in _VIEW_FUNCTIONS) or (
                node.op == "call_method" and node.target in _VIEW_METHODS
            )
            if not is_view or not node.args:
                break
            node = node.args[0]
        return node

    def can_modify(self, layer: Layer, index: int, value: Value) -> bool:
        if self.graph.phase == 0:
            # TRAIN nets run backward: autograd may have saved the value (ReLU saves its output,
            # which an in-place Dropout would overwrite), so nothing is modified in place.
            return False
        root = self._root(self.nodes[value.id])
        if root.op in ("placeholder", "get_attr"):
            return False
        protected = {v.id for v in self.outputs.values()}
        uses = 0
        for vid, node in self.nodes.items():
            if self._root(node) is not root:
                continue
            other = self.graph.values[vid]
            if vid in protected or other.producer is None or other.producer.spec.is_input:
                return False
            for consumer in other.consumers:
                if consumer is layer:
                    uses += layer.inputs.count(other)
                elif self.order[consumer] > index:
                    return False
        return uses <= 1

    def build(self) -> fx.Graph:
        g = self.fx_graph
        blobs = g.placeholder("blobs")
        problems = Diagnostics()
        for index, layer in enumerate(self.graph.layers):
            if layer.spec.is_input:
                for value in layer.outputs:
                    node = g.call_function(operator.getitem, (blobs, value.blob))
                    self._bind(value, node, layer)
                continue
            try:
                tops = layer.spec.lower(_Context(self, layer, index))
            except CompileError as err:
                problems.extend(err.diagnostics)
                continue
            if len(tops) != len(layer.outputs):
                raise RuntimeError(
                    f"{layer.type}.lower returned {len(tops)} node(s) for "
                    f"{len(layer.outputs)} top(s) of layer '{layer.name}'"
                )
            for value, node in zip(layer.outputs, tops, strict=True):
                self._bind(value, node, layer)
        problems.check()
        g.output({key: self.nodes[v.id] for key, v in self.outputs.items()})
        g.lint()
        return g

    def _bind(self, value: Value, node: fx.Node, layer: Layer) -> None:
        # Name a node after the first value it defines, so that `.code` reads like the net.
        if node.op != "placeholder" and node not in self.nodes.values():
            node._rename(sanitize(value.id))
            node.meta.setdefault("caffe_layer", layer.name)
        node.meta.setdefault("caffe_blob", value.blob)
        self.nodes[value.id] = node


def _spec(layer: Layer, name: str) -> BlobSpec:
    for spec in layer.blob_specs:
        if spec.name == name:
            return spec
    raise KeyError(f"layer '{layer.name}' has no blob named '{name}'")


def check_lowerable(graph: Graph) -> None:
    """Every layer without a PyTorch lowering, reported at once."""
    diags = Diagnostics()
    for layer in graph.layers:
        spec = layer.spec
        if spec is None or not (spec.is_input or spec.lowerable):
            diags.error(
                f"layer '{layer.name}' of type '{layer.type}' has no PyTorch lowering",
                layer.span,
                hint="protocaffe can compile and shape-check this net but not run it",
            )
    diags.check()


def _resolve_outputs(graph: Graph, names: Sequence[str] | None) -> dict[str, Value]:
    """The net's outputs by blob name, plus requested blobs keyed by the name as given.

    A plain blob name means its last definition (what Caffe calls the blob after in-place
    layers); `blob@layer` (e.g. `conv1@conv1`, before `relu1` rewrote it in place) or an IR
    value id picks one definition.
    """
    outputs = {v.blob: v for v in graph.outputs}
    diags = Diagnostics()
    for name in names or ():
        try:
            value = graph.blob(name)
        except KeyError:
            value = graph.values.get(name) or next(
                (v for v in graph.values.values() if _qualified(v) == name), None
            )
        if value is None:
            blobs = sorted({v.blob for v in graph.values.values()})
            diags.error(f"no blob named '{name}' in this net", None, suggestion_hint(name, blobs))
        else:
            outputs.setdefault(name, value)
    diags.check()
    return outputs


def _qualified(value: Value) -> str:
    """`blob@layer`: one definition of a blob, named by the layer that produced it."""
    return f"{value.blob}@{value.producer.name}" if value.producer else value.blob


def _lr_mults(layer: Layer, index: int) -> float:
    params = layer.proto.param
    return params[index].lr_mult if index < len(params) else 1.0


def make_blobs(
    graph: Graph,
    *,
    device: Any = None,
    dtype: Any = None,
    seed: int | None = None,
    init: bool = True,
) -> tuple[torch.nn.Module, dict[Layer, str], dict]:
    """A root module with one LayerBlobs child per layer that stores blobs, filled by fillers
    (or left uninitialised with `init=False`, when weights will be loaded over them).

    Returns the root, the attribute of each layer, and the shared-parameter table for blobs
    that Caffe shares by `param { name }` with a different (same-count) shape.
    """
    root = torch.nn.Module()
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    dtype = dtype or torch.float32
    attrs: dict[Layer, str] = {}
    taken = set(dir(CaffeModule)) | set(CaffeModule.__annotations__)
    owners: dict[str, tuple[Layer, str, Any]] = {}  # param name -> owner layer, attr, tensor
    sharing: dict[tuple[Layer, str], str] = {}
    diags = Diagnostics()
    for layer in graph.layers:
        if not layer.blob_specs:
            continue
        attr = base = sanitize(layer.name)
        n = 1
        while attr in taken:
            attr, n = f"{base}_{n}", n + 1
        taken.add(attr)
        attrs[layer] = attr
        child = LayerBlobs(layer.name, layer.type)
        root.add_module(attr, child)
        for i, spec in enumerate(layer.blob_specs):
            share = layer.proto.param[i].name if i < len(layer.proto.param) else ""
            owner = owners.get(share) if share else None
            if owner is not None:
                tensor = _share(layer, spec, share, owner, sharing, diags)
                if tensor is None:
                    continue
            else:
                if init:
                    data = _filled(layer, spec, gen, dtype, diags)
                    if data is None:
                        continue
                    data = data.to(device) if device is not None else data
                else:
                    data = torch.empty(spec.shape, dtype=dtype, device=device)
                if spec.learnable:
                    tensor = torch.nn.Parameter(data, requires_grad=_lr_mults(layer, i) != 0)
                else:
                    tensor = data
                if share:
                    owners[share] = (layer, f"{attr}.{spec.name}", tensor)
            if spec.learnable:
                child.register_parameter(spec.name, tensor)
            else:
                child.register_buffer(spec.name, tensor)
    diags.check()
    return root, attrs, sharing


def _filled(layer: Layer, spec: BlobSpec, gen: Any, dtype: Any, diags: Diagnostics) -> Any:
    try:
        return fillers.fill(spec.filler, spec.shape, generator=gen, dtype=dtype)
    except fillers.FillerError as err:
        diags.error(f"{layer.type} '{layer.name}' blob '{spec.name}': {err}", layer.span)
        return None


def fill_blobs(module: CaffeModule, layer_names: Sequence[str], seed: int | None = None) -> None:
    """(Re-)initialise the named layers' blobs with their fillers, in net order."""
    wanted = set(layer_names)
    fill_layers(module, [layer for layer in module._layer_attrs if layer.name in wanted], seed)


def fill_layers(
    module: CaffeModule,
    layers: Sequence[Layer],
    seed: int | None = None,
    keep: Collection[int] = (),
) -> None:
    """(Re-)initialise `layers`' blobs with their fillers, in the order given, from one
    generator seeded by `seed`; blobs whose storage (`data_ptr()`) is in `keep` are left."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    diags = Diagnostics()
    with torch.no_grad():
        for layer in layers:
            for spec in layer.blob_specs:
                target = module.blob_tensor(layer, spec.name)
                if target.data_ptr() in keep:
                    continue
                data = _filled(layer, spec, gen, target.dtype, diags)
                if data is not None:
                    target.copy_(data)
    diags.check()


def _share(
    layer: Layer,
    spec: BlobSpec,
    share: str,
    owner: tuple[Layer, str, Any],
    sharing: dict[tuple[Layer, str], str],
    diags: Diagnostics,
) -> Any:
    """Caffe's param sharing: the same shape shares the tensor (returned); the same count
    shares the storage through a reshape at each use (recorded in `sharing`, None returned).
    """
    owner_layer, owner_path, tensor = owner
    if tuple(tensor.shape) == tuple(spec.shape):
        return tensor
    if tensor.numel() == math.prod(spec.shape):
        sharing[(layer, spec.name)] = owner_path
        return None
    diags.error(
        f"cannot share param '{share}' owned by layer '{owner_layer.name}' with layer "
        f"'{layer.name}': count mismatch. Owner layer param shape is "
        f"{shape_str(tuple(tensor.shape))}; sharing layer shape is {shape_str(spec.shape)}",
        layer.span,
    )
    return None


def assemble(
    graph: Graph,
    root: torch.nn.Module,
    attrs: dict[Layer, str],
    sharing: dict,
    outputs: list[str] | None,
    fast_cpu: bool = True,
) -> CaffeModule:
    """Build the fx graph over `root`'s blobs and wrap both into a CaffeModule.
    `fast_cpu`: a TEST net's convolutions take the fast CPU inference path (lower/passes.py)."""
    fx_graph = _Builder(graph, attrs, sharing, _resolve_outputs(graph, outputs)).build()
    fuse_scale_into_batch_norm(fx_graph)
    if fast_cpu and graph.phase == 1:
        from protocaffe.lower.passes import fast_cpu_inference

        fast_cpu_inference(fx_graph)
    module = CaffeModule(root, fx_graph, class_name=sanitize(graph.name))
    # fx copies only the blobs the code uses; keep every stored blob for weight loading.
    for attr in attrs.values():
        setattr(module, attr, root.get_submodule(attr))
    module.caffe_graph = graph
    module.fast_cpu = fast_cpu
    module._layer_attrs = attrs
    module._sharing = sharing
    module.caffe_names = {}
    for layer, attr in attrs.items():
        module.caffe_names.setdefault(layer.name, attr)
    module.input_names = [v.blob for v in graph.inputs]
    module.output_names = list(fx_graph.output_node().args[0])
    module.train(graph.phase == 0)
    return module


def declared_shapes_hint(graph: Graph) -> str:
    """The hint of an InputShapeError: the input shapes the net was compiled for."""
    declared = ", ".join(f"{v.blob} {shape_str(v.shape)}" for v in graph.inputs)
    return f"the net was defined for {declared}"


def reshape_module(module: CaffeModule, input_shapes: dict[str, tuple[int, ...]]) -> CaffeModule:
    """`module`'s net re-compiled for other input shapes, running on the same blobs.

    InputShapeError when the net cannot take them: the shape rules fail, or a layer would
    need stored blobs of other shapes (an InnerProduct after the spatial axes)."""
    from protocaffe.ir.build import rebuild_graph
    from protocaffe.runtime.guards import InputShapeError

    old = module.caffe_graph
    given = ", ".join(f"{k} {shape_str(v)}" for k, v in input_shapes.items())
    hint = declared_shapes_hint(old)
    try:
        graph = rebuild_graph(old, input_shapes)
    except CompileError as err:
        note = f"the net does not take input {given}"
        raise InputShapeError([*err.diagnostics, Diagnostic("note", note, None, hint)]) from None
    for layer, was in zip(graph.layers, old.layers, strict=True):
        now, before = [s.shape for s in layer.blob_specs], [s.shape for s in was.blob_specs]
        if now != before:
            raise InputShapeError(
                [
                    Diagnostic(
                        "error",
                        f"{layer.type} '{layer.name}': its weights fix the net's input size; "
                        f"input {given} would need blobs {' '.join(map(shape_str, now))}, the "
                        f"loaded ones are {' '.join(map(shape_str, before))}",
                        layer.span,
                        hint,
                    )
                ]
            )
    # Same net, same NetState: the layers line up one to one (names may repeat, positions not).
    new_of = dict(zip(module.caffe_graph.layers, graph.layers, strict=True))
    attrs = {new_of[old]: attr for old, attr in module._layer_attrs.items()}
    sharing = {(new_of[old], blob): owner for (old, blob), owner in module._sharing.items()}
    variant = assemble(graph, module, attrs, sharing, list(module.output_names), module.fast_cpu)
    variant.train(module.training)
    compiled = getattr(module, "_compiled_call_impl", None)
    if compiled is not None and variant.runs_as(module):
        # The compiled module itself takes the new sizes: Dynamo recompiles once with
        # symbolic sizes, and that code then serves every later size.
        variant.__dict__["_freezing"] = module.__dict__.get("_freezing")
        variant._compiled_call_impl = compiled
    elif compiled is not None:
        variant.compile()
    return variant


def lower_graph(
    graph: Graph,
    *,
    device: Any = None,
    dtype: Any = None,
    seed: int | None = None,
    outputs: Sequence[str] | None = None,
    init: bool = True,
    fast_cpu: bool = True,
) -> CaffeModule:
    """Lower a compiled Graph to a CaffeModule with blobs initialised by their fillers.

    `outputs` names extra blobs to return besides the net's outputs (Caffe blob names or IR
    value ids); `module.with_outputs([...])` does the same later, sharing the parameters.
    `init=False` leaves blobs uninitialised (for loading weights over them). `fast_cpu=False`
    keeps a TEST net's convolutions as plain `F.conv2d` calls (see `protocaffe.lower.passes`).
    """
    check_lowerable(graph)
    root, attrs, sharing = make_blobs(graph, device=device, dtype=dtype, seed=seed, init=init)
    return assemble(graph, root, attrs, sharing, list(outputs or ()), fast_cpu)
