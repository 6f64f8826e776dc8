"""Front end: prototxt text → caffe_pb2 message + SourceMap (and back, canonically)."""

from __future__ import annotations

from typing import Any

from protocaffe.frontend.loader import load_net, load_solver, read_source
from protocaffe.frontend.textformat import ParsedFile, parse_text

__all__ = ["ParsedFile", "format_message", "load_net", "load_solver", "parse_text", "read_source"]


def __getattr__(name: str) -> Any:
    # The printer (and its comment placement) only for commands that print prototxt.
    if name == "format_message":
        from protocaffe.frontend.printer import format_message

        return format_message
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
