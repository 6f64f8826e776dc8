"""Helpers for tests: compile a few `layer { ... }` blocks against given input shapes."""

from __future__ import annotations

from collections.abc import Mapping
from protocaffe.frontend import parse_text
from protocaffe.ir.build import build_graph
from protocaffe.ir.graph import Graph


def compile_snippet(text: str, inputs: Mapping[str, tuple[int, ...]], phase: str = "TEST") -> Graph:
    """Compile `text` (one or more `layer { ... }` blocks) after one Input layer per blob.

    Spans in diagnostics point into `text` itself (file name `<snippet>`, its own line numbers):
    the Input layers are added to the parsed message, not to the text.
    """
    from protocaffe.proto import caffe_pb2

    parsed = parse_text(text, "<snippet>")
    net = caffe_pb2.NetParameter()
    for name, shape in inputs.items():
        layer = net.layer.add(name=name, type="Input", top=[name])
        layer.input_param.shape.add(dim=list(shape))
    net.MergeFrom(parsed.message)
    k = len(inputs)
    mapping = {("layer", i): ("layer", i + k) for i in range(len(parsed.message.layer))}
    parsed.message = net
    parsed.source_map = parsed.source_map.remap(mapping)
    return build_graph(parsed, phase=phase)
