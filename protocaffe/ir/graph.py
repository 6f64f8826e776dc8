"""The graph IR: a Caffe net for one NetState, in execution order, with SSA values.

Caffe blobs can be redefined by in-place layers (top == bottom, e.g. ReLU). The IR gives each
definition its own `Value` so that shapes, coordinate maps and lowering never confuse the
blob before and after an in-place layer. A Value's `blob` is the Caffe blob name as written;
its `id` is unique: the blob name for the first definition, `blob@layer` for redefinitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import Diagnostic, Span
from protocaffe.frontend.sourcemap import FieldPath, SourceMap

if TYPE_CHECKING:
    from protocaffe.layers.base import BlobSpec, LayerDef, Shape


class Value:
    # Plain classes, not dataclasses: each of those costs a cold compile about a millisecond.
    def __init__(
        self,
        id: str,
        blob: str,
        producer: Layer | None,  # None for net-level inputs
        shape: Shape | None = None,
        consumers: list[Layer] | None = None,
    ) -> None:
        self.id = id
        self.blob = blob
        self.producer = producer
        self.shape = shape
        self.consumers: list[Layer] = [] if consumers is None else consumers

    def __repr__(self) -> str:
        return f"Value(id={self.id!r}, blob={self.blob!r}, shape={self.shape!r})"


class Layer:
    def __init__(
        self,
        name: str,
        type: str,
        proto: Any,  # caffe_pb2.LayerParameter (after upgrade)
        path: FieldPath,  # ("layer", i) in the upgraded NetParameter
        span: Span | None,
        spec: LayerDef | None,
        inputs: list[Value] | None = None,
        outputs: list[Value] | None = None,
        blob_specs: list[BlobSpec] | None = None,
        macs: int = 0,
        dialect: str | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.proto = proto
        self.path = path
        self.span = span
        self.spec = spec
        self.inputs: list[Value] = [] if inputs is None else inputs
        self.outputs: list[Value] = [] if outputs is None else outputs
        self.blob_specs: list[BlobSpec] = [] if blob_specs is None else blob_specs
        self.macs = macs
        # The fork dialect names shared by forks are read in (proto/dialects.py; None: no fork).
        self.dialect = dialect

    def __repr__(self) -> str:
        return f"Layer(name={self.name!r}, type={self.type!r}, path={self.path!r})"

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


class Graph:
    def __init__(
        self,
        net: Any,  # caffe_pb2.NetParameter (upgraded, unfiltered)
        source_map: SourceMap | None,
        phase: int,  # caffe_pb2.TRAIN (0) / TEST (1)
        layers: list[Layer] | None = None,
        values: dict[str, Value] | None = None,  # by Value.id
        inputs: list[Value] | None = None,  # produced by input/data layers
        outputs: list[Value] | None = None,  # final definitions nobody consumes
        state: Any = None,  # protocaffe.ir.state.NetState the graph was built for
        # Warnings and notes gathered while building (errors are raised as CompileError).
        diagnostics: list[Diagnostic] | None = None,
        coords: Any = None,  # protocaffe.ir.coordmap.CoordAnalysis: coord maps, crop alignment
        dialect: Any = None,  # protocaffe.proto.dialects.Choice: the fork dialect, and why
    ) -> None:
        self.net = net
        self.source_map = source_map
        self.phase = phase
        self.layers: list[Layer] = [] if layers is None else layers
        self.values: dict[str, Value] = {} if values is None else values
        self.inputs: list[Value] = [] if inputs is None else inputs
        self.outputs: list[Value] = [] if outputs is None else outputs
        self.state = state
        self.diagnostics: list[Diagnostic] = [] if diagnostics is None else diagnostics
        self.coords = coords
        self.dialect = dialect

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
