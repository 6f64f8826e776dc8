"""Helpers for tests: compile a few `layer { ... }` blocks against given input shapes."""

from __future__ import annotations

from collections.abc import Mapping

from protocaffe.frontend import parse_text
from protocaffe.ir.build import build_graph
from protocaffe.ir.graph import Graph
from protocaffe.proto import caffe_pb2


def compile_snippet(
    text: str,
    inputs: Mapping[str, tuple[int, ...]],
    phase: str = "TEST",
    dialect: str | None = None,
) -> Graph:
    """Compile `text` (one or more `layer { ... }` blocks) after one Input layer per blob.

    Spans in diagnostics point into `text` itself (file name `<snippet>`, its own line numbers):
    the Input layers are added to the parsed message, not to the text.
    """
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
    return build_graph(parsed, phase=phase, dialect=dialect)


def run_snippet(
    text: str,
    inputs: Mapping[str, object],
    blobs: Mapping[str, list[object]] | None = None,
    seed: int = 0,
    phase: str = "TEST",
    outputs: list[str] | None = None,
    dtype: object = None,
    dialect: str | None = None,
) -> dict[str, object]:
    """Compile `text` against `inputs` (numpy arrays by blob name), lower it and run it on CPU.

    `blobs` sets layers' stored blobs by layer name, in Caffe order (`{"conv1": [w, b]}`);
    other blobs come from their fillers seeded with `seed`. Returns the net's outputs, plus
    any blobs named in `outputs`, as numpy arrays. `dtype` defaults to torch.float32; use
    torch.float64 for oracle comparisons (floating inputs are cast to it).
    """
    import numpy as np
    import torch

    from protocaffe.lower.builder import lower_graph
    from protocaffe.runtime.caffemodel import assign_blobs

    arrays = {name: np.asarray(a) for name, a in inputs.items()}
    graph = compile_snippet(
        text, {name: a.shape for name, a in arrays.items()}, phase=phase, dialect=dialect
    )
    dtype = dtype or torch.float32
    module = lower_graph(graph, dtype=dtype, seed=seed, outputs=outputs)
    if blobs:
        assign_blobs(module, blobs)
    feed = {}
    for name, a in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(a).reshape(np.shape(a)))
        feed[name] = t.to(dtype) if t.is_floating_point() else t
    with torch.no_grad():
        result = module(feed)
    return {name: t.detach().cpu().numpy() for name, t in result.items()}
