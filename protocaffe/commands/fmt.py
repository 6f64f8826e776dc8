"""`protocaffe fmt FILE [-o OUT] [--check]`: print a net or solver prototxt canonically.

Canonical means 2-space indent, one value per line, `name`/`type`/`bottom`/`top` first in each
layer and the rest in caffe.proto order, shortest round-trip floats. Comments are dropped (a
warning says so). `--check` prints nothing and exits 1 when FILE is not already canonical.
"""

from __future__ import annotations

import argparse
import sys

from protocaffe.commands._args import read_input, write_output


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fmt",
        help="print a prototxt in canonical form",
        description="Parse a Caffe net or solver prototxt, check it against caffe.proto and "
        "print it canonically (comments are not kept).",
    )
    parser.add_argument("file", metavar="FILE", help="the .prototxt to format")
    parser.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if FILE is not already canonical",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError
    from protocaffe.diagnostics import Diagnostic, print_diagnostics
    from protocaffe.frontend import format_message, parse_text
    from protocaffe.frontend.textformat import count_comments

    if args.check and args.output:
        raise UsageError("--check writes nothing; drop -o")
    source = read_input(args.file)
    parsed = parse_text(source.text, source.path, source=source)
    print_diagnostics(parsed.diagnostics)
    out = format_message(parsed.message)
    if args.check:
        if out != source.text:
            print(f"{args.file}: not canonical (run `protocaffe fmt {args.file}`)", file=sys.stderr)
            return 1
        return 0
    comments = count_comments(source.text)
    if comments:
        print_diagnostics(
            [Diagnostic("warning", f"{source.path}: {comments} comment(s) dropped by fmt")]
        )
    if args.output:
        write_output(args.output, out)
    else:
        sys.stdout.write(out)
    return 0
