"""`protocaffe compile NET`: check a net, infer every shape, and report what it costs."""

from __future__ import annotations

import argparse
import gc
import sys

from protocaffe.commands._args import (
    add_dialect,
    add_input_shapes,
    add_net_arg,
    check_output_path,
    int_at_least,
    parse_input_shapes,
    write_error,
)
from protocaffe.diagnostics import CompileError, Diagnostic, count_summary, print_diagnostics

DESCRIPTION = """\
Parse NET (any Caffe prototxt format; legacy ones are upgraded), keep the layers of the chosen
phase/stages/level, infer every blob's shape and print one row per layer: blobs, top shapes,
learnable parameters, multiply-accumulates and float32 activation memory, then totals and the
alignment of every Crop layer. A solver stands for its training net. Errors and warnings go to
stderr (the first --max-errors of them, then a count); the exit code is 0 when there are no
errors (warnings allowed) and 1 otherwise."""

MAX_SHOWN = 25  # diagnostics listed by default (a broken fork net can give hundreds)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compile",
        help="check a net, infer shapes, report params/MACs/memory",
        description=DESCRIPTION,
    )
    add_net_arg(p, help="the .prototxt net definition, or a solver ('-': standard input)")
    add_input_shapes(
        p, "override an input blob's shape (repeatable), e.g. data=1,3,500,500", "--input"
    )
    p.add_argument("--phase", type=str.upper, choices=("TRAIN", "TEST"), help="default: TEST")
    p.add_argument("--stage", action="append", default=[], help="add a NetState stage (repeatable)")
    p.add_argument("--level", type=int, help="NetState level (default: the net's, else 0)")
    p.add_argument(
        "--json", action="store_true", help="print the report as JSON (schema_version 1)"
    )
    p.add_argument(
        "--explain", metavar="LAYER", help="print only how LAYER's top shapes were derived"
    )
    p.add_argument(
        "--max-errors",
        type=int_at_least(0),
        default=MAX_SHOWN,
        metavar="N",
        help=f"list at most N errors and warnings, 0 for all ({MAX_SHOWN})",
    )
    p.add_argument(
        "--emit-python", metavar="OUT.py", help="also write the net as a standalone PyTorch module"
    )
    add_dialect(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # A compile allocates a few hundred thousand small objects (tokens, spans, messages) and
    # frees them by reference counting; the cyclic collector would only rescan them, again
    # and again (a tenth of a cold compile of ResNet-152). It is off until the command ends.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _compile(args)
    finally:
        if collecting:
            gc.enable()


def _compile(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError
    from protocaffe.ir.report import (
        build_report,
        explain_hint,
        explain_layer,
        failure_report,
        find_layers,
        render_table,
    )
    from protocaffe.runtime.api import compile_net
    from protocaffe.runtime.guards import plan_warning

    shapes = parse_input_shapes(args.shape)
    if args.emit_python:
        check_output_path(args.emit_python, "--emit-python")
    try:
        # An unreadable file is a CompileError ("cannot read ...", exit 1).
        graph = compile_net(
            args.net,
            phase=args.phase,
            stages=args.stage,
            level=args.level,
            input_shapes=shapes,
            dialect=args.dialect,
            follow_solver=True,
        )
    except CompileError as err:
        if args.json:
            _print_json(failure_report(args.net, err.diagnostics))
        _report(err.diagnostics, args.max_errors)
        return 1
    oversize = plan_warning(graph)  # run/bench/convert would refuse this plan here
    if oversize is not None:
        graph.diagnostics.append(oversize)

    explained: list[str] = []
    if args.explain:
        layers = find_layers(graph, args.explain)
        if not layers:
            hint = explain_hint(graph, args.explain)
            raise UsageError(
                f"--explain: no layer or blob named '{args.explain}'"
                + (f"; {hint}" if hint else "")
            )
        for i, layer in enumerate(layers):  # a name may be used by several layers
            explained += ([""] if i else []) + explain_layer(graph, layer)

    report = build_report(graph)
    if args.json:
        if args.explain:
            report["explain"] = {"layer": args.explain, "lines": explained}
        _print_json(report)
    elif explained:
        print("\n".join(explained))
    else:
        print(render_table(report))
    _report(graph.diagnostics, args.max_errors)

    if args.emit_python:
        return _emit_python(graph, args.emit_python)
    return 0


def _print_json(report: dict) -> None:
    import json  # only for --json

    print(json.dumps(report, indent=2))


def _report(diagnostics: list[Diagnostic], limit: int) -> None:
    """The diagnostics (at most `limit`, 0: all), then 'N errors, M warnings' when any."""
    left_out = print_diagnostics(diagnostics, limit=limit or None)
    if left_out:
        print(f"... {left_out} more not shown (--max-errors 0 lists all)", file=sys.stderr)
    summary = count_summary(diagnostics)
    if summary:
        print(summary, file=sys.stderr)


def _emit_python(graph: object, path: str) -> int:
    try:
        from protocaffe.lower import emit_python
    except ImportError:
        print(
            "protocaffe compile: error: --emit-python is not available in this build "
            "(protocaffe.lower.emit_python is missing)",
            file=sys.stderr,
        )
        return 1
    try:
        emit_python(graph, path)
    except OSError as err:  # the path was checked first; this is the disk or the kernel
        raise write_error(path, err.strerror or err) from None
    print(f"wrote {path}", file=sys.stderr)
    return 0
