"""Layers that act along an axis: Softmax, ArgMax, Reduction. MACs follow activations.py."""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING

from protocaffe.layers.base import (
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    count,
    register,
    shape_str,
)
from protocaffe.lazy import F, np, torch
from protocaffe.proto import caffe_pb2

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.ir.graph import Layer


@register
class Softmax(LayerDef):
    """Softmax along `axis` (default 1, the channels), max-subtracted like Caffe."""

    type = "Softmax"
    param_field = "softmax_param"
    in_place = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        checked_axis(ctx, ctx.param.axis)
        return [ctx.bottoms[0]]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        axis = canonical_axis(ctx.param.axis, len(ctx.bottom_shapes[0]))
        return [ctx.call(F.softmax, ctx.inputs[0], dim=axis)]

    def mixes_items(self, layer: Layer, phase: int) -> bool:
        shape = layer.inputs[0].shape or ()
        return canonical_axis(layer.proto.softmax_param.axis, len(shape)) == 0

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        x = inputs[0].astype(np.float64)
        axis = canonical_axis(ctx.param.axis, x.ndim)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return [(e / e.sum(axis=axis, keepdims=True)).astype(inputs[0].dtype)]


@register
class ArgMax(LayerDef):
    """Indices (and optionally values) of the top_k largest entries.

    With `axis`: top_k replaces that axis (values instead of indices when out_max_val).
    Without: each sample is flattened and the top is N x (1 or 2) x top_k, padded with trailing
    1s to the bottom's rank (at least 3 axes); with out_max_val, channel 0 holds the indices
    and channel 1 the values. Ties go to the larger index (Caffe sorts (value, index) pairs in
    descending order). Indices are emitted as floats, as Caffe stores them.
    """

    type = "ArgMax"
    param_field = "argmax_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p, x = ctx.param, tuple(ctx.bottoms[0])
        k = p.top_k
        if k < 1:
            ctx.fail(f"top_k must be at least 1, got {k}", "top_k")
        if ctx.has("axis"):
            axis = checked_axis(ctx, p.axis)
            if k > x[axis]:
                ctx.fail(
                    f"top_k {k} exceeds axis {axis} of bottom '{ctx.layer.bottoms[0]}' "
                    f"({shape_str(x)}: {x[axis]} entries)",
                    "top_k",
                )
            return [(*x[:axis], k, *x[axis + 1 :])]
        per_sample = count(x[1:])
        if k > per_sample:
            ctx.fail(
                f"top_k {k} exceeds the {per_sample} entries per sample of bottom "
                f"'{ctx.layer.bottoms[0]}' ({shape_str(x)})",
                "top_k",
            )
        top = [1] * max(len(x), 3)
        top[0], top[1], top[2] = x[0], 2 if p.out_max_val else 1, k
        return [tuple(top)]

    def explain(self, ctx: ShapeContext) -> list[str]:
        p, x = ctx.param, tuple(ctx.bottoms[0])
        what = "values" if p.out_max_val else "indices"
        if ctx.has("axis"):
            axis = canonical_axis(p.axis, len(x))
            return [f"axis {axis}: {x[axis]} -> top_k {p.top_k} {what}"]
        rows = "indices and values" if p.out_max_val else "indices"
        return [f"each of {x[0]} samples: top_k {p.top_k} of {count(x[1:])} flattened -> {rows}"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p, x = ctx.param, ctx.inputs[0]
        shape = ctx.bottom_shapes[0]
        has_axis = ctx.param.HasField("axis")
        axis = canonical_axis(p.axis, len(shape)) if has_axis else 1
        if not has_axis:
            x = ctx.call(torch.reshape, x, (shape[0], -1))
        size = shape[axis] if has_axis else count(shape[1:])
        values, indices = self._top_k(ctx, x, axis, p.top_k, size)
        if has_axis:
            out = values if p.out_max_val else indices
        elif p.out_max_val:
            out = ctx.call(torch.stack, [indices, values], 1)
        else:
            out = indices
        return [ctx.call(torch.reshape, out, tuple(ctx.top_shapes[0]))]

    @staticmethod
    def _top_k(
        ctx: LowerContext, x: fx.Node, axis: int, k: int, size: int
    ) -> tuple[fx.Node, fx.Node]:
        """Top-k values and float indices along `axis`, ties to the larger index.

        Searching the reversed axis turns "first occurrence" (documented for argmax, and
        stable sort) into "last occurrence"; the index is then mirrored back.
        """
        flipped = ctx.call(torch.flip, x, (axis,))
        if k == 1:
            values, pos = (
                ctx.call(torch.amax, x, axis, keepdim=True),
                ctx.call(torch.argmax, flipped, axis, keepdim=True),
            )
        else:
            ordered = ctx.call(torch.sort, flipped, dim=axis, descending=True, stable=True)
            values = ctx.call(torch.narrow, ctx.call(operator.getitem, ordered, 0), axis, 0, k)
            pos = ctx.call(torch.narrow, ctx.call(operator.getitem, ordered, 1), axis, 0, k)
        last = ctx.call(torch.full_like, values, size - 1)  # in the values' float dtype
        return values, ctx.call(torch.sub, last, pos)

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        p, x = ctx.param, inputs[0]
        k = p.top_k
        has_axis = ctx.has("axis")
        axis = canonical_axis(p.axis, x.ndim) if has_axis else 1
        rows = np.moveaxis(x, axis, -1) if has_axis else x.reshape(x.shape[0], -1)
        flat = rows.reshape(-1, rows.shape[-1])
        idx = np.empty((flat.shape[0], k), dtype=np.int64)
        for r, row in enumerate(flat):
            # Descending by (value, index), as std::greater on pairs orders them.
            idx[r] = sorted(range(len(row)), key=lambda j: (row[j], j), reverse=True)[:k]
        val = np.take_along_axis(flat, idx, axis=1)
        if has_axis:
            out = (val if p.out_max_val else idx).reshape((*rows.shape[:-1], k))
            out = np.moveaxis(out, -1, axis)
        elif p.out_max_val:
            out = np.stack([idx, val], axis=1)
        else:
            out = idx
        top = self.shapes(ctx)[0]
        return [np.asarray(out, dtype=x.dtype).reshape(top)]


_RED = caffe_pb2.ReductionParameter


@register
class Reduction(LayerDef):
    """Reduce every axis from `axis` on: SUM, ASUM (sum |x|), SUMSQ, MEAN; times coeff.

    The top keeps the dims before `axis` (a scalar for axis 0).
    """

    type = "Reduction"
    param_field = "reduction_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        x = tuple(ctx.bottoms[0])
        return [x[: checked_axis(ctx, ctx.param.axis)]]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(ctx.bottoms[0]) if ctx.param.operation == _RED.SUMSQ else 0

    def explain(self, ctx: ShapeContext) -> list[str]:
        p, x = ctx.param, tuple(ctx.bottoms[0])
        axis = canonical_axis(p.axis, len(x))
        op = _RED.ReductionOp.Name(p.operation)
        return [
            f"{op} over axes {axis}..{len(x) - 1} ({count(x[axis:])} entries each), "
            f"times coeff {p.coeff:g}; keeps {shape_str(x[:axis])}"
        ]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p, x = ctx.param, ctx.inputs[0]
        shape = ctx.bottom_shapes[0]
        axis = canonical_axis(p.axis, len(shape))
        flat = ctx.call(torch.flatten, x, axis)  # reduce one trailing axis
        if p.operation == _RED.ASUM:
            flat = ctx.call(torch.abs, flat)
        elif p.operation == _RED.SUMSQ:
            flat = ctx.call(torch.square, flat)
        y = ctx.call(torch.sum, flat, -1)
        coeff = p.coeff / math.prod(shape[axis:]) if p.operation == _RED.MEAN else p.coeff
        return [y if coeff == 1 else ctx.call(torch.mul, y, coeff)]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        p, x = ctx.param, inputs[0].astype(np.float64)
        axis = canonical_axis(p.axis, x.ndim)
        rows = x.reshape((*x.shape[:axis], -1))
        if p.operation == _RED.ASUM:
            rows = np.abs(rows)
        elif p.operation == _RED.SUMSQ:
            rows = rows**2
        y = rows.sum(axis=-1) * p.coeff
        if p.operation == _RED.MEAN:
            y = y / rows.shape[-1]
        return [np.asarray(y).astype(inputs[0].dtype)]
