"""Interp: the bilinear resize of DeepLab v2 and PSPNet (one interp_layer.cpp in both forks).

`interp_param` gives the output size in one of four ways, tried in InterpLayer::Reshape's
order: shrink_factor alone, zoom_factor alone, height and width, shrink then zoom. pad_beg and
pad_end (both <= 0) first crop the input: the effective input starts at (-pad_beg, -pad_beg)
and is H + pad_beg + pad_end tall (the same for the width). The resize is align-corners
bilinear: output row y reads input row y * (H_in - 1) / (H_out - 1), with the ratio computed in
float32 as the fork does; equal sizes copy. OpenCV's importer knows only zoom_factor and
height/width (no shrink_factor, no cropping).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocaffe.layers.base import LayerDef, LowerContext, Shape, ShapeContext, register, shape_str
from protocaffe.lazy import F, np
from protocaffe.proto.schema import Field, declare_message

if TYPE_CHECKING:
    from torch import fx

declare_message(
    "InterpParameter",
    Field("height", 1, "int32", default=0),
    Field("width", 2, "int32", default=0),
    Field("zoom_factor", 3, "int32", default=1),
    Field("shrink_factor", 4, "int32", default=1),
    Field("pad_beg", 5, "int32", default=0),
    Field("pad_end", 6, "int32", default=0),
    param="interp_param",
)


def _positive_factor(ctx: ShapeContext, name: str) -> int:
    value = getattr(ctx.param, name)
    if value < 1:
        ctx.fail(f"{name} must be at least 1, got {value}", name)
    return value


def _shrunk(size: int, shrink: int) -> int:
    return (size - 1) // shrink + 1


def _zoomed(size: int, zoom: int) -> int:
    return size + (size - 1) * (zoom - 1)


def interp_geometry(ctx: ShapeContext) -> tuple[tuple[int, int], tuple[int, int], str]:
    """(effective input H, W), (output H, W) and the rule that gave the output size."""
    p = ctx.param
    x = ctx.bottoms[0]
    if len(x) != 4:
        ctx.fail(
            f"input must have 4 axes (N, C, H, W), but bottom '{ctx.layer.bottoms[0]}' is "
            f"{shape_str(x)}"
        )
    for name in ("pad_beg", "pad_end"):
        if getattr(p, name) > 0:
            ctx.fail(
                f"{name} must be <= 0 (Interp only crops), got {getattr(p, name)}",
                name,
                hint="a negative pad crops that many rows and columns",
            )
    eff = (x[2] + p.pad_beg + p.pad_end, x[3] + p.pad_beg + p.pad_end)
    if min(eff) <= 0:
        ctx.fail(
            f"pad_beg {p.pad_beg} and pad_end {p.pad_end} crop the whole {x[2]}x{x[3]} input",
            "pad_beg" if p.pad_beg else "pad_end",
        )
    shrink, zoom = ctx.has("shrink_factor"), ctx.has("zoom_factor")
    if shrink and not zoom:
        s = _positive_factor(ctx, "shrink_factor")
        return eff, (_shrunk(eff[0], s), _shrunk(eff[1], s)), f"shrink_factor {s}"
    if zoom and not shrink:
        z = _positive_factor(ctx, "zoom_factor")
        return eff, (_zoomed(eff[0], z), _zoomed(eff[1], z)), f"zoom_factor {z}"
    if ctx.has("height") and ctx.has("width"):
        out = (p.height, p.width)
        if min(out) <= 0:
            ctx.fail(f"height and width must be positive, got {p.height}x{p.width}", "height")
        return eff, out, "height/width"
    if shrink and zoom:
        s, z = _positive_factor(ctx, "shrink_factor"), _positive_factor(ctx, "zoom_factor")
        out = tuple(_zoomed(_shrunk(n, s), z) for n in eff)
        return eff, (out[0], out[1]), f"shrink_factor {s}, then zoom_factor {z}"
    ctx.fail(
        "interp_param gives no output size",
        hint="set zoom_factor, shrink_factor, or both height and width",
    )


def caffe_interp(x: Any, pad_beg: int, eff: tuple[int, int], out: tuple[int, int]) -> Any:
    """Crop the effective window, then align-corners bilinear (a copy when sizes are equal)."""
    start = -pad_beg
    x = x[..., start : start + eff[0], start : start + eff[1]]
    if tuple(eff) == tuple(out):
        return x.clone()
    return F.interpolate(x, size=out, mode="bilinear", align_corners=True)


@register
class Interp(LayerDef):
    type = "Interp"
    param_field = "interp_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _, out, _ = interp_geometry(ctx)
        return [(*ctx.bottoms[0][:2], *out)]

    def explain(self, ctx: ShapeContext) -> list[str]:
        eff, out, rule = interp_geometry(ctx)
        x = ctx.bottoms[0]
        lines = [f"{rule}: {eff[0]}x{eff[1]} -> {out[0]}x{out[1]} (align-corners bilinear)"]
        if eff != tuple(x[2:]):
            lines.insert(0, f"input cropped from {x[2]}x{x[3]} to {eff[0]}x{eff[1]}")
        return lines

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        x = ctx.bottom_shapes[0]
        eff = (x[2] + p.pad_beg + p.pad_end, x[3] + p.pad_beg + p.pad_end)
        out = tuple(ctx.top_shapes[0][2:])
        return [ctx.call(caffe_interp, ctx.inputs[0], p.pad_beg, eff, out)]

    def reference(self, ctx, inputs, blobs):
        """caffe_cpu_interp2 (non-packed) over every (n, c) plane."""
        eff, out, _ = interp_geometry(ctx)
        x = inputs[0]
        start = -ctx.param.pad_beg
        src = x[..., start : start + eff[0], start : start + eff[1]].astype(np.float32)
        if eff == out:
            return [src.copy()]
        ratio = [
            np.float32(n - 1) / np.float32(m - 1) if m > 1 else np.float32(0)
            for n, m in zip(eff, out, strict=True)
        ]
        top = np.empty((*x.shape[:2], *out), dtype=np.float32)
        for h2 in range(out[0]):
            h1r = np.float32(ratio[0] * np.float32(h2))
            h1 = int(h1r)
            h1p = 1 if h1 < eff[0] - 1 else 0
            hl1 = np.float32(h1r - h1)
            hl0 = np.float32(1) - hl1
            for w2 in range(out[1]):
                w1r = np.float32(ratio[1] * np.float32(w2))
                w1 = int(w1r)
                w1p = 1 if w1 < eff[1] - 1 else 0
                wl1 = np.float32(w1r - w1)
                wl0 = np.float32(1) - wl1
                top[..., h2, w2] = hl0 * (
                    wl0 * src[..., h1, w1] + wl1 * src[..., h1, w1 + w1p]
                ) + hl1 * (wl0 * src[..., h1 + h1p, w1] + wl1 * src[..., h1 + h1p, w1 + w1p])
        return [top.astype(x.dtype)]
