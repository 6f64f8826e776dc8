"""torch.export of a CaffeModule, with the input sizes left dynamic where the net allows.

The lowered fx code is specialised to the shapes it was compiled for; most of it (convolution,
pooling, deconvolution, Crop, which reads its size from the reference blob) is nonetheless
size-generic and traces to a program with symbolic sizes. A layer whose emitted code or blob
shapes change with the input size (InnerProduct's weight, Reshape's target, a pooling path
chosen per size) pins that size: `pinning_layer` finds it by lowering the net at other sizes
and comparing the code layer by layer, so the error names the layer, not a sympy guard. So does
a ceil-mode Pooling whose clip rule holds for some sizes only: the traced size formula takes
one branch, which torch.export does not turn into a check the ONNX model keeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from protocaffe.diagnostics import CompileError, Diagnostic

if TYPE_CHECKING:
    from protocaffe.ir.graph import Graph, Layer
    from protocaffe.lower.module import CaffeModule

# torch.export specialises sizes 0 and 1: trace with at least this batch.
TRACE_BATCH = 2


class _Positional(torch.nn.Module):
    """The CaffeModule with positional inputs and a tuple of outputs (what exporters want)."""

    def __init__(self, module: CaffeModule) -> None:
        super().__init__()
        self.net = module
        self.input_names = list(module.input_names)
        self.output_names = list(module.output_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Bypass CaffeModule.__call__'s per-shape re-specialisation: trace the code itself.
        out = torch.fx.GraphModule.__call__(
            self.net, dict(zip(self.input_names, inputs, strict=True))
        )
        return tuple(out[name] for name in self.output_names)


@dataclass
class Exported:
    program: Any  # torch.export.ExportedProgram
    module: CaffeModule  # the module traced (specialised to the example inputs)
    dynamic: dict[str, list[int]]  # input name -> axes left dynamic
    notes: list[str]  # why a size that could not stay dynamic is fixed

    @property
    def input_names(self) -> list[str]:
        return list(self.module.input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self.module.output_names)


def _axes(shape: tuple[int, ...], dynamic: set[str]) -> list[int]:
    axes = [0] if "batch" in dynamic and shape else []
    if "hw" in dynamic and len(shape) >= 3:
        axes += list(range(2, len(shape)))
    return axes


def _is_label(value: Any) -> bool:
    """An input some loss or Accuracy reads as its label (a later bottom), not as data."""
    return any(
        (c.type.endswith("Loss") or c.type == "Accuracy") and value in c.inputs[1:]
        for c in value.consumers
    )


def example_inputs(module: CaffeModule, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the module's shapes; labels get small class indices (0 or 1)."""
    gen = torch.Generator().manual_seed(seed)
    ref = next(iter(module.parameters()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    labels = {v.blob for v in module.caffe_graph.inputs if _is_label(v)}
    out = []
    for name, shape in zip(module.input_names, module.input_shapes, strict=True):
        if name in labels:
            out.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
        else:
            out.append(torch.randn(shape, generator=gen, dtype=dtype))
    return tuple(out)


def export_program(module: CaffeModule, dynamic: set[str], *, strict_hw: bool = False) -> Exported:
    """Trace `module` (TEST phase) with torch.export. Sizes in `dynamic` ("batch", "hw") stay
    symbolic unless a layer pins them; then they are fixed with a note naming the layer, or,
    for "hw" with `strict_hw`, a CompileError naming it."""
    module = module.eval()
    notes: list[str] = []
    free = set()
    for kind in sorted(dynamic):
        found = pinning_layer(module.caffe_graph, kind)
        if found is None:
            free.add(kind)
            continue
        layer, why = found
        what = "batch size" if kind == "batch" else "height/width"
        if kind == "hw" and strict_hw:
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"cannot export with dynamic height/width: {layer.type} layer "
                        f"'{layer.name}' {why}",
                        layer.span,
                        "export with fixed sizes (leave out --dynamic hw; --input sets them)",
                    )
                ]
            )
        notes.append(f"{what} fixed: {layer.type} layer '{layer.name}' {why}")
    shapes = [list(s) for s in module.input_shapes]
    if "batch" in free:
        for s in shapes:
            if s and s[0] < TRACE_BATCH:
                s[0] = TRACE_BATCH
    traced = module.reshaped(shapes)
    example = example_inputs(traced)
    auto = torch.export.Dim.AUTO
    spec = tuple(
        {axis: auto for axis in _axes(tuple(s), free)} or None for s in traced.input_shapes
    )
    with torch.no_grad():
        program = torch.export.export(_Positional(traced), example, dynamic_shapes=(spec,))
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_inputs = placeholders[len(placeholders) - len(example) :]
    kept = {
        name: [i for i in _axes(tuple(s), free) if not isinstance(node.meta["val"].shape[i], int)]
        for name, node, s in zip(traced.input_names, user_inputs, traced.input_shapes, strict=True)
    }
    return Exported(program, traced, kept, notes)


# Other sizes to compare against: +1 catches per-size pooling paths, +33 sizes that a stride
# rounds away (AlexNet's 227 and 228 both give 55 after conv1).
_HW_STEPS = (1, 33)


def _other_sizes(graph: Graph, kind: str, step: int) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for v in graph.inputs:
        s = list(v.shape or ())
        if kind == "batch" and s:
            s[0] += step
        elif kind == "hw":
            s[2:] = [d + step for d in s[2:]]
        shapes[v.blob] = tuple(s)
    return shapes


def _code_by_layer(graph: Graph) -> dict[str, list[str]]:
    from protocaffe.lower.builder import lower_graph

    fx_module = lower_graph(graph, init=False, device="meta")
    code: dict[str, list[str]] = {}
    for node in fx_module.graph.nodes:
        layer = node.meta.get("caffe_layer")
        if layer is not None:
            code.setdefault(layer, []).append(repr((node.op, node.target, node.args, node.kwargs)))
    return code


def _clip_varies(layer: Layer) -> bool:
    """Whether a ceil-mode Pooling drops its last window (the clip rule) for some input sizes
    near this one and not for others: the traced size formula then takes one branch only."""
    from protocaffe.layers._spatial import pool_window

    shape = layer.inputs[0].shape if layer.inputs else None
    p = layer.proto.pooling_param
    if layer.type != "Pooling" or p.global_pooling or p.round_mode != 0 or not shape:
        return False
    window = pool_window(p, shape[2:])
    for n, k, s, q in zip(shape[2:], window.kernel, window.stride, window.pad, strict=True):
        clipped = set()
        for size in range(n, n + 2 * s):
            out = -(-(size + 2 * q - k) // s) + 1
            clipped.add((out - 1) * s >= size + q)
        if len(clipped) > 1:
            return True
    return False


def pinning_layer(graph: Graph, kind: str) -> tuple[Layer, str] | None:
    """The first layer whose code or blobs change when the input's `kind` sizes ("batch",
    "hw") change, with why; None when the net is size-generic there."""
    from protocaffe.ir.build import rebuild_graph
    from protocaffe.viz.model import layer_at

    code = _code_by_layer(graph)
    for step in (1,) if kind == "batch" else _HW_STEPS:
        try:
            other = rebuild_graph(graph, _other_sizes(graph, kind, step))
        except CompileError as err:
            first = next((d for d in err.diagnostics if d.severity == "error"), err.diagnostics[0])
            layer = layer_at(graph, first.span)
            return (layer, f"fixes it ({first.message})") if layer is not None else None
        other_code = _code_by_layer(other)
        for a, b in zip(graph.layers, other.layers, strict=True):
            if kind == "hw" and _clip_varies(a):
                return a, (
                    "rounds its output size up and drops the last window for some input sizes "
                    "only (ceil mode): the exported size formula would hold for part of them"
                )
            if [s.shape for s in a.blob_specs] != [s.shape for s in b.blob_specs]:
                return a, "has blobs whose shape follows the input size"
            if code.get(a.name) != other_code.get(b.name):
                return a, "is lowered differently for other input sizes"
    return None


_ASSIGNED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def fx_name_in_trace(trace: str) -> str | None:
    """The fx node a traced op came from: the name assigned on the line of the generated code
    (`conv1 = torch.conv2d(...)`, after the `<eval_with_key>` frame) in its stack trace."""
    lines = trace.splitlines()
    for i, line in enumerate(lines[:-1]):
        if "<eval_with_key>" in line:
            m = _ASSIGNED.match(lines[i + 1])
            if m:
                return m.group(1)
    return None


def caffe_layer_of(exported: Exported) -> dict[str, str]:
    """fx node name in the traced CaffeModule -> the Caffe layer that emitted it."""
    return {
        n.name: n.meta["caffe_layer"]
        for n in exported.module.graph.nodes
        if "caffe_layer" in n.meta
    }


def save_pt2(exported: Exported, path: str) -> None:
    torch.export.save(exported.program, path)
