"""`protocaffe view NET`: the net as one interactive, self-contained HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocaffe.viz.cli import add_net_selection

DESCRIPTION = """\
Write NET as one HTML file that works offline (file://): the graph laid out by Graphviz, with
pan (drag), zoom (wheel) and fit; clicking a layer shows its prototxt lines, parameters, top
shapes, params, MACs, memory and how its shapes were derived (compile --explain), plus weight
statistics with --weights; a sortable per-layer table with totals; a search box; and the
compile diagnostics, each clickable to its layer."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view", help="write an interactive HTML view of the net", description=DESCRIPTION
    )
    add_net_selection(p)
    p.add_argument("-w", "--weights", metavar="W.caffemodel", help="show weight statistics")
    p.add_argument("-o", "--output", metavar="OUT.html", help="(default: NET's name + .html)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.commands._args import check_output_path, write_output
    from protocaffe.diagnostics import print_diagnostics
    from protocaffe.viz.cli import compile_selected
    from protocaffe.viz.html import view_page, weight_statistics

    out = Path(args.output or Path(args.net).with_suffix(".html").name)
    check_output_path(out, "-o")
    graph = compile_selected(args)
    weights = None
    if args.weights:
        from protocaffe.commands._args import parse_input_shapes
        from protocaffe.runtime.api import load

        module = load(
            args.net,
            args.weights,
            device="cpu",
            phase=args.phase or "TEST",
            stages=args.stage,
            level=args.level,
            input_shapes=parse_input_shapes(args.shape),
        )
        graph, weights = module.caffe_graph, weight_statistics(module)
    write_output(str(out), view_page(graph, weights))
    print_diagnostics(graph.diagnostics)
    print(f"wrote {out} ({len(graph.layers)} layers)")
    if args.open:
        import webbrowser

        webbrowser.open(out.resolve().as_uri())
    return 0
