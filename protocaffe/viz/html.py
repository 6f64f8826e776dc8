"""`view`'s page: the Graphviz SVG of the net with pan/zoom, a side panel per layer, a sortable
layer table, search and the diagnostics, in one self-contained HTML file (no network)."""

from __future__ import annotations

import html
import json
import re
from typing import TYPE_CHECKING, Any

from protocaffe.ir.report import build_report, explain_layer, nbytes, si
from protocaffe.layers.base import count, shape_str
from protocaffe.viz.dot import net_dot, render
from protocaffe.viz.model import colour_of, draw_model, key_params, layer_at

if TYPE_CHECKING:
    from protocaffe.ir.graph import Graph, Layer

_XML_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)


def _asset(name: str) -> str:
    """The page's stylesheet or script (view.css, view.js beside this module), inlined."""
    from importlib.resources import files

    return files("protocaffe.viz").joinpath(name).read_text(encoding="utf-8")


def _source_lines(graph: Graph, layer: Layer) -> list[tuple[int, str]]:
    span = graph.span_of(layer.path)
    if span is None:
        return []
    lines = span.source.text.splitlines()
    return [(n, lines[n - 1]) for n in range(span.line, min(span.end_line, len(lines)) + 1)]


def _param_text(layer: Layer) -> str:
    from google.protobuf import text_format

    field = layer.spec.param_field if layer.spec else None
    if not field or not layer.proto.HasField(field):
        return ""
    return (
        f"{field} {{\n" + text_format.MessageToString(getattr(layer.proto, field), indent=2) + "}"
    )


def _explain(graph: Graph, layer: Layer) -> list[str]:
    try:
        return explain_layer(graph, layer)
    except Exception as err:  # the page still shows the rest of the layer
        return [f"(cannot explain: {err})"]


def weight_statistics(module: Any) -> dict[str, list[dict[str, str]]]:
    """Layer name -> per-blob shape, mean, std, min, max of a loaded module's blobs."""
    import torch

    out: dict[str, list[dict[str, str]]] = {}
    for layer in module.caffe_graph.layers:
        rows = []
        for spec in layer.blob_specs:
            t = module.blob_tensor(layer, spec.name).detach().to(torch.float64)
            rows.append(
                {
                    "name": spec.name,
                    "shape": shape_str(tuple(t.shape)),
                    **{
                        k: f"{v:.4g}"
                        for k, v in (
                            ("mean", t.mean().item()),
                            ("std", t.std().item() if t.numel() > 1 else 0.0),
                            ("min", t.min().item()),
                            ("max", t.max().item()),
                        )
                    },
                }
            )
        if rows:
            out.setdefault(layer.name, rows)
    return out


def page_data(graph: Graph, weights: dict[str, list[dict[str, str]]] | None) -> dict[str, Any]:
    model = draw_model(graph)
    report = build_report(graph)
    layers = []
    for layer, entry in zip(graph.layers, report["layers"], strict=True):
        node = model.node_of[layer]
        shapes = [shape_str(tuple(s)) if s is not None else "?" for s in entry["top_shapes"]]
        diags = [d for d in node.diagnostics if layer_at(graph, d.span) is layer]
        layers.append(
            {
                "name": layer.name,
                "type": layer.type,
                "node": node.id,
                "colour": colour_of(layer.type),
                "key": key_params(layer),
                "bottoms": entry["bottoms"],
                "tops": entry["tops"],
                "top_shapes": shapes,
                "top_count": count(tuple(entry["top_shapes"][0]))
                if entry["top_shapes"] and entry["top_shapes"][0] is not None
                else 0,
                "params": entry["params"],
                "params_text": si(entry["params"]) if entry["params"] else "-",
                "macs": entry["macs"],
                "macs_text": si(entry["macs"], 1) if entry["macs"] else "-",
                "memory": entry["activation_bytes"],
                "memory_text": nbytes(entry["activation_bytes"])
                if entry["activation_bytes"]
                else "-",
                "param_text": _param_text(layer),
                "source": _source_lines(graph, layer),
                "explain": _explain(graph, layer),
                "weights": (weights or {}).get(layer.name, []),
                "diagnostics": [{"severity": d.severity, "message": d.message} for d in diags],
            }
        )
    return {"net": graph.name, "file": report["file"], "layers": layers, "totals": report["totals"]}


def _diagnostic_items(graph: Graph) -> str:
    index = {layer: i for i, layer in enumerate(graph.layers)}
    items = []
    for d in graph.diagnostics:
        layer = layer_at(graph, d.span)
        where = f"{d.span.path}:{d.span.line}:{d.span.col}: " if d.span else ""
        attr = f' data-index="{index[layer]}"' if layer is not None else ""
        items.append(
            f'<li class="{html.escape(d.severity)}"{attr}>'
            f"{html.escape(where + d.severity + ': ' + d.message)}</li>"
        )
    return "\n".join(items) or "<li>no errors or warnings</li>"


def view_page(graph: Graph, weights: dict[str, list[dict[str, str]]] | None = None) -> str:
    svg = _XML_PROLOGUE.sub("", render(net_dot(graph), "svg").decode(), count=1)
    data = page_data(graph, weights)
    t = data["totals"]
    summary = (
        f"{t['layers']} layers, {si(t['params'])} params, {si(t['macs'], 1, 'MAC')}, "
        f"{nbytes(t['activation_bytes'])} activations"
    )
    # `</` inside the JSON would end the script element early.
    payload = json.dumps(data).replace("</", "<\\/")
    title = html.escape(f"{graph.name} — protocaffe view")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,">
<style>{_asset("view.css")}</style></head>
<body>
<header><h1>{html.escape(graph.name)}</h1><span class="summary">{html.escape(summary)}</span>
<input id="search" type="search" placeholder="search layers, types, blobs">
<span id="hits"></span><button id="fit" type="button">fit</button></header>
<div id="graph">{svg}</div>
<aside id="side"><p>Click a layer in the graph or the table.</p></aside>
<section id="bottom">
<ul id="diagnostics">{_diagnostic_items(graph)}</ul>
<table id="layers"><thead><tr><th class="num">#</th><th>layer</th><th>type</th>
<th>top shape(s)</th><th class="num">params</th><th class="num">MACs</th>
<th class="num">memory</th></tr></thead><tbody></tbody>
<tfoot><tr><td></td><td>total</td><td>{t["layers"]} layers</td><td></td>
<td class="num">{si(t["params"])}</td><td class="num">{si(t["macs"], 1)}</td>
<td class="num">{nbytes(t["activation_bytes"])}</td></tr></tfoot></table>
</section>
<script type="application/json" id="net-data">{payload}</script>
<script>{_asset("view.js")}</script>
</body></html>
"""
