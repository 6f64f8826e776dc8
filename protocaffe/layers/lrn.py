"""LRN: local response normalisation, across channels or within each channel.

ACROSS_CHANNELS: scale = k + alpha/size * sum of x^2 over `size` neighbouring channels (zero
padded), y = x * scale^-beta. torch's local_response_norm computes the same.
WITHIN_CHANNEL: Caffe builds it from other layers: AVE pooling of x^2 over a size x size window
(pad (size-1)/2, so the divisor is always size^2), then Power with shift 1:
y = x * (1 + alpha * mean(x^2))^-beta. `k` is ignored there.

MACs: one per element of each normalisation window (count * size across channels,
count * size^2 within a channel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocaffe.layers._spatial import AVE, Window, pool2d_reference, pool_nodes
from protocaffe.layers.base import LayerDef, Shape, ShapeContext, count, register, shape_str
from protocaffe.lazy import F, np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext

WITHIN_CHANNEL = 1  # LRNParameter.NormRegion; ACROSS_CHANNELS is 0


def _within_window(size: int) -> Window:
    pad = (size - 1) // 2
    return Window((size, size), (1, 1), (pad, pad), (1, 1), {})


@register
class LRN(LayerDef):
    type = "LRN"
    param_field = "lrn_param"
    coord_identity = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        bottom = ctx.bottoms[0]
        size = ctx.param.local_size
        if size <= 0 or size % 2 == 0:
            ctx.fail(
                f"local_size must be a positive odd number, got {size}",
                "local_size",
                hint=f"Caffe supports only odd sizes; try {size + 1 if size > 0 else 5}",
            )
        if len(bottom) != 4:
            ctx.fail(
                f"input must have 4 axes (N, C, H, W), but bottom '{ctx.layer.bottoms[0]}' "
                f"is {shape_str(bottom)}"
            )
        return [bottom]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        size = ctx.param.local_size
        window = size * size if ctx.param.norm_region == WITHIN_CHANNEL else size
        return count(tops[0]) * window

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        x = ctx.inputs[0]
        if p.norm_region != WITHIN_CHANNEL:
            return [ctx.call(F.local_response_norm, x, p.local_size, p.alpha, p.beta, p.k)]
        square = ctx.call(torch.mul, x, x)
        size = ctx.bottom_shapes[0][2:]
        (mean,) = pool_nodes(ctx, square, AVE, _within_window(p.local_size), size, size, True)
        scale = ctx.call(
            torch.pow, ctx.call(torch.add, ctx.call(torch.mul, mean, p.alpha), 1.0), -p.beta
        )
        return [ctx.call(torch.mul, x, scale)]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """CrossChannelForward_cpu's running window sum / WithinChannelForward's sub-layers."""
        p = ctx.param
        x = inputs[0].astype(np.float32)
        size, alpha, beta = p.local_size, np.float32(p.alpha), np.float32(p.beta)
        if p.norm_region == WITHIN_CHANNEL:
            mean, _ = pool2d_reference(x * x, AVE, _within_window(size), x.shape[2:])
            return [x * np.power(np.float32(1) + alpha * mean, -beta)]
        channels = x.shape[1]
        pre = (size - 1) // 2
        padded = np.zeros((x.shape[0], channels + size - 1, *x.shape[2:]), np.float32)
        padded[:, pre : pre + channels] = x * x
        step = alpha / np.float32(size)
        scale = np.empty_like(x)
        running = np.float32(p.k) + step * padded[:, 0]
        for c in range(1, size):
            running = running + step * padded[:, c]
        scale[:, 0] = running
        for c in range(1, channels):
            running = running + step * padded[:, c + size - 1] - step * padded[:, c - 1]
            scale[:, c] = running
        return [np.power(scale, -beta) * x]
