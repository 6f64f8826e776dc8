"""Pooling (MAX, AVE, STOCHASTIC), with Caffe's ceil rounding and clip rule.

MACs: pooling does comparisons or additions but no multiply-accumulates, so it counts 0,
like Crop and Im2col; only Convolution, Deconvolution, InnerProduct and LRN count MACs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocaffe.layers._spatial import (
    MAX,
    POOL_NAMES,
    STOCHASTIC,
    Window,
    pool2d_reference,
    pool_nodes,
    pool_out,
    pool_window,
)
from protocaffe.layers.base import (
    Affine,
    LayerDef,
    Shape,
    ShapeContext,
    has_field,
    register,
    shape_str,
)
from protocaffe.lazy import np
from protocaffe.proto.schema import Field, extend

if TYPE_CHECKING:
    from typing import Any

    from torch import fx

    from protocaffe.layers.base import LowerContext

CEIL = 0  # PoolingParameter.RoundMode.CEIL; FLOOR is 1

# OpenCV's (and BVLC PR #3057's) spelling of round_mode: a bool at the same field number whose
# wire values are inverted (ceil_mode: true is 1, round_mode: CEIL is 0). Text reads names.
extend("PoolingParameter", Field("ceil_mode", 13, "bool", default=True), dialects=("opencv",))


def ceil_rounding(param: Any) -> bool:
    """Whether the output size rounds up: ceil_mode when the file sets it, else round_mode."""
    if has_field(param, "ceil_mode"):
        return bool(param.ceil_mode)
    return param.round_mode == CEIL


@register
class Pooling(LayerDef):
    type = "Pooling"
    param_field = "pooling_param"
    tops = (1, 2)  # MAX may write its argmax mask to a second top

    def geometry(self, ctx: ShapeContext) -> tuple[Window, list[int]]:
        bottom = ctx.bottoms[0]
        if len(bottom) != 4:
            ctx.fail(
                f"input must have 4 axes (N, C, H, W), but bottom '{ctx.layer.bottoms[0]}' "
                f"is {shape_str(bottom)}"
            )
        p = ctx.param
        window = pool_window(p, bottom[2:], ctx.fail)
        both = has_field(p, "ceil_mode") and has_field(p, "round_mode")
        if both and p.ceil_mode != (p.round_mode == CEIL):
            ctx.fail(
                f"ceil_mode: {str(p.ceil_mode).lower()} contradicts round_mode: "
                f"{'CEIL' if p.round_mode == CEIL else 'FLOOR'}",
                "ceil_mode",
                hint="ceil_mode (OpenCV) and round_mode (BVLC) name one setting; keep one",
            )
        ceil = ceil_rounding(p)
        clip = any(window.pad)  # Caffe: `if (pad_h_ || pad_w_)` clips both axes
        out = [
            pool_out(n, k, s, q, ceil, clip)
            for n, k, s, q in zip(bottom[2:], window.kernel, window.stride, window.pad, strict=True)
        ]
        return window, out

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        window, out = self.geometry(ctx)
        p = ctx.param
        bottom = ctx.bottoms[0]
        for i, o in enumerate(out):
            if o <= 0:
                n, k, q = bottom[2 + i], window.kernel[i], window.pad[i]
                ctx.fail(
                    f"kernel {k} is larger than the padded input {n + 2 * q} "
                    f"(input {n} + 2*{q} pad) of bottom '{ctx.layer.bottoms[0]}' "
                    f"({shape_str(bottom)}): no output on the {('height', 'width')[i]} axis",
                    *window.fields["kernel"][i],
                )
        if len(ctx.layer.tops) == 2 and p.pool != MAX:
            ctx.fail(
                f"only MAX pooling has a second (mask) top, not {POOL_NAMES.get(p.pool)}", "top"
            )
        top = (bottom[0], bottom[1], *out)
        return [top] * len(ctx.layer.tops)

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        return self.geometry(ctx)[0].affine()

    def explain(self, ctx: ShapeContext) -> list[str]:
        window, out = self.geometry(ctx)
        ceil = ceil_rounding(ctx.param)
        lines = []
        for i, name in enumerate(("height", "width")):
            n, k, s, q = ctx.bottoms[0][2 + i], window.kernel[i], window.stride[i], window.pad[i]
            span = n + 2 * q - k
            rounded = (-(-span // s) if ceil else span // s) + 1
            line = (
                f"{name}: {'ceil' if ceil else 'floor'}(({n} + 2*{q} - {k}) / {s}) + 1 = {rounded}"
            )
            if rounded != out[i]:
                line += f", clipped to {out[i]}: the last window would start in the padding"
            lines.append(line)
        return lines

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        size = ctx.bottom_shapes[0][2:]
        window = pool_window(p, size)
        out = ctx.top_shapes[0][2:]
        return pool_nodes(
            ctx,
            ctx.inputs[0],
            p.pool,
            window,
            size,
            out,
            ceil=ceil_rounding(p),
            return_mask=len(ctx.top_shapes) == 2,
        )

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Forward_cpu's loops; STOCHASTIC follows the GPU test-time kernel (CPU has none)."""
        window, out = self.geometry(ctx)
        method = ctx.param.pool
        if method == STOCHASTIC and ctx.phase == 0:
            raise NotImplementedError("training-time stochastic pooling samples at random")
        top, mask = pool2d_reference(inputs[0].astype(np.float32), method, window, out)
        return [top, mask][: len(ctx.layer.tops)]
