"""Command-line pieces shared by several subcommands (one definition, one behaviour)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import CompileError, input_error

if TYPE_CHECKING:
    from protocaffe.diagnostics import SourceFile


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum (argparse reports a violation, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text}")
        return value

    return parse


def add_input_shapes(p: argparse.ArgumentParser, help: str) -> None:
    """`--input NAME=N,C,H,W`, repeatable; parse with `parse_input_shapes`."""
    p.add_argument("--input", action="append", default=[], metavar="NAME=N,C,H,W", help=help)


def parse_input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """`data=1,3,500,500` (or `1x3x500x500`) -> {"data": (1, 3, 500, 500)}."""
    from protocaffe.cli import UsageError

    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise UsageError(f"--input expects NAME=N,C,H,W with positive sizes, not {spec!r}")
        if name in shapes:
            raise UsageError(f"--input gives blob '{name}' twice")
        shapes[name] = shape
    return shapes


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by `run` and `bench`: where and how the module executes."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="(auto)")
    p.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="(float32)"
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for 4-D blobs")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the module (on CPU with inductor freezing)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for fillers and random inputs (0)")


def write_error(path: Any, why: Any) -> CompileError:
    return input_error(f"cannot write '{path}': {why}")


def read_input(path: str) -> SourceFile:
    """The prototxt at `path`; an unreadable file is a bad input (exit 1), as in `compile`."""
    from protocaffe.frontend import read_source

    try:
        return read_source(path)
    except OSError as err:
        raise input_error(f"cannot read '{path}': {err.strerror or err}") from None


def write_output(path: str, text: str) -> None:
    """Write `text` to `path` as UTF-8; a failure is a bad input (exit 1)."""
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise write_error(path, err.strerror or err) from None
