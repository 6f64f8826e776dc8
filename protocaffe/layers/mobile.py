"""Layers of the MobileNet, ShuffleNet and SENet Caffe forks.

- `ReLU6` (MobileNet-YOLO and others): min(max(x, 0) + negative_slope * min(x, 0), 6). The
  slope comes from `relu6_param` (a ReLUParameter in the forks that declare it) or, in the
  forks that have no such field, from `relu_param`.
- `DepthwiseConvolution` (yonghenglh6) and `ConvolutionDepthwise` (several forks): a
  Convolution under another name; the fork's CPU forward is BaseConvolution's grouped GEMM, so
  the depthwise-ness is the `group` the prototxt gives.
- `ShuffleChannel` (ShuffleNet): with C = group * k, output channel j * group + i is input
  channel i * k + j (reshape to (group, k), transpose, flatten).
- `Axpy` (SENet): top = bottom0 * bottom1 + bottom2, with bottom0 an N x C x 1 x 1 per-channel
  factor for the N x C x H x W bottom1.
MACs follow the convention in activations.py: Axpy multiplies by a computed tensor (one MAC per
output element); ReLU6 and ShuffleChannel count 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocaffe.layers.activations import Pointwise
from protocaffe.layers.base import (
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    count,
    has_field,
    register,
    shape_str,
)
from protocaffe.layers.conv import _BaseConvolution
from protocaffe.lazy import np, torch
from protocaffe.proto.schema import Field, declare_message, extend

if TYPE_CHECKING:
    from torch import fx

declare_message(
    "ShuffleChannelParameter", Field("group", 1, "uint32", default=1), param="shuffle_channel_param"
)
extend("LayerParameter", Field("relu6_param", 211, "ReLUParameter"), dialects=("yolo",))

RELU6_CAP = 6.0


def relu6_slope(layer_proto: Any) -> float:
    """negative_slope from relu6_param when the file sets it, else from relu_param."""
    if has_field(layer_proto, "relu6_param"):
        return layer_proto.relu6_param.negative_slope
    return layer_proto.relu_param.negative_slope


def relu6(x: Any, slope: float) -> Any:
    """The forks' ReLU6: a leaky ReLU capped at 6."""
    y = torch.clamp(x, min=0) if slope == 0 else torch.nn.functional.leaky_relu(x, slope)
    return torch.clamp(y, max=RELU6_CAP)


@register
class ReLU6(Pointwise):
    type = "ReLU6"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        return ctx.call(relu6, x, relu6_slope(ctx.layer.proto))

    def compute(self, ctx, x, blobs):
        slope = relu6_slope(ctx.layer.proto)
        return np.minimum(np.maximum(x, 0) + slope * np.minimum(x, 0), RELU6_CAP)


@register
class DepthwiseConvolution(_BaseConvolution):
    type = "DepthwiseConvolution"


@register
class ConvolutionDepthwise(_BaseConvolution):
    type = "ConvolutionDepthwise"


def shuffle_channels(x: Any, group: int) -> Any:
    """ShuffleNet's channel shuffle on an N x C x ... tensor (torch or numpy)."""
    n, c, *rest = x.shape
    y = x.reshape(n, group, c // group, *rest).swapaxes(1, 2)
    return y.reshape(n, c, *rest)


def channel_shuffle(x: Any, group: int) -> Any:
    return shuffle_channels(x, group).contiguous()


@register
class ShuffleChannel(LayerDef):
    type = "ShuffleChannel"
    param_field = "shuffle_channel_param"
    coord_identity = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        x = ctx.bottoms[0]
        group = ctx.param.group
        if len(x) < 2:
            ctx.fail(f"bottom '{ctx.layer.bottoms[0]}' of shape {shape_str(x)} has no channels")
        if group <= 0:
            ctx.fail(f"group must be positive, got {group}", "group")
        if x[1] % group:
            ctx.fail(
                f"group {group} does not divide the {x[1]} channels of bottom "
                f"'{ctx.layer.bottoms[0]}' ({shape_str(x)})",
                "group",
            )
        return [x]

    def explain(self, ctx: ShapeContext) -> list[str]:
        g, c = ctx.param.group, ctx.bottoms[0][1]
        return [f"channels viewed as {g} x {c // g}, transposed to {c // g} x {g}"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return [ctx.call(channel_shuffle, ctx.inputs[0], ctx.param.group)]

    def reference(self, ctx, inputs, blobs):
        """ShuffleChannelLayer::Forward_cpu: copy plane i * k + j to j * group + i."""
        x, g = inputs[0], ctx.param.group
        k = x.shape[1] // g
        y = np.empty_like(x)
        for i in range(g):
            for j in range(k):
                y[:, j * g + i] = x[:, i * k + j]
        return [y]


@register
class Axpy(LayerDef):
    """top = a * x + y: a (bottom 0) is N x C x 1 x 1, x and y (bottoms 1, 2) are N x C x H x W."""

    type = "Axpy"
    bottoms = (3, 3)
    coord_identity = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        a, x, y = ctx.bottoms
        names = ctx.layer.bottoms
        if x != y:
            ctx.fail(
                f"bottoms '{names[1]}' ({shape_str(x)}) and '{names[2]}' ({shape_str(y)}) "
                "must have the same shape",
                "bottom",
                2,
            )
        if len(x) < 2 or len(a) < 2 or a[:2] != x[:2] or count(a[2:]) != 1:
            ctx.fail(
                f"bottom '{names[0]}' ({shape_str(a)}) must be N x C x 1 x 1 for "
                f"'{names[1]}' ({shape_str(x)})",
                "bottom",
                0,
            )
        return [x]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(tops[0])

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        a, x, y = ctx.inputs
        spatial = len(ctx.bottom_shapes[1]) - 2
        a = ctx.call(torch.reshape, a, (*ctx.bottom_shapes[1][:2], *(1,) * spatial))
        return [ctx.call(torch.addcmul, y, a, x)]

    def reference(self, ctx, inputs, blobs):
        """AxpyLayer::Forward_cpu: per (n, c), top = scale * x + y over the plane."""
        a, x, y = (t.astype(np.float64) for t in inputs)
        n, c = x.shape[:2]
        top = np.empty_like(x)
        for i in range(n):
            for j in range(c):
                top[i, j] = a.reshape(n, c)[i, j] * x[i, j] + y[i, j]
        return [top.astype(inputs[1].dtype)]
