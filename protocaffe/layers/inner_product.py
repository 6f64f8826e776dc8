"""InnerProduct: a fully connected layer over the axes from `axis` (default 1) on.

The bottom is flattened to (M, K) with M = count(0, axis) and K = count(axis); the top is
shape[:axis] + [num_output]. The weight is [num_output, K], or [K, num_output] with `transpose`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocaffe.layers.base import (
    BlobSpec,
    LayerDef,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    count,
    register,
)
from protocaffe.lazy import F, np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext


@register
class InnerProduct(LayerDef):
    type = "InnerProduct"
    param_field = "inner_product_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        if ctx.param.num_output <= 0:
            ctx.fail("num_output is required and must be positive", "num_output")
        axis = checked_axis(ctx, ctx.param.axis)
        return [(*ctx.bottoms[0][:axis], ctx.param.num_output)]

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        p = ctx.param
        k = count(ctx.bottoms[0][canonical_axis(p.axis, len(ctx.bottoms[0])) :])
        weight = (k, p.num_output) if p.transpose else (p.num_output, k)
        specs = [BlobSpec("weight", weight, p.weight_filler)]
        if p.bias_term:
            specs.append(BlobSpec("bias", (p.num_output,), p.bias_filler))
        return specs

    def explain(self, ctx: ShapeContext) -> list[str]:
        bottom = ctx.bottoms[0]
        axis = canonical_axis(ctx.param.axis, len(bottom))
        dims = "*".join(str(d) for d in bottom[axis:]) or "1"
        return [f"K = {dims} = {count(bottom[axis:])} (axes {axis}..{len(bottom) - 1} flattened)"]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(ctx.bottoms[0]) * ctx.param.num_output

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        axis = canonical_axis(p.axis, len(ctx.bottom_shapes[0]))
        x = ctx.inputs[0]
        if axis != len(ctx.bottom_shapes[0]) - 1:
            x = ctx.call(torch.flatten, x, axis)
        weight = ctx.blob("weight")
        bias = ctx.blob("bias") if p.bias_term else None
        if p.transpose:
            y = ctx.call(torch.matmul, x, weight)
            return [ctx.call(torch.add, y, bias) if bias is not None else y]
        return [ctx.call(F.linear, x, weight, bias)]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Forward_cpu: one GEMM (M x K) * (K x N), plus the bias broadcast over M."""
        p = ctx.param
        (top,) = self.shapes(ctx)
        weight = blobs[0].astype(np.float32)
        x = inputs[0].astype(np.float32).reshape(count(top[:-1]), -1)
        y = x @ (weight if p.transpose else weight.T)
        if p.bias_term:
            y = y + blobs[1].astype(np.float32)[None, :]
        return [y.reshape(top)]
