"""Loss layers (and Accuracy, which Caffe reports beside them but never optimises).

Each loss's top[0] is a scalar computed exactly as Caffe's Forward_cpu does: the same
clamping (-log(max(p, FLT_MIN)) for SoftmaxWithLoss, 1e-20 for the others), the same
normalisers (LossParameter.normalization, then max(1, normaliser)) and the same integer cast
of labels (static_cast<int>, i.e. truncation). loss_weight is applied by whoever reports or
optimises the total, not here.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, ClassVar

from protocaffe.layers.base import (
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    count,
    register,
    shape_str,
)
from protocaffe.layers.structural import as_outer_c_inner, legacy_dim
from protocaffe.lazy import F, torch

if TYPE_CHECKING:
    import numpy as np
    from torch import fx

# LossParameter.NormalizationMode values.
FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3
FLT_MIN = 1.1754943508222875e-38  # std::numeric_limits<float>::min()
LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD (loss_layer.hpp)


def _loss_param(ctx: ShapeContext | LowerContext) -> Any:
    return ctx.layer.proto.loss_param


def ignore_label(ctx: ShapeContext | LowerContext) -> int | None:
    p = _loss_param(ctx)
    return p.ignore_label if p.HasField("ignore_label") else None


def normalization(ctx: ShapeContext | LowerContext, default: int = VALID) -> int:
    """The mode in force: `normalization`, else deprecated `normalize` (false = BATCH_SIZE)."""
    p = _loss_param(ctx)
    if p.HasField("normalization"):
        return p.normalization
    if p.HasField("normalize"):
        return VALID if p.normalize else BATCH_SIZE
    return default


def normalizer(mode: int, outer: int, inner: int, valid: Any) -> Any:
    """Caffe's get_normalizer, floored at 1. `valid` may be a number or a tensor."""
    if mode == FULL:
        return max(1, outer * inner)
    if mode == BATCH_SIZE:
        return max(1, outer)
    if mode == NONE:
        return 1
    if isinstance(valid, int | float):
        return max(1, valid)
    return valid.clamp(min=1)


def _check_first_dims(ctx: ShapeContext) -> None:
    """LossLayer::Reshape: data and label share their first dimension."""
    data, label = ctx.bottoms[0], ctx.bottoms[1]
    if legacy_dim(data, 0) != legacy_dim(label, 0):
        names = ctx.layer.bottoms
        ctx.fail(
            f"'{names[0]}' ({shape_str(data)}) and '{names[1]}' ({shape_str(label)}) must "
            f"have the same first dimension ({legacy_dim(data, 0)} vs {legacy_dim(label, 0)})",
            "bottom",
            1,
        )


def _check_labels(ctx: ShapeContext, axis: int, what: str) -> tuple[int, int, int]:
    """One label per position outside `axis`: label count == outer * inner."""
    data, label = ctx.bottoms[0], ctx.bottoms[1]
    outer, channels, inner = as_outer_c_inner(data, axis)
    if outer * inner != count(label):
        names = ctx.layer.bottoms
        ctx.fail(
            f"label '{names[1]}' ({shape_str(label)}) has {count(label)} values but "
            f"'{names[0]}' ({shape_str(data)}) has {outer * inner} positions outside the "
            f"{what} axis {axis} ({outer}x{inner}); give one label per position",
            "bottom",
            1,
        )
    return outer, channels, inner


def _labels(ctx: LowerContext, label: fx.Node, outer: int, inner: int) -> fx.Node:
    flat = ctx.call(torch.reshape, label, (outer, inner))
    return ctx.call(torch.Tensor.long, flat)  # static_cast<int>: truncation


def _valid_mask(
    ctx: LowerContext, labels: fx.Node, ignore: int | None
) -> tuple[fx.Node | None, fx.Node]:
    """(mask of non-ignored labels or None, labels with ignored ones replaced by 0)."""
    if ignore is None:
        return None, labels
    valid = ctx.call(operator.ne, labels, ignore)
    return valid, ctx.call(torch.where, valid, labels, 0)


def _masked_sum(ctx: LowerContext, terms: fx.Node, valid: fx.Node | None) -> fx.Node:
    if valid is not None:
        terms = ctx.call(torch.where, valid, terms, 0.0)
    return ctx.call(torch.sum, terms)


def _normaliser(ctx: LowerContext, mode: int, outer: int, inner: int, valid) -> Any:
    """Caffe's normaliser, with VALID counting the non-ignored labels at run time."""
    if mode == VALID and valid is not None:
        return ctx.call(torch.clamp, ctx.call(torch.sum, valid), min=1)
    return normalizer(mode, outer, inner, outer * inner)


def _scaled(ctx: LowerContext, total: fx.Node, mode: int, outer: int, inner: int, valid):
    """total / normaliser."""
    return ctx.call(operator.truediv, total, _normaliser(ctx, mode, outer, inner, valid))


def _softmax_np(x: np.ndarray, axis: int) -> np.ndarray:
    import numpy as np

    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class _Loss(LayerDef):
    is_loss = True
    bottoms = (2, 2)

    def _scalar(self, ctx: ShapeContext) -> list[Shape]:
        _check_first_dims(ctx)
        return [()]


class _SoftmaxLoss(_Loss):
    """Shared by SoftmaxWithLoss and InfogainLoss: softmax over an axis, labels elsewhere."""

    tops = (1, 2)
    # Where the softmax axis is set: SoftmaxWithLoss reads softmax_param, InfogainLoss its own.
    axis_param: ClassVar[str]

    def _axis_setting(self, ctx: ShapeContext | LowerContext) -> int:
        """The softmax axis as written (may be negative, not yet checked)."""
        return getattr(ctx.layer.proto, self.axis_param).axis

    def _plan(self, ctx: ShapeContext) -> tuple[int, int, int, int]:
        axis = checked_axis(ctx, self._axis_setting(ctx), self.axis_param, "axis")
        outer, channels, inner = _check_labels(ctx, axis, "softmax")
        return axis, outer, channels, inner

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _check_first_dims(ctx)
        self._plan(ctx)
        # top[1], when present, is the softmax output ("prob").
        return [(), ctx.bottoms[0]][: len(ctx.layer.tops)]

    def _lower_prob(self, ctx: LowerContext) -> tuple[fx.Node, tuple[int, int, int]]:
        shape = ctx.bottom_shapes[0]
        axis = canonical_axis(self._axis_setting(ctx), len(shape))
        dims = as_outer_c_inner(shape, axis)
        x = ctx.call(torch.reshape, ctx.inputs[0], dims)
        return ctx.call(F.softmax, x, 1), dims

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        axis, outer, channels, inner = self._plan(ctx)
        prob = _softmax_np(inputs[0].astype(np.float64), axis).reshape(outer, channels, inner)
        labels = inputs[1].reshape(outer, inner).astype(int)
        ignore, loss, valid = ignore_label(ctx), 0.0, 0
        for i in range(outer):
            for j in range(inner):
                if ignore is not None and labels[i, j] == ignore:
                    continue
                loss += self._position_loss(inputs, prob[i, :, j], labels[i, j])
                valid += 1
        loss /= normalizer(normalization(ctx), outer, inner, valid)
        out = [np.array(loss, dtype=np.float32)]
        return out + [prob.reshape(inputs[0].shape).astype(np.float32)][: len(ctx.layer.tops) - 1]

    def _position_loss(self, inputs: list[np.ndarray], p: np.ndarray, label: int) -> float:
        """The oracle's loss at one non-ignored position: class probabilities `p`, its label."""
        raise NotImplementedError

    def _with_prob(self, ctx: LowerContext, loss: fx.Node, prob: fx.Node) -> list[fx.Node]:
        if len(ctx.top_shapes) == 1:
            return [loss]
        return [loss, ctx.call(torch.reshape, prob, tuple(ctx.bottom_shapes[0]))]


@register
class SoftmaxWithLoss(_SoftmaxLoss):
    type = "SoftmaxWithLoss"
    param_field = "loss_param"
    axis_param = "softmax_param"

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        # Backward is Caffe's (prob - onehot) / normaliser: see lower/caffe_grad.py.
        from protocaffe.lower.caffe_grad import softmax_with_loss

        shape = ctx.bottom_shapes[0]
        outer, channels, inner = as_outer_c_inner(
            shape, canonical_axis(self._axis_setting(ctx), len(shape))
        )
        x = ctx.call(torch.reshape, ctx.inputs[0], (outer, channels, inner))
        labels = _labels(ctx, ctx.inputs[1], outer, inner)
        valid, labels = _valid_mask(ctx, labels, ignore_label(ctx))
        norm = _normaliser(ctx, normalization(ctx), outer, inner, valid)
        both = ctx.call(softmax_with_loss, x, labels, valid, norm, ctx.layer.name)
        loss, prob = (ctx.call(operator.getitem, both, i) for i in (0, 1))
        return self._with_prob(ctx, loss, prob)

    def _position_loss(self, inputs, p, label):
        import numpy as np

        if not 0 <= label < len(p):
            raise ValueError(f"label {label} out of range [0, {len(p)})")
        return -np.log(max(p[label], FLT_MIN))


@register
class InfogainLoss(_SoftmaxLoss):
    """Softmax, then -sum_l H[label, l] log(max(p_l, 1e-20)); H from bottom[2] or `source`."""

    type = "InfogainLoss"
    param_field = "infogain_loss_param"
    bottoms = (2, 3)
    axis_param = "infogain_loss_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        if _loss_param(ctx).HasField("normalize"):
            ctx.fail(
                "loss_param.normalize is deprecated for InfogainLoss",
                "loss_param",
                "normalize",
                hint="use loss_param { normalization: BATCH_SIZE } (or VALID, FULL, NONE)",
            )
        tops = super().shapes(ctx)
        channels = self._plan(ctx)[2]
        if len(ctx.bottoms) == 3:
            if count(ctx.bottoms[2]) != channels * channels:
                ctx.fail(
                    f"infogain matrix '{ctx.layer.bottoms[2]}' ({shape_str(ctx.bottoms[2])}) "
                    f"must have {channels}x{channels} values for {channels} classes",
                    "bottom",
                    2,
                )
        elif not ctx.has("source"):
            ctx.fail(
                "the infogain matrix must be given, by a third bottom or by `source`",
                hint='add infogain_loss_param { source: "H.binaryproto" }',
            )
        return tops

    def _matrix(self, ctx: LowerContext, channels: int) -> fx.Node:
        if len(ctx.inputs) == 3:
            return ctx.call(torch.reshape, ctx.inputs[2], (channels, channels))
        from protocaffe.diagnostics import CompileError, Diagnostic
        from protocaffe.proto import caffe_pb2

        source = ctx.param.source
        blob = caffe_pb2.BlobProto()
        try:
            with open(source, "rb") as f:
                blob.ParseFromString(f.read())
        except (OSError, ValueError) as err:
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"InfogainLoss '{ctx.layer.name}': cannot read "
                        f"infogain matrix '{source}': {err}",
                        ctx.layer.span,
                    )
                ]
            ) from err
        values = list(blob.data) or list(blob.double_data)
        if len(values) != channels * channels:
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"InfogainLoss '{ctx.layer.name}': '{source}' holds "
                        f"{len(values)} values, not {channels}x{channels}",
                        ctx.layer.span,
                    )
                ]
            )
        rows = [values[r * channels : (r + 1) * channels] for r in range(channels)]
        return ctx.call(torch.tensor, rows)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        prob, (outer, channels, inner) = self._lower_prob(ctx)
        h = self._matrix(ctx, channels)
        labels = _labels(ctx, ctx.inputs[1], outer, inner)
        valid, labels = _valid_mask(ctx, labels, ignore_label(ctx))
        logp = ctx.call(torch.log, ctx.call(torch.clamp, prob, min=LOG_THRESHOLD))
        # rows of H for each position's label: (outer, inner, C) -> (outer, C, inner)
        weights = ctx.call(torch.movedim, ctx.call(F.embedding, labels, h), 2, 1)
        terms = ctx.call(torch.sum, ctx.call(operator.mul, weights, logp), 1)
        total = ctx.call(torch.neg, _masked_sum(ctx, terms, valid))
        return self._with_prob(
            ctx, _scaled(ctx, total, normalization(ctx), outer, inner, valid), prob
        )

    def _position_loss(self, inputs, p, label):
        import numpy as np

        h = inputs[2].reshape(len(p), len(p))  # the oracle takes H as the third input
        return -sum(h[label, c] * np.log(max(p[c], LOG_THRESHOLD)) for c in range(len(p)))


@register
class Accuracy(LayerDef):
    """Top-k accuracy. Not a loss (Caffe's loss_weight default for it is 0).

    A position counts as correct when fewer than top_k classes score >= the true class's score
    (the true class itself excluded): ties count against the prediction, as in Caffe.
    """

    type = "Accuracy"
    param_field = "accuracy_param"
    bottoms = (2, 2)
    tops = (1, 2)

    def _plan(self, ctx: ShapeContext) -> tuple[int, int, int, int]:
        data = ctx.bottoms[0]
        axis = checked_axis(ctx, ctx.param.axis)
        outer, channels, inner = _check_labels(ctx, axis, "label")
        if ctx.param.top_k > count(data) // max(1, count(ctx.bottoms[1])):
            ctx.fail(
                f"top_k {ctx.param.top_k} is more than the number of classes ({channels})",
                "top_k",
            )
        return axis, outer, channels, inner

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _, _, channels, _ = self._plan(ctx)
        return [(), (channels,)][: len(ctx.layer.tops)]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        shape = ctx.bottom_shapes[0]
        axis = canonical_axis(ctx.param.axis, len(shape))
        outer, channels, inner = as_outer_c_inner(shape, axis)
        x = ctx.call(torch.reshape, ctx.inputs[0], (outer, channels, inner))
        labels = _labels(ctx, ctx.inputs[1], outer, inner)
        valid, safe = _valid_mask(ctx, labels, _accuracy_ignore(ctx))
        true = ctx.call(torch.gather, x, 1, ctx.call(torch.unsqueeze, safe, 1))
        at_least = ctx.call(torch.sum, ctx.call(operator.ge, x, true), 1)  # includes itself
        correct = ctx.call(operator.le, at_least, ctx.param.top_k)
        if valid is not None:
            correct = ctx.call(operator.and_, correct, valid)
            n = ctx.call(torch.sum, valid)
        else:
            n = outer * inner
        hits = ctx.call(torch.sum, correct)
        # 0 when every label is ignored, as in Caffe
        acc = ctx.call(torch.div, hits, ctx.call(torch.clamp, ctx.call(torch.as_tensor, n), min=1))
        acc = ctx.call(torch.Tensor.float, acc)
        if len(ctx.top_shapes) == 1:
            return [acc]
        onehot = ctx.call(F.one_hot, safe, channels)
        if valid is not None:
            onehot = ctx.call(operator.mul, onehot, ctx.call(torch.unsqueeze, valid, -1))
        per_class_n = ctx.call(torch.sum, onehot, (0, 1))
        per_class_hits = ctx.call(
            torch.sum,
            ctx.call(operator.mul, onehot, ctx.call(torch.unsqueeze, correct, -1)),
            (0, 1),
        )
        per_class = ctx.call(torch.div, per_class_hits, ctx.call(torch.clamp, per_class_n, min=1))
        return [acc, ctx.call(torch.Tensor.float, per_class)]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        _, outer, channels, inner = self._plan(ctx)
        x = inputs[0].reshape(outer, channels, inner)
        labels = inputs[1].reshape(outer, inner).astype(int)
        ignore, top_k = _accuracy_ignore(ctx), ctx.param.top_k
        hits, total = 0, 0
        per_hits, per_n = np.zeros(channels), np.zeros(channels)
        for i in range(outer):
            for j in range(inner):
                label = labels[i, j]
                if ignore is not None and label == ignore:
                    continue
                per_n[label] += 1
                better = sum(1 for k in range(channels) if x[i, k, j] >= x[i, label, j]) - 1
                if better < top_k:
                    hits += 1
                    per_hits[label] += 1
                total += 1
        acc = np.array(hits / total if total else 0.0, dtype=np.float32)
        per_class = np.where(per_n > 0, per_hits / np.maximum(per_n, 1), 0).astype(np.float32)
        return [acc, per_class][: len(ctx.layer.tops)]


def _accuracy_ignore(ctx: ShapeContext | LowerContext) -> int | None:
    p = ctx.param
    return p.ignore_label if p.HasField("ignore_label") else None


def _flat_rows(ctx: LowerContext, index: int) -> fx.Node:
    """bottom[index] as (num, count/num), the layout Caffe's legacy losses loop over."""
    shape = ctx.bottom_shapes[index]
    return ctx.call(torch.reshape, ctx.inputs[index], (legacy_dim(shape, 0), -1))


def _per_item_labels(ctx: LowerContext, num: int) -> fx.Node:
    """label[i] for i < num, cast like static_cast<int>."""
    flat = ctx.call(torch.flatten, ctx.inputs[1])
    return ctx.call(torch.Tensor.long, ctx.call(operator.getitem, flat, slice(0, num)))


def _mean_over_num(ctx: LowerContext, total: fx.Node, scale: float = 1.0) -> fx.Node:
    num = legacy_dim(ctx.bottom_shapes[0], 0)
    return ctx.call(operator.truediv, total, num / scale)


def _check_label_blob(ctx: ShapeContext, index: int) -> None:
    """Caffe's CHECKs that a label blob is N x 1 x 1 x 1 (channels, height, width all 1)."""
    shape = ctx.bottoms[index]
    if any(legacy_dim(shape, k) != 1 for k in (1, 2, 3)):
        ctx.fail(
            f"'{ctx.layer.bottoms[index]}' ({shape_str(shape)}) must be N x 1 x 1 x 1: "
            "one value per item",
            "bottom",
            index,
        )


@register
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / N / 2."""

    type = "EuclideanLoss"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        a, b = ctx.bottoms
        if count(a[1:]) != count(b[1:]):
            names = ctx.layer.bottoms
            ctx.fail(
                f"'{names[0]}' ({shape_str(a)}) and '{names[1]}' ({shape_str(b)}) must have "
                f"the same size per item ({count(a[1:])} vs {count(b[1:])})",
                "bottom",
                1,
            )
        return self._scalar(ctx)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        diff = ctx.call(operator.sub, _flat_rows(ctx, 0), _flat_rows(ctx, 1))
        total = ctx.call(torch.sum, ctx.call(operator.mul, diff, diff))
        return [_mean_over_num(ctx, total, 0.5)]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        a, b = (x.astype(np.float64).reshape(len(inputs[0]), -1) for x in inputs)
        return [np.array(((a - b) ** 2).sum() / len(a) / 2, dtype=np.float32)]


@register
class SigmoidCrossEntropyLoss(_Loss):
    """Cross-entropy of sigmoid(x) against targets, in Caffe's overflow-safe form."""

    type = "SigmoidCrossEntropyLoss"
    param_field = "loss_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        x, t = ctx.bottoms
        if count(x) != count(t):
            names = ctx.layer.bottoms
            ctx.fail(
                f"'{names[0]}' ({shape_str(x)}) and '{names[1]}' ({shape_str(t)}) must have "
                f"the same count ({count(x)} vs {count(t)})",
                "bottom",
                1,
            )
        return self._scalar(ctx)

    def _dims(self, shape: Shape) -> tuple[int, int]:
        return shape[0], count(shape[1:])

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        outer, inner = self._dims(ctx.bottom_shapes[0])
        x = ctx.call(torch.flatten, ctx.inputs[0])
        t = ctx.call(torch.flatten, ctx.inputs[1])
        # x*(t - [x>=0]) - log(1 + exp(x - 2x[x>=0])), negated: softplus form of the same
        pos = ctx.call(torch.Tensor.to, ctx.call(operator.ge, x, 0), x)
        term = ctx.call(operator.mul, x, ctx.call(operator.sub, t, pos))
        arg = ctx.call(operator.sub, x, ctx.call(operator.mul, ctx.call(operator.mul, x, pos), 2))
        term = ctx.call(operator.sub, term, ctx.call(torch.log1p, ctx.call(torch.exp, arg)))
        ignore = ignore_label(ctx)
        valid = None
        if ignore is not None:
            valid = ctx.call(operator.ne, ctx.call(torch.Tensor.long, t), ignore)
        total = ctx.call(torch.neg, _masked_sum(ctx, term, valid))
        mode = normalization(ctx, default=BATCH_SIZE)
        return [_scaled(ctx, total, mode, outer, inner, valid)]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        outer, inner = self._dims(ctx.bottoms[0])
        x, t = (a.astype(np.float64).ravel() for a in inputs)
        ignore, loss, valid = ignore_label(ctx), 0.0, 0
        for xi, ti in zip(x, t, strict=True):
            if ignore is not None and int(ti) == ignore:
                continue
            pos = float(xi >= 0)
            loss -= xi * (ti - pos) - np.log(1 + np.exp(xi - 2 * xi * pos))
            valid += 1
        loss /= normalizer(normalization(ctx, default=BATCH_SIZE), outer, inner, valid)
        return [np.array(loss, dtype=np.float32)]


@register
class HingeLoss(_Loss):
    """One-vs-all hinge: sum_j max(0, 1 - d_j x_j) / N, d_j = +1 for the label, else -1."""

    type = "HingeLoss"
    param_field = "hinge_loss_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        return self._scalar(ctx)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        x = _flat_rows(ctx, 0)
        num = legacy_dim(ctx.bottom_shapes[0], 0)
        dim = count(ctx.bottom_shapes[0]) // max(1, num)
        onehot = ctx.call(F.one_hot, _per_item_labels(ctx, num), dim)
        sign = ctx.call(operator.sub, 1, ctx.call(operator.mul, onehot, 2))
        margin = ctx.call(
            torch.clamp, ctx.call(operator.add, ctx.call(operator.mul, x, sign), 1), min=0
        )
        if ctx.param.norm == 2:
            margin = ctx.call(operator.mul, margin, margin)
        return [_mean_over_num(ctx, ctx.call(torch.sum, margin))]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        num = len(inputs[0])
        x = inputs[0].astype(np.float64).reshape(num, -1).copy()
        labels = inputs[1].ravel()[:num].astype(int)
        x[np.arange(num), labels] *= -1
        margin = np.maximum(0, 1 + x)
        loss = (margin**2 if ctx.param.norm == 2 else margin).sum() / num
        return [np.array(loss, dtype=np.float32)]


@register
class MultinomialLogisticLoss(_Loss):
    """-sum_i log(max(p[i, label_i], 1e-20)) / N over probabilities given as input."""

    type = "MultinomialLogisticLoss"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _check_label_blob(ctx, 1)
        return self._scalar(ctx)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        num = legacy_dim(ctx.bottom_shapes[0], 0)
        labels = ctx.call(torch.unsqueeze, _per_item_labels(ctx, num), 1)
        p = ctx.call(torch.gather, _flat_rows(ctx, 0), 1, labels)
        logp = ctx.call(torch.log, ctx.call(torch.clamp, p, min=LOG_THRESHOLD))
        return [_mean_over_num(ctx, ctx.call(torch.neg, ctx.call(torch.sum, logp)))]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        num = len(inputs[0])
        p = inputs[0].astype(np.float64).reshape(num, -1)
        labels = inputs[1].ravel().astype(int)
        loss = -sum(np.log(max(p[i, labels[i]], LOG_THRESHOLD)) for i in range(num)) / num
        return [np.array(loss, dtype=np.float32)]


@register
class ContrastiveLoss(_Loss):
    """Hadsell et al.'s pair loss on (a, b, similar): similar pairs pay d^2, others the margin."""

    type = "ContrastiveLoss"
    param_field = "contrastive_loss_param"
    bottoms = (3, 3)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        a, b, _ = ctx.bottoms
        names = ctx.layer.bottoms
        if legacy_dim(a, 1) != legacy_dim(b, 1):
            ctx.fail(
                f"'{names[0]}' ({shape_str(a)}) and '{names[1]}' ({shape_str(b)}) must have "
                "the same channels",
                "bottom",
                1,
            )
        for i, shape in enumerate((a, b)):
            if legacy_dim(shape, 2) != 1 or legacy_dim(shape, 3) != 1:
                ctx.fail(
                    f"'{names[i]}' ({shape_str(shape)}) must be N x C x 1 x 1",
                    "bottom",
                    i,
                )
        _check_label_blob(ctx, 2)
        return self._scalar(ctx)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        num = legacy_dim(ctx.bottom_shapes[0], 0)
        diff = ctx.call(operator.sub, _flat_rows(ctx, 0), _flat_rows(ctx, 1))
        dist_sq = ctx.call(torch.sum, ctx.call(operator.mul, diff, diff), 1)
        y = ctx.call(torch.reshape, ctx.inputs[2], (num,))
        similar = ctx.call(operator.ne, ctx.call(torch.Tensor.long, y), 0)
        margin = ctx.param.margin
        if ctx.param.legacy_version:
            apart = ctx.call(torch.clamp, ctx.call(operator.sub, margin, dist_sq), min=0)
        else:
            dist = ctx.call(operator.sub, margin, ctx.call(torch.sqrt, dist_sq))
            dist = ctx.call(torch.clamp, dist, min=0)
            apart = ctx.call(operator.mul, dist, dist)
        total = ctx.call(torch.sum, ctx.call(torch.where, similar, dist_sq, apart))
        return [_mean_over_num(ctx, total, 0.5)]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        num = len(inputs[0])
        a, b = (x.astype(np.float64).reshape(num, -1) for x in inputs[:2])
        y = inputs[2].ravel()
        margin, legacy = ctx.param.margin, ctx.param.legacy_version
        loss = 0.0
        for i in range(num):
            d2 = float(((a[i] - b[i]) ** 2).sum())
            if int(y[i]):
                loss += d2
            elif legacy:
                loss += max(margin - d2, 0.0)
            else:
                loss += max(margin - np.sqrt(d2), 0.0) ** 2
        return [np.array(loss / num / 2, dtype=np.float32)]
