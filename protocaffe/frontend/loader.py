"""Reading prototxt files: encoding and binary checks, then parse (and upgrade, for nets)."""

from __future__ import annotations

import os
from pathlib import Path

from protocaffe.diagnostics import CompileError, Diagnostic, SourceFile, Span
from protocaffe.frontend.textformat import ParsedFile, parse_text

__all__ = ["load_net", "load_solver", "read_source"]

_BINARY_SUFFIXES = {
    ".caffemodel": "a .caffemodel (binary trained weights)",
    ".binaryproto": "a .binaryproto (binary blob, e.g. a mean image)",
    ".h5": "an HDF5 file",
    ".solverstate": "a .solverstate (binary solver snapshot)",
}
_TEXT_CONTROLS = frozenset(b"\t\n\r\f\v")


def _fail(message: str, hint: str | None = None, span: Span | None = None):
    raise CompileError([Diagnostic("error", message, span, hint)])


def _binary_kind(path: Path, data: bytes) -> str | None:
    """What a binary file looks like, or None if it looks like text."""
    head = data[:4096]
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (e.g. a .caffemodel.h5)"
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


def read_source(path: str | os.PathLike[str]) -> SourceFile:
    """Read a prototxt as UTF-8 text; binary, empty or badly encoded files are CompileErrors.

    A missing or unreadable file raises OSError (a usage problem, not a bad input).
    """
    p = Path(path)
    name = str(path)
    data = p.read_bytes()
    kind = _binary_kind(p, data)
    if kind is not None:
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


def _source(path_or_text: str | os.PathLike[str]) -> SourceFile:
    """A path, or prototxt text itself (a string with a newline, '{' or ':' that is no file)."""
    if (
        isinstance(path_or_text, str)
        and any(c in path_or_text for c in "\n{:")
        and not os.path.exists(path_or_text)
    ):
        return SourceFile("<string>", path_or_text)
    return read_source(path_or_text)


def load_net(path_or_text: str | os.PathLike[str]) -> ParsedFile:
    """Parse a net definition and upgrade it from legacy (V0/V1, input:) formats if needed.

    The upgrade's notes are appended to the result's `diagnostics`.
    """
    source = _source(path_or_text)
    parsed = parse_text(source.text, source.path, "net", source=source)
    try:
        from protocaffe.frontend.upgrade import upgrade_net
    except ModuleNotFoundError as err:  # the upgrader is optional while it is being written
        if err.name != "protocaffe.frontend.upgrade":
            raise
        return parsed
    upgraded, notes = upgrade_net(parsed)
    if upgraded is not parsed or notes:
        upgraded.diagnostics = [*parsed.diagnostics, *notes]
    return upgraded


def load_solver(path_or_text: str | os.PathLike[str]) -> ParsedFile:
    """Parse a solver definition (deprecated `solver_type` is upgraded to `type`)."""
    source = _source(path_or_text)
    parsed = parse_text(source.text, source.path, "solver", source=source)
    from protocaffe.frontend.upgrade import upgrade_solver

    upgraded, notes = upgrade_solver(parsed)
    if upgraded is not parsed or notes:
        upgraded.diagnostics = [*parsed.diagnostics, *notes]
    return upgraded
