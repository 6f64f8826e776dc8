"""The SegNet/ENet, PSPNet and YOLO-fork layers that share names: `BN`, `Upsample`, and
SegNet's `DenseImageData` reader.

`BN` means two different layers (both read `bn_param`):
  - SegNet/ENet (alexgkendall/caffe-segnet, TimoSaemann/caffe-enet): 2 blobs, scale and shift
    (1 x C x 1 x 1). bn_mode INFERENCE: y = scale * x + shift (the statistics were folded
    into the blobs by the repo's scripts). bn_mode LEARN (the default): batch statistics at any
    phase, var = E[x^2] - E[x]^2, y = scale * (x - mean) / sqrt(var + 1e-9) + shift; optional
    tops 1 and 2 are the batch mean and variance.
  - PSPNet (hszhao/PSPNet): 4 blobs, slope, bias, running mean, running variance. At TEST or
    with `frozen`: y = slope * (x - mean) / sqrt(var + eps) + bias. At TRAIN: batch statistics
    (biased variance) and moving averages blob <- (1 - momentum) * batch + momentum * blob.
  `bn_variant` tells them apart by the file's evidence (fields, param{} count), else
  --dialect; a BN layer without any evidence is an error that asks for --dialect.

`Upsample` also means two layers (both read `upsample_param`):
  - SegNet/ENet max-unpooling: 2 bottoms, data and the mask top of a MAX Pooling layer (the
    flat argmax h * W + w in the pooling input's plane). Output upsample_h x upsample_w if both
    are given, else H * scale_h - pad_out_h by W * scale_w - pad_out_w (scale default 2).
    Zero-filled, then top[mask[i]] = bottom[i], in order (a later i wins a shared index).
  - YOLO forks (eric612/MobileNet-YOLO): 1 bottom, nearest neighbour, H and W times `scale`
    (default 1).
  The bottom count decides.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from protocaffe.layers.base import (
    BlobSpec,
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    count,
    has_field,
    register,
    shape_str,
)
from protocaffe.layers.data import Guess, _Input, _template, resolve
from protocaffe.lazy import np, torch
from protocaffe.proto import caffe_pb2
from protocaffe.proto.schema import Enum, Field, declare_message

if TYPE_CHECKING:
    from torch import fx

_SEG, _PSP = ("segnet", "enet"), ("pspnet",)
# One message for both forks' BNParameter (their numbers clash; text reads names).
declare_message(
    "BNParameter",
    Enum("BNMode", LEARN=0, INFERENCE=1),
    Enum("Engine", DEFAULT=0, CAFFE=1, CUDNN=2),
    Field("scale_filler", 1, "FillerParameter", dialects=_SEG),
    Field("shift_filler", 2, "FillerParameter", dialects=_SEG),
    Field("bn_mode", 3, "BNMode", default="LEARN", dialects=_SEG),
    Field("slope_filler", 1, "FillerParameter", dialects=_PSP),
    Field("bias_filler", 2, "FillerParameter", dialects=_PSP),
    Field("momentum", 3, "float", default=0.9, dialects=_PSP),
    Field("eps", 4, "float", default=1e-5, dialects=_PSP),
    Field("frozen", 5, "bool", default=False, dialects=_PSP),
    Field("engine", 6, "Engine", default="DEFAULT", dialects=_PSP),
    param="bn_param",
)
# SegNet's scale defaults to 2, the YOLO forks' to 1: the layer reads `scale` only when set.
declare_message(
    "UpsampleParameter",
    Field("scale", 1, "int32"),
    Field("scale_h", 2, "int32", dialects=_SEG),
    Field("scale_w", 3, "int32", dialects=_SEG),
    Field("pad_out_h", 4, "bool", default=False, dialects=_SEG),
    Field("pad_out_w", 5, "bool", default=False, dialects=_SEG),
    Field("upsample_h", 6, "int32", dialects=_SEG),
    Field("upsample_w", 7, "int32", dialects=_SEG),
    param="upsample_param",
)
declare_message(
    "DenseImageDataParameter",
    Field("source", 1, "string"),
    Field("batch_size", 2, "uint32"),
    Field("rand_skip", 3, "uint32", default=0),
    Field("shuffle", 4, "bool", default=False),
    Field("new_height", 5, "uint32", default=0),
    Field("new_width", 6, "uint32", default=0),
    Field("is_color", 7, "bool", default=True),
    Field("mean_file", 8, "string"),
    Field("root_folder", 9, "string", default=""),
    Field("mirror", 10, "bool", default=False),
    Field("crop_width", 11, "uint32", default=0),
    Field("crop_height", 12, "uint32", default=0),
    param="dense_image_data_param",
)

SEGNET, PSPNET = "segnet", "pspnet"
SEGNET_BN_FIELDS = ("bn_mode", "scale_filler", "shift_filler")
PSPNET_BN_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
SEGNET_BN_EPS = 1e-9
LEARN, INFERENCE = 0, 1  # SegNet's BNParameter.BNMode


def _set_fields(param: Any, names: tuple[str, ...]) -> list[str]:
    known = param.DESCRIPTOR.fields_by_name
    return [n for n in names if n in known and has_field(param, n)]


def bn_evidence(layer_proto: Any, param: Any) -> tuple[str, str] | None:
    """(variant, why) from the layer's own text: bn_param fields, then its param{} count."""
    if param is not None:
        seg = _set_fields(param, SEGNET_BN_FIELDS)
        psp = _set_fields(param, PSPNET_BN_FIELDS)
        if seg and not psp:
            return SEGNET, f"bn_param sets {seg[0]}"
        if psp and not seg:
            return PSPNET, f"bn_param sets {psp[0]}"
    specs = len(layer_proto.param)
    if specs == 2:
        return SEGNET, "2 param { } blocks (scale, shift)"
    if specs == 4:
        return PSPNET, "4 param { } blocks (slope, bias, mean, variance)"
    return None


def bn_variant(ctx: ShapeContext, quiet: bool = True) -> str:
    """Which BN this layer is: its own evidence wins, then the net's dialect (--dialect or
    the file's evidence), else an error asking for --dialect. `quiet=False` (the shape rule)
    warns when the layer's evidence overrides the net's dialect."""
    found = bn_evidence(ctx.layer.proto, ctx.param)
    dialect = ctx.dialect
    if found is not None:
        if not quiet and dialect in (SEGNET, PSPNET) and dialect != found[0]:
            ctx.warn(
                f"read as {found[0]}'s BN ({found[1]}), although the net is read as {dialect}",
                hint="the layer's own fields decide; remove them to follow --dialect",
            )
        return found[0]
    if dialect in (SEGNET, PSPNET):
        return dialect
    ctx.fail(
        "BN is SegNet's (2 blobs, scale/shift) or PSPNet's (4 blobs, slope/bias/mean/variance), "
        "and nothing in this layer says which",
        hint="pass --dialect segnet or --dialect pspnet, or write bn_param { bn_mode: INFERENCE } "
        "(SegNet) / 4 param { } blocks (PSPNet)",
    )


def _constant(value: float) -> Any:
    return caffe_pb2.FillerParameter(type="constant", value=value)


def _filler(param: Any, name: str) -> Any:
    return getattr(param, name) if param is not None and _set_fields(param, (name,)) else None


def _per_channel(a: Any, ndim: int) -> Any:
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def segnet_bn_learn(x: Any, scale: Any, shift: Any) -> tuple[Any, Any, Any]:
    """SegNet's LEARN mode: (top, batch mean, batch variance), the variance as E[x^2]-E[x]^2."""
    axes = (0, *range(2, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = (x * x).mean(dim=axes, keepdim=True) - mean * mean
    y = (x - mean) / (var + SEGNET_BN_EPS).sqrt()
    return y * _per_channel(scale, x.dim()) + _per_channel(shift, x.dim()), mean, var


def pspnet_bn(
    x: Any, slope: Any, bias: Any, mean_blob: Any, var_blob: Any, eps: float, batch: bool, m: float
) -> Any:
    """PSPNet's BN; with `batch`, batch statistics and the moving-average update of its blobs."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if batch:
        axes = (0, *range(2, x.dim()))
        mean = x.mean(dim=axes)
        var = (x - mean.reshape(shape)).square().mean(dim=axes)
        with torch.no_grad():
            mean_blob.mul_(m).add_(mean.detach().reshape(mean_blob.shape), alpha=1 - m)
            var_blob.mul_(m).add_(var.detach().reshape(var_blob.shape), alpha=1 - m)
    else:
        mean, var = mean_blob, var_blob
    inv = (var.reshape(shape) + eps).rsqrt()
    return (x - mean.reshape(shape)) * inv * slope.reshape(shape) + bias.reshape(shape)


@register
class BN(LayerDef):
    type = "BN"
    param_field = "bn_param"
    in_place = True
    coord_identity = True
    tops = (1, 3)

    def variant(self, ctx: ShapeContext) -> str:
        return bn_variant(ctx)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        x = ctx.bottoms[0]
        if len(x) < 2:
            ctx.fail(f"bottom '{ctx.layer.bottoms[0]}' of shape {shape_str(x)} has no channels")
        variant = bn_variant(ctx, quiet=False)
        stats = len(ctx.layer.tops) - 1
        if stats and (variant == PSPNET or ctx.param.bn_mode != LEARN):
            ctx.fail(
                "only SegNet's BN in bn_mode LEARN has batch mean/variance tops",
                "top",
                1,
            )
        return [x] + [(1, x[1], 1, 1)] * stats

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        channels = (1, ctx.bottoms[0][1], 1, 1)
        p = ctx.param
        if self.variant(ctx) == SEGNET:
            return [
                BlobSpec("scale", channels, _filler(p, "scale_filler")),
                BlobSpec("shift", channels, _filler(p, "shift_filler")),
            ]
        frozen = p is not None and bool(_set_fields(p, ("frozen",))) and p.frozen
        return [
            BlobSpec("slope", channels, _filler(p, "slope_filler")),
            BlobSpec("bias", channels, _filler(p, "bias_filler")),
            BlobSpec("mean", channels, learnable=False),
            BlobSpec("variance", channels, _constant(1.0 if frozen else 0.0), learnable=False),
        ]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return count(tops[0])

    def blob_count_hint(self, count: int) -> str | None:
        variant = {2: SEGNET, 4: PSPNET}.get(count)
        if variant is None:
            return None
        return f"{count} blobs are {variant}'s BN: pass --dialect {variant}"

    def explain(self, ctx: ShapeContext) -> list[str]:
        found = bn_evidence(ctx.layer.proto, ctx.param)
        why = f" ({found[1]})" if found else " (from --dialect)"
        if self.variant(ctx) == SEGNET:
            mode = "INFERENCE: y = scale*x + shift"
            if ctx.param.bn_mode == LEARN:
                mode = "LEARN: batch statistics, y = scale*(x-mean)/sqrt(var+1e-9) + shift"
            return [f"SegNet BN{why}, {mode}"]
        return [f"PSPNet BN{why}: y = slope*(x-mean)/sqrt(var+eps) + bias"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        x, p = ctx.inputs[0], ctx.param
        # The variant was settled by the shape pass; the blob names say which it chose.
        names = [s.name for s in ctx.layer.blob_specs]
        if names[0] == "scale":
            scale, shift = ctx.blob("scale"), ctx.blob("shift")
            if p.bn_mode == INFERENCE:
                shape = (1, -1) + (1,) * (len(ctx.bottom_shapes[0]) - 2)
                s = ctx.call(torch.reshape, scale, shape)
                b = ctx.call(torch.reshape, shift, shape)
                return [ctx.call(torch.addcmul, b, x, s)]
            both = ctx.call(segnet_bn_learn, x, scale, shift)
            tops = [ctx.call(operator.getitem, both, i) for i in range(3)]
            return tops[: len(ctx.top_shapes)]
        blobs = [ctx.blob(n) for n in ("slope", "bias", "mean", "variance")]
        batch = ctx.phase == caffe_pb2.TRAIN and not p.frozen
        return [ctx.call(pspnet_bn, x, *blobs, p.eps, batch, p.momentum)]

    def reference(self, ctx, inputs, blobs):
        """The forks' Forward_cpu; PSPNet's TRAIN path also updates `blobs` in place."""
        p = ctx.param
        x = inputs[0].astype(np.float64)
        axes = (0, *range(2, x.ndim))
        b = [_per_channel(blob.astype(np.float64), x.ndim) for blob in blobs]
        if self.variant(ctx) == SEGNET:
            if p.bn_mode == INFERENCE:
                return [(b[0] * x + b[1]).astype(inputs[0].dtype)]
            mean = x.mean(axis=axes, keepdims=True)
            var = (x**2).mean(axis=axes, keepdims=True) - mean**2
            y = b[0] * ((x - mean) / np.sqrt(var + SEGNET_BN_EPS)) + b[1]
            stats = [mean.reshape(1, -1, 1, 1), var.reshape(1, -1, 1, 1)]
            return [t.astype(inputs[0].dtype) for t in [y, *stats][: len(ctx.layer.tops)]]
        if ctx.phase == caffe_pb2.TRAIN and not p.frozen:
            mean = x.mean(axis=axes, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
            blobs[2][...] = (1 - p.momentum) * mean.reshape(blobs[2].shape) + p.momentum * blobs[2]
            blobs[3][...] = (1 - p.momentum) * var.reshape(blobs[3].shape) + p.momentum * blobs[3]
        else:
            mean, var = b[2], b[3]
        y = b[0] * ((x - mean) / np.sqrt(var + p.eps)) + b[1]
        return [y.astype(inputs[0].dtype)]


def segnet_upsample_size(ctx: ShapeContext) -> tuple[int, int]:
    """UpsampleLayer::LayerSetUp/Reshape of the SegNet fork, with its CHECKs as errors."""
    p, x = ctx.param, ctx.bottoms[0]
    if ctx.has("upsample_h") and ctx.has("upsample_w"):
        for name in ("upsample_h", "upsample_w"):
            if getattr(p, name) <= 1:
                ctx.fail(f"{name} must be greater than 1, got {getattr(p, name)}", name)
        return p.upsample_h, p.upsample_w
    if ctx.has("scale_h") != ctx.has("scale_w") or (ctx.has("scale_h") and ctx.has("scale")):
        ctx.fail(
            "give upsample_h and upsample_w, or scale, or both scale_h and scale_w",
            "scale_h" if ctx.has("scale_h") else "scale_w" if ctx.has("scale_w") else "scale",
        )
    if ctx.has("scale_h"):
        scale, fields = (p.scale_h, p.scale_w), ("scale_h", "scale_w")
    else:
        s = p.scale if ctx.has("scale") else 2
        scale, fields = (s, s), ("scale", "scale")
    pads = (bool(p.pad_out_h), bool(p.pad_out_w))
    for s, f, pad, name in zip(scale, fields, pads, ("pad_out_h", "pad_out_w"), strict=True):
        if s <= 1:
            ctx.fail(f"{f} must be greater than 1, got {s}", f)
        if pad and s != 2:
            ctx.fail(f"{name} needs a scale of 2, got {s}", name)
    return x[2] * scale[0] - pads[0], x[3] * scale[1] - pads[1]


def max_unpool(x: Any, mask: Any, out: tuple[int, int]) -> Any:
    """Scatter x to mask's flat indices in a zero plane of size `out`; the last i wins."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    index = mask.reshape(n, c, -1).long()
    position = torch.arange(flat.shape[-1], device=x.device).expand_as(index)
    winner = torch.full((n, c, out[0] * out[1]), -1, dtype=torch.long, device=x.device)
    winner = winner.scatter_reduce(2, index, position, "amax")
    picked = flat.gather(2, winner.clamp(min=0))
    top = torch.where(winner >= 0, picked, torch.zeros_like(picked))
    return top.reshape(n, c, *out)


def nearest_upsample(x: Any, scale: int) -> Any:
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


@register
class Upsample(LayerDef):
    type = "Upsample"
    param_field = "upsample_param"
    bottoms = (1, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        x = ctx.bottoms[0]
        names = ctx.layer.bottoms
        if len(ctx.bottoms) == 1:
            scale = ctx.param.scale if ctx.has("scale") else 1
            if scale <= 0:
                ctx.fail(f"scale must be positive, got {scale}", "scale")
            if ctx.dialect == SEGNET:  # the bottom count decides, whatever the file reads as
                ctx.note("one bottom: read as the YOLO forks' nearest-neighbour Upsample")
            if len(x) < 2:
                ctx.fail(f"bottom '{names[0]}' of shape {shape_str(x)} has fewer than 2 axes")
            return [(*x[:-2], x[-2] * scale, x[-1] * scale)]
        mask = ctx.bottoms[1]
        if len(x) != 4 or len(mask) != 4:
            ctx.fail(
                f"bottoms '{names[0]}' ({shape_str(x)}) and '{names[1]}' ({shape_str(mask)}) "
                "must have 4 axes (N, C, H, W)"
            )
        if mask != x:
            ctx.fail(
                f"the mask '{names[1]}' ({shape_str(mask)}) must have the shape of "
                f"'{names[0]}' ({shape_str(x)})",
                "bottom",
                1,
            )
        out = segnet_upsample_size(ctx)
        self.check_mask_source(ctx, out)
        return [(x[0], x[1], *out)]

    @staticmethod
    def check_mask_source(ctx: ShapeContext, out: tuple[int, int]) -> None:
        """The mask holds flat indices into the pooling input's plane: a different size there
        puts values in the wrong places (Caffe only stops on an index past the end)."""
        source = ctx.layer.inputs[1].producer if len(ctx.layer.inputs) > 1 else None
        if source is None or source.type != "Pooling" or source.inputs[0].shape is None:
            return
        plane = tuple(source.inputs[0].shape[2:])
        if plane != tuple(out):
            ctx.warn(
                f"output {out[0]}x{out[1]} differs from the {plane[0]}x{plane[1]} input of "
                f"Pooling '{source.name}', whose mask indexes that plane",
                hint=f"set upsample_h: {plane[0]} and upsample_w: {plane[1]}",
            )

    def explain(self, ctx: ShapeContext) -> list[str]:
        if len(ctx.bottoms) == 1:
            scale = ctx.param.scale if ctx.has("scale") else 1
            return [f"YOLO-fork nearest upsample (1 bottom), scale {scale}"]
        return ["SegNet max-unpooling (2 bottoms: data and pooling mask)"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        if len(ctx.inputs) == 1:
            scale = ctx.param.scale if has_field(ctx.param, "scale") else 1
            return [ctx.call(nearest_upsample, ctx.inputs[0], scale)]
        out = tuple(ctx.top_shapes[0][2:])
        return [ctx.call(max_unpool, ctx.inputs[0], ctx.inputs[1], out)]

    def reference(self, ctx, inputs, blobs):
        """Both forks' Forward_cpu loops."""
        x = inputs[0]
        top = np.zeros(self.shapes(ctx)[0], dtype=x.dtype)
        if len(inputs) == 1:
            scale = top.shape[-1] // x.shape[-1]
            for h in range(top.shape[-2]):
                for w in range(top.shape[-1]):
                    top[..., h, w] = x[..., h // scale, w // scale]
            return [top]
        mask = inputs[1]
        plane = top.shape[2] * top.shape[3]
        for n in range(x.shape[0]):
            for c in range(x.shape[1]):
                dst = top[n, c].reshape(-1)
                for i, (v, idx) in enumerate(
                    zip(x[n, c].reshape(-1), mask[n, c].reshape(-1), strict=True)
                ):
                    if int(idx) >= plane:
                        raise IndexError(f"upsample top index {int(idx)} out of range ({i})")
                    dst[int(idx)] = v
        return [top]


@register
class DenseImageData(_Input):
    """SegNet's image + label-image reader: data N x C x H x W and label N x 1 x H x W.

    H x W is transform_param.crop_size, else crop_height x crop_width, else new_height x
    new_width; without any, the first image decides at run time (pass --input).
    """

    type = "DenseImageData"
    param_field = "dense_image_data_param"
    tops = (1, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        crop = ctx.layer.proto.transform_param.crop_size
        for a, b in (("new_height", "new_width"), ("crop_height", "crop_width")):
            if (getattr(p, a) > 0) != (getattr(p, b) > 0):
                ctx.fail(f"{a} and {b} must be set together", a if getattr(p, a) else b)
        if crop:
            h, w = crop, crop
        elif p.crop_height:
            h, w = p.crop_height, p.crop_width
        else:
            h, w = p.new_height, p.new_width
        n, c = p.batch_size, 3 if p.is_color else 1
        known = n > 0 and h > 0
        data: Guess = (n, c, h, w) if known else _template(n, c, h, w)
        label: Guess = (n, 1, h, w) if known else _template(n, 1, h, w)
        why = "the image size is read from the first image at run time"
        return resolve(ctx, [data, label][: len(ctx.layer.tops)], why, "source")
