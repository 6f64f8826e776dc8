"""Layers that move, copy or look up data without arithmetic on it.

Concat, Slice, Split, Reshape, Flatten, Tile, Silence, Embed, Parameter, BatchReindex, Filter.
Shape rules follow each layer's Reshape() in BVLC Caffe; errors name the blobs and numbers.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from protocaffe.layers.base import (
    IDENTITY,
    Affine,
    BlobSpec,
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
from protocaffe.lazy import F, torch

if TYPE_CHECKING:
    from torch import fx


def legacy_dim(shape: Shape, index: int) -> int:
    """Caffe's num()/channels()/height()/width(): axes past the end read as 1."""
    return shape[index] if index < len(shape) else 1


def filler(param: object, field: str) -> object | None:
    """A FillerParameter field if set; None means Caffe's default (constant 0)."""
    return getattr(param, field) if param.HasField(field) else None  # type: ignore[attr-defined]


def _deprecated_axis(ctx: ShapeContext, alias: str) -> int:
    """Axis from `axis`, or from its deprecated non-negative alias (concat_dim, slice_dim)."""
    ndim = len(ctx.bottoms[0])
    if ctx.has("axis") and ctx.has(alias):
        ctx.fail(f"either axis or {alias} should be specified, not both", alias)
    if ctx.has(alias):
        axis = getattr(ctx.param, alias)
        if axis >= ndim:
            ctx.fail(
                f"{alias} {axis} is out of range for bottom '{ctx.layer.bottoms[0]}' of shape "
                f"{shape_str(ctx.bottoms[0])} ({ndim} axes; valid: 0..{ndim - 1})",
                alias,
            )
        return axis
    return checked_axis(ctx, ctx.param.axis)


def _spatial_identity(axis: int) -> Affine | None:
    # Joining or cutting along N or C leaves the spatial grid alone; along H/W it does not.
    return IDENTITY if axis < 2 else None


@register
class Concat(LayerDef):
    type = "Concat"
    param_field = "concat_param"
    bottoms = (1, None)
    coord_identity = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        axis = _deprecated_axis(ctx, "concat_dim")
        first, names = ctx.bottoms[0], ctx.layer.bottoms
        out = list(first)
        for i, shape in enumerate(ctx.bottoms[1:], start=1):
            if len(shape) != len(first):
                ctx.fail(
                    f"bottom '{names[i]}' has {len(shape)} axes ({shape_str(shape)}) but "
                    f"'{names[0]}' has {len(first)} ({shape_str(first)}); all inputs must "
                    "have the same number of axes",
                    "bottom",
                    i,
                )
            for j, (a, b) in enumerate(zip(first, shape, strict=True)):
                if j != axis and a != b:
                    ctx.fail(
                        f"bottom '{names[i]}' ({shape_str(shape)}) does not match "
                        f"'{names[0]}' ({shape_str(first)}) at axis {j} ({b} vs {a}); "
                        f"all inputs must have the same shape except at the concat axis {axis}",
                        "bottom",
                        i,
                    )
            out[axis] += shape[axis]
        return [tuple(out)]

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        return _spatial_identity(_deprecated_axis(ctx, "concat_dim"))

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        if len(ctx.inputs) == 1:
            return [ctx.inputs[0]]
        return [ctx.call(torch.cat, list(ctx.inputs), _lower_axis(ctx, "concat_dim"))]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        return [np.concatenate(inputs, axis=_deprecated_axis(ctx, "concat_dim"))]


def _lower_axis(ctx: LowerContext, alias: str) -> int:
    """The (already validated) axis of a Concat/Slice at lowering time."""
    p = ctx.param
    axis = getattr(p, alias) if p.HasField(alias) else p.axis
    return canonical_axis(axis, len(ctx.bottom_shapes[0]))


def _slice_sizes(ctx: ShapeContext, axis: int) -> list[int]:
    shape, tops = ctx.bottoms[0], ctx.layer.tops
    dim, points = shape[axis], list(ctx.param.slice_point)
    if points:
        if len(points) != len(tops) - 1:
            ctx.fail(
                f"{len(points)} slice_point values for {len(tops)} tops; "
                f"give one fewer slice_point than tops ({len(tops) - 1})",
                "slice_point",
            )
        if len(tops) > dim:
            ctx.fail(f"{len(tops)} tops cannot slice axis {axis} of size {dim}", "slice_point")
        sizes, prev = [], 0
        for i, point in enumerate(points):
            if point <= prev:
                ctx.fail(
                    f"slice_point {point} must be greater than the previous one ({prev})",
                    "slice_point",
                    i,
                )
            if point >= dim:
                ctx.fail(
                    f"slice_point {point} is past the end of axis {axis} "
                    f"(size {dim}, bottom '{ctx.layer.bottoms[0]}' is {shape_str(shape)})",
                    "slice_point",
                    i,
                )
            sizes.append(point - prev)
            prev = point
        return [*sizes, dim - prev]
    if dim % len(tops):
        ctx.fail(
            f"{len(tops)} tops do not evenly divide axis {axis} of size {dim} "
            f"(bottom '{ctx.layer.bottoms[0]}' is {shape_str(shape)})",
            hint="give slice_point values to cut the axis unevenly",
        )
    return [dim // len(tops)] * len(tops)


@register
class Slice(LayerDef):
    type = "Slice"
    param_field = "slice_param"
    tops = (1, None)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        axis = _deprecated_axis(ctx, "slice_dim")
        shape = ctx.bottoms[0]
        return [(*shape[:axis], n, *shape[axis + 1 :]) for n in _slice_sizes(ctx, axis)]

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        return _spatial_identity(_deprecated_axis(ctx, "slice_dim"))

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        if len(ctx.top_shapes) == 1:
            return [ctx.inputs[0]]
        axis = _lower_axis(ctx, "slice_dim")
        sizes = [shape[axis] for shape in ctx.top_shapes]
        parts = ctx.call(torch.split, ctx.inputs[0], sizes, axis)
        return [ctx.call(operator.getitem, parts, i) for i in range(len(sizes))]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        axis = _deprecated_axis(ctx, "slice_dim")
        cuts = np.cumsum(_slice_sizes(ctx, axis))[:-1]
        return [np.ascontiguousarray(a) for a in np.split(inputs[0], cuts, axis=axis)]


@register
class Split(LayerDef):
    type = "Split"
    tops = (1, None)
    coord_identity = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        return [ctx.bottoms[0]] * len(ctx.layer.tops)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return [ctx.inputs[0]] * len(ctx.top_shapes)

    def reference(self, ctx, inputs, blobs):
        return [inputs[0].copy() for _ in ctx.layer.tops]


def _no_in_place(ctx: ShapeContext) -> None:
    if ctx.layer.in_place:
        ctx.fail("does not allow in-place computation (top == bottom)", "top", 0)


@register
class Reshape(LayerDef):
    type = "Reshape"
    param_field = "reshape_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _no_in_place(ctx)
        p, bottom = ctx.param, ctx.bottoms[0]
        ndim, total = len(bottom), count(bottom)
        dims = list(p.shape.dim)
        start = p.axis if p.axis >= 0 else ndim + p.axis + 1
        if not 0 <= start <= ndim:
            ctx.fail(
                f"axis {p.axis} is out of range for bottom '{ctx.layer.bottoms[0]}' of shape "
                f"{shape_str(bottom)} ({ndim} axes; valid: {-ndim - 1}..{ndim})",
                "axis",
            )
        if p.num_axes < -1:
            ctx.fail(f"num_axes must be >= 0, or -1 for all; got {p.num_axes}", "num_axes")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if end > ndim:
            ctx.fail(
                f"axis + num_axes = {end} is past the last axis of the {ndim}-axis bottom "
                f"({shape_str(bottom)})",
                "num_axes",
            )
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            ctx.fail("shape contains more than one -1; at most one dim can be inferred", "shape")
        for i, d in enumerate(dims):
            if d < -1:
                ctx.fail(
                    f"shape dim {d} is invalid (use 0 to copy, -1 to infer)", "shape", "dim", i
                )
            if d == 0 and start + i >= ndim:
                ctx.fail(
                    f"shape dim {i} is 0 (copy) but the bottom ({shape_str(bottom)}) has no "
                    f"axis {start + i} to copy",
                    "shape",
                    "dim",
                    i,
                )
        new = [bottom[start + i] if d == 0 else d for i, d in enumerate(dims)]
        out = [*bottom[:start], *new, *bottom[end:]]
        if inferred:
            k = start + inferred[0]
            known = count(out[:k] + out[k + 1 :])
            if known == 0 or total % known:
                ctx.fail(
                    f"cannot infer the -1 dim: bottom count {total} ({shape_str(bottom)}) is "
                    f"not divisible by the product of the other dims ({known})",
                    "shape",
                )
            out[k] = total // known
        if count(out) != total:
            ctx.fail(
                f"output shape {shape_str(out)} has {count(out)} elements but bottom "
                f"'{ctx.layer.bottoms[0]}' ({shape_str(bottom)}) has {total}",
                "shape",
            )
        return [tuple(out)]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return [ctx.call(torch.reshape, ctx.inputs[0], tuple(ctx.top_shapes[0]))]

    def reference(self, ctx, inputs, blobs):
        return [inputs[0].reshape(self.shapes(ctx)[0])]


@register
class Flatten(LayerDef):
    type = "Flatten"
    param_field = "flatten_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _no_in_place(ctx)
        bottom = ctx.bottoms[0]
        start = checked_axis(ctx, ctx.param.axis)
        end = checked_axis(ctx, ctx.param.end_axis, "end_axis")
        if end + 1 < start:
            ctx.fail(f"end_axis ({end}) comes before axis ({start})", "end_axis")
        return [(*bottom[:start], count(bottom[start : end + 1]), *bottom[end + 1 :])]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        # reshape, not torch.flatten: end_axis == axis - 1 inserts a 1, as in Caffe.
        return [ctx.call(torch.reshape, ctx.inputs[0], tuple(ctx.top_shapes[0]))]

    def reference(self, ctx, inputs, blobs):
        return [inputs[0].reshape(self.shapes(ctx)[0])]


@register
class Tile(LayerDef):
    type = "Tile"
    param_field = "tile_param"

    def _axis_tiles(self, ctx: ShapeContext) -> tuple[int, int]:
        axis = checked_axis(ctx, ctx.param.axis)
        if not ctx.has("tiles"):
            ctx.fail("the number of tiles must be specified", hint="add tile_param { tiles: N }")
        if ctx.param.tiles <= 0:
            ctx.fail(f"the number of tiles must be positive, got {ctx.param.tiles}", "tiles")
        return axis, ctx.param.tiles

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        axis, tiles = self._axis_tiles(ctx)
        shape = ctx.bottoms[0]
        return [(*shape[:axis], shape[axis] * tiles, *shape[axis + 1 :])]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        ndim = len(ctx.bottom_shapes[0])
        axis = canonical_axis(ctx.param.axis, ndim)
        reps = tuple(ctx.param.tiles if i == axis else 1 for i in range(ndim))
        return [ctx.call(torch.tile, ctx.inputs[0], reps)]

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        axis, tiles = self._axis_tiles(ctx)
        # Caffe copies the whole block from `axis` on, `tiles` times, per outer index.
        return [np.concatenate([inputs[0]] * tiles, axis=axis)]


@register
class Silence(LayerDef):
    type = "Silence"
    bottoms = (1, None)
    tops = (0, 0)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        return []

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return []

    def reference(self, ctx, inputs, blobs):
        return []


@register
class Embed(LayerDef):
    type = "Embed"
    param_field = "embed_param"

    def _sizes(self, ctx: ShapeContext) -> tuple[int, int]:
        p = ctx.param
        if p.num_output <= 0:
            ctx.fail("num_output must be positive", "num_output")
        if p.input_dim <= 0:
            ctx.fail("input_dim must be positive", "input_dim")
        return p.input_dim, p.num_output

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _, n = self._sizes(ctx)
        return [(*ctx.bottoms[0], n)]

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        k, n = self._sizes(ctx)
        p = ctx.param
        specs = [
            BlobSpec("weight", (k, n), p.weight_filler if p.HasField("weight_filler") else None)
        ]
        if p.bias_term:
            specs.append(
                BlobSpec("bias", (n,), p.bias_filler if p.HasField("bias_filler") else None)
            )
        return specs

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        # Caffe casts each float index with static_cast<int> (truncation), as .long() does.
        index = ctx.call(torch.Tensor.long, ctx.inputs[0])
        out = ctx.call(F.embedding, index, ctx.blob("weight"))
        if ctx.param.bias_term:
            out = ctx.call(operator.add, out, ctx.blob("bias"))
        return [out]

    def reference(self, ctx, inputs, blobs):
        k, _ = self._sizes(ctx)
        index = inputs[0].astype(int)  # truncates toward zero like static_cast<int>
        if index.size and (index.min() < 0 or index.max() >= k):
            raise ValueError(f"embed input out of range [0, {k})")
        out = blobs[0][index]
        return [out + blobs[1] if ctx.param.bias_term else out]


@register
class Parameter(LayerDef):
    """A learnable blob exposed as a top (no bottoms); Caffe leaves it zero until trained."""

    type = "Parameter"
    param_field = "parameter_param"
    bottoms = (0, 0)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        dims = tuple(ctx.param.shape.dim)
        if any(d < 0 for d in dims):
            ctx.fail(f"shape {list(dims)} has a negative dim", "shape")
        return [dims]

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        return [BlobSpec("weight", self.shapes(ctx)[0])]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return [ctx.blob("weight")]

    def reference(self, ctx, inputs, blobs):
        return [blobs[0].copy()]


@register
class BatchReindex(LayerDef):
    """top[i] = bottom[0][bottom[1][i]]: gathers items along the first axis."""

    type = "BatchReindex"
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        data, index = ctx.bottoms
        if len(index) != 1:
            ctx.fail(
                f"the index bottom '{ctx.layer.bottoms[1]}' must have 1 axis, "
                f"got {shape_str(index)}",
                "bottom",
                1,
            )
        return [(index[0], *data[1:])]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        index = ctx.call(torch.Tensor.long, ctx.inputs[1])
        return [ctx.call(torch.index_select, ctx.inputs[0], 0, index)]

    def reference(self, ctx, inputs, blobs):
        data, index = inputs
        index = index.astype(int)
        if index.size and (index.min() < 0 or index.max() >= data.shape[0]):
            raise ValueError(f"index out of range [0, {data.shape[0]})")
        return [data[index]]


@register
class Filter(LayerDef):
    """Keeps the items (first axis) whose selector (the last bottom) is non-zero.

    The kept count depends on the selector's values, so no static rule gives it. We report
    what Caffe's own first Reshape reports: the full first dimension N, an upper bound; the
    lowering returns the true (data-dependent) count at run time. Layers downstream are
    shape-checked against N.
    """

    type = "Filter"
    bottoms = (2, None)
    tops = (1, None)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        names, selector = ctx.layer.bottoms, ctx.bottoms[-1]
        if len(ctx.layer.tops) != len(names) - 1:
            ctx.fail(
                f"{len(ctx.layer.tops)} tops for {len(names)} bottoms; Filter needs one top "
                "per bottom except the last (the selector)",
                "top",
            )
        if any(d != 1 for d in selector[1:]):
            ctx.fail(
                f"selector '{names[-1]}' is {shape_str(selector)}; all its axes but the "
                "first must be 1",
                "bottom",
                len(names) - 1,
            )
        for i, shape in enumerate(ctx.bottoms[:-1]):
            if shape[:1] != selector[:1]:
                ctx.fail(
                    f"bottom '{names[i]}' ({shape_str(shape)}) and selector '{names[-1]}' "
                    f"({shape_str(selector)}) differ in the first axis",
                    "bottom",
                    i,
                )
        ctx.warn(
            f"the first axis of the tops depends on the selector's values at run time; "
            f"shapes here assume all {selector[0]} items pass"
        )
        return list(ctx.bottoms[:-1])

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        selector = ctx.call(torch.flatten, ctx.inputs[-1])
        keep = ctx.call(torch.nonzero, selector)
        keep = ctx.call(torch.flatten, keep)
        return [ctx.call(torch.index_select, x, 0, keep) for x in ctx.inputs[:-1]]

    def reference(self, ctx, inputs, blobs):
        keep = inputs[-1].reshape(len(inputs[-1]), -1)[:, 0] != 0
        return [x[keep] for x in inputs[:-1]]


def as_outer_c_inner(shape: Shape, axis: int) -> tuple[int, int, int]:
    """(outer, channels, inner) around `axis`, the view Caffe's per-axis loops use."""
    return count(shape[:axis]), shape[axis], count(shape[axis + 1 :])


__all__ = ["as_outer_c_inner", "legacy_dim"]
