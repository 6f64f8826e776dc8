"""Convolution and Deconvolution (BaseConvolutionLayer and its two subclasses).

Both read `convolution_param`. `axis` (default 1) is the channel axis; every axis after it is
spatial (N-D), every axis before it is batch. Several bottom/top pairs may share one set of
weights. Caffe's deconvolution is the backward pass of a convolution, so its weight is
[C_in, num_output/group, *k], the layout of torch's conv_transpose weight.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from protocaffe.layers._spatial import (
    Window,
    as_batch,
    check_window_fits,
    col2im_nd,
    conv_out,
    conv_window,
    deconv_out,
    explain_window,
    from_batch,
    im2col_nd,
    lower_fail,
    same_shape_bottoms,
)
from protocaffe.layers.base import (
    Affine,
    BlobSpec,
    LayerDef,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    count,
    register,
    shape_str,
)
from protocaffe.lazy import F, np

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext


class _BaseConvolution(LayerDef):
    param_field = "convolution_param"
    bottoms = (1, None)
    tops = (1, None)
    deconv = False

    def geometry(self, ctx: ShapeContext) -> tuple[int, Window]:
        """(channel axis, window), with Caffe's LayerSetUp checks as diagnostics (worked out
        once per context: shapes, blobs, macs and coord_map all ask)."""
        found = ctx.memo.get("conv_geometry")
        if found is None:
            axis = checked_axis(ctx, ctx.param.axis)
            nsp = len(ctx.bottoms[0]) - axis - 1
            found = ctx.memo["conv_geometry"] = (axis, conv_window(ctx.param, nsp, ctx.fail))
        return found

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        same_shape_bottoms(ctx)
        axis, window = self.geometry(ctx)
        p = ctx.param
        bottom = ctx.bottoms[0]
        if p.num_output <= 0:
            ctx.fail("num_output is required and must be positive", "num_output")
        if p.group <= 0:
            ctx.fail(f"group must be positive, got {p.group}", "group")
        channels = bottom[axis]
        if channels % p.group:
            ctx.fail(
                f"group {p.group} does not divide the {channels} input channels of bottom "
                f"'{ctx.layer.bottoms[0]}' ({shape_str(bottom)})",
                "group",
            )
        if p.num_output % p.group:
            ctx.fail(f"group {p.group} does not divide num_output {p.num_output}", "group")
        spatial = bottom[axis + 1 :]
        if self.deconv:
            out = [
                deconv_out(n, e, s, q)
                for n, e, s, q in zip(
                    spatial, window.extent, window.stride, window.pad, strict=True
                )
            ]
            for i, o in enumerate(out):
                if o <= 0:
                    ctx.fail(
                        f"output size {o} on spatial axis {i} is not positive: "
                        f"{window.stride[i]}*({spatial[i]}-1) + {window.extent[i]} "
                        f"- 2*{window.pad[i]}",
                        *window.fields["pad"][i],
                    )
        else:
            check_window_fits(ctx, window, spatial)
            out = [
                conv_out(n, e, s, q)
                for n, e, s, q in zip(
                    spatial, window.extent, window.stride, window.pad, strict=True
                )
            ]
        top = (*bottom[:axis], p.num_output, *out)
        return [top] * len(ctx.bottoms)

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        axis, window = self.geometry(ctx)
        p = ctx.param
        channels = ctx.bottoms[0][axis]
        if self.deconv:
            weight = (channels, p.num_output // p.group, *window.kernel)
        else:
            weight = (p.num_output, channels // p.group, *window.kernel)
        specs = [BlobSpec("weight", weight, p.weight_filler)]
        if p.bias_term:
            specs.append(BlobSpec("bias", (p.num_output,), p.bias_filler))
        return specs

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        axis, window = self.geometry(ctx)
        p = ctx.param
        bottom = ctx.bottoms[0]
        per_image = (
            bottom[axis] * (p.num_output // p.group) * math.prod(window.kernel)
            if self.deconv
            else p.num_output * (bottom[axis] // p.group) * math.prod(window.kernel)
        )
        # Convolution: one MAC per weight per output position; deconvolution: per input position.
        positions = count(bottom[axis + 1 :]) if self.deconv else count(tops[0][axis + 1 :])
        return count(bottom[:axis]) * per_image * positions * len(tops)

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        return self.geometry(ctx)[1].affine(deconv=self.deconv)

    def explain(self, ctx: ShapeContext) -> list[str]:
        axis, window = self.geometry(ctx)
        return explain_window(window, ctx.bottoms[0][axis + 1 :], self.deconv)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        axis = canonical_axis(p.axis, len(ctx.bottom_shapes[0]))
        nsp = len(ctx.bottom_shapes[0]) - axis - 1
        window = conv_window(p, nsp)
        if not 1 <= nsp <= 3:
            lower_fail(ctx, f"{nsp} spatial axes: the PyTorch lowering handles 1 to 3")
        if self.deconv:
            fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nsp - 1]
        else:
            fn = (F.conv1d, F.conv2d, F.conv3d)[nsp - 1]
        weight = ctx.blob("weight")
        bias = ctx.blob("bias") if p.bias_term else None
        stride = window.stride
        if not self.deconv:
            # A stride past the padded input (2^31 from a hostile file) leaves one window per
            # axis, as the smallest such stride does; PyTorch's 32-bit indexing crashes on it.
            spatial = ctx.bottom_shapes[0][axis + 1 :]
            stride = tuple(
                min(stride[i], max(1, spatial[i] + 2 * window.pad[i] - window.extent[i] + 1))
                for i in range(nsp)
            )
        kwargs = {
            "stride": stride,
            "padding": window.pad,
            "dilation": window.dilation,
            "groups": p.group,
        }
        tops = []
        for x, shape, top in zip(ctx.inputs, ctx.bottom_shapes, ctx.top_shapes, strict=True):
            y = ctx.call(fn, as_batch(ctx, x, shape, axis), weight, bias, **kwargs)
            tops.append(from_batch(ctx, y, top, axis))
        return tops

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Caffe's forward_cpu_gemm (im2col + one GEMM per group) / the deconv's col2im path."""
        axis, window = self.geometry(ctx)
        p = ctx.param
        weight, group = blobs[0].astype(np.float32), p.group
        tops = []
        for x, top in zip(inputs, self.shapes(ctx), strict=True):
            images = x.reshape(-1, *x.shape[axis:]).astype(np.float32)
            out_spatial = top[axis + 1 :]
            outs = []
            for image in images:
                if self.deconv:
                    outs.append(self._deconv_image(image, weight, window, group, out_spatial))
                else:
                    outs.append(self._conv_image(image, weight, window, group, out_spatial))
            y = np.stack(outs)
            if p.bias_term:
                y += blobs[1].reshape(-1, *([1] * len(out_spatial))).astype(np.float32)
            tops.append(y.reshape(top))
        return tops

    @staticmethod
    def _conv_image(
        image: np.ndarray, weight: np.ndarray, window: Window, group: int, out_spatial: Shape
    ) -> np.ndarray:
        cols = im2col_nd(image, window, out_spatial).reshape(group, -1, count(out_spatial))
        w = weight.reshape(group, weight.shape[0] // group, -1)
        return np.concatenate([w[g] @ cols[g] for g in range(group)]).reshape(-1, *out_spatial)

    @staticmethod
    def _deconv_image(
        image: np.ndarray, weight: np.ndarray, window: Window, group: int, out_spatial: Shape
    ) -> np.ndarray:
        channels_in = image.shape[0]
        x = image.reshape(group, channels_in // group, -1)
        w = weight.reshape(group, channels_in // group, -1)
        cols = np.concatenate([w[g].T @ x[g] for g in range(group)])
        cols = cols.reshape(-1, *image.shape[1:])
        out_channels = cols.shape[0] // math.prod(window.kernel)
        return col2im_nd(cols, window, out_channels, out_spatial).astype(np.float32)


@register
class Convolution(_BaseConvolution):
    type = "Convolution"


@register
class Deconvolution(_BaseConvolution):
    type = "Deconvolution"
    deconv = True
