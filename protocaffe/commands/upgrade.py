"""`protocaffe upgrade IN [-o OUT]`: rewrite a legacy Caffe net or solver in the current format.

Nets get Caffe's UpgradeNetAsNeeded (V0/V1 layers, data-transform fields, net-level inputs,
BatchNorm param specs); solvers get the `solver_type` enum -> `type` string upgrade. What changed
is reported as notes on stderr; the upgraded text goes to stdout or OUT.
"""

from __future__ import annotations

import argparse
import sys

from protocaffe.commands._args import read_input, write_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upgrade",
        help="rewrite a legacy (V0/V1 'layers', input_dim, solver_type) prototxt in today's format",
        description="Upgrade a Caffe net or solver prototxt the way Caffe's "
        "upgrade_net_proto_text / upgrade_solver_proto_text do, reporting each change on stderr. "
        "A file that needs no upgrade is printed unchanged (canonically formatted).",
    )
    parser.add_argument("input", metavar="IN", help="the .prototxt to upgrade (net or solver)")
    parser.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.diagnostics import print_diagnostics
    from protocaffe.frontend import format_message, parse_text
    from protocaffe.frontend.upgrade import upgrade_net, upgrade_solver
    from protocaffe.proto import caffe_pb2

    source = read_input(args.input)
    parsed = parse_text(source.text, source.path, source=source)  # net or solver, by its fields
    is_solver = isinstance(parsed.message, caffe_pb2.SolverParameter)
    upgraded, notes = (upgrade_solver if is_solver else upgrade_net)(parsed)
    print_diagnostics([*parsed.diagnostics, *notes])
    if upgraded is parsed:
        print(f"{source.path}: already in the latest format", file=sys.stderr)
    text = format_message(upgraded.message)
    if args.output:
        write_output(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
