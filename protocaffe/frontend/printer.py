"""Canonical prototxt: 2-space indent, one value per line, layer fields in reading order.

Fields print in field-number order, except that `name`, `type`, `bottom` and `top` (a net's
inputs, a solver's nets) come first, which is how people write and read them. Floats print as the
shortest decimal that reads back to the same float32 (0.0001, not 9.99999974738e-05).
Parsing the output gives back an equal message.
"""

from __future__ import annotations

import math
import struct

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["format_float32", "format_message", "quote"]

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


def _write(msg: Message, depth: int, out: list[str]) -> None:
    pad = _INDENT * depth
    for fd, value in _ordered(msg):
        values = value if fd.is_repeated else (value,)
        for v in values:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                if v.ListFields():  # type: ignore[attr-defined]
                    out.append(f"{pad}{fd.name} {{\n")
                    _write(v, depth + 1, out)  # type: ignore[arg-type]
                    out.append(f"{pad}}}\n")
                else:
                    out.append(f"{pad}{fd.name} {{}}\n")
            else:
                out.append(f"{pad}{fd.name}: {_scalar(fd, v)}\n")


def format_message(msg: Message) -> str:
    """`msg` as canonical prototxt text (ends with a newline unless empty)."""
    out: list[str] = []
    _write(msg, 0, out)
    return "".join(out)
