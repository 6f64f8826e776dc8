"""Eltwise: elementwise PROD, SUM (optionally weighted by `coeff`) or MAX of 2+ equal-shape bottoms.

In FCN nets the usual failure is a shape mismatch at a fuse layer, caused by a Crop upstream;
the error names both blobs as written and points at the Crop. MACs follow activations.py.
"""

from __future__ import annotations

from functools import reduce
from typing import TYPE_CHECKING

from protocaffe.layers.base import (
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    count,
    register,
    shape_str,
)
from protocaffe.lazy import np, torch
from protocaffe.proto import caffe_pb2

if TYPE_CHECKING:
    from torch import fx

_OP = caffe_pb2.EltwiseParameter


@register
class Eltwise(LayerDef):
    type = "Eltwise"
    param_field = "eltwise_param"
    bottoms = (2, None)
    coord_identity = True
    # Not in place: Caffe's SUM zeroes the top before accumulating, destroying bottom[0].

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p, names, shapes = ctx.param, ctx.layer.bottoms, ctx.bottoms
        n_coeff = len(p.coeff)
        if n_coeff and n_coeff != len(shapes):
            ctx.fail(
                f"{n_coeff} coeff values for {len(shapes)} bottoms; give one per bottom or none",
                "coeff",
            )
        if n_coeff and p.operation == _OP.PROD:
            ctx.fail("coeff only applies to operation SUM, not PROD", "coeff")
        if n_coeff and p.operation == _OP.MAX:
            ctx.warn("coeff is ignored by operation MAX (Caffe only weights SUM)", "coeff")
        for i in range(1, len(shapes)):
            if tuple(shapes[i]) != tuple(shapes[0]):
                ctx.fail(
                    f"bottom shapes differ: {names[0]} {shape_str(shapes[0])} vs {names[i]} "
                    f"{shape_str(shapes[i])}",
                    "bottom",
                    i,
                    hint=self._mismatch_hint(ctx, (0, i)),
                )
        return [shapes[0]]

    @staticmethod
    def _mismatch_hint(ctx: ShapeContext, which: tuple[int, ...]) -> str:
        inputs = ctx.layer.inputs
        if any(
            i < len(inputs) and inputs[i].producer is not None and inputs[i].producer.type == "Crop"
            for i in which
        ):
            return "check the Crop offset/axis that produces one of them"
        return "Eltwise needs identical shapes; align them with a Crop (or fix the upstream layers)"

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        p, n = ctx.param, len(ctx.bottoms)
        if p.operation == _OP.PROD:
            return (n - 1) * count(tops[0])
        if p.operation == _OP.SUM and any(c != 1 for c in p.coeff):
            return n * count(tops[0])
        return 0

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p, xs = ctx.param, ctx.inputs
        if p.operation == _OP.PROD:
            return [reduce(lambda a, b: ctx.call(torch.mul, a, b), xs)]
        if p.operation == _OP.MAX:
            from protocaffe.lower.caffe_grad import eltwise_max  # Caffe's tie rule

            return [ctx.call(eltwise_max, *xs)]
        coeff = list(p.coeff) or [1.0] * len(xs)
        acc = xs[0] if coeff[0] == 1 else ctx.call(torch.mul, xs[0], coeff[0])
        for x, c in zip(xs[1:], coeff[1:], strict=True):
            acc = ctx.call(torch.add, acc, x) if c == 1 else ctx.call(torch.add, acc, x, alpha=c)
        return [acc]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        p = ctx.param
        xs = [x.astype(np.float64) for x in inputs]
        if p.operation == _OP.PROD:
            y = reduce(np.multiply, xs)
        elif p.operation == _OP.MAX:
            y = reduce(np.maximum, xs)
        else:
            coeff = list(p.coeff) or [1.0] * len(xs)
            y = sum(c * x for c, x in zip(coeff, xs, strict=True))
        return [np.asarray(y).astype(inputs[0].dtype)]
