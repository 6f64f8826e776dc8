"""Shared geometry of the sliding-window layers: Convolution, Deconvolution, Im2col, Pooling, SPP.

Caffe spreads a window's geometry over two spellings: repeated fields (`kernel_size`, `pad`,
`stride`, `dilation`; one value or one per spatial axis) and the 2-D-only `kernel_h/kernel_w`,
`pad_h/pad_w`, `stride_h/stride_w`. `conv_window` reads ConvolutionParameter the way
BaseConvolutionLayer::LayerSetUp does; `pool_window` reads PoolingParameter the way
PoolingLayer::LayerSetUp does. Both keep, per axis, the field that gave each value, so that an
error about one axis points at the field that set it.

The numeric helpers (`caffe_pool2d`, `im2col_nd`, `pool2d_reference`) are shared by the
lowerings and the numpy oracles of several layers. Lowering helpers import torch lazily.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from protocaffe.diagnostics import Diagnostic
from protocaffe.layers.base import Affine, LayerError, Shape, has_field, shape_str
from protocaffe.lazy import F, np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.layers.base import LowerContext, ShapeContext

FieldPath = tuple[str | int, ...]
Fail = Callable[..., NoReturn]
FLT_MAX = 3.4028234663852886e38  # float(np.finfo(np.float32).max), spelled out: no numpy at import

# Pooling methods, numbered as in caffe.proto (PoolingParameter.PoolMethod, SPPParameter too).
MAX, AVE, STOCHASTIC = 0, 1, 2
POOL_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def _unchecked(message: str, *field: Any, hint: str | None = None) -> NoReturn:
    # Lowerings re-read geometry that the shape pass has already validated.
    raise AssertionError(f"geometry should have been rejected by the shape pass: {message}")


def axis_name(i: int, nsp: int) -> str:
    return ("height", "width")[i] if nsp == 2 else f"spatial axis {i}"


def lower_fail(ctx: LowerContext, message: str) -> NoReturn:
    """A lowering that cannot handle a valid Caffe configuration reports it as a diagnostic."""
    layer = ctx.layer
    text = f"{layer.type} '{layer.name}': {message}"
    raise LayerError([Diagnostic("error", text, layer.span)])


@dataclass(frozen=True)
class Window:
    """Per-spatial-axis geometry of a sliding window, plus the field that set each value."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]
    fields: dict[str, tuple[FieldPath, ...]]

    @property
    def extent(self) -> tuple[int, ...]:
        """Dilated kernel extent d*(k-1)+1 per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation, strict=True))

    def affine(self, deconv: bool = False) -> Affine | None:
        """FCN coord_map of the window: top y -> bottom s*y + (k_eff-1)/2 - p (inverse for
        deconv). Affine is isotropic, so the map is undefined when axes differ."""
        if len(set(zip(self.stride, self.pad, self.extent, strict=True))) != 1:
            return None
        s, p, e = self.stride[0], self.pad[0], self.extent[0]
        if deconv:
            return Affine(1.0 / s, (p - (e - 1) / 2) / s)
        return Affine(float(s), (e - 1) / 2 - p)


def _nd_values(
    param: Any,
    fail: Fail,
    nsp: int,
    name: str,
    hw: tuple[str, str] | None,
    default: int | None,
) -> tuple[tuple[int, ...], tuple[FieldPath, ...]]:
    """One value per spatial axis from a repeated field or its _h/_w pair (Caffe's rules)."""
    if hw and (has_field(param, hw[0]) or has_field(param, hw[1])):
        given = hw[0] if has_field(param, hw[0]) else hw[1]
        if nsp != 2:
            fail(
                f"{hw[0]}/{hw[1]} can only be used with 2 spatial axes, but the input has {nsp}",
                given,
                hint=f"use repeated '{name}' (one value per spatial axis)",
            )
        if len(getattr(param, name)):
            fail(f"set either {name} or {hw[0]}/{hw[1]}, not both", given)
        missing = [f for f in hw if not has_field(param, f)]
        if missing and default != 0:  # an unset pad_h/pad_w is 0, which Caffe accepts
            fail(f"{hw[0]} and {hw[1]} go together; {missing[0]} is missing", given)
        return (getattr(param, hw[0]), getattr(param, hw[1])), ((hw[0],), (hw[1],))
    values = list(getattr(param, name))
    if not values:
        if default is None and nsp > 0:
            alt = f" (or {hw[0]} and {hw[1]})" if hw else ""
            fail(f"{name} is required{alt}")
        return (default or 0,) * nsp, ((),) * nsp
    if len(values) not in (1, nsp):
        fail(
            f"{name} is given {len(values)} times for {nsp} spatial axes; "
            "give it once or once per spatial axis",
            name,
            min(len(values), nsp) if len(values) > nsp else 0,
        )
    if len(values) == 1:
        return (values[0],) * nsp, ((name, 0),) * nsp
    return tuple(values), tuple((name, i) for i in range(nsp))


def _check_positive(
    fail: Fail, what: str, values: Sequence[int], fields: Sequence[FieldPath]
) -> None:
    for i, (v, f) in enumerate(zip(values, fields, strict=True)):
        if v <= 0:
            name = f[0] if f else what
            axis = f" ({axis_name(i, len(values))})" if len(values) > 1 and len(f) != 1 else ""
            fail(f"{name}{axis} must be positive, got {v}", *f)


def conv_window(param: Any, nsp: int, fail: Fail = _unchecked) -> Window:
    """ConvolutionParameter geometry for `nsp` spatial axes (BaseConvolutionLayer::LayerSetUp)."""
    kernel, kf = _nd_values(param, fail, nsp, "kernel_size", ("kernel_h", "kernel_w"), None)
    stride, sf = _nd_values(param, fail, nsp, "stride", ("stride_h", "stride_w"), 1)
    pad, pf = _nd_values(param, fail, nsp, "pad", ("pad_h", "pad_w"), 0)
    dilation, df = _nd_values(param, fail, nsp, "dilation", None, 1)
    _check_positive(fail, "kernel_size", kernel, kf)
    _check_positive(fail, "stride", stride, sf)
    _check_positive(fail, "dilation", dilation, df)
    fields = {"kernel": kf, "stride": sf, "pad": pf, "dilation": df}
    return Window(kernel, stride, pad, dilation, fields)


def pool_window(param: Any, hw: Sequence[int], fail: Fail = _unchecked) -> Window:
    """PoolingParameter geometry (PoolingLayer::LayerSetUp), for a 4-D input of extent `hw`."""

    def either(name: str, h: str, w: str) -> bool:
        """Caffe's rule: `name` alone, or both `h` and `w` and not `name`."""
        has, has_h, has_w = has_field(param, name), has_field(param, h), has_field(param, w)
        if has and (has_h or has_w):
            fail(f"set either {name} or {h}/{w}, not both", h if has_h else w)
        if has_h != has_w:
            fail(f"{h} and {w} go together; {w if has_h else h} is missing", h if has_h else w)
        return has_h

    if param.global_pooling:
        given = [f for f in ("kernel_size", "kernel_h", "kernel_w") if has_field(param, f)]
        if given:
            fail("global_pooling takes the whole input; do not set a kernel size", given[0])
        kernel, kf = (hw[0], hw[1]), ((), ())
    elif either("kernel_size", "kernel_h", "kernel_w"):
        kernel, kf = (param.kernel_h, param.kernel_w), (("kernel_h",), ("kernel_w",))
    elif has_field(param, "kernel_size"):
        kernel, kf = (param.kernel_size,) * 2, (("kernel_size",),) * 2
    else:
        fail("kernel_size (or kernel_h and kernel_w) is required", hint="or set global_pooling")
    if either("pad", "pad_h", "pad_w"):
        pad, pf = (param.pad_h, param.pad_w), (("pad_h",), ("pad_w",))
    else:
        pad, pf = (param.pad,) * 2, (("pad",),) * 2
    if either("stride", "stride_h", "stride_w"):
        stride, sf = (param.stride_h, param.stride_w), (("stride_h",), ("stride_w",))
    else:
        stride, sf = (param.stride,) * 2, (("stride",),) * 2
    _check_positive(fail, "kernel_size", kernel, kf)
    _check_positive(fail, "stride", stride, sf)
    if param.global_pooling and (any(pad) or any(s != 1 for s in stride)):
        bad = pf[0] if any(pad) else sf[0]
        fail("global_pooling allows only pad 0 and stride 1", *bad)
    if any(pad):
        if param.pool not in (MAX, AVE):
            fail(
                "padding is implemented only for MAX and AVE pooling, "
                f"not {POOL_NAMES.get(param.pool, param.pool)}",
                *pf[0],
            )
        for i in range(2):
            if pad[i] >= kernel[i]:
                fail(
                    f"pad {pad[i]} must be smaller than the kernel {kernel[i]} ({axis_name(i, 2)})",
                    *pf[i],
                )
    fields = {"kernel": kf, "stride": sf, "pad": pf, "dilation": ((), ())}
    return Window(kernel, stride, pad, (1, 1), fields)


def conv_out(size: int, extent: int, stride: int, pad: int) -> int:
    """Convolution/Im2col output extent; the caller has checked size + 2*pad >= extent."""
    return (size + 2 * pad - extent) // stride + 1


def deconv_out(size: int, extent: int, stride: int, pad: int) -> int:
    return stride * (size - 1) + extent - 2 * pad


def pool_out(
    size: int, kernel: int, stride: int, pad: int, ceil: bool = True, clip: bool | None = None
) -> int:
    """PoolingLayer::Reshape: ceil (or floor) rounding, then the clip rule when padded.

    Caffe applies the clip rule on both axes when *either* pad_h or pad_w is non-zero
    (`if (pad_h_ || pad_w_)`), so `clip` is the layer's "any pad" flag; it defaults to
    `pad > 0` for callers that pool one axis at a time.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if clip is None:
        clip = pad > 0
    if clip and (out - 1) * stride >= size + pad:
        out -= 1  # the last window would start in the padding: Caffe drops it
    return out


def explain_window(window: Window, spatial: Sequence[int], deconv: bool = False) -> list[str]:
    """`--explain` lines: each spatial axis's output size formula with the numbers filled in."""
    lines = []
    for i, n in enumerate(spatial):
        k, d, s, p, e = (
            window.kernel[i],
            window.dilation[i],
            window.stride[i],
            window.pad[i],
            window.extent[i],
        )
        kernel = f"{e}" if d == 1 else f"({d}*({k}-1)+1)"
        if deconv:
            out = deconv_out(n, e, s, p)
            formula = f"{s}*({n} - 1) + {kernel} - 2*{p} = {out}"
        else:
            out = conv_out(n, e, s, p)
            formula = f"({n} + 2*{p} - {kernel}) // {s} + 1 = {out}"
        lines.append(f"{axis_name(i, len(spatial))}: {formula}")
    return lines


def check_window_fits(
    ctx: ShapeContext, window: Window, spatial: Sequence[int], bottom: int = 0
) -> None:
    """Convolution-style check: the dilated kernel must fit in the padded input, per axis."""
    nsp = len(spatial)
    for i, (n, k, e, p) in enumerate(
        zip(spatial, window.kernel, window.extent, window.pad, strict=True)
    ):
        if n + 2 * p < e:
            where = f" on the {axis_name(i, nsp)} axis" if nsp > 1 else ""
            fail_field = window.fields["kernel"][i]
            ctx.fail(
                f"kernel {k} (dilated {e}) is larger than the padded input {n + 2 * p} "
                f"(input {n} + 2*{p} pad){where} of bottom '{ctx.layer.bottoms[bottom]}' "
                f"({shape_str(ctx.bottoms[bottom])})",
                *fail_field,
                hint="use a smaller kernel or dilation, more padding, or a larger input",
            )


def same_shape_bottoms(ctx: ShapeContext) -> None:
    """Layers whose bottom/top pairs share one set of weights need equal bottom shapes."""
    tops, bottoms = ctx.layer.tops, ctx.layer.bottoms
    if len(tops) != len(bottoms):
        ctx.fail(
            f"needs one top per bottom, got {len(bottoms)} bottoms and {len(tops)} tops", "top"
        )
    for name, shape in zip(bottoms[1:], ctx.bottoms[1:], strict=True):
        if shape != ctx.bottoms[0]:
            ctx.fail(
                f"all bottoms must have the same shape: '{bottoms[0]}' is "
                f"{shape_str(ctx.bottoms[0])} but '{name}' is {shape_str(shape)}",
                "bottom",
            )


# ---------------------------------------------------------------------------------------------
# Lowering helpers (torch imported lazily)


def as_batch(ctx: LowerContext, x: fx.Node, shape: Shape, axis: int) -> fx.Node:
    """View a blob whose channel axis is `axis` as (count(0, axis), C, *spatial)."""
    if axis == 1:
        return x
    return ctx.call(torch.reshape, x, (-1, *shape[axis:]))


def from_batch(ctx: LowerContext, y: fx.Node, top: Shape, axis: int) -> fx.Node:
    return y if axis == 1 else ctx.call(torch.reshape, y, tuple(top))


def torch_pool_matches(size: int, k: int, s: int, p: int, out: int, ceil: bool) -> bool:
    """Whether F.max_pool2d/avg_pool2d give Caffe's window set on this axis.

    PyTorch clips the last window whenever ceil_mode is set (Caffe only when pad > 0), rejects
    pad > k/2 (Caffe allows pad < k) and kernels larger than the padded input.
    """
    span = size + 2 * p - k
    if 2 * p > k or span < 0:
        return False
    torch_out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (torch_out - 1) * s >= size + p:
        torch_out -= 1
    return torch_out == out


def caffe_pool2d(
    x: Any,
    method: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    out: tuple[int, int],
    train: bool = False,
    return_mask: bool = False,
) -> Any:
    """Caffe's pooling on an NCHW tensor for any geometry Caffe accepts.

    Pads explicitly so that every window Caffe computes exists, including windows that start
    in the padding or lie wholly outside the image (pad 0, stride > kernel, ceil rounding):
      - MAX pads with -FLT_MAX, which is what Caffe outputs for an empty window;
      - AVE sums zero-padded windows and divides by Caffe's pool_size, the window clipped to
        [-pad, size+pad) (0/0 = NaN and 0/negative = -0 where Caffe gets them too);
      - STOCHASTIC (no padding): at TEST the probability-weighted mean sum(x^2)/sum(x), 0 when
        sum(x) <= 0; at TRAIN one sample per window with probability x/sum(x).
    With return_mask, MAX also returns Caffe's mask top: the argmax's flat index h*W+w in the
    input plane as float, or -1 for an empty window.
    """
    size = x.shape[-2:]
    extra = [
        max(0, (o - 1) * s + k - n - p)
        for o, s, k, n, p in zip(out, stride, kernel, size, pad, strict=True)
    ]
    border = (pad[1], extra[1], pad[0], extra[0])
    if method == MAX:
        # -FLT_MAX, or the lowest value of a narrower dtype (half, bfloat16) holding x
        xp = F.pad(x, border, value=max(-FLT_MAX, torch.finfo(x.dtype).min))
        y, idx = F.max_pool2d(xp, kernel, stride, return_indices=True)
        y = y[..., : out[0], : out[1]]
        if not return_mask:
            return y
        width = xp.shape[-1]
        hh, ww = (
            idx[..., : out[0], : out[1]] // width - pad[0],
            idx[..., : out[0], : out[1]] % width - pad[1],
        )
        inside = (hh >= 0) & (hh < size[0]) & (ww >= 0) & (ww < size[1])
        mask = torch.where(inside, hh * size[1] + ww, torch.full_like(hh, -1))
        return y, mask.to(x.dtype)
    xp = F.pad(x, border)
    if method == AVE:
        total = F.avg_pool2d(xp, kernel, stride, divisor_override=1)[..., : out[0], : out[1]]
        sizes = [
            [min(o * s - p + k, n + p) - (o * s - p) for o in range(m)]
            for m, s, p, k, n in zip(out, stride, pad, kernel, size, strict=True)
        ]
        divisor = torch.tensor(
            [[a * b for b in sizes[1]] for a in sizes[0]], dtype=x.dtype, device=x.device
        )
        return total / divisor
    if train:
        return _stochastic_sample(xp, kernel, stride, out, size)
    total = F.avg_pool2d(xp, kernel, stride, divisor_override=1)[..., : out[0], : out[1]]
    squares = F.avg_pool2d(xp * xp, kernel, stride, divisor_override=1)[..., : out[0], : out[1]]
    return torch.where(total > 0, squares / total, torch.zeros_like(total))


def _stochastic_sample(xp: Any, kernel: Any, stride: Any, out: Any, size: Any) -> Any:
    """Caffe's training-time stochastic pooling: pick the first in-image position whose running
    sum reaches u*sum(window), u ~ U[0, 1)."""
    n, c = xp.shape[:2]
    cols = F.unfold(xp, kernel, stride=stride).view(n, c, kernel[0] * kernel[1], -1)
    ones = torch.ones((1, 1, *size), dtype=xp.dtype, device=xp.device)
    inside = F.unfold(
        F.pad(ones, (0, xp.shape[-1] - size[1], 0, xp.shape[-2] - size[0])), kernel, stride=stride
    )
    inside = inside.view(1, 1, kernel[0] * kernel[1], -1) > 0
    running = cols.cumsum(2)
    threshold = torch.rand_like(running[:, :, :1]) * running[:, :, -1:]
    hit = (running >= threshold) & inside
    first = hit.to(torch.uint8).argmax(2, keepdim=True)
    y = cols.gather(2, first) * hit.any(2, keepdim=True)
    grid = (xp.shape[-2] - kernel[0]) // stride[0] + 1, (xp.shape[-1] - kernel[1]) // stride[1] + 1
    return y.view(n, c, *grid)[..., : out[0], : out[1]]


def pool_nodes(
    ctx: LowerContext,
    x: fx.Node,
    method: int,
    window: Window,
    size: Sequence[int],
    out: Sequence[int],
    ceil: bool,
    return_mask: bool = False,
) -> list[fx.Node]:
    """Emit Caffe pooling: PyTorch's fused kernels when they agree, else `caffe_pool2d`."""
    k, p = window.kernel, window.pad
    # A stride past the padded input (2^31 from a hostile file) leaves every window after the
    # first wholly outside it, where any such stride gives the same (empty) windows: use the
    # smallest, so that PyTorch's 32-bit index arithmetic and the padding stay in range.
    s = [min(window.stride[i], size[i] + 2 * p[i] + k[i]) for i in range(2)]
    fast = method in (MAX, AVE) and all(
        torch_pool_matches(size[i], k[i], s[i], p[i], out[i], ceil) for i in range(2)
    )
    if fast and method == MAX and return_mask:
        both = ctx.call(F.max_pool2d, x, k, s, p, ceil_mode=ceil, return_indices=True)
        y = ctx.call(operator.getitem, both, 0)
        mask = ctx.call(_index_to_float, ctx.call(operator.getitem, both, 1), y)
        return [y, mask]
    if fast and method == MAX:
        return [ctx.call(F.max_pool2d, x, k, s, p, ceil_mode=ceil)]
    if fast:
        return [ctx.call(F.avg_pool2d, x, k, s, p, ceil_mode=ceil, count_include_pad=True)]
    args = (x, method, tuple(k), tuple(s), tuple(p), tuple(out))
    if return_mask:
        both = ctx.call(caffe_pool2d, *args, return_mask=True)
        return [ctx.call(operator.getitem, both, 0), ctx.call(operator.getitem, both, 1)]
    return [ctx.call(caffe_pool2d, *args, train=ctx.phase == 0)]


def _index_to_float(index: Any, like: Any) -> Any:
    return index.to(like.dtype)


# ---------------------------------------------------------------------------------------------
# numpy oracles shared by several layers (mirror Caffe's CPU loops)


def im2col_nd(x: np.ndarray, window: Window, out: Sequence[int]) -> np.ndarray:
    """Caffe's im2col for one image: (C, *spatial) -> (C*prod(k), *out), rows ordered (c, k...)."""
    nsp = len(out)
    padded = np.pad(x, [(0, 0)] + [(p, p) for p in window.pad])
    rows = []
    for offs in itertools.product(*(range(k) for k in window.kernel)):
        index = tuple(
            slice(o * d, o * d + s * (m - 1) + 1, s)
            for o, d, s, m in zip(offs, window.dilation, window.stride, out, strict=True)
        )
        rows.append(padded[(slice(None), *index)])
    cols = np.stack(rows, axis=1)  # (C, prod(k), *out)
    return cols.reshape(x.shape[0] * math.prod(window.kernel), *out[:nsp])


def col2im_nd(cols: np.ndarray, window: Window, channels: int, size: Sequence[int]) -> np.ndarray:
    """Caffe's col2im: scatter-add columns (C*prod(k), *in) back into an image (C, *size)."""
    grid = cols.shape[1:]
    padded = np.zeros((channels, *(n + 2 * p for n, p in zip(size, window.pad, strict=True))))
    cols = cols.reshape(channels, math.prod(window.kernel), *grid)
    for j, offs in enumerate(itertools.product(*(range(k) for k in window.kernel))):
        index = tuple(
            slice(o * d, o * d + s * (m - 1) + 1, s)
            for o, d, s, m in zip(offs, window.dilation, window.stride, grid, strict=True)
        )
        padded[(slice(None), *index)] += cols[:, j]
    crop = tuple(slice(p, p + n) for p, n in zip(window.pad, size, strict=True))
    return padded[(slice(None), *crop)]


def pool2d_reference(
    x: np.ndarray, method: int, window: Window, out: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """PoolingLayer::Forward_cpu (and the GPU test-time STOCHASTIC kernel) on (N, C, H, W).

    Returns (top, mask); mask is MAX's argmax index h*W+w (-1 for an empty window)."""
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.pad
    n, c, height, width = x.shape
    top = np.zeros((n, c, *out), dtype=np.float32)
    mask = np.full((n, c, *out), -1.0, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for oh, ow in itertools.product(range(out[0]), range(out[1])):
            hs, ws = oh * sh - ph, ow * sw - pw
            if method == MAX:
                he, we = min(hs + kh, height), min(ws + kw, width)
                best = np.full((n, c), -FLT_MAX, dtype=np.float32)
                arg = np.full((n, c), -1.0, dtype=np.float32)
                for h in range(max(hs, 0), he):
                    for w in range(max(ws, 0), we):
                        better = x[:, :, h, w] > best
                        best = np.where(better, x[:, :, h, w], best)
                        arg = np.where(better, float(h * width + w), arg)
                top[:, :, oh, ow], mask[:, :, oh, ow] = best, arg
            elif method == AVE:
                he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
                pool_size = (he - hs) * (we - ws)
                acc = np.zeros((n, c), dtype=np.float32)
                for h in range(max(hs, 0), min(he, height)):
                    for w in range(max(ws, 0), min(we, width)):
                        acc += x[:, :, h, w]
                top[:, :, oh, ow] = acc / np.float32(pool_size)
            else:  # STOCHASTIC at test time (no padding allowed)
                win = x[:, :, hs : min(hs + kh, height), ws : min(ws + kw, width)]
                total = win.sum(axis=(2, 3), dtype=np.float32)
                squares = (win * win).sum(axis=(2, 3), dtype=np.float32)
                top[:, :, oh, ow] = np.where(total > 0, squares / total, 0)
    return top, mask
