"""Crop: cut bottom[0] down to bottom[1]'s size on every axis from `axis` on.

Axes before `axis` keep bottom[0]'s size; axes from `axis` on take bottom[1]'s size, starting
at `offset` (none: 0; one value: the same for every cropped axis; else one per cropped axis).
FCN aligns its score maps this way, with offsets that the coordinate maps determine.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from protocaffe.layers.base import (
    Affine,
    LayerDef,
    Shape,
    ShapeContext,
    canonical_axis,
    checked_axis,
    register,
    shape_str,
)
from protocaffe.lazy import np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext


def crop_offsets(offset: list[int], axis: int, ndim: int) -> list[int]:
    """Per-axis offsets as Crop::Reshape spreads them (0 before `axis`)."""
    if not offset:
        return [0] * ndim
    if len(offset) == 1:
        return [0] * axis + [offset[0]] * (ndim - axis)
    return [0] * axis + list(offset)


@register
class Crop(LayerDef):
    type = "Crop"
    param_field = "crop_param"
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        data, like = ctx.bottoms
        names = ctx.layer.bottoms
        axis = checked_axis(ctx, ctx.param.axis)
        ndim = len(data)
        offset = list(ctx.param.offset)
        if len(offset) > 1 and len(offset) != ndim - axis:
            ctx.fail(
                f"{len(offset)} offsets given for {ndim - axis} cropped axes "
                f"(axes {axis}..{ndim - 1} of '{names[0]}', {shape_str(data)})",
                "offset",
                hint="give one offset for all cropped axes, or exactly one per cropped axis",
            )
        if len(like) < ndim:
            ctx.fail(
                f"reference bottom '{names[1]}' ({shape_str(like)}) has fewer axes than "
                f"'{names[0]}' ({shape_str(data)})",
                "bottom",
            )
        offsets = crop_offsets(offset, axis, ndim)
        for i in range(axis, ndim):
            if data[i] - offsets[i] < like[i]:
                field = ("offset", 0 if len(offset) == 1 else i - axis) if offset else ("axis",)
                ctx.fail(
                    f"crop of axis {i} is out of range: offset {offsets[i]} + size {like[i]} "
                    f"(from '{names[1]}', {shape_str(like)}) = {offsets[i] + like[i]} exceeds "
                    f"{data[i]} (from '{names[0]}', {shape_str(data)})",
                    *field,
                )
        return [(*data[:axis], *like[axis:ndim])]

    def explain(self, ctx: ShapeContext) -> list[str]:
        data, like = ctx.bottoms
        axis = canonical_axis(ctx.param.axis, len(data))
        offsets = crop_offsets(list(ctx.param.offset), axis, len(data))
        return [
            f"axis {i}: [{offsets[i]}:{offsets[i] + like[i]}] of {data[i]} "
            f"(size from '{ctx.layer.bottoms[1]}')"
            for i in range(axis, len(data))
        ]

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        ndim = len(ctx.bottoms[0])
        axis = canonical_axis(ctx.param.axis, ndim)
        spatial = set(crop_offsets(list(ctx.param.offset), axis, ndim)[2:])
        return Affine(1.0, float(spatial.pop())) if len(spatial) == 1 else None

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        # Sizes are read from the reference blob when the code runs, not baked in: an exported
        # graph (ONNX, torch.export) then stays right for other input sizes, as FCN needs.
        data, like = ctx.inputs
        ndim = len(ctx.bottom_shapes[0])
        axis = canonical_axis(ctx.param.axis, ndim)
        offsets = crop_offsets(list(ctx.param.offset), axis, ndim)
        index: list[slice] = [slice(None)] * axis
        for i in range(axis, ndim):
            size = ctx.call(torch.Tensor.size, like, i)
            index.append(slice(offsets[i], ctx.call(operator.add, size, offsets[i])))
        return [ctx.call(operator.getitem, data, tuple(index))]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        return [inputs[0][self._index(ctx.param, ctx.bottoms[0], self.shapes(ctx)[0])].copy()]

    @staticmethod
    def _index(param: Any, bottom: Shape, top: Shape) -> tuple[slice, ...]:
        offsets = crop_offsets(
            list(param.offset), canonical_axis(param.axis, len(bottom)), len(bottom)
        )
        return tuple(slice(o, o + n) for o, n in zip(offsets, top, strict=True))
