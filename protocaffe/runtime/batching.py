"""Stacking inputs into one batch: whether a net allows it, and how many at a time.

Caffe computes a batch item by item, so stacking same-size inputs along axis 0 gives each item
the result it gets alone when the net computes each item from that item only: every blob keeps
the batch on axis 0 (checked by the shape pass at two batch sizes, which rules out Concat,
Slice, Flatten or Reshape across axis 0, SSD's batch-independent priors, R-CNN's ROI lists)
and no layer mixes items while keeping the shapes (`LayerDef.mixes_items`: Softmax over axis
0, BatchNorm on batch statistics, recurrent layers, user Python layers).
"""

from __future__ import annotations

from typing import Any

from protocaffe.diagnostics import CompileError

MAX_AUTO_BATCH = 32
BATCH_BUDGET_BYTES = 1 << 30  # activations of one batch; at most a quarter of free memory


def batch_blocker(graph: Any) -> str | None:
    """Why inputs of `graph` (a one-input net) cannot be stacked along axis 0; None if they can."""
    from protocaffe.ir.build import rebuild_graph

    for layer in graph.layers:
        if layer.spec is not None and layer.spec.mixes_items(layer, graph.state.phase):
            return f"{layer.type} layer '{layer.name}' mixes batch items"
    (value,) = graph.inputs
    batch = value.shape[0]
    try:
        doubled = rebuild_graph(graph, {value.blob: (2 * batch, *value.shape[1:])})
    except CompileError:
        return f"the net does not take a batch of {2 * batch}"
    for net, n in ((graph, batch), (doubled, 2 * batch)):
        for layer in net.layers:
            for top in layer.outputs:
                if not top.shape or top.shape[0] != n:
                    return (
                        f"{layer.type} layer '{layer.name}': top '{top.blob}' does not keep the "
                        "batch on axis 0"
                    )
    return None


def auto_batch_size(graph: Any, dtype: Any = "float32", device: Any = "cpu") -> int:
    """How many items of `graph`'s input size to stack: up to MAX_AUTO_BATCH, keeping the
    activations (every blob Caffe would allocate) within BATCH_BUDGET_BYTES and a quarter of
    the device's free memory."""
    from protocaffe.runtime.guards import available_bytes, plan_of

    per_item = plan_of(graph, dtype, params=False).activation_bytes // max(
        graph.inputs[0].shape[0], 1
    )
    budget = BATCH_BUDGET_BYTES
    free = available_bytes(device)
    if free is not None:
        budget = min(budget, free // 4)
    return max(1, min(MAX_AUTO_BATCH, budget // max(per_item, 1)))
