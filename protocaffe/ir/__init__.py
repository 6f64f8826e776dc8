"""The graph IR: state filtering, SSA values, shape inference, coordinate maps and reports."""

from protocaffe.ir.build import build_graph, shape_context
from protocaffe.ir.graph import Graph, Layer, Value

__all__ = ["Graph", "Layer", "Value", "build_graph", "shape_context"]
