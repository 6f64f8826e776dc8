"""SmoothL1Loss of the Fast/Faster R-CNN forks (rbgirshick/caffe-fast-rcnn, also PVANet's).

With bottoms (prediction, target[, inside weights, outside weights]) and s = sigma^2:
d = inside * (prediction - target); e = 0.5 * s * d^2 where |d| < 1/s, else |d| - 0.5/s;
loss = sum(outside * e) / N, N being bottom 0's num. (The fork computes it on the GPU only;
its CPU forward is NOT_IMPLEMENTED.)
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from protocaffe.layers.base import LayerDef, LowerContext, Shape, ShapeContext, register, shape_str
from protocaffe.layers.structural import legacy_dim
from protocaffe.lazy import np, torch
from protocaffe.proto.schema import Field, declare_message

if TYPE_CHECKING:
    from torch import fx

SmoothL1LossParameter = declare_message(
    "SmoothL1LossParameter", Field("sigma", 1, "float", default=1.0), param="smooth_l1_loss_param"
)


def smooth_l1_terms(d: torch.Tensor, sigma: float) -> torch.Tensor:
    s = sigma * sigma
    magnitude = d.abs()
    return torch.where(magnitude < 1.0 / s, 0.5 * s * d * d, magnitude - 0.5 / s)


@register
class SmoothL1Loss(LayerDef):
    type = "SmoothL1Loss"
    param_field = "smooth_l1_loss_param"
    bottoms = (2, 4)
    is_loss = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        if len(ctx.bottoms) == 3:
            ctx.fail("with weights, give both the inside and the outside weights (4 bottoms)")
        first = ctx.bottoms[0]
        for j, other in enumerate(ctx.bottoms[1:], start=1):
            if any(legacy_dim(first, k) != legacy_dim(other, k) for k in (1, 2, 3)):
                names = ctx.layer.bottoms
                ctx.fail(
                    f"'{names[j]}' ({shape_str(other)}) must match '{names[0]}' "
                    f"({shape_str(first)}) in channels, height and width",
                    "bottom",
                    j,
                )
        return [()]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return 3 * int(np.prod(ctx.bottoms[0]))

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        x = ctx.inputs
        diff = ctx.call(operator.sub, x[0], ctx.call(torch.reshape, x[1], ctx.bottom_shapes[0]))
        if len(x) == 4:
            diff = ctx.call(operator.mul, diff, ctx.call(torch.reshape, x[2], ctx.bottom_shapes[0]))
        terms = ctx.call(smooth_l1_terms, diff, ctx.param.sigma)
        if len(x) == 4:
            terms = ctx.call(
                operator.mul, terms, ctx.call(torch.reshape, x[3], ctx.bottom_shapes[0])
            )
        num = legacy_dim(ctx.bottom_shapes[0], 0)
        return [ctx.call(operator.truediv, ctx.call(torch.sum, terms), num)]

    def reference(self, ctx, inputs, blobs):
        flat = [a.astype(np.float64).reshape(-1) for a in inputs]
        s = float(ctx.param.sigma) ** 2
        total = 0.0
        for i in range(flat[0].size):
            d = flat[0][i] - flat[1][i]
            if len(flat) == 4:
                d *= flat[2][i]
            e = 0.5 * s * d * d if abs(d) < 1.0 / s else abs(d) - 0.5 / s
            total += e * (flat[3][i] if len(flat) == 4 else 1.0)
        return [np.array(total / legacy_dim(inputs[0].shape, 0), dtype=np.float32)]
