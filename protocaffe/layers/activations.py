"""Pointwise ("neuron") layers: one bottom, one top of the same shape, computed per element.

Caffe lets every one of these run in place except AbsVal, which CHECKs top != bottom.

MACs convention (shared by activations.py, normalization.py, eltwise.py, softmax.py): one MAC
per output element for each multiply by a learned/stored tensor or a computed statistic (PReLU,
Scale, BatchNorm, MVN, Eltwise PROD/weighted SUM, Reduction SUMSQ). Fixed pointwise functions
(ReLU, Sigmoid, Power, ...), pure additions (Bias, Eltwise SUM without coeff), Softmax, ArgMax
and the other reductions count 0.

Each layer's `reference` computes in float64 and returns the input's dtype; it follows the
order of operations of Caffe's CPU forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from protocaffe.layers.base import (
    BlobSpec,
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    count,
    register,
    shape_str,
)
from protocaffe.lazy import F, np, torch
from protocaffe.proto import caffe_pb2
from protocaffe.proto.schema import Field, extend

if TYPE_CHECKING:
    from torch import fx

extend(
    "DropoutParameter",
    Field("scale_train", 2, "bool", default=True, dialects=("frcnn", "opencv")),
    Field("sample_weights_test", 2, "bool", default=False, dialects=("segnet",)),
)


def require_channel_axis(ctx: ShapeContext) -> None:
    """Per-channel layers (PReLU, BatchNorm) read axis 1, so the bottom needs N x C at least."""
    if len(ctx.bottoms[0]) < 2:
        ctx.fail(
            f"bottom '{ctx.layer.bottoms[0]}' has shape {shape_str(ctx.bottoms[0])}; "
            f"{ctx.type} needs at least 2 axes (N x C x ...)"
        )


class Pointwise(LayerDef):
    """A shape-preserving layer of one bottom (Caffe's NeuronLayer and its relatives).

    Subclasses give `compute` (numpy, the oracle) and `emit` (fx lowering of one input), and may
    override `check` for parameter validation at shape time.
    """

    in_place = True
    coord_identity = True

    def check(self, ctx: ShapeContext) -> None:
        """Validate parameters the way Caffe's LayerSetUp does (fail via ctx.fail)."""

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        self.check(ctx)
        return [ctx.bottoms[0]]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return [self.emit(ctx, ctx.inputs[0])]

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        raise NotImplementedError

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        x = inputs[0]
        y = self.compute(ctx, x.astype(np.float64), [b.astype(np.float64) for b in blobs])
        return [np.asarray(y).astype(x.dtype)]

    def compute(self, ctx: ShapeContext, x: np.ndarray, blobs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


@register
class ReLU(Pointwise):
    type = "ReLU"
    param_field = "relu_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        slope = ctx.param.negative_slope
        if slope == 0:
            return ctx.call(F.relu, x, inplace=ctx.can_modify_input(0))
        return ctx.call(F.leaky_relu, x, slope, inplace=ctx.can_modify_input(0))

    def compute(self, ctx, x, blobs):
        return np.maximum(x, 0) + ctx.param.negative_slope * np.minimum(x, 0)


def _prelu_filler(ctx: ShapeContext) -> Any:
    if ctx.has("filler"):
        return ctx.param.filler
    return caffe_pb2.FillerParameter(type="constant", value=0.25)


@register
class PReLU(Pointwise):
    """y = max(0, x) + a_c * min(0, x), slope a per channel (axis 1) or one shared slope."""

    type = "PReLU"
    param_field = "prelu_param"

    def check(self, ctx: ShapeContext) -> None:
        require_channel_axis(ctx)

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        # PReLULayer::LayerSetUp: a 0-axis blob (one value) when shared, else [C]. A Caffe-written
        # caffemodel stores the shared slope with an empty shape, which matches only ().
        shape = () if ctx.param.channel_shared else (ctx.bottoms[0][1],)
        return [BlobSpec("weight", shape, _prelu_filler(ctx))]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(tops[0])

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        return ctx.call(F.prelu, x, ctx.blob("weight"))

    def compute(self, ctx, x, blobs):
        slope = blobs[0].reshape((-1,) + (1,) * (x.ndim - 2))
        return np.maximum(x, 0) + slope * np.minimum(x, 0)


@register
class ELU(Pointwise):
    type = "ELU"
    param_field = "elu_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        return ctx.call(F.elu, x, ctx.param.alpha, inplace=ctx.can_modify_input(0))

    def compute(self, ctx, x, blobs):
        return np.maximum(x, 0) + ctx.param.alpha * (np.exp(np.minimum(x, 0)) - 1)


@register
class Sigmoid(Pointwise):
    type = "Sigmoid"
    param_field = "sigmoid_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        return ctx.call(torch.sigmoid, x)

    def compute(self, ctx, x, blobs):
        # Caffe writes it as 0.5 * tanh(0.5 x) + 0.5, which cannot overflow.
        return 0.5 * np.tanh(0.5 * x) + 0.5


@register
class TanH(Pointwise):
    type = "TanH"
    param_field = "tanh_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        return ctx.call(torch.tanh, x)

    def compute(self, ctx, x, blobs):
        return np.tanh(x)


def _power_constant(power: float, shift: float) -> float:
    """Caffe's shortcut: with power == 0 or scale == 0 the output is one constant."""
    if power == 0:
        return 1.0
    return float(np.power(np.float64(shift), power))


@register
class Power(Pointwise):
    """y = (shift + scale * x) ^ power."""

    type = "Power"
    param_field = "power_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        p = ctx.param
        if p.power == 0 or p.scale == 0:
            return ctx.call(torch.full_like, x, _power_constant(p.power, p.shift))
        y = x
        if p.scale != 1:
            y = ctx.call(torch.mul, y, p.scale)
        if p.shift != 0:
            y = ctx.call(torch.add, y, p.shift)
        if p.power != 1:
            y = ctx.call(torch.pow, y, p.power)
        return y  # x itself when the parameters make it the identity

    def compute(self, ctx, x, blobs):
        p = ctx.param
        if p.power == 0 or p.scale == 0:
            return np.full_like(x, _power_constant(p.power, p.shift))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.power(p.shift + p.scale * x, p.power)


@register
class AbsVal(Pointwise):
    type = "AbsVal"
    in_place = False  # AbsValLayer::LayerSetUp CHECKs top != bottom

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        return ctx.call(torch.abs, x)

    def compute(self, ctx, x, blobs):
        return np.abs(x)


@register
class BNLL(Pointwise):
    """Binomial normal log likelihood, log(1 + e^x), i.e. softplus."""

    type = "BNLL"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        # softplus switches to the identity above x = 20, where log1p(e^-x) < 2.1e-9.
        return ctx.call(F.softplus, x)

    def compute(self, ctx, x, blobs):
        # Caffe's stable split: x + log(1 + e^-x) for x > 0, log(1 + e^x) otherwise; both
        # branches are max(x, 0) + log(1 + e^-|x|).
        return np.maximum(x, 0) + np.log(1.0 + np.exp(-np.abs(x)))


def _check_base(ctx: ShapeContext) -> None:
    """Exp/Log: base must be -1 (meaning e) or strictly positive, and not 1 for Log."""
    base = ctx.param.base
    if base != -1 and base <= 0:
        ctx.fail(f"base must be strictly positive (or -1 for e), got {base:g}", "base")


def _ln(base: float) -> float:
    return 1.0 if base == -1 else math.log(base)


@register
class Exp(Pointwise):
    """y = base ^ (shift + scale * x); base -1 means e."""

    type = "Exp"
    param_field = "exp_param"

    def check(self, ctx: ShapeContext) -> None:
        _check_base(ctx)

    @staticmethod
    def _scales(p: Any) -> tuple[float, float]:
        inner = _ln(p.base) * p.scale
        outer = 1.0 if p.shift == 0 else math.exp(_ln(p.base) * p.shift)
        return inner, outer

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        inner, outer = self._scales(ctx.param)
        if inner != 1:
            x = ctx.call(torch.mul, x, inner)
        y = ctx.call(torch.exp, x)
        return y if outer == 1 else ctx.call(torch.mul, y, outer)

    def compute(self, ctx, x, blobs):
        inner, outer = self._scales(ctx.param)
        return outer * np.exp(inner * x)


@register
class Log(Pointwise):
    """y = log_base(shift + scale * x); base -1 means e."""

    type = "Log"
    param_field = "log_param"

    def check(self, ctx: ShapeContext) -> None:
        _check_base(ctx)
        if ctx.param.base == 1:
            ctx.fail("base 1 has no logarithm (1/log(1) is infinite)", "base")

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        p = ctx.param
        if p.scale != 1:
            x = ctx.call(torch.mul, x, p.scale)
        if p.shift != 0:
            x = ctx.call(torch.add, x, p.shift)
        y = ctx.call(torch.log, x)
        base_scale = 1.0 / _ln(p.base)
        return y if base_scale == 1 else ctx.call(torch.mul, y, base_scale)

    def compute(self, ctx, x, blobs):
        p = ctx.param
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(p.shift + p.scale * x) / _ln(p.base)


@register
class Threshold(Pointwise):
    """y = 1 where x > threshold, else 0."""

    type = "Threshold"
    param_field = "threshold_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        # Plain torch functions only (no Tensor methods), so that emit_python can name them.
        mask = ctx.call(torch.gt, x, ctx.param.threshold)
        return ctx.call(torch.masked_fill, ctx.call(torch.zeros_like, x), mask, 1.0)

    def compute(self, ctx, x, blobs):
        return (x > ctx.param.threshold).astype(np.float64)


@register
class Dropout(Pointwise):
    """TRAIN: y = x * mask * 1/(1-p) with mask ~ Bernoulli(1-p); TEST: y = x.

    Two forks' fields: Faster R-CNN's (and OpenCV's) `scale_train: false` drops the 1/(1-p)
    at TRAIN and multiplies by (1-p) at TEST instead; Bayesian SegNet's
    `sample_weights_test: true` samples a mask at TEST too (Monte Carlo dropout).
    """

    type = "Dropout"
    param_field = "dropout_param"

    def check(self, ctx: ShapeContext) -> None:
        ratio = ctx.param.dropout_ratio
        if not 0 <= ratio < 1:
            ctx.fail(f"dropout_ratio must be in [0, 1), got {ratio:g}", "dropout_ratio")
        if ctx.phase != caffe_pb2.TRAIN and ctx.param.sample_weights_test:
            ctx.note(
                "samples a dropout mask at TEST too (Bayesian SegNet's sample_weights_test): "
                "outputs are random",
                "sample_weights_test",
            )

    @staticmethod
    def samples(ctx: ShapeContext | LowerContext) -> bool:
        return ctx.phase == caffe_pb2.TRAIN or ctx.param.sample_weights_test

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        p = ctx.param
        if self.samples(ctx):
            y = ctx.call(F.dropout, x, p.dropout_ratio, True, ctx.can_modify_input(0))
            if p.scale_train:
                return y
            return ctx.call(torch.mul, y, 1 - p.dropout_ratio)  # undo F.dropout's 1/(1-p)
        if not p.scale_train:
            return ctx.call(torch.mul, x, 1 - p.dropout_ratio)
        return x  # the lowering builder tracks aliases before allowing in-place ops

    def compute(self, ctx, x, blobs):
        if self.samples(ctx):
            raise NotImplementedError("sampled Dropout is random; test it statistically")
        return x if ctx.param.scale_train else x * (1 - np.float32(ctx.param.dropout_ratio))


@register
class Swish(Pointwise):
    """y = x * sigmoid(beta * x)."""

    type = "Swish"
    param_field = "swish_param"

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        beta = ctx.param.beta
        if beta == 1:
            return ctx.call(F.silu, x)
        gate = ctx.call(torch.sigmoid, ctx.call(torch.mul, x, beta))
        return ctx.call(torch.mul, x, gate)

    def compute(self, ctx, x, blobs):
        return x * (0.5 * np.tanh(0.5 * ctx.param.beta * x) + 0.5)


@register
class Clip(Pointwise):
    """y = max(min, min(x, max)); with min > max every output is min, as in Caffe."""

    type = "Clip"
    param_field = "clip_param"

    def check(self, ctx: ShapeContext) -> None:
        missing = [f for f in ("min", "max") if not ctx.has(f)]
        if missing:
            ctx.fail(f"clip_param needs both min and max ({' and '.join(missing)} not set)")
        if ctx.param.min > ctx.param.max:
            ctx.warn(
                f"min {ctx.param.min:g} > max {ctx.param.max:g}: every output is {ctx.param.min:g}",
                "min",
            )

    def emit(self, ctx: LowerContext, x: fx.Node) -> fx.Node:
        lo, hi = ctx.param.min, ctx.param.max
        if lo > hi:  # torch.clamp would give max here
            return ctx.call(torch.full_like, x, lo)
        return ctx.call(torch.clamp, x, lo, hi)

    def compute(self, ctx, x, blobs):
        return np.maximum(ctx.param.min, np.minimum(x, ctx.param.max))
