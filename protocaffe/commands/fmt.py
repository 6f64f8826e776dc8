"""`protocaffe fmt FILE [-o OUT | --in-place | --check]`: print a net or solver canonically.

Canonical means 2-space indent, one value per line, `name`/`type`/`bottom`/`top` first in each
layer and the rest in caffe.proto order, shortest round-trip floats; comments are kept next to
the field or block they were written by. `--check` prints nothing and exits 1 when FILE is not
already canonical. Values run into the next field name (`num_output: 21bias_term: false`) are
read with a warning and written apart.
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
        "fmt",
        help="print a prototxt in canonical form",
        description="Parse a Caffe net or solver prototxt, check it against caffe.proto and "
        "print it canonically, keeping its comments.",
    )
    add_net_arg(parser, "file", "FILE", "the .prototxt to format ('-': standard input)")
    add_rewrite_outputs(parser, "FILE").add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if FILE is not already canonical",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.diagnostics import print_diagnostics
    from protocaffe.frontend import parse_text
    from protocaffe.frontend.printer import format_parsed

    target = rewrite_target(args, args.file)
    source = read_input(args.file)
    parsed = parse_text(source.text, source.path, source=source)
    out, dropped = format_parsed(parsed)
    print_diagnostics([*parsed.diagnostics, *dropped])
    if args.check:
        if out != source.text:
            print(f"{args.file}: not canonical (run `protocaffe fmt {args.file}`)", file=sys.stderr)
            return 1
        return 0
    if target:
        if not (args.in_place and out == source.text):
            write_output(target, out)
    else:
        sys.stdout.write(out)
    return 0
