"""SPP: spatial pyramid pooling (He et al.), as Caffe's SPPLayer composes it.

Level l (0 <= l < pyramid_height) pools with 2^l bins per axis: kernel = stride =
ceil(H / 2^l) and pad = (kernel * 2^l - H + 1) // 2, through the ordinary Pooling rules (ceil
rounding, clip rule, pad < kernel). With one level the top is that pooling's N x C x h x w
output; otherwise each level is flattened and they are concatenated: N x sum(C * h_l * w_l).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocaffe.layers._spatial import (
    POOL_NAMES,
    STOCHASTIC,
    Window,
    pool2d_reference,
    pool_nodes,
    pool_out,
)
from protocaffe.layers.base import LayerDef, Shape, ShapeContext, register, shape_str
from protocaffe.lazy import np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext


def spp_levels(height: int, size: tuple[int, int]) -> list[tuple[Window, tuple[int, int]]]:
    """(window, output size) of each pyramid level (SPPLayer::GetPoolingParam)."""
    levels = []
    for level in range(height):
        bins = 2**level
        kernel = tuple(-(-n // bins) for n in size)
        pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, size, strict=True))
        window = Window(kernel, kernel, pad, (1, 1), {})
        out = tuple(pool_out(n, k, k, p) for n, k, p in zip(size, kernel, pad, strict=True))
        levels.append((window, out))
    return levels


@register
class SPP(LayerDef):
    type = "SPP"
    param_field = "spp_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        bottom = ctx.bottoms[0]
        p = ctx.param
        if len(bottom) != 4:
            ctx.fail(
                f"input must have 4 axes (N, C, H, W), but bottom '{ctx.layer.bottoms[0]}' "
                f"is {shape_str(bottom)}"
            )
        if p.pyramid_height <= 0:
            ctx.fail("pyramid_height is required and must be positive", "pyramid_height")
        n, c, *size = bottom
        levels = spp_levels(p.pyramid_height, (size[0], size[1]))
        for level, (window, _) in enumerate(levels):
            if any(window.pad) and p.pool == STOCHASTIC:
                ctx.fail(
                    f"level {level} needs padding {window.pad} for the {size[0]}x{size[1]} "
                    f"input, which {POOL_NAMES[p.pool]} pooling does not support",
                    "pyramid_height",
                )
            if any(q >= k for q, k in zip(window.pad, window.kernel, strict=True)):
                ctx.fail(
                    f"level {level} ({2**level} bins) needs pad {window.pad} >= kernel "
                    f"{window.kernel} for the {size[0]}x{size[1]} input of "
                    f"'{ctx.layer.bottoms[0]}', which Pooling rejects",
                    "pyramid_height",
                    hint="use fewer pyramid levels or a larger input",
                )
        if p.pyramid_height == 1:
            return [(n, c, *levels[0][1])]
        return [(n, sum(c * h * w for _, (h, w) in levels))]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        size = ctx.bottom_shapes[0][2:]
        flat = []
        for window, out in spp_levels(p.pyramid_height, (size[0], size[1])):
            (y,) = pool_nodes(ctx, ctx.inputs[0], p.pool, window, size, out, ceil=True)
            flat.append(y if p.pyramid_height == 1 else ctx.call(torch.flatten, y, 1))
        return flat if p.pyramid_height == 1 else [ctx.call(torch.cat, flat, 1)]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        p = ctx.param
        x = inputs[0].astype(np.float32)
        pooled = [
            pool2d_reference(x, p.pool, window, out)[0]
            for window, out in spp_levels(p.pyramid_height, x.shape[2:])
        ]
        if p.pyramid_height == 1:
            return pooled
        return [np.concatenate([y.reshape(x.shape[0], -1) for y in pooled], axis=1)]
