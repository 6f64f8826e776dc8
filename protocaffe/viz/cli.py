"""What `draw` and `view` share on the command line: which net, state and input shapes."""

from __future__ import annotations

import argparse
from typing import Any

from protocaffe.commands._args import add_input_shapes, add_net_arg, parse_input_shapes


def add_net_selection(p: argparse.ArgumentParser) -> None:
    add_net_arg(p)
    add_input_shapes(p, "an input blob's shape (repeatable), e.g. data=1,3,500,500", "--input")
    p.add_argument("--phase", type=str.upper, choices=("TRAIN", "TEST"), help="default: TEST")
    p.add_argument("--stage", action="append", default=[], help="add a NetState stage (repeatable)")
    p.add_argument("--level", type=int, help="NetState level (default: the net's, else 0)")


def compile_selected(args: argparse.Namespace) -> Any:
    """The Graph of the net the arguments name (CompileError when it does not compile)."""
    from protocaffe.runtime.api import compile_net

    return compile_net(
        args.net,
        phase=args.phase or "TEST",
        stages=args.stage,
        level=args.level,
        input_shapes=parse_input_shapes(args.shape),
        follow_solver=True,
    )
