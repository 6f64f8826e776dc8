"""Graphviz DOT for a net, and running Graphviz's `dot` to lay it out.

Node ids are synthetic (`n12`); every name the net chose (layers, blobs, messages) goes into
an HTML-like label with &, <, > and quotes escaped, so no name can break the file.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from typing import TYPE_CHECKING

from protocaffe.diagnostics import input_error
from protocaffe.layers.base import shape_str
from protocaffe.viz.model import DrawModel, Node, colour_of, draw_model, key_params

if TYPE_CHECKING:
    from protocaffe.ir.graph import Graph

GRAPHVIZ_HINT = (
    "apt-get install graphviz (Debian/Ubuntu), brew install graphviz (macOS), or see "
    "https://graphviz.org/download/; writing `-o NET.dot` needs no engine"
)
_MAX_MESSAGE = 60
_BORDER = {"error": "#d62728", "warning": "#ff7f0e"}


def _text(s: str) -> str:
    return html.escape(s, quote=True)


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def _label(node: Node) -> str:
    main = node.layer
    rows = [f"<B>{_text(main.name)}</B>", _text(main.type)]
    params = key_params(main)
    if params:
        rows.append(_text(params))
    for layer in node.folded:
        extra = key_params(layer)
        rows.append(
            f'<FONT POINT-SIZE="10">+ {_text(layer.name)} ({_text(layer.type)}'
            + (f" {_text(extra)}" if extra else "")
            + ")</FONT>"
        )
    for note in node.notes:
        colour = "#d62728" if "MISALIGNED" in note else "#2c7a2c"
        rows.append(f'<FONT POINT-SIZE="10" COLOR="{colour}">{_text(note)}</FONT>')
    for d in node.diagnostics:
        colour = _BORDER.get(d.severity, "#555555")
        rows.append(
            f'<FONT POINT-SIZE="10" COLOR="{colour}">{_text(d.severity)}: '
            f"{_text(_short(d.message))}</FONT>"
        )
    return "<" + "<BR/>".join(rows) + ">"


def net_dot(graph: Graph, rankdir: str = "TB", model: DrawModel | None = None) -> str:
    """The net as a DOT digraph: one box per layer (in-place layers folded in), blob edges."""
    model = model or draw_model(graph)
    out = [
        f'digraph "{_text(graph.name)}" {{',
        f"  rankdir={rankdir};",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=12];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    for node in model.nodes:
        border = _BORDER.get(node.severity or "", "#444444")
        width = 3 if node.severity else 1
        out.append(
            f'  {node.id} [id="{node.id}", label={_label(node)}, '
            f'fillcolor="{colour_of(node.layer.type)}", color="{border}", penwidth={width}];'
        )
    for edge in model.edges:
        label = _text(edge.label).replace("\n", "<BR/>")
        out.append(f"  {edge.source} -> {edge.target} [label=<{label}>];")
    for k, value in enumerate(graph.outputs):
        if value.producer is None or value.producer not in model.node_of:
            continue
        shape = shape_str(value.shape) if value.shape is not None else "?"
        out.append(
            f'  out{k} [id="out{k}", shape=ellipse, style=filled, fillcolor="#ffffff", '
            f"label=<{_text(value.blob)}<BR/>{_text(shape)}>];"
        )
        out.append(f"  {model.node_of[value.producer].id} -> out{k};")
    out.append("}")
    return "\n".join(out) + "\n"


def render(dot_text: str, fmt: str) -> bytes:
    """Lay out `dot_text` with Graphviz (`svg` or `png`); a missing engine is a user error."""
    engine = shutil.which("dot")
    if engine is None:
        raise input_error(
            "Graphviz's `dot` is not on PATH: it lays out the graph", hint=GRAPHVIZ_HINT
        )
    done = subprocess.run(
        [engine, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False
    )
    if done.returncode != 0:
        raise input_error(f"Graphviz failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout
