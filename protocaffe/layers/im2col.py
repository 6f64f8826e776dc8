"""Im2col: Caffe's im2col as a layer, (N, C, *spatial) -> (N, C*prod(k), *out).

It reads `convolution_param` (kernel, pad, stride, dilation, axis) like Convolution; the top's
channel c*prod(k) + j holds channel c at kernel offset j (row-major over the kernel axes),
which is F.unfold's order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from protocaffe.layers._spatial import (
    Window,
    as_batch,
    check_window_fits,
    conv_out,
    conv_window,
    explain_window,
    from_batch,
    im2col_nd,
    lower_fail,
)
from protocaffe.layers.base import (
    Affine,
    LayerDef,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    register,
    shape_str,
)
from protocaffe.lazy import F, np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext


@register
class Im2col(LayerDef):
    type = "Im2col"
    param_field = "convolution_param"

    def geometry(self, ctx: ShapeContext) -> tuple[int, Window]:
        axis = checked_axis(ctx, ctx.param.axis)
        nsp = len(ctx.bottoms[0]) - axis - 1
        if nsp < 1:
            ctx.fail(
                f"needs at least one spatial axis after axis {axis}, but bottom "
                f"'{ctx.layer.bottoms[0]}' is {shape_str(ctx.bottoms[0])}",
                "axis",
            )
        return axis, conv_window(ctx.param, nsp, ctx.fail)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        axis, window = self.geometry(ctx)
        bottom = ctx.bottoms[0]
        spatial = bottom[axis + 1 :]
        check_window_fits(ctx, window, spatial)
        out = [
            conv_out(n, e, s, p)
            for n, e, s, p in zip(spatial, window.extent, window.stride, window.pad, strict=True)
        ]
        return [(*bottom[:axis], bottom[axis] * math.prod(window.kernel), *out)]

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        return self.geometry(ctx)[1].affine()

    def explain(self, ctx: ShapeContext) -> list[str]:
        axis, window = self.geometry(ctx)
        channels = ctx.bottoms[0][axis]
        taps = "*".join(str(k) for k in window.kernel)
        lines = [f"channels: {channels} * {taps} = {channels * math.prod(window.kernel)}"]
        return lines + explain_window(window, ctx.bottoms[0][axis + 1 :])

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        bottom, top = ctx.bottom_shapes[0], ctx.top_shapes[0]
        axis = canonical_axis(ctx.param.axis, len(bottom))
        nsp = len(bottom) - axis - 1
        if nsp != 2:
            lower_fail(ctx, f"{nsp} spatial axes: the PyTorch lowering handles 2 (F.unfold)")
        w = conv_window(ctx.param, nsp)
        x = as_batch(ctx, ctx.inputs[0], bottom, axis)
        cols = ctx.call(F.unfold, x, w.kernel, w.dilation, w.pad, w.stride)
        y = ctx.call(torch.reshape, cols, (-1, *top[axis:]))
        return [from_batch(ctx, y, top, axis)]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        axis, window = self.geometry(ctx)
        (top,) = self.shapes(ctx)
        images = inputs[0].astype(np.float32).reshape(-1, *inputs[0].shape[axis:])
        cols = [im2col_nd(image, window, top[axis + 1 :]) for image in images]
        return [np.stack(cols).reshape(top)]
