"""The compile report: per-layer shapes, parameters, MACs and memory, as data, a table or JSON.

`build_report` turns a Graph into plain data (the JSON document, see
docs/compile-json-schema.md); `render_table` prints that same data for people, so the two
outputs cannot disagree. `explain_layer` says how one layer's top shapes came about.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from protocaffe.diagnostics import Diagnostic, suggestion_hint
from protocaffe.ir.coordmap import CropAlignment, affine_str
from protocaffe.ir.graph import Graph, Layer
from protocaffe.ir.state import phase_name
from protocaffe.layers.base import count, shape_str

SCHEMA_VERSION = 1
FLOAT32_BYTES = 4


def build_report(graph: Graph) -> dict[str, Any]:
    layers = _layer_entries(graph)
    state = graph.state
    return {
        "schema_version": SCHEMA_VERSION,
        "ok": True,
        "net": graph.name,
        "file": graph.source_map.source.path if graph.source_map else None,
        "phase": phase_name(graph.phase),
        "level": state.level if state else 0,
        "stages": sorted(state.stages) if state else [],
        "inputs": [{"name": v.blob, "shape": _shape(v.shape)} for v in graph.inputs],
        "outputs": [{"name": v.blob, "shape": _shape(v.shape)} for v in graph.outputs],
        "layers": layers,
        "totals": {
            "layers": len(layers),
            "params": sum(e["params"] for e in layers),
            "buffers": sum(e["buffers"] for e in layers),
            "macs": sum(e["macs"] for e in layers),
            "activation_bytes": sum(e["activation_bytes"] for e in layers),
        },
        "crops": [_crop_entry(c) for c in graph.coords.crops] if graph.coords else [],
        "diagnostics": [diagnostic_entry(d) for d in graph.diagnostics],
    }


def failure_report(path: str, diagnostics: list[Diagnostic]) -> dict[str, Any]:
    """The JSON document when compilation fails: only the diagnostics."""
    return {
        "schema_version": SCHEMA_VERSION,
        "ok": False,
        "file": path,
        "diagnostics": [diagnostic_entry(d) for d in diagnostics],
    }


# A graph does not change once built, so its layer entries are made once (compile's memory
# check asks for the report before compile prints it).
_ENTRIES: WeakKeyDictionary[Graph, list[dict[str, Any]]] = WeakKeyDictionary()


def _layer_entries(graph: Graph) -> list[dict[str, Any]]:
    entries = _ENTRIES.get(graph)
    if entries is None:
        entries = _ENTRIES[graph] = [_layer_entry(layer) for layer in graph.layers]
    return entries


def _shape(shape: tuple[int, ...] | None) -> list[int] | None:
    return list(shape) if shape is not None else None


def _layer_entry(layer: Layer) -> dict[str, Any]:
    proto = layer.proto
    in_place = [layer.top_in_place(j) for j in range(len(proto.top))]
    activation = sum(
        FLOAT32_BYTES * count(v.shape)
        for v, same in zip(layer.outputs, in_place, strict=True)
        if v.shape is not None and not same
    )
    return {
        "name": layer.name,
        "type": layer.type,
        "line": layer.span.line if layer.span else None,
        "bottoms": list(proto.bottom),
        "tops": list(proto.top),
        "in_place": in_place,
        "top_shapes": [_shape(v.shape) for v in layer.outputs],
        "params": sum(count(b.shape) for b in layer.blob_specs if b.learnable),
        "buffers": sum(count(b.shape) for b in layer.blob_specs if not b.learnable),
        "blobs": [
            {"name": b.name, "shape": list(b.shape), "learnable": b.learnable}
            for b in layer.blob_specs
        ],
        "macs": layer.macs,
        "activation_bytes": activation,
    }


def _crop_entry(crop: CropAlignment) -> dict[str, Any]:
    return {
        "layer": crop.layer.name,
        "bottoms": list(crop.layer.proto.bottom),
        "axis": crop.axis,
        "offsets": list(crop.offsets),
        "aligned_offset": crop.aligned,
        "status": crop.status,
        "reason": crop.reason or None,
    }


def diagnostic_entry(d: Diagnostic) -> dict[str, Any]:
    span = d.span
    return {
        "severity": d.severity,
        "message": d.message,
        "file": span.path if span else None,
        "line": span.line if span else None,
        "column": span.col if span else None,
        "end_line": span.end_line if span else None,
        "end_column": span.end_col if span else None,
        "hint": d.hint,
        "notes": list(d.notes),
    }


# --- human units ---------------------------------------------------------------------------


def si(n: float, digits: int = 2, unit: str = "") -> str:
    """134489759 -> '134.49M'; with a unit, 181.5e9 -> '181.5 GMAC'."""
    sep = " " if unit else ""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.{digits}f}{sep}{suffix}{unit}"
    return f"{n:g}{sep}{unit}"


def nbytes(n: int) -> str:
    for factor, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {suffix}"
    return f"{n} B"


# --- the table -----------------------------------------------------------------------------

_MAX_FLOW = 48  # widest "bottoms -> tops" cell before it is shortened


def _flow(entry: dict[str, Any]) -> str:
    text = f"{', '.join(entry['bottoms']) or '-'} -> {', '.join(entry['tops']) or '-'}"
    return text if len(text) <= _MAX_FLOW else text[: _MAX_FLOW - 3] + "..."


def render_table(report: dict[str, Any]) -> str:
    head = ("layer", "type", "bottoms -> tops", "top shape(s)", "params", "MACs", "memory")
    rows = [
        (
            e["name"],
            e["type"],
            _flow(e),
            ", ".join(shape_str(s) if s is not None else "?" for s in e["top_shapes"]),
            si(e["params"]) if e["params"] else "-",
            si(e["macs"], 1) if e["macs"] else "-",
            nbytes(e["activation_bytes"]) if e["activation_bytes"] else "-",
        )
        for e in report["layers"]
    ]
    widths = [max(len(str(r[i])) for r in (head, *rows)) for i in range(len(head))]
    right = {4, 5, 6}  # numbers align right

    def line(cells: tuple[str, ...]) -> str:
        cells_widths = enumerate(zip(cells, widths, strict=True))
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in cells_widths]
        return "  ".join(parts).rstrip()

    t = report["totals"]
    inputs = ", ".join(
        f"{i['name']} {shape_str(i['shape'])}" for i in report["inputs"] if i["shape"]
    )
    out = [
        f"{report['net']} ({report['file']}), phase {report['phase']}"
        + (f", stages {', '.join(report['stages'])}" if report["stages"] else "")
        + (f", level {report['level']}" if report["level"] else "")
        + (f"; inputs: {inputs}" if inputs else ""),
        "",
        line(head),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows),
        "",
        f"total: {t['layers']} layers, {si(t['params'])} params"
        + (f" (+{si(t['buffers'])} stored statistics)" if t["buffers"] else "")
        + f", {si(t['macs'], 1, 'MAC')}, {nbytes(t['activation_bytes'])} activations (float32)",
    ]
    crops = [c for c in report["crops"] if c["status"] != "unknown"]
    if crops:
        out += ["", "crop alignment:"]
        out += [f"  {_crop_line(c)}" for c in crops]
    return "\n".join(out)


def _crop_line(c: dict[str, Any]) -> str:
    b0, b1 = c["bottoms"]
    offs = "/".join(str(o) for o in dict.fromkeys(c["offsets"]))
    head = f"{c['layer']}: {b0} cropped to {b1}, axis {c['axis']} offset {offs}"
    if c["status"] == "aligned":
        return f"{head}: aligned"
    if c["status"] == "misaligned":
        return f"{head}: MISALIGNED, the aligned offset is {c['aligned_offset']}"
    return f"{head}: {c['status']} ({c['reason']})"


# --- explain -------------------------------------------------------------------------------


def find_layers(graph: Graph, name: str) -> list[Layer]:
    """Every layer called `name` (names may repeat), or else the producer of the blob `name`."""
    found = [layer for layer in graph.layers if layer.name == name]
    if found:
        return found
    try:
        producer = graph.blob(name).producer
    except KeyError:
        return []
    return [producer] if producer is not None else []


def explain_hint(graph: Graph, name: str) -> str | None:
    names = [layer.name for layer in graph.layers]
    blobs = [v.blob for v in graph.values.values()]
    return suggestion_hint(name, dict.fromkeys([*names, *blobs]))


def explain_layer(graph: Graph, layer: Layer) -> list[str]:
    """How `layer`'s tops were derived: parameters, shapes, formula, coordinate maps."""
    from google.protobuf import text_format

    from protocaffe.ir.build import shape_context

    assert layer.spec is not None
    ctx = shape_context(graph, layer)
    where = f", {layer.span}" if layer.span else ""
    lines = [f"layer '{layer.name}' ({layer.type}){where}"]
    if ctx.param is not None:
        text = text_format.MessageToString(ctx.param, as_one_line=True).strip()
        lines.append(
            f"  {layer.spec.param_field} {{ {text} }}"
            if text
            else f"  {layer.spec.param_field}: defaults"
        )
    for kind, values in (("bottom", layer.inputs), ("top", layer.outputs)):
        for j, v in enumerate(values):
            shape = shape_str(v.shape) if v.shape is not None else "?"
            lines.append(f"  {kind}[{j}] {v.blob}: {shape}  (value {v.id})")
    for b in layer.blob_specs:
        kind = "" if b.learnable else ", not learnable"
        lines.append(f"  blob {b.name}: {shape_str(b.shape)} ({count(b.shape):,}{kind})")
    if layer.macs:
        lines.append(f"  MACs: {layer.macs:,} ({si(layer.macs, 1)})")
    lines += [f"  {text}" for text in layer.spec.explain(ctx)]
    lines += _explain_coords(graph, layer, ctx)
    return lines


def _explain_coords(graph: Graph, layer: Layer, ctx: Any) -> list[str]:
    coords = graph.coords
    if coords is None or layer.spec is None:
        return []
    lines = []
    if layer.inputs and not layer.spec.is_input:
        inner = layer.spec.coord_map(ctx)
        if inner is not None:
            lines.append(f"  coordinates: top pixel y is bottom[0] pixel {affine_str(inner)}")
    for v in layer.outputs:
        m = coords.map_of(v)
        if m is not None:
            lines.append(
                f"  coordinates: '{v.blob}' pixel y is input '{m.root}' pixel "
                + affine_str(m.affine)
            )
        else:
            lines.append(
                f"  note: no coordinate map for '{v.blob}': "
                + coords.why_unknown.get(v.id, "unknown")
            )
    crop = coords.crop(layer)
    if crop is not None:
        lines.append(f"  crop alignment: {_crop_line(_crop_entry(crop))}")
        if crop.status == "unknown":
            lines.append(f"  note: the aligned offset cannot be determined: {crop.reason}")
    return lines
