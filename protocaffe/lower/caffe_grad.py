"""Lowerings whose backward must be Caffe's Backward_cpu where plain autograd would differ.

Autograd of a lowering that computes Caffe's forward exactly is Caffe's backward wherever
the forward is smooth. It differs where Caffe's backward is not the derivative of what it
computes in float, and at ties:

- SoftmaxWithLoss: Caffe's gradient is `(prob - onehot) * top_diff / normalizer`, zero at
  ignored positions, even where the forward clamped log(max(p, FLT_MIN)) (autograd would give
  0 there) and without the rounding of the chain -1/p * dsoftmax. Its `prob` top gets no
  gradient (Caffe's backward reads only top[0]'s diff).
- Eltwise MAX: the whole gradient goes to the bottom Caffe's mask chose, i.e. ties between
  bottoms 0 and 1 go to bottom 1 (`a > b ? a : b`) and later bottoms must be strictly greater
  (torch.maximum splits a tie's gradient in halves).

(MAX pooling needs nothing here: PyTorch's CPU and CUDA max-pool kernels, like Caffe's loop,
keep the first maximum of a window in row-major order, and the gradient follows that index.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

FLT_MIN = 1.1754943508222875e-38  # std::numeric_limits<float>::min()


class _SoftmaxWithLoss(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, labels: torch.Tensor, valid: Any, norm: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prob = F.softmax(x, 1)
        loss = _nll_sum(prob, labels, valid) / norm
        ctx.save_for_backward(prob, labels, *([valid] if valid is not None else []))
        ctx.norm = norm
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_prob: Any) -> tuple[Any, ...]:
        prob, labels, *valid = ctx.saved_tensors
        diff = prob.clone()
        diff.scatter_add_(1, labels.unsqueeze(1), torch.full_like(diff[:, :1], -1.0))
        scale = grad_loss / ctx.norm
        if valid:  # 0 at ignored positions; one pass over the diff (mask x scale is exact)
            scale = valid[0].unsqueeze(1).to(diff.dtype) * scale
        return diff.mul_(scale), None, None, None


def _nll_sum(prob: torch.Tensor, labels: torch.Tensor, valid: Any) -> torch.Tensor:
    p = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
    nll = -torch.log(torch.clamp(p, min=FLT_MIN))
    if valid is not None:
        nll = torch.where(valid, nll, torch.zeros_like(nll))
    return nll.sum()


def softmax_with_loss(
    x: torch.Tensor, labels: torch.Tensor, valid: Any, norm: Any, layer: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, prob) of SoftmaxWithLoss `layer` on `x` (outer x C x inner) with integer
    `labels` (outer x inner, ignored positions already 0), `valid` the mask of non-ignored
    positions (or None) and `norm` the normaliser. Without a gradient to take, plain tensor
    code (what tracers and exporters see). A label outside [0, C) is a data error."""
    _check_labels(labels, x.shape[1], layer)
    if torch.is_grad_enabled() and x.requires_grad:
        return _SoftmaxWithLoss.apply(x, labels, valid, norm)
    prob = F.softmax(x, 1)
    return _nll_sum(prob, labels, valid) / norm, prob


def _check_labels(labels: torch.Tensor, classes: int, layer: str) -> None:
    if torch.compiler.is_compiling():  # no data-dependent branch inside a compiled graph
        return
    bad = (labels < 0) | (labels >= classes)
    if bool(bad.any()):
        from protocaffe.diagnostics import input_error

        value = int(labels[bad][0])
        raise input_error(
            f"SoftmaxWithLoss '{layer}': label {value} is not a class of its {classes}-way "
            f"input (labels must be in [0, {classes - 1}], or the layer's ignore_label)",
            hint="check the label data against the net's number of outputs",
        )


def eltwise_max(*xs: torch.Tensor) -> torch.Tensor:
    """Caffe's Eltwise MAX with its mask's tie rule (the gradient follows the chosen bottom)."""
    top = torch.where(xs[0] > xs[1], xs[0], xs[1])
    for x in xs[2:]:
        top = torch.where(x > top, x, top)
    return top


class _PythonLayer(torch.autograd.Function):
    """A user's Python layer (`protocaffe.data.pylayer.PythonLayer`): forward and backward
    are its own, on numpy copies of the tensors, as pycaffe hands them blobs."""

    @staticmethod
    def forward(ctx: Any, layer: Any, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for blob, x in zip(layer.bottom, bottoms, strict=True):
            blob.reshape(*x.shape)
            blob.data[...] = x.detach().cpu().numpy()
        ctx.layer, ctx.device, ctx.dtype = layer, bottoms[0].device, bottoms[0].dtype
        return tuple(torch.from_numpy(t).to(ctx.device, ctx.dtype) for t in layer.forward())

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> tuple[Any, ...]:
        diffs = [None if g is None else g.detach().cpu().numpy() for g in grads]
        down = list(ctx.needs_input_grad[1:])
        out = ctx.layer.backward(diffs, down)
        return (
            None,
            *(
                torch.from_numpy(d).to(ctx.device, ctx.dtype) if p else None
                for d, p in zip(out, down, strict=True)
            ),
        )


def python_layer(layer: Any, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run a user's Python layer with bottoms (its backward when a gradient is taken)."""
    return _PythonLayer.apply(layer, *bottoms)
