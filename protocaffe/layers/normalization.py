"""Normalisation and per-channel affine layers: BatchNorm, Scale, Bias, MVN.

Caffe splits a PyTorch BatchNorm2d in two: `BatchNorm` only standardises (its blobs are the
running mean and variance, both multiplied by a moving-average factor stored as a third blob),
and a following `Scale` layer with `bias_term: true` holds gamma and beta.
MACs follow the convention in activations.py.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from protocaffe.layers.activations import Pointwise, require_channel_axis
from protocaffe.layers.base import (
    BlobSpec,
    LowerContext,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    count,
    has_field,
    register,
    shape_str,
)
from protocaffe.lazy import F, np, torch
from protocaffe.proto import caffe_pb2
from protocaffe.proto.schema import Field, extend

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.ir.graph import Layer


def _stat_axes(ndim: int) -> tuple[int, ...]:
    """BatchNorm statistics run over every axis except the channels (axis 1)."""
    return (0, *range(2, ndim))


def uses_global_stats(param: Any, phase: int) -> bool:
    """BatchNorm's default: stored statistics at TEST, batch statistics at TRAIN."""
    if param.HasField("use_global_stats"):
        return param.use_global_stats
    return phase == caffe_pb2.TEST


def caffe_batch_norm_train(
    x: Any,
    mean_blob: Any,
    var_blob: Any,
    factor_blob: Any,
    fraction: float,
    eps: float,
    weight: Any = None,
    bias: Any = None,
) -> Any:
    """BatchNorm with batch statistics, updating the stored blobs the way Caffe does.

    Caffe's blobs hold sums, not averages: S <- fraction * S + batch_stat, f <- fraction * f + 1
    (the stored mean is S_mean / f). The variance gets the m/(m-1) unbiasing factor, where m is
    the count per channel. This is not torch's momentum update, so F.batch_norm cannot do it.
    `weight`/`bias` are a following Scale layer's operands (`fuse_scale_into_batch_norm`):
    y * weight + bias, in torch's fused kernel when they are per-channel.
    """
    per_channel = (x.shape[1],) + (1,) * (x.dim() - 2)
    fused = weight is not None and all(
        t is None or tuple(t.shape) == per_channel for t in (weight, bias)
    )
    # torch's fused training-mode batch_norm normalises with the same batch mean and biased
    # variance, and its backward is Caffe's: (dy - mean(dy) - mean(dy*y)*y) / sqrt(var+eps).
    # With momentum 1 its running buffers receive exactly this batch's mean and its variance
    # times m/(m-1), which Caffe adds to its sums.
    if x.numel() // x.shape[1] > 1:
        mean, var = torch.zeros_like(mean_blob), torch.zeros_like(var_blob)
        w, b = (t.reshape(-1) if fused and t is not None else None for t in (weight, bias))
        y = F.batch_norm(x, mean, var, w, b, training=True, momentum=1.0, eps=eps)
    else:  # one value per channel: torch refuses it; Caffe's variance is 0 (factor 1)
        fused = False
        mean = x.detach().mean(dim=_stat_axes(x.dim()))
        var = torch.zeros_like(var_blob)
        y = (x - x.mean(dim=_stat_axes(x.dim()), keepdim=True)) / math.sqrt(eps)
    with torch.no_grad():
        factor_blob.mul_(fraction).add_(1)
        mean_blob.mul_(fraction).add_(mean)
        var_blob.mul_(fraction).add_(var)
    if weight is not None and not fused:
        y = y * weight if bias is None else torch.addcmul(bias, y, weight)
    return y


def fuse_scale_into_batch_norm(graph: fx.Graph) -> None:
    """A Scale (or any multiply/multiply-add) that alone consumes a batch-statistics BatchNorm
    becomes that BatchNorm's affine operands: one fused kernel forward and backward (as
    PyTorch's affine BatchNorm), the same arithmetic as the two layers. Nothing else changes:
    a BatchNorm output used elsewhere (or returned) keeps the two layers apart."""
    from torch import fx

    for node in list(graph.nodes):
        if node.target is not caffe_batch_norm_train or len(node.args) != 6:
            continue
        if len(node.users) != 1:
            continue
        (user,) = node.users
        if user.kwargs:
            continue
        if user.target is torch.addcmul and len(user.args) == 3 and user.args[1] is node:
            bias, weight = user.args[0], user.args[2]
        elif user.target is torch.mul and len(user.args) == 2 and user.args[0] is node:
            bias, weight = None, user.args[1]
        else:
            continue
        if not all(isinstance(t, fx.Node) for t in (weight, bias) if t is not None):
            continue
        with graph.inserting_before(user):
            fused = graph.call_function(caffe_batch_norm_train, (*node.args, weight, bias))
        fused.meta.update(user.meta)
        user.replace_all_uses_with(fused)
        name = user.name
        graph.erase_node(user)
        graph.erase_node(node)
        fused._rename(name)  # the Scale's top names it, so `.code` reads like the net


def nvidia_scale_bias(param: Any) -> bool:
    """NVIDIA Caffe's BatchNorm with its own scale and bias blobs (5 blobs in all)."""
    return bool(param.scale_bias) or any(
        has_field(param, f) for f in ("scale_filler", "bias_filler")
    )


def nvidia_batch_norm(x: Any, mean: Any, var: Any, scale: Any, bias: Any, eps: float) -> Any:
    """NVIDIA Caffe's TEST forward: the stored statistics as they are (no factor blob)."""
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, max(eps, NVIDIA_MIN_EPS))


NVIDIA_MIN_EPS = 1e-5  # NVIDIA Caffe raises eps to cuDNN's minimum

extend(
    "BatchNormParameter",
    Field("scale_filler", 5, "FillerParameter"),
    Field("bias_filler", 6, "FillerParameter"),
    Field("scale_bias", 7, "bool", default=False),
    dialects=("nvidia", "opencv"),
)


@register
class BatchNorm(Pointwise):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1).

    Blobs: mean*f, variance*f and [f]; the stored statistics are blob / f, and f == 0 means
    "no statistics yet", which Caffe turns into a zero mean and variance.

    NVIDIA Caffe's `scale_bias: true` (or a scale_filler/bias_filler) adds blobs 3 and 4, a
    per-channel scale and bias applied after normalising; that fork (and OpenCV, for 5 blobs)
    reads the statistics without the factor blob and raises eps to at least 1e-5.
    """

    type = "BatchNorm"
    param_field = "batch_norm_param"

    def mixes_items(self, layer: Layer, phase: int) -> bool:
        return not uses_global_stats(layer.proto.batch_norm_param, phase)  # batch statistics

    def check(self, ctx: ShapeContext) -> None:
        require_channel_axis(ctx)
        eps = ctx.param.eps
        if not eps >= 0:  # NaN too
            # Caffe has no CHECK here, but divides by sqrt(var + eps): NaN wherever a
            # channel's variance is below -eps (and torch's batch_norm refuses it).
            ctx.fail(
                f"eps must not be negative, got {eps:g}",
                "eps",
                hint="BatchNorm divides by sqrt(variance + eps); Caffe's default is 1e-5",
            )
        # Caffe masks the statistics from the solver and refuses a param spec that would not.
        for i, spec in enumerate(ctx.layer.proto.param[:3]):
            if spec.lr_mult != 0:
                ctx.fail(
                    f"param {i} has lr_mult {spec.lr_mult:g}; BatchNorm statistics are not "
                    "learnable, Caffe requires lr_mult: 0 (or no param block)",
                    "param",
                    i,
                    "lr_mult",
                    hint="the learnable gamma/beta live in the following Scale layer",
                )

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        channels = ctx.bottoms[0][1]
        specs = [
            BlobSpec("mean", (channels,), learnable=False),
            BlobSpec("variance", (channels,), learnable=False),
            BlobSpec("scale_factor", (1,), learnable=False),
        ]
        p = ctx.param
        if nvidia_scale_bias(p):
            one = caffe_pb2.FillerParameter(type="constant", value=1.0)
            scale = p.scale_filler if has_field(p, "scale_filler") else one
            specs += [BlobSpec("scale", (channels,), scale), BlobSpec("bias", (channels,))]
            if has_field(p, "bias_filler"):
                specs[-1] = BlobSpec("bias", (channels,), p.bias_filler)
        return specs

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(tops[0])

    def blob_count_hint(self, count: int) -> str | None:
        if count == 5:
            return "5 blobs are NVIDIA Caffe's BatchNorm with scale and bias: set scale_bias: true"
        return None

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        p = ctx.param
        mean, var, factor = (ctx.blob(n) for n in ("mean", "variance", "scale_factor"))
        if nvidia_scale_bias(p):
            scale, bias = ctx.blob("scale"), ctx.blob("bias")
            if uses_global_stats(p, ctx.phase):
                return ctx.call(nvidia_batch_norm, x, mean, var, scale, bias, p.eps)
            args = (x, mean, var, factor, p.moving_average_fraction, p.eps)
            y = ctx.call(caffe_batch_norm_train, *args)
            shape = (1, -1) + (1,) * (len(ctx.bottom_shapes[0]) - 2)
            s = ctx.call(torch.reshape, scale, shape)
            return ctx.call(torch.addcmul, ctx.call(torch.reshape, bias, shape), y, s)
        if not uses_global_stats(p, ctx.phase):
            args = (x, mean, var, factor, p.moving_average_fraction, p.eps)
            return ctx.call(caffe_batch_norm_train, *args)
        is_zero = ctx.call(torch.eq, factor, 0)
        inv = ctx.call(torch.where, is_zero, 0.0, ctx.call(torch.reciprocal, factor))
        mean = ctx.call(torch.mul, mean, inv)
        var = ctx.call(torch.mul, var, inv)
        return ctx.call(F.batch_norm, x, mean, var, None, None, False, 0.0, p.eps)

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Caffe's forward. With batch statistics it also updates `blobs` in place, as Caffe
        updates its own."""
        p = ctx.param
        x = inputs[0].astype(np.float64)
        axes = _stat_axes(x.ndim)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if uses_global_stats(p, ctx.phase) and nvidia_scale_bias(p):
            mean, var = (b.reshape(shape) for b in blobs[:2])
            y = (x - mean) / np.sqrt(var + max(p.eps, NVIDIA_MIN_EPS))
            y = y * blobs[3].reshape(shape) + blobs[4].reshape(shape)
            return [y.astype(inputs[0].dtype)]
        if uses_global_stats(p, ctx.phase):
            f = float(blobs[2].reshape(-1)[0])
            s = 0.0 if f == 0 else 1.0 / f
            mean, var = blobs[0] * s, blobs[1] * s
        else:
            mean = x.mean(axis=axes)
            var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
            m = x.size // x.shape[1]
            maf = p.moving_average_fraction
            blobs[2][...] = blobs[2] * maf + 1
            blobs[0][...] = blobs[0] * maf + mean
            blobs[1][...] = blobs[1] * maf + var * (m / (m - 1) if m > 1 else 1.0)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + p.eps)
        if nvidia_scale_bias(p):
            y = y * blobs[3].reshape(shape) + blobs[4].reshape(shape)
        return [y.astype(inputs[0].dtype)]


def affine_operand(param: Any, bottoms: list[Shape]) -> tuple[int, Shape]:
    """Scale/Bias: (axis, shape) of the multiplier/addend applied to bottom[0].

    The operand is bottom[1] when given, else a learned blob of shape
    bottom[0][axis:axis+num_axes] (num_axes -1: to the end). A scalar operand ignores axis
    (Caffe then uses axis 0). Assumes shapes already checked by `operand_geometry`.
    """
    x = bottoms[0]
    start = canonical_axis(param.axis, len(x))
    if len(bottoms) > 1:
        shape = tuple(bottoms[1])
    else:
        shape = tuple(x[start:] if param.num_axes == -1 else x[start : start + param.num_axes])
    return (start if shape else 0), shape


def operand_geometry(ctx: ShapeContext) -> tuple[int, Shape]:
    """`affine_operand` with Caffe's checks, as errors on the offending field."""
    p, x = ctx.param, ctx.bottoms[0]
    names = ctx.layer.bottoms
    if len(ctx.bottoms) > 1:
        operand = ctx.bottoms[1]
        if not operand:
            return 0, ()
        axis = checked_axis(ctx, p.axis)
        if tuple(x[axis : axis + len(operand)]) != tuple(operand):
            ctx.fail(
                f"bottom '{names[1]}' of shape {shape_str(operand)} does not match bottom "
                f"'{names[0]}' {shape_str(x)} starting at axis {axis}",
                "bottom",
                1,
                hint=f"bottom[1] must equal a run of bottom[0]'s dims from axis {axis}: "
                f"{shape_str(x[axis:])} or a prefix of it",
            )
        return axis, tuple(operand)
    axis = checked_axis(ctx, p.axis)
    if p.num_axes < -1:
        ctx.fail(f"num_axes must be >= 0, or -1 for 'to the end'; got {p.num_axes}", "num_axes")
    if p.num_axes >= 0 and axis + p.num_axes > len(x):
        ctx.fail(
            f"axis {axis} + num_axes {p.num_axes} extends past bottom '{names[0]}' of shape "
            f"{shape_str(x)} ({len(x)} axes)",
            "num_axes",
        )
    return affine_operand(p, ctx.bottoms)


def broadcastable(ctx: LowerContext, node: fx.Node, axis: int, shape: Shape) -> fx.Node:
    """Reshape an operand of `shape` (applied from `axis`) so that torch broadcasts it."""
    trailing = len(ctx.bottom_shapes[0]) - axis - len(shape)
    if not shape or trailing == 0:
        return node
    return ctx.call(torch.reshape, node, (*shape, *(1,) * trailing))


def _np_broadcastable(a: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    return a if a.ndim == 0 else a.reshape(a.shape + (1,) * (ndim - axis - a.ndim))


class _Affine(Pointwise):
    bottoms = (1, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        operand_geometry(ctx)
        return [ctx.bottoms[0]]

    def explain(self, ctx: ShapeContext) -> list[str]:
        axis, shape = affine_operand(ctx.param, ctx.bottoms)
        source = f"bottom '{ctx.layer.bottoms[1]}'" if len(ctx.bottoms) > 1 else "a learned blob"
        if not shape:
            return [f"scalar operand from {source}"]
        axes = f"axis {axis}" if len(shape) == 1 else f"axes {axis}..{axis + len(shape) - 1}"
        return [f"operand {shape_str(shape)} from {source}, applied along {axes}"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return [self.emit_affine(ctx, *affine_operand(ctx.param, ctx.bottom_shapes))]

    def emit_affine(self, ctx: LowerContext, axis: int, shape: Shape) -> fx.Node:
        raise NotImplementedError


@register
class Scale(_Affine):
    """y = x * s (+ b), s broadcast from `axis`; s is bottom[1] or a learned blob."""

    type = "Scale"
    param_field = "scale_param"

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        p = ctx.param
        _, shape = operand_geometry(ctx)
        specs = []
        if len(ctx.bottoms) == 1:
            filler = (
                p.filler
                if ctx.has("filler")
                else caffe_pb2.FillerParameter(type="constant", value=1.0)
            )
            specs.append(BlobSpec("weight", shape, filler))
        if p.bias_term:
            specs.append(BlobSpec("bias", shape, p.bias_filler))
        return specs

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(tops[0])

    def emit_affine(self, ctx: LowerContext, axis: int, shape: Shape) -> fx.Node:
        x = ctx.inputs[0]
        s = ctx.inputs[1] if len(ctx.inputs) > 1 else ctx.blob("weight")
        s = broadcastable(ctx, s, axis, shape)
        if not ctx.param.bias_term:
            return ctx.call(torch.mul, x, s)
        b = broadcastable(ctx, ctx.blob("bias"), axis, shape)
        return ctx.call(torch.addcmul, b, x, s)

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        x = inputs[0].astype(np.float64)
        axis, _ = operand_geometry(ctx)
        operands = [*inputs[1:], *blobs]  # scale first (bottom[1] or blobs[0]), then bias
        y = x * _np_broadcastable(operands[0].astype(np.float64), x.ndim, axis)
        if ctx.param.bias_term:
            y = y + _np_broadcastable(operands[1].astype(np.float64), x.ndim, axis)
        return [y.astype(inputs[0].dtype)]


@register
class Bias(_Affine):
    """y = x + b, b broadcast from `axis`; b is bottom[1] or a learned blob."""

    type = "Bias"
    param_field = "bias_param"

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        if len(ctx.bottoms) > 1:
            return []
        _, shape = operand_geometry(ctx)
        return [BlobSpec("bias", shape, ctx.param.filler)]

    def emit_affine(self, ctx: LowerContext, axis: int, shape: Shape) -> fx.Node:
        b = ctx.inputs[1] if len(ctx.inputs) > 1 else ctx.blob("bias")
        return ctx.call(torch.add, ctx.inputs[0], broadcastable(ctx, b, axis, shape))

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        x = inputs[0].astype(np.float64)
        axis, _ = operand_geometry(ctx)
        b = (inputs[1] if len(inputs) > 1 else blobs[0]).astype(np.float64)
        return [(x + _np_broadcastable(b, x.ndim, axis)).astype(inputs[0].dtype)]


def legacy_4d(shape: Shape) -> Shape:
    """num x channels x height x width, missing trailing axes read as 1 (Blob::LegacyShape)."""
    return (*shape, *(1,) * (4 - len(shape)))


@register
class MVN(Pointwise):
    """Mean-variance normalisation per (n, c) over H x W, or per n over C x H x W.

    y = (x - mean) / (std + eps): Caffe adds eps to the standard deviation, not the variance.
    MVN works on the legacy 4-D view, so its top is always 4-D.
    """

    type = "MVN"
    param_field = "mvn_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        x = ctx.bottoms[0]
        if len(x) > 4:
            ctx.fail(
                f"bottom '{ctx.layer.bottoms[0]}' has {len(x)} axes ({shape_str(x)}); MVN "
                "reads the legacy num/channels/height/width view, at most 4 axes"
            )
        return [legacy_4d(x)]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(tops[0]) if ctx.param.normalize_variance else 0

    def explain(self, ctx: ShapeContext) -> list[str]:
        x = ctx.bottoms[0]
        over = (
            "C x H x W per sample" if ctx.param.across_channels else "H x W per (sample, channel)"
        )
        lines = [f"statistics over {over}"]
        if len(x) < 4:
            lines.append(f"{shape_str(x)} read as legacy 4-D {shape_str(legacy_4d(x))}")
        return lines

    @staticmethod
    def _axes(p: Any) -> tuple[int, ...]:
        return (1, 2, 3) if p.across_channels else (2, 3)

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        p = ctx.param
        axes = self._axes(p)
        if len(ctx.bottom_shapes[0]) != 4:
            x = ctx.call(torch.reshape, x, ctx.top_shapes[0])
        mean = ctx.call(torch.mean, x, dim=axes, keepdim=True)
        y = ctx.call(torch.sub, x, mean)
        if not p.normalize_variance:
            return y
        var = ctx.call(torch.mean, ctx.call(torch.square, y), dim=axes, keepdim=True)
        std = ctx.call(torch.add, ctx.call(torch.sqrt, var), p.eps)
        return ctx.call(torch.div, y, std)

    def compute(self, ctx, x, blobs):
        p = ctx.param
        axes = self._axes(p)
        x = x.reshape(legacy_4d(x.shape))
        y = x - x.mean(axis=axes, keepdims=True)
        if p.normalize_variance:
            y = y / (np.sqrt((y**2).mean(axis=axes, keepdims=True)) + p.eps)
        return y
