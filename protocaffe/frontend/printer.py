"""Canonical prototxt: 2-space indent, one value per line, layer fields in reading order.

Fields print in field-number order, except that `name`, `type`, `bottom` and `top` (a net's
inputs, a solver's nets) come first, which is how people write and read them. Floats print as the
shortest decimal that reads back to the same float32 (0.0001, not 9.99999974738e-05).
Parsing the output gives back an equal message. Comments, when given, are written next to the
field they were attached to (frontend/comments.py).
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from protocaffe.diagnostics import Diagnostic
from protocaffe.frontend.comments import Comments, attach_comments
from protocaffe.frontend.sourcemap import FieldPath

if TYPE_CHECKING:
    from protocaffe.frontend.textformat import ParsedFile

__all__ = ["format_float32", "format_message", "format_parsed", "quote"]

_FIRST = {
    "NetParameter": ("name", "input", "input_shape", "input_dim"),
    "SolverParameter": ("net", "train_net", "test_net", "net_param", "train_net_param"),
}
_DEFAULT_FIRST = ("name", "type", "bottom", "top")
_INDENT = "  "


def format_float32(value: float) -> str:
    """The shortest decimal that rounds to the same float32 as `value`."""
    if math.isnan(value) or math.isinf(value):
        return repr(value)  # nan, inf, -inf: text_format reads them back
    target = struct.pack("<f", value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        try:
            if struct.pack("<f", float(text)) == target:
                return text
        except OverflowError:  # rounded past the largest float32
            continue
    return repr(value)


def _format_double(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return repr(value)
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(value: str | bytes) -> str:
    """A double-quoted literal; control characters (and, for bytes, non-ASCII) as octal."""
    if isinstance(value, bytes):
        chars = [chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}" for b in value]
        return '"' + "".join(_ESCAPES.get(c, c) for c in chars) + '"'
    out = []
    for c in value:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\{ord(c):03o}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _scalar(fd: FieldDescriptor, value: object) -> str:
    t = fd.type
    if t == FieldDescriptor.TYPE_FLOAT:
        return format_float32(value)  # type: ignore[arg-type]
    if t == FieldDescriptor.TYPE_DOUBLE:
        return _format_double(value)  # type: ignore[arg-type]
    if t == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return quote(value)  # type: ignore[arg-type]
    if t == FieldDescriptor.TYPE_ENUM:
        known = fd.enum_type.values_by_number.get(value)  # type: ignore[arg-type]
        return known.name if known is not None else str(value)
    return str(value)


def _ordered(msg: Message) -> list[tuple[FieldDescriptor, object]]:
    fields = msg.ListFields()  # set fields, in field-number order
    first = _FIRST.get(msg.DESCRIPTOR.name, _DEFAULT_FIRST)
    rank = {name: i for i, name in enumerate(first)}
    return sorted(fields, key=lambda item: (rank.get(item[0].name, len(first)), item[0].number))


class _Writer:
    """Prints a message, with the comments attached to its paths (see frontend/comments.py)."""

    def __init__(self, comments: Comments | None):
        self.comments = comments or Comments()
        self.out: list[str] = []
        self.written = 0  # comments written

    def line(self, text: str, comment: str | None = None) -> None:
        if comment is not None:
            text += f"  {comment}"
            self.written += 1
        self.out.append(text + "\n")

    def block_comments(self, lines: list[str] | None, pad: str) -> None:
        for text in lines or ():
            self.line(pad + text)
            self.written += 1

    def write(self, msg: Message, depth: int, path: FieldPath) -> None:
        pad = _INDENT * depth
        c = self.comments
        for fd, value in _ordered(msg):
            values = value if fd.is_repeated else (value,)
            for i, v in enumerate(values):
                sub = (*path, fd.name, i) if fd.is_repeated else (*path, fd.name)
                self.block_comments(c.before.get(sub), pad)
                if fd.type != FieldDescriptor.TYPE_MESSAGE:
                    self.line(f"{pad}{fd.name}: {_scalar(fd, v)}", c.after.get(sub))
                    continue
                opening, inner = c.opening.get(sub), c.closing.get(sub)
                if not v.ListFields() and opening is None and not inner:  # type: ignore[attr-defined]
                    self.line(f"{pad}{fd.name} {{}}", c.after.get(sub))
                    continue
                self.line(f"{pad}{fd.name} {{", opening)
                self.write(v, depth + 1, sub)  # type: ignore[arg-type]
                self.block_comments(inner, pad + _INDENT)
                self.line(f"{pad}}}", c.after.get(sub))


def format_message(msg: Message, comments: Comments | None = None) -> str:
    """`msg` as canonical prototxt text (ends with a newline unless empty), with `comments`
    (from `attach_comments`) where they belong."""
    return _format(msg, comments)[0]


def format_parsed(parsed: ParsedFile) -> tuple[str, list[Diagnostic]]:
    """A parsed file printed canonically with its comments, and a warning when some comments
    found no place (only when the message no longer matches its text, as after an upgrade)."""
    comments = attach_comments(parsed.message, parsed.source_map, parsed.source)
    text, written = _format(parsed.message, comments)
    lost = comments.total - written
    if not lost:
        return text, []
    message = f"{parsed.source.path}: {lost} comment(s) have no field to go with and are dropped"
    return text, [Diagnostic("warning", message)]


def _format(msg: Message, comments: Comments | None) -> tuple[str, int]:
    writer = _Writer(comments)
    writer.write(msg, 0, ())
    writer.block_comments(writer.comments.closing.get(()), "")
    return "".join(writer.out), writer.written
