"""Reading prototxt files: encoding and binary checks, then parse (and upgrade, for nets)."""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import BinaryIO, NoReturn

from protocaffe.diagnostics import CompileError, Diagnostic, SourceFile, Span
from protocaffe.frontend.textformat import ParsedFile, parse_text

__all__ = ["MAX_PROTOTXT_BYTES", "check_input_file", "load_net", "load_solver", "read_source"]

_BINARY_SUFFIXES = {
    ".caffemodel": "a .caffemodel (binary trained weights)",
    ".binaryproto": "a .binaryproto (binary blob, e.g. a mean image)",
    ".h5": "an HDF5 file",
    ".solverstate": "a .solverstate (binary solver snapshot)",
}
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v")


def _fail(message: str, hint: str | None = None, span: Span | None = None) -> NoReturn:
    raise CompileError([Diagnostic("error", message, span, hint)])


def _binary_kind(path: Path, data: bytes) -> str | None:
    """What a binary file looks like, or None if it looks like text."""
    head = data[:4096]
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (e.g. a .caffemodel.h5)"
    utf16 = _utf16_kind(head)
    if utf16 is not None:
        return utf16
    controls = sum(1 for b in head if b < 0x20 and b not in _TEXT_CONTROLS)
    if b"\x00" not in head and controls <= len(head) // 100:
        return None
    for suffix, kind in _BINARY_SUFFIXES.items():
        if path.name.endswith(suffix):
            return kind
    from protocaffe.proto import caffe_pb2

    try:
        net = caffe_pb2.NetParameter.FromString(data)
    except Exception:
        return "a binary file"
    if len(net.layer) or len(net.layers):
        return "a binary NetParameter (a .caffemodel with trained weights)"
    return "a binary file"


def _utf16_kind(head: bytes) -> str | None:
    """'UTF-16'/'UTF-32' text (Windows editors and PowerShell redirection write it), or None."""
    for bom, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if head.startswith(bom):
            return f"{name} text"
    # No byte-order mark: ASCII text in UTF-16 has a NUL in every other byte.
    pairs = head[: len(head) - len(head) % 2]
    if len(pairs) >= 8:
        even, odd = pairs[0::2], pairs[1::2]
        for zeros, text in ((even, odd), (odd, even)):
            if not zeros.strip(b"\x00") and all(0x09 <= b < 0x7F for b in text):
                return "UTF-16 text"
    return None


# The largest prototxt in the corpus is well under 1 MiB; text 16x that is no net definition
# (and parsing it would take minutes and gigabytes).
MAX_PROTOTXT_BYTES = 16 << 20
STDIN = "-"


def _describe_size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size} bytes"


def check_input_file(
    path: str | os.PathLike[str], what: str, max_bytes: int | None = None
) -> os.stat_result:
    """Refuse, before reading it, a path that is a directory, a device (/dev/zero), or a file
    over `max_bytes`: a CompileError that says what it is. Pipes pass (their size is checked
    as they are read). A missing or unreadable path raises OSError."""
    st = os.stat(path)
    mode = st.st_mode
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else None
    )
    if kind is not None:
        _fail(f"{what} '{os.fspath(path)}' is {kind}, not a file")
    if max_bytes is not None and stat.S_ISREG(mode) and st.st_size > max_bytes:
        _fail(
            f"{what} '{os.fspath(path)}' is {_describe_size(st.st_size)}, larger than any "
            f"plausible prototxt (limit {_describe_size(max_bytes)})",
            "is this the right file? trained weights (.caffemodel) go to --weights",
        )
    return st


def _read_bounded(stream: BinaryIO, name: str) -> bytes:
    data = stream.read(MAX_PROTOTXT_BYTES + 1)
    if len(data) > MAX_PROTOTXT_BYTES:
        _fail(
            f"{name} holds more than {_describe_size(MAX_PROTOTXT_BYTES)}, larger than any "
            "plausible prototxt"
        )
    return data


@cache
def _stdin_bytes() -> bytes:
    """Standard input, read once (several stages may ask for the same '-')."""
    return _read_bounded(sys.stdin.buffer, "standard input")


def read_source(path: str | os.PathLike[str]) -> SourceFile:
    """Read a prototxt as UTF-8 text; binary, empty, oversized or badly encoded files, and
    paths that are no file (a directory, /dev/zero), are CompileErrors. '-' is standard input.

    A missing or unreadable file raises OSError (a usage problem, not a bad input).
    """
    p = Path(path)
    name = str(path)
    if name == STDIN:
        name, data = "<stdin>", _stdin_bytes()
    else:
        check_input_file(p, "the prototxt", MAX_PROTOTXT_BYTES)
        with open(p, "rb") as f:  # a pipe's size is only known by reading it
            data = _read_bounded(f, name)
    kind = _binary_kind(p, data)
    if kind is not None:
        if kind.endswith(" text"):
            _fail(
                f"{name} is {kind}; protocaffe reads prototxt files as UTF-8",
                "save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8 IN > OUT`)",
            )
        _fail(
            f"{name} is {kind}, not a text prototxt",
            "pass the .prototxt net definition here; trained weights go to --weights",
        )
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as Windows editors write
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        column = len(data[line_start : err.start].decode("utf-8", "replace")) + 1
        source = SourceFile(name, data.decode("utf-8", "replace"))
        _fail(
            f"not valid UTF-8: byte 0x{data[err.start]:02X} at offset {err.start}",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
            Span(source, line, column, line, column + 1),
        )
    if not text.strip():
        _fail(f"{name} is empty", "a net definition needs at least one layer")
    return SourceFile(name, text)


# A one-line string that ends like a file name (`nets/a:b.prototxt`) is a path even if it has a
# ':' or '{'; prototxt text cannot end that way unquoted.
_PATH_LIKE = re.compile(r"""^[^"'\s]*\.[A-Za-z0-9_]+$""")


def _source(path_or_text: str | os.PathLike[str]) -> SourceFile:
    """A path, or prototxt text itself (a string with a newline, '{' or ':' that is no file).

    A file that cannot be read is a CompileError ("cannot read ..."), like any other bad input.
    """
    if (
        isinstance(path_or_text, str)
        and any(c in path_or_text for c in "\n{:")
        and ("\n" in path_or_text or not _PATH_LIKE.match(path_or_text))
        and not os.path.exists(path_or_text)
    ):
        return SourceFile("<string>", path_or_text)
    try:
        return read_source(path_or_text)
    except OSError as err:
        message = f"cannot read '{os.fspath(path_or_text)}': {err.strerror or err}"
        raise CompileError([Diagnostic("error", message)]) from None


def _reject_solver(source: SourceFile) -> None:
    """A solver given where a net belongs: one error that says so (not one per solver field)."""
    from protocaffe.frontend.textformat import detect_message_type, parse_tree_recovering
    from protocaffe.proto import caffe_pb2

    # With syntax errors, judge from the statements that parse (and keep those errors).
    tree, syntax = parse_tree_recovering(source.text, source)
    if not tree or detect_message_type(tree) is not caffe_pb2.SolverParameter:
        return
    first = tree[0][0]
    span = Span(source, first.line, first.column, first.line, first.column + len(first.value))
    nets = []
    for name_tok, _, value in tree:
        if name_tok.value in ("net", "train_net", "test_net") and value.__class__ is list:
            nets.append("".join(t.value[1:-1] for t in value))
        elif name_tok.value in ("net_param", "train_net_param", "test_net_param"):
            nets.append(f"its inline {name_tok.value} (line {name_tok.line})")
    hint = "pass the net definition (.prototxt with layers) instead"
    if nets:
        hint += "; this solver uses " + ", ".join(dict.fromkeys(nets))
    message = "this file is a solver definition (SolverParameter), not a net"
    raise CompileError([Diagnostic("error", message, span, hint), *syntax])


def load_net(path_or_text: str | os.PathLike[str], follow_solver: bool = False) -> ParsedFile:
    """Parse a net definition and upgrade it from legacy (V0/V1, input:) formats if needed.

    The upgrade's notes are appended to the result's `diagnostics`. A solver is an error,
    unless `follow_solver`: then its training net (`net`/`train_net` file, or inline).
    """
    from protocaffe.frontend.upgrade import upgrade_net

    source = _source(path_or_text)
    try:
        parsed = parse_text(source.text, source.path, "net", source=source)
    except CompileError:
        if follow_solver and _is_solver(source):
            return _solver_net(load_solver(source))
        _reject_solver(source)
        raise
    return _upgraded(parsed, upgrade_net)


def _is_solver(source: SourceFile) -> bool:
    from protocaffe.frontend.textformat import detect_message_type, parse_tree_recovering
    from protocaffe.proto import caffe_pb2

    tree, _ = parse_tree_recovering(source.text, source)
    return bool(tree) and detect_message_type(tree) is caffe_pb2.SolverParameter


# Caffe's Solver::InitTrainNet takes exactly one of these.
_TRAIN_NETS = ("net", "net_param", "train_net", "train_net_param")


def _solver_net(solver: ParsedFile) -> ParsedFile:
    """The training net of a parsed (and upgraded) solver, with a note that says where from."""
    from protocaffe.frontend.upgrade import inline_nets

    msg = solver.message
    given = [name for name in _TRAIN_NETS if msg.HasField(name)]
    where = solver.source_map.name_span((given[0],)) if given else None
    if len(given) != 1:
        _fail(
            "this solver names no training net"
            if not given
            else f"this solver names {len(given)} training nets ({', '.join(given)})",
            "Caffe's solver needs exactly one of net, net_param, train_net, train_net_param",
            where,
        )
    field = given[0]
    if field.endswith("_param"):
        net = dict(inline_nets(solver))[(field,)]
        found = f"its inline {field}"
    else:
        path = _solver_relative(getattr(msg, field), solver.source.path, where)
        net = load_net(path)
        found = f"'{path}'"
    note = Diagnostic("note", f"{solver.source.path} is a solver; compiling {found}", where)
    net.diagnostics = [*solver.diagnostics, note, *net.diagnostics]
    return net


def _solver_relative(path: str, solver_path: str, where: Span | None) -> str:
    """A solver's net path: as written (Caffe reads it from the working directory), else next
    to the solver."""
    beside = os.path.join(os.path.dirname(solver_path), path)
    for candidate in (path, beside):
        if os.path.isfile(candidate):
            return candidate
    _fail(
        f"the solver's net '{path}' does not exist",
        "Caffe reads it relative to the working directory; run from there "
        f"(looked in the working directory and in '{os.path.dirname(solver_path) or '.'}')",
        where,
    )


def load_solver(path_or_text: str | os.PathLike[str] | SourceFile) -> ParsedFile:
    """Parse a solver definition (deprecated `solver_type` is upgraded to `type`)."""
    from protocaffe.frontend.upgrade import upgrade_solver

    source = path_or_text if isinstance(path_or_text, SourceFile) else _source(path_or_text)
    return _upgraded(parse_text(source.text, source.path, "solver", source=source), upgrade_solver)


def _upgraded(
    parsed: ParsedFile, upgrade: Callable[[ParsedFile], tuple[ParsedFile, list[Diagnostic]]]
) -> ParsedFile:
    """`parsed` after `upgrade`, with the upgrade's notes appended to its diagnostics."""
    upgraded, notes = upgrade(parsed)
    if upgraded is not parsed or notes:
        upgraded.diagnostics = [*parsed.diagnostics, *notes]
    return upgraded
