"""ONNX through torch's exporter (from the torch.export program), its layer report, and the
onnxruntime check against protocaffe's own output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocaffe.export.program import Exported

OPSET = 18


def save_onnx(exported: Exported, path: str, opset: int = OPSET) -> Any:
    """Write `exported` as an ONNX model at `path`; return the onnx ModelProto."""
    import logging
    import warnings

    import onnx
    import torch

    # The exporter logs a warning per torchvision op it cannot register: not our concern.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not ours
        program = torch.onnx.export(
            exported.program,
            dynamo=True,
            opset_version=opset,
            optimize=True,
            verbose=False,
            input_names=exported.input_names,
            output_names=exported.output_names,
        )
    model = program.model_proto
    explicit_ceil_pads(model)
    onnx.save(model, path)
    return model


def _dims(value_info: Any) -> list[int | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def explicit_ceil_pads(model: Any) -> None:
    """Rewrite ceil-mode pooling of known sizes as floor mode with the end padding that gives
    the same windows.

    Caffe (and PyTorch, and onnxruntime's kernels) drop a last window that would start in the
    padding; ONNX's shape inference does not, so a static model declares e.g. 6x6 where the
    inference says 7x7, and onnxruntime refuses the model where the two meet. With the end pad
    chosen so that the last window ends where Caffe's does, floor mode computes the same output;
    for AVE only while that pad does not exceed the written one (its divisor counts padding).
    """
    from onnx import helper

    graph = model.graph
    shapes = {vi.name: _dims(vi) for vi in [*graph.input, *graph.value_info, *graph.output]}
    for node in graph.node:
        if node.op_type not in ("MaxPool", "AveragePool"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins, outs = shapes.get(node.input[0]), shapes.get(node.output[0])
        if not attrs.get("ceil_mode") or not ins or not outs:
            continue
        spatial_in, spatial_out = ins[2:], outs[2:]
        if None in spatial_in or None in spatial_out:
            continue
        kernel = attrs["kernel_shape"]
        n = len(kernel)
        strides = attrs.get("strides", [1] * n)
        dilations = attrs.get("dilations", [1] * n)
        pads = list(attrs.get("pads", [0] * 2 * n))
        ends = [
            (spatial_out[i] - 1) * strides[i]
            + (kernel[i] - 1) * dilations[i]
            + 1
            - spatial_in[i]
            - pads[i]
            for i in range(n)
        ]
        # Past the written pad, AVE would count the extra end padding in its divisor (Caffe
        # stops the window at the input plus the pad): leave those to onnxruntime's ceil mode.
        limit = pads[:n] if node.op_type == "AveragePool" else [float("inf")] * n
        if any(e < 0 or e > cap for e, cap in zip(ends, limit, strict=True)):
            continue
        kept = [a for a in node.attribute if a.name not in ("ceil_mode", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("pads", pads[:n] + ends))


def layer_ops(model: Any, exported: Exported) -> dict[str, list[str]]:
    """Caffe layer name -> the ONNX op types its nodes became (in net order; a layer that
    became nothing, such as TEST-time Dropout, maps to [])."""
    from protocaffe.export.program import caffe_layer_of, fx_name_in_trace

    of_fx = caffe_layer_of(exported)
    ops: dict[str, list[str]] = {layer.name: [] for layer in exported.module.caffe_graph.layers}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        layer = of_fx.get(fx_name_in_trace(meta.get("pkg.torch.onnx.stack_trace", "")) or "")
        if layer is not None:
            ops[layer].append(node.op_type)
    return ops


def render_layer_ops(ops: dict[str, list[str]], types: dict[str, str]) -> str:
    rows = [
        (name, types[name], " ".join(dict.fromkeys(op_types)) or "(nothing: identity)")
        for name, op_types in ops.items()
        if types[name] not in ("Input",)
    ]
    widths = [max(len(r[i]) for r in [("layer", "type", ""), *rows]) for i in range(2)]
    lines = [f"{'layer'.ljust(widths[0])}  {'type'.ljust(widths[1])}  ONNX ops"]
    lines += [f"{n.ljust(widths[0])}  {t.ljust(widths[1])}  {o}" for n, t, o in rows]
    return "\n".join(lines)


@dataclass
class Check:
    shapes: list[tuple[int, ...]]  # input shapes run
    max_error: float  # max |onnx - protocaffe| over outputs, relative to each output's scale
    worst_output: str
    all_zero: bool  # every reference output is zero (e.g. zero-filled weights): says little


def compare(want: dict[str, Any], got: list[Any], names: list[str]) -> tuple[float, str, bool]:
    """Max over outputs of max|got - want| / max(max|want|, tiny): the error in units of the
    output's scale; the worst output; whether every reference output is zero."""
    import numpy as np

    worst, which, all_zero = 0.0, "", True
    for name, value in zip(names, got, strict=True):
        ref = want[name].detach().cpu().numpy().astype(np.float64)
        peak = float(np.abs(ref).max()) if ref.size else 0.0
        all_zero &= peak == 0.0
        diff = float(np.abs(np.asarray(value, np.float64) - ref).max()) if ref.size else 0.0
        err = diff / max(peak, 1e-12)
        if err >= worst:
            worst, which = err, name
    return worst, which, all_zero


def check_onnx(path: str, exported: Exported, shapes: list[list[tuple[int, ...]]]) -> list[Check]:
    """Run the ONNX model in onnxruntime for each set of input shapes and compare with the
    CaffeModule (re-specialised to those shapes, as protocaffe runs it)."""
    import onnxruntime as ort
    import torch

    from protocaffe.export.program import example_inputs

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    checks = []
    for input_shapes in shapes:
        module = exported.module.reshaped(input_shapes)
        inputs = example_inputs(module, seed=1)
        feeds = {n: x.numpy() for n, x in zip(exported.input_names, inputs, strict=True)}
        got = session.run(exported.output_names, feeds)
        with torch.no_grad():
            want = module(dict(zip(exported.input_names, inputs, strict=True)))
        err, which, all_zero = compare(want, got, exported.output_names)
        checks.append(Check([tuple(s) for s in input_shapes], err, which, all_zero))
    return checks
