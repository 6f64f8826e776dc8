"""Caffe's parameter update (SGDSolver::ApplyUpdate and each solver's ComputeUpdateValue).

Implemented directly on the blobs, in Caffe's order and with Caffe's operation sequence (its
CPU path), not with torch.optim: the momentum history holds the lr-scaled velocity, Adam adds
`delta` to the uncorrected sqrt(v), AdaDelta takes the sqrt of a ratio, clipping has no epsilon
and sees the iter_size sum, and decay and history touch every learnable blob each iteration,
including `lr_mult: 0` ones and BatchNorm's statistics. See ApplyUpdate for the order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from protocaffe.diagnostics import Diagnostics

if TYPE_CHECKING:
    import torch

    from protocaffe.train.params import LearnableBlob

f32 = np.float32


def scalar(x: Any) -> float:
    """A float32 value as a Python float: torch takes it as a scalar operand (a numpy scalar
    would become a tensor first)."""
    return float(f32(x))


class UpdateRule:
    """One solver type: its history blobs (`sets` per learnable blob, Caffe's order: all of
    the first set, then all of the second) and its ComputeUpdateValue."""

    type: ClassVar[str]
    sets: ClassVar[int] = 1

    def __init__(self, param: Any, blobs: list[LearnableBlob]) -> None:
        import torch

        self.param = param
        self.momentum = f32(param.momentum)
        self.delta = scalar(param.delta)
        self.count = len(blobs)
        self.history: list[torch.Tensor] = [
            torch.zeros_like(b.tensor, memory_format=torch.contiguous_format)
            for _ in range(self.sets)
            for b in blobs
        ]

    @classmethod
    def check(cls, param: Any, diags: Diagnostics, span_of: Any) -> None:
        """Caffe's CHECKs for this solver type's settings."""

    def compute(self, i: int, g: torch.Tensor, local_rate: float, it: int) -> Any:
        """Update blob i's history from its diff `g` (which may be consumed) and return the
        step to subtract from the blob, or None when the step is 0 (a zero local rate:
        Caffe subtracts 0 times the step, so only the history changes)."""
        raise NotImplementedError


RULES: dict[str, type[UpdateRule]] = {}


def _rule(cls: type[UpdateRule]) -> type[UpdateRule]:
    RULES[cls.type] = cls
    return cls


def _momentum_must_be_zero(cls: type[UpdateRule], param: Any, diags: Diagnostics, span_of):
    if param.momentum != 0:
        diags.error(
            f"momentum must be 0 for solver type {cls.type} (got {param.momentum:g})",
            span_of(("momentum",)),
            hint=f"Caffe's {cls.type} solver has no momentum term",
        )


@_rule
class SGD(UpdateRule):
    type = "SGD"

    def compute(self, i, g, local_rate, it):
        h = self.history[i]
        h.mul_(scalar(self.momentum)).add_(g, alpha=local_rate)
        return h


@_rule
class Nesterov(UpdateRule):
    type = "Nesterov"

    def compute(self, i, g, local_rate, it):
        h = self.history[i]
        previous = h.clone()
        h.mul_(scalar(self.momentum)).add_(g, alpha=local_rate)
        m = self.momentum
        return previous.mul_(scalar(-m)).add_(h, alpha=scalar(f32(1) + m))


@_rule
class AdaGrad(UpdateRule):
    type = "AdaGrad"

    @classmethod
    def check(cls, param, diags, span_of):
        _momentum_must_be_zero(cls, param, diags, span_of)

    def compute(self, i, g, local_rate, it):
        h = self.history[i]
        h.add_(g * g)
        if not local_rate:
            return None
        return g.div_(h.sqrt().add_(self.delta)).mul_(local_rate)


@_rule
class RMSProp(UpdateRule):
    type = "RMSProp"

    @classmethod
    def check(cls, param, diags, span_of):
        _momentum_must_be_zero(cls, param, diags, span_of)
        if not 0 <= param.rms_decay < 1:
            diags.error(
                f"rms_decay must be in [0, 1) (got {param.rms_decay:g})", span_of(("rms_decay",))
            )

    def compute(self, i, g, local_rate, it):
        h = self.history[i]
        decay = f32(self.param.rms_decay)
        h.mul_(scalar(decay)).add_(g * g, alpha=scalar(f32(1) - decay))
        if not local_rate:
            return None
        return g.div_(h.sqrt().add_(self.delta)).mul_(local_rate)


@_rule
class AdaDelta(UpdateRule):
    type = "AdaDelta"
    sets = 2

    def compute(self, i, g, local_rate, it):
        grad_sq, update_sq = self.history[i], self.history[self.count + i]
        keep, mix = scalar(self.momentum), scalar(f32(1) - self.momentum)
        grad_sq.mul_(keep).add_(g * g, alpha=mix)
        ratio = (update_sq + self.delta).div_(grad_sq + self.delta).sqrt_()
        g.mul_(ratio)
        update_sq.mul_(keep).add_(g * g, alpha=mix)
        return g.mul_(local_rate) if local_rate else None


@_rule
class Adam(UpdateRule):
    type = "Adam"
    sets = 2

    def compute(self, i, g, local_rate, it):
        m, v = self.history[i], self.history[self.count + i]
        beta1, beta2 = self.momentum, f32(self.param.momentum2)
        t = it + 1
        correction = f32(np.sqrt(1.0 - float(beta2) ** t) / (1.0 - float(beta1) ** t))
        m.mul_(scalar(beta1)).add_(g, alpha=scalar(f32(1) - beta1))
        v.mul_(scalar(beta2)).add_(g * g, alpha=scalar(f32(1) - beta2))
        if not local_rate:
            return None
        step = m / v.sqrt().add_(self.delta)
        return step.mul_(scalar(f32(local_rate) * correction))


def make_rule(param: Any, blobs: list[LearnableBlob], span_of: Any) -> UpdateRule:
    """The update rule named by `param.type`, after Caffe's checks on its settings."""
    diags = Diagnostics()
    cls = RULES.get(param.type)
    if cls is None:
        diags.error(
            f"unknown solver type '{param.type}'",
            span_of(("type",)),
            hint="use one of " + ", ".join(RULES),
        )
    else:
        cls.check(param, diags, span_of)
    if param.regularization_type not in ("L1", "L2"):
        diags.error(
            f"unknown regularization type '{param.regularization_type}'",
            span_of(("regularization_type",)),
            hint="use L2 or L1",
        )
    diags.check()
    return cls(param, blobs)


def clip_gradients(param: Any, diffs: list[torch.Tensor]) -> float | None:
    """Scale every diff by clip/‖all diffs‖₂ when that norm exceeds `clip_gradients` (>= 0).
    Returns the norm when it clipped."""
    import torch

    clip = f32(param.clip_gradients)
    if clip < 0 or not diffs:
        return None
    # One float per blob (Blob::sumsq_diff), summed in order in float as Caffe does; one
    # device sync for all of them.
    per_blob = torch.stack([torch.dot(d.reshape(-1), d.reshape(-1)).float() for d in diffs])
    sumsq = f32(0)
    for value in per_blob.tolist():
        sumsq += f32(value)
    norm = f32(np.sqrt(sumsq))
    if norm > clip:
        scale = float(clip / norm)
        for d in diffs:
            d.mul_(scale)
        return float(norm)
    return None


def apply_update(
    param: Any, rule: UpdateRule, blobs: list[LearnableBlob], rate: float, it: int
) -> float | None:
    """ApplyUpdate after the rate is known: clip the summed diffs, divide by iter_size, add
    weight decay, compute each history update with lr_mult, subtract; returns the clipped
    norm, if any. Diffs are consumed. A blob without a diff (no gradient reached it, or
    BatchNorm's statistics) counts as a zero diff, as Caffe's cleared diff does."""
    import torch

    diffs = [b.grad for b in blobs]
    clipped = None
    if param.clip_gradients >= 0:
        zero = torch.zeros_like
        diffs = [zero(b.tensor) if g is None else g for g, b in zip(diffs, blobs, strict=True)]
        clipped = clip_gradients(param, diffs)
    scale = f32(1) / f32(param.iter_size)
    weight_decay = f32(param.weight_decay)
    with torch.no_grad():
        for i, (blob, g) in enumerate(zip(blobs, diffs, strict=True)):
            w = blob.tensor
            if param.iter_size > 1 and g is not None:
                g.mul_(scalar(scale))
            local_decay = weight_decay * f32(blob.decay_mult)
            if local_decay:
                source = w if param.regularization_type == "L2" else torch.sign(w)
                # 0 + decay * w is decay * w: a missing diff needs no zeros first.
                decay = scalar(local_decay)
                g = source * decay if g is None else g.add_(source, alpha=decay)
            if g is None:
                g = torch.zeros_like(w)
            step = rule.compute(i, g, scalar(f32(rate) * f32(blob.lr_mult)), it)
            if step is not None:
                w.sub_(step)
    return clipped
