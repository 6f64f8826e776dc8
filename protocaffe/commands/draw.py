"""`protocaffe draw NET -o net.svg|png|dot`: a picture of the net, laid out by Graphviz."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocaffe.viz.cli import add_net_selection

DESCRIPTION = """\
Draw NET as a graph: one box per layer, coloured by type, with its key parameters (k3 s2 p1
x64); in-place layers (ReLU, BatchNorm, Scale, Dropout) drawn inside the layer they modify;
edges labelled with the blob and its inferred shape; Crop layers with their offset and whether
it aligns; warnings on the layer they concern. The output format follows -o's extension: .dot
is written as text, .svg and .png are laid out by Graphviz's `dot` program."""

FORMATS = (".svg", ".png", ".dot")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "draw", help="draw the net (SVG, PNG or DOT) with shapes", description=DESCRIPTION
    )
    add_net_selection(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=f"one of {FORMATS}")
    p.add_argument("--rankdir", choices=("TB", "LR"), default="TB", help="layout direction (TB)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError
    from protocaffe.commands._args import check_output_path, write_output
    from protocaffe.diagnostics import print_diagnostics
    from protocaffe.viz.cli import compile_selected
    from protocaffe.viz.dot import net_dot, render

    out = Path(args.output)
    if out.suffix not in FORMATS:
        raise UsageError(f"cannot tell the output format of {out}: use one of {FORMATS}")
    check_output_path(out, "-o")
    graph = compile_selected(args)
    text = net_dot(graph, args.rankdir)
    if out.suffix == ".dot":
        write_output(str(out), text)
    else:
        data = render(text, out.suffix[1:])
        try:
            out.write_bytes(data)
        except OSError as err:
            from protocaffe.commands._args import write_error

            raise write_error(out, err.strerror or err) from None
    print_diagnostics(graph.diagnostics)
    print(f"wrote {out} ({len(graph.layers)} layers)")
    return 0
