"""Command-line pieces shared by several subcommands (one definition, one behaviour)."""

from __future__ import annotations

import argparse
import os
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


def add_input_shapes(p: argparse.ArgumentParser, help: str, *aliases: str) -> None:
    """`--shape NAME=N,C,H,W` (every command's name for it, which diagnostics' hints use;
    `aliases` keep older spellings), repeatable, into `args.shape`; parse with
    `parse_input_shapes`."""
    p.add_argument(
        "--shape",
        *aliases,
        dest="shape",
        action="append",
        default=[],
        metavar="NAME=N,C,H,W",
        help=help,
    )


def add_dialect(p: argparse.ArgumentParser) -> None:
    """`--dialect`: which Caffe fork's meaning names shared by forks take (default: the
    file's own evidence; see protocaffe/proto/dialects.py)."""
    from protocaffe.proto.dialects import SELECTABLE

    p.add_argument(
        "--dialect",
        choices=SELECTABLE,
        help="read fork layers as this Caffe fork does (default: chosen from the file)",
    )


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
            raise UsageError(f"--shape expects NAME=N,C,H,W with positive sizes, not {spec!r}")
        if name in shapes:
            raise UsageError(f"--shape gives blob '{name}' twice")
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
        help="torch.compile the module (inductor's on-disk cache serves later runs)",
    )
    p.add_argument(
        "--seed", type=seed_value, default=0, help="seed for fillers and random inputs (0)"
    )
    add_force(p)
    add_dialect(p)


def add_force(p: argparse.ArgumentParser) -> None:
    """`--force`: run a net whose plan exceeds the device's free memory (runtime.guards)."""
    p.add_argument(
        "--force",
        action="store_true",
        help="run even when the net's memory plan exceeds the device's free memory",
    )


# torch.manual_seed takes any value that fits in 64 bits.
SEED_RANGE = (-(2**63), 2**64 - 1)


def seed_value(text: str) -> int:
    """An argparse type: a random seed (an integer that fits in 64 bits)."""
    lo, hi = SEED_RANGE
    try:
        value = int(text) if len(text) <= 30 else None
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        shown = text if len(text) <= 30 else f"{text[:20]}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {shown!r}")
    return value


def add_net_arg(
    p: argparse.ArgumentParser,
    dest: str = "net",
    metavar: str = "NET",
    help: str = "the .prototxt net definition ('-': read it from standard input)",
) -> None:
    """The positional prototxt argument; '-' reads standard input (frontend.read_source)."""
    p.add_argument(dest, metavar=metavar, help=help)


def write_error(path: Any, why: Any) -> CompileError:
    return input_error(f"cannot write '{path}': {why}")


def check_output_path(path: str | Path, flag: str | None = None) -> Path:
    """Fail before any work (exit 1) when `path` cannot be written as a file: its folder is
    missing or is not a folder, or it names a folder or a file we may not write."""
    out = Path(path)
    what = f"{flag} {path}" if flag else f"'{path}'"
    parent = out.parent if str(out.parent) else Path(".")
    try:
        out.stat()
    except OSError as err:  # a missing file is fine; "file name too long" and the like not
        if not isinstance(err, FileNotFoundError | NotADirectoryError):
            why = (err.strerror or str(err)).lower()
            raise input_error(f"cannot write {what}: {why}") from None
    if out.is_dir():
        raise input_error(f"cannot write {what}: it is a directory", hint="give a file name")
    if not parent.exists():
        raise input_error(
            f"cannot write {what}: the directory '{parent}' does not exist",
            hint=f"create it first (mkdir -p {parent})",
        )
    if not parent.is_dir():
        raise input_error(f"cannot write {what}: '{parent}' is not a directory")
    if (out.exists() and not os.access(out, os.W_OK)) or not os.access(parent, os.W_OK | os.X_OK):
        raise input_error(f"cannot write {what}: permission denied")
    return out


def add_rewrite_outputs(p: argparse.ArgumentParser, source: str) -> Any:
    """`-o OUT` or `-i/--in-place` (rewrite `source`) for commands that print a prototxt;
    resolve with `rewrite_target`. Returns the group, for more exclusive options."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", metavar="OUT", help="write here instead of stdout")
    group.add_argument("-i", "--in-place", action="store_true", help=f"rewrite {source} itself")
    return group


def rewrite_target(args: argparse.Namespace, source: str) -> str | None:
    """Where the output goes (None: stdout), checked before any work."""
    from protocaffe.cli import UsageError

    if args.in_place and source == "-":
        raise UsageError("--in-place needs a file, not standard input")
    target = source if args.in_place else args.output
    if target:
        check_output_path(target)
    return target


def check_input_path(path: str, flag: str) -> None:
    """Fail (exit 1) before any work unless `path` is a readable file; say what it is else."""
    from protocaffe.frontend.loader import check_input_file

    try:
        check_input_file(path, flag)
        if not os.access(path, os.R_OK):
            raise PermissionError(13, "permission denied")
    except OSError as err:
        raise input_error(f"{flag} {path}: {(err.strerror or str(err)).lower()}") from None


def read_input(path: str) -> SourceFile:
    """The prototxt at `path` ('-': standard input); an unreadable file is a bad input (exit
    1), as in `compile`."""
    from protocaffe.frontend import read_source

    try:
        return read_source(path)
    except OSError as err:
        raise input_error(f"cannot read '{path}': {err.strerror or err}") from None


def write_output(path: str, text: str) -> None:
    """Write `text` to `path` as UTF-8; a failure is a bad input (exit 1)."""
    check_output_path(path)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        raise write_error(path, err.strerror or err) from None
