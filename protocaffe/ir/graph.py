"""The graph IR: a Caffe net for one NetState, in execution order, with SSA values.

Caffe blobs can be redefined by in-place layers (top == bottom, e.g. ReLU). The IR gives each
definition its own `Value` so that shapes, coordinate maps and lowering never confuse the
blob before and after an in-place layer. A Value's `blob` is the Caffe blob name as written;
its `id` is unique: the blob name for the first definition, `blob@layer` for redefinitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import Diagnostic, Span
from protocaffe.frontend.sourcemap import FieldPath, SourceMap

if TYPE_CHECKING:
    from protocaffe.layers.base import BlobSpec, LayerDef, Shape


@dataclass(eq=False)
class Value:
    id: str
    blob: str
    producer: Layer | None = field(repr=False)  # None for net-level inputs
    shape: Shape | None = None
    consumers: list[Layer] = field(default_factory=list, repr=False)


@dataclass(eq=False)
class Layer:
    name: str
    type: str
    proto: Any  # caffe_pb2.LayerParameter (after upgrade)
    path: FieldPath  # ("layer", i) in the upgraded NetParameter
    span: Span | None
    spec: LayerDef | None
    inputs: list[Value] = field(default_factory=list, repr=False)
    outputs: list[Value] = field(default_factory=list, repr=False)
    blob_specs: list[BlobSpec] = field(default_factory=list)
    macs: int = 0
    # The fork dialect names shared by forks are read in (proto/dialects.py; None: no fork).
    dialect: str | None = None

    @property
    def bottoms(self) -> list[str]:
        return list(self.proto.bottom)

    @property
    def tops(self) -> list[str]:
        return list(self.proto.top)

    @property
    def in_place(self) -> bool:
        return any(t in self.proto.bottom for t in self.proto.top)

    def top_in_place(self, j: int) -> bool:
        """Whether top `j` is computed in place: Caffe's rule, it is the bottom at position j."""
        bottom = self.proto.bottom
        return j < len(bottom) and bottom[j] == self.proto.top[j]


@dataclass(eq=False)
class Graph:
    net: Any  # caffe_pb2.NetParameter (upgraded, unfiltered)
    source_map: SourceMap | None
    phase: int  # caffe_pb2.TRAIN (0) / TEST (1)
    layers: list[Layer] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)  # by Value.id
    inputs: list[Value] = field(default_factory=list)  # produced by input/data layers
    outputs: list[Value] = field(default_factory=list)  # final definitions nobody consumes
    state: Any = None  # protocaffe.ir.state.NetState the graph was built for
    # Warnings and notes gathered while building (errors are raised as CompileError instead).
    diagnostics: list[Diagnostic] = field(default_factory=list)
    coords: Any = None  # protocaffe.ir.coordmap.CoordAnalysis: coordinate maps, crop alignment
    dialect: Any = None  # protocaffe.proto.dialects.Choice: the fork dialect, and why

    @property
    def name(self) -> str:
        return self.net.name or "net"

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def blob(self, name: str) -> Value:
        """The last definition of Caffe blob `name` (what a user means by the name)."""
        hit = None
        for value in self.values.values():
            if value.blob == name:
                hit = value
        if hit is None:
            raise KeyError(name)
        return hit

    def span_of(self, path: FieldPath) -> Span | None:
        return self.source_map.span(path) if self.source_map else None
