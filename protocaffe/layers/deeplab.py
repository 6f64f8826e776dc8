"""DeepLab v1 (DeepLab-Context): the V1-format fork's own layer types and fields.

- `type: INTERP` and the other V1 enum names DeepLab v1 added (IMAGE_SEG_DATA, PADDING,
  MAT_WRITE, SEG_ACCURACY, UNIQUE_LABEL) parse into `fork_type`, and the V1 -> V2 upgrade turns
  them into type strings (proto/dialects.py lists them); INTERP is Interp (interp.py).
- ConvolutionParameter `hole` / `hole_h` / `hole_w` is BVLC's `dilation`; the upgrade renames
  it (with a note).
- `Padding` (padding_param pad_beg, pad_end: both >= 0 pads with zeros, both <= 0 crops):
  top[h, w] = bottom[h - pad_beg, w - pad_beg], H_out = H + pad_beg + pad_end.
- `ImageSegData`: an image + segmentation-label reader; tops data N x C x crop x crop, label
  N x 1 x crop x crop and data_dim N x 1 x 1 x 2 (each image's original height and width).
- `MatWrite`: writes its bottom to .mat files in Caffe; here a sink that writes nothing.
- `strict_dim` (V1LayerParameter) only relaxed a check of DeepLab's own convolution code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocaffe.layers.base import LayerDef, LowerContext, Shape, ShapeContext, register, shape_str
from protocaffe.layers.data import Guess, _Input, _template, resolve
from protocaffe.lazy import F, np
from protocaffe.proto.schema import Enum, Field, declare_message, extend

if TYPE_CHECKING:
    from torch import fx

_V1 = ("deeplab-v1",)

# The V1 `type:` names only forks define, as the type string (textformat stores them here).
extend("V1LayerParameter", Field("fork_type", 1, "string"), dialects=_V1)
for _message in ("V1LayerParameter", "LayerParameter"):  # the upgrade carries it over by name
    extend(_message, Field("strict_dim", 1003, "bool", default=True), dialects=_V1)
extend(
    "ConvolutionParameter",
    Field("hole", 17, "uint32", default=1),
    Field("hole_h", 18, "uint32", default=1),
    Field("hole_w", 19, "uint32", default=1),
    dialects=_V1,
)
declare_message(
    "PaddingParameter",
    Field("pad_beg", 1, "int32", default=0),
    Field("pad_end", 2, "int32", default=0),
    param="padding_param",
)
declare_message(
    "MatWriteParameter",
    Field("prefix", 1, "string"),
    Field("source", 2, "string", default=""),
    Field("strip", 3, "int32", default=0),
    Field("period", 4, "int32", default=1),
    param="mat_write_param",
)
declare_message(
    "SegAccuracyParameter",
    Enum("AccuracyMetric", PixelAccuracy=0, ClassAccuracy=1, PixelIOU=2),
    Field("metric", 1, "AccuracyMetric", default="PixelAccuracy"),
    Field("ignore_label", 2, "int32", repeated=True),
    param="seg_accuracy_param",
)
declare_message(
    "SoftmaxLossParameter",
    Field("weight_source", 16, "string"),
    Field("ignore_label", 2, "int32", repeated=True),
    param="softmaxloss_param",
)


def padding(x: object, pad_beg: int, pad_end: int) -> object:
    """Zero padding (both >= 0) or cropping (both <= 0) of the last two axes."""
    return F.pad(x, (pad_beg, pad_end, pad_beg, pad_end))


@register
class Padding(LayerDef):
    type = "Padding"
    param_field = "padding_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p, x = ctx.param, ctx.bottoms[0]
        if not (p.pad_beg >= 0 and p.pad_end >= 0) and not (p.pad_beg <= 0 and p.pad_end <= 0):
            ctx.fail(
                f"pad_beg {p.pad_beg} and pad_end {p.pad_end} must be both >= 0 (pad) or both "
                "<= 0 (crop)",
                "pad_beg",
            )
        if len(x) != 4:
            ctx.fail(f"bottom '{ctx.layer.bottoms[0]}' ({shape_str(x)}) must be N x C x H x W")
        out = (x[2] + p.pad_beg + p.pad_end, x[3] + p.pad_beg + p.pad_end)
        if min(out) <= 0:
            ctx.fail(f"pad_beg {p.pad_beg} and pad_end {p.pad_end} leave no {x[2]}x{x[3]} input")
        return [(x[0], x[1], *out)]

    def explain(self, ctx: ShapeContext) -> list[str]:
        p = ctx.param
        what = "pads with zeros" if p.pad_beg > 0 or p.pad_end > 0 else "crops"
        return [f"{what}: {p.pad_beg} before, {p.pad_end} after, on height and width"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        return [ctx.call(padding, ctx.inputs[0], p.pad_beg, p.pad_end)]

    def reference(self, ctx, inputs, blobs):
        """PaddingLayer::Forward_cpu's row copies."""
        p, x = ctx.param, inputs[0]
        top = np.zeros(self.shapes(ctx)[0], dtype=x.dtype)
        if p.pad_beg >= 0 and p.pad_end >= 0:
            for h in range(x.shape[2]):
                top[:, :, h + p.pad_beg, p.pad_beg : p.pad_beg + x.shape[3]] = x[:, :, h]
        else:
            for h in range(top.shape[2]):
                top[:, :, h] = x[:, :, h - p.pad_beg, -p.pad_beg : -p.pad_beg + top.shape[3]]
        return [top]


@register
class ImageSegData(_Input):
    """DeepLab's image + label reader; the size is transform_param.crop_size, else the first
    image's (pass --shape)."""

    type = "ImageSegData"
    param_field = "image_data_param"
    tops = (1, 3)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        crop = ctx.layer.proto.transform_param.crop_size
        n, c = p.batch_size, 3 if p.is_color else 1
        known = n > 0 and crop > 0
        guesses: list[Guess] = [
            (n, c, crop, crop) if known else _template(n, c, crop, crop),
            (n, 1, crop, crop) if known else _template(n, 1, crop, crop),
            (n, 1, 1, 2) if n > 0 else _template(n, 1, 1, 2),
        ]
        why = "the image size is read from the first image at run time"
        return resolve(ctx, guesses[: len(ctx.layer.tops)], why, "source")


@register
class MatWrite(LayerDef):
    """Writes its bottom to MATLAB files in DeepLab's Caffe; protocaffe writes nothing."""

    type = "MatWrite"
    param_field = "mat_write_param"
    tops = (0, 0)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        ctx.warn(
            f"writes nothing here: protocaffe does not write .mat files to "
            f"'{ctx.param.prefix}'; use `protocaffe run --save-blobs` for the blob",
            "prefix",
        )
        return []

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return []
