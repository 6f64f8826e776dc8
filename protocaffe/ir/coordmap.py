"""Coordinate maps and Crop alignment, after the FCN authors' `coord_map` (BVLC/caffe PR #3613).

Every spatial Value gets an affine map from its pixel coordinates to the coordinates of the
net input it derives from: `input = scale * y + shift`. Each LayerDef supplies its own
top->bottom[0] map (`LayerDef.coord_map`); composing them down the graph gives the map of every
Value. A Crop aligns bottom[0] to bottom[1] when a top pixel y, read at y + offset in bottom[0],
covers the same input pixel as y in bottom[1]:

    scale0 * (y + offset) + shift0 == scale1 * y + shift1   for all y
    => scale0 == scale1 and offset = (shift1 - shift0) / scale0, an integer >= 0.

Maps are defined only for blobs with spatial axes (rank >= 3) whose producers all have maps;
anything else is "unknown", which is reported only when asked (--explain), never as noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal, NamedTuple

from protocaffe.diagnostics import Diagnostic
from protocaffe.ir.graph import Graph, Layer, Value
from protocaffe.layers.base import IDENTITY, Affine, ShapeContext, canonical_axis

# Layers that combine bottoms pixel by pixel: their bottoms must line up with each other.
ALIGNED_BOTTOMS = frozenset({"Eltwise", "Concat"})
_EPS = 1e-6

CropStatus = Literal["aligned", "misaligned", "unalignable", "unknown"]


class CoordMap(NamedTuple):
    root: str  # Value.id of the net input the coordinates refer to
    affine: Affine

    def same_as(self, other: CoordMap) -> bool:
        return (
            self.root == other.root
            and math.isclose(self.affine.scale, other.affine.scale, abs_tol=_EPS)
            and math.isclose(self.affine.shift, other.affine.shift, abs_tol=_EPS)
        )

    def __str__(self) -> str:
        return f"{self.root}[{affine_str(self.affine)}]"


class CropAlignment(NamedTuple):
    layer: Layer
    axis: int  # first cropped axis (canonical)
    offsets: tuple[int, ...]  # written offsets on the cropped spatial axes, Caffe-defaulted
    aligned: int | None  # the offset that aligns the bottoms, when one exists
    status: CropStatus
    reason: str = ""  # why the status is unknown or unalignable


class CoordAnalysis:
    def __init__(self) -> None:
        self.maps: dict[str, CoordMap] = {}  # by Value.id; absent = unknown
        self.why_unknown: dict[str, str] = {}  # Value.id -> reason
        self.crops: list[CropAlignment] = []
        self.diagnostics: list[Diagnostic] = []

    def map_of(self, value: Value) -> CoordMap | None:
        return self.maps.get(value.id)

    def crop(self, layer: Layer) -> CropAlignment | None:
        return next((c for c in self.crops if c.layer is layer), None)


def affine_str(a: Affine) -> str:
    """`input = 32*y - 99` style text for a map."""
    scale = f"{a.scale:g}*y" if a.scale != 1 else "y"
    if abs(a.shift) < _EPS:
        return scale
    return f"{scale} {'-' if a.shift < 0 else '+'} {abs(a.shift):g}"


def analyze(graph: Graph, contexts: Mapping[Layer, ShapeContext] | None = None) -> CoordAnalysis:
    """Coordinate maps of every Value, and the alignment of every Crop layer. `contexts`: the
    ShapeContexts the shape pass used (so what a layer worked out there is not done again)."""
    from protocaffe.ir.build import shape_context

    contexts = contexts or {}

    out = CoordAnalysis()
    # Values downstream of a misalignment already reported: no second warning for them.
    tainted: set[str] = set()

    def unknown(layer: Layer, reason: str) -> None:
        for value in layer.outputs:
            out.why_unknown[value.id] = reason

    for layer in graph.layers:
        spec = layer.spec
        if spec is None or any(v.shape is None for v in layer.inputs):
            unknown(layer, f"the shapes around {layer.type} '{layer.name}' are unknown")
            continue
        if spec.is_input:
            for value in layer.outputs:
                if value.shape is not None and len(value.shape) >= 3:
                    out.maps[value.id] = CoordMap(value.id, IDENTITY)
                else:
                    out.why_unknown[value.id] = f"input '{value.blob}' has no spatial axes"
            continue
        if layer.type == "Crop" and len(layer.inputs) == 2:
            crop = _align_crop(graph, layer, out)
            out.crops.append(crop)
            if crop.status in ("misaligned", "unalignable"):
                tainted.update(v.id for v in layer.outputs)
        if not layer.inputs:
            unknown(layer, f"{layer.type} '{layer.name}' has no bottoms")
            continue
        if any(v.shape is None or len(v.shape) < 3 for v in layer.outputs):
            unknown(layer, f"{layer.type} '{layer.name}' has no spatial axes")
            continue
        ctx = contexts.get(layer)
        inner = spec.coord_map(ctx if ctx is not None else shape_context(graph, layer))
        if inner is None:
            unknown(layer, f"{layer.type} '{layer.name}' has no coordinate map")
            continue
        first = out.maps.get(layer.inputs[0].id)
        if first is None:
            reason = out.why_unknown.get(layer.inputs[0].id, "unknown")
            unknown(layer, reason)
            continue
        is_tainted = any(v.id in tainted for v in layer.inputs)
        if layer.type in ALIGNED_BOTTOMS:
            is_tainted |= _check_bottoms(layer, out, first, report=not is_tainted)
        result = CoordMap(first.root, inner.then(first.affine))
        for value in layer.outputs:
            out.maps[value.id] = result
            if is_tainted:
                tainted.add(value.id)
    return out


def _check_bottoms(layer: Layer, out: CoordAnalysis, first: CoordMap, report: bool) -> bool:
    """Warn when an Eltwise/Concat combines bottoms that cover different input pixels."""
    for value in layer.inputs[1:]:
        other = out.maps.get(value.id)
        # Bottoms from different inputs (or unknown) cannot be compared: stay quiet.
        if other is None or other.root != first.root or other.same_as(first):
            continue
        if report:
            b0 = layer.inputs[0]
            out.diagnostics.append(
                Diagnostic(
                    "warning",
                    f"{layer.type} '{layer.name}': bottoms are not spatially aligned: pixel y of "
                    f"'{b0.blob}' is input pixel {affine_str(first.affine)} of '{first.root}', "
                    f"of '{value.blob}' it is {affine_str(other.affine)} of '{other.root}'",
                    layer.span,
                    "check the Crop offsets, paddings and strides on the paths into this layer",
                )
            )
        return True
    return False


def _written_offsets(layer: Layer, axis: int, ndim: int) -> tuple[tuple[int, ...], int]:
    """Caffe's crop offsets on the spatial axes (>= 2) it crops; and the first such axis."""
    param = layer.proto.crop_param
    first = max(axis, 2)
    offsets = []
    for i in range(first, ndim):
        if len(param.offset) == 0:
            offsets.append(0)
        elif len(param.offset) == 1:
            offsets.append(int(param.offset[0]))
        else:
            k = i - axis
            offsets.append(int(param.offset[k]) if k < len(param.offset) else 0)
    return tuple(offsets), first


def _align_crop(graph: Graph, layer: Layer, out: CoordAnalysis) -> CropAlignment:
    b0, b1 = layer.inputs
    assert b0.shape is not None
    ndim = len(b0.shape)
    axis = canonical_axis(layer.proto.crop_param.axis, ndim)
    offsets, first = _written_offsets(layer, axis, ndim)

    def result(status: CropStatus, aligned: int | None = None, reason: str = "") -> CropAlignment:
        return CropAlignment(layer, axis, offsets, aligned, status, reason)

    if not offsets:
        return result("unknown", reason="it crops no spatial axis")
    m0, m1 = out.maps.get(b0.id), out.maps.get(b1.id)
    for value, m in ((b0, m0), (b1, m1)):
        if m is None:
            why = out.why_unknown.get(value.id, "unknown")
            return result(
                "unknown", reason=f"the coordinate map of '{value.blob}' is unknown: {why}"
            )
    assert m0 is not None and m1 is not None
    if m0.root != m1.root:
        return result(
            "unknown", reason=f"'{b0.blob}' derives from '{m0.root}', '{b1.blob}' from '{m1.root}'"
        )
    s0, s1 = m0.affine.scale, m1.affine.scale
    if not math.isclose(s0, s1, abs_tol=_EPS):
        return result(
            "unknown",
            reason=f"'{b0.blob}' has scale {s0:g} and '{b1.blob}' scale {s1:g} relative to "
            f"'{m0.root}'; a crop cannot align different scales",
        )
    exact = (m1.affine.shift - m0.affine.shift) / s0
    aligned = round(exact)
    if abs(exact - aligned) > _EPS or aligned < 0:
        crop = result(
            "unalignable",
            reason=f"'{b1.blob}' starts {exact:g} pixels into '{b0.blob}'; a crop offset must be "
            "a whole number >= 0",
        )
        out.diagnostics.append(
            Diagnostic(
                "warning",
                f"Crop '{layer.name}': cannot align '{b0.blob}' with '{b1.blob}': {crop.reason}",
                layer.span,
                "check the paddings and strides on the paths into this layer",
            )
        )
        return crop
    if all(o == aligned for o in offsets):
        return result("aligned", aligned)
    wrong = next(k for k, o in enumerate(offsets) if o != aligned)
    path: tuple[str | int, ...] = (*layer.path, "crop_param")
    n_written = len(layer.proto.crop_param.offset)
    if n_written == 1:
        path = (*path, "offset", 0)
    elif n_written > 1:
        path = (*path, "offset", first - axis + wrong)
    written = offsets[wrong]
    out.diagnostics.append(
        Diagnostic(
            "warning",
            f"Crop '{layer.name}': offset {written} misaligns '{b0.blob}' with '{b1.blob}'; "
            f"the aligned offset is {aligned}",
            graph.span_of(path) or layer.span,
            f"write `offset: {aligned}`"
            if n_written <= 1
            else f"set the offset for axis {first + wrong} to {aligned}",
            [
                f"pixel y of '{b0.blob}' is input pixel {affine_str(m0.affine)} of '{m0.root}', "
                f"pixel y of '{b1.blob}' is {affine_str(m1.affine)}"
            ],
        )
    )
    return result("misaligned", aligned)
