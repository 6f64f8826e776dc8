"""`protocaffe upgrade IN [-o OUT | --in-place]`: rewrite a legacy Caffe net or solver in the
current format.

Nets get Caffe's UpgradeNetAsNeeded (V0/V1 layers, data-transform fields, net-level inputs,
BatchNorm param specs); solvers get the `solver_type` enum -> `type` string upgrade, and the
nets they hold inline (`net_param`, ...) the net upgrade. What changed is reported as notes on
stderr; the upgraded text (comments kept where their fields survive) goes to stdout or OUT.
"""

from __future__ import annotations

import argparse
import sys

from protocaffe.commands._args import (
    add_net_arg,
    add_rewrite_outputs,
    read_input,
    rewrite_target,
    write_output,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "upgrade",
        help="rewrite a legacy (V0/V1 'layers', input_dim, solver_type) prototxt in today's format",
        description="Upgrade a Caffe net or solver prototxt the way Caffe's "
        "upgrade_net_proto_text / upgrade_solver_proto_text do, reporting each change on stderr. "
        "A file that needs no upgrade is printed unchanged (canonically formatted).",
    )
    add_net_arg(parser, "input", "IN", "the .prototxt to upgrade, net or solver ('-': stdin)")
    add_rewrite_outputs(parser, "IN")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.diagnostics import print_diagnostics
    from protocaffe.frontend import parse_text
    from protocaffe.frontend.printer import format_parsed
    from protocaffe.frontend.upgrade import upgrade_net, upgrade_solver
    from protocaffe.proto import caffe_pb2

    target = rewrite_target(args, args.input)
    source = read_input(args.input)
    parsed = parse_text(source.text, source.path, source=source)  # net or solver, by its fields
    is_solver = isinstance(parsed.message, caffe_pb2.SolverParameter)
    upgraded, notes = (upgrade_solver if is_solver else upgrade_net)(parsed)
    text, dropped = format_parsed(upgraded)
    print_diagnostics([*parsed.diagnostics, *notes, *dropped])
    if upgraded is parsed:
        print(f"{source.path}: already in the latest format", file=sys.stderr)
    if target:
        write_output(target, text)
    else:
        sys.stdout.write(text)
    return 0
