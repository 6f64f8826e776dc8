"""The colorization Caffe forks' training layers (richzhang/colorization and its descendants,
e.g. colorization_flow_caffe): `ImageDataModify` and `SoftmaxCrossEntropyLoss`.

- `ImageDataModify` reads a list of images like ImageData but without labels (the net derives
  its L and ab targets from the colour image itself); its params are `image_data_modify_param`,
  ImageDataParameter's fields. Top: data N x C x H x W (C = 3 unless is_color is false), with
  H x W from transform_param.crop_size, else new_height x new_width, else --shape. A second
  top, if a net gives one, is the per-image label (N) as in ImageData.
- `SoftmaxCrossEntropyLoss`: softmax of bottom[0] over channels, then -sum(target * log p)
  against bottom[1], a per-pixel target distribution of the same N x C x H x W shape. The
  forks that define it disagree on the normaliser (N; N * H * W; LossParameter's) and none of
  their sources says which one a given train_val was trained with, so protocaffe checks its
  shapes but does not run it (a located "no PyTorch lowering" error at `run`/`train`).

The forks' caffe.proto is not published with these nets, so `image_data_modify_param` gets a
private extension number (text files read it by name; binaries keep only names and blobs).
"""

from __future__ import annotations

from protocaffe.layers.base import LayerDef, Shape, ShapeContext, register, shape_str
from protocaffe.layers.data import (
    Guess,
    _Input,
    _positive,
    _template,
    check_resize_pair,
    resolve,
)
from protocaffe.proto.schema import Field, declare_message

_FORK = ("colorization",)

ImageDataModifyParameter = declare_message(
    "ImageDataModifyParameter",
    # ImageDataParameter's fields and numbers (the fork's message is its copy).
    Field("source", 1, "string"),
    Field("batch_size", 4, "uint32", default=1),
    Field("rand_skip", 7, "uint32", default=0),
    Field("shuffle", 8, "bool", default=False),
    Field("new_height", 9, "uint32", default=0),
    Field("new_width", 10, "uint32", default=0),
    Field("is_color", 11, "bool", default=True),
    Field("scale", 2, "float", default=1),
    Field("mean_file", 3, "string"),
    Field("crop_size", 5, "uint32", default=0),
    Field("mirror", 6, "bool", default=False),
    Field("root_folder", 12, "string", default=""),
    param="image_data_modify_param",
    dialects=_FORK,
)


@register
class ImageDataModify(_Input):
    """The colorization forks' unlabelled image-list reader: data N x C x H x W."""

    type = "ImageDataModify"
    param_field = "image_data_modify_param"
    tops = (1, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        check_resize_pair(ctx)
        n, c = p.batch_size, 3 if p.is_color else 1
        if not all(t in ctx.overrides for t in ctx.layer.tops):
            _positive(n, ctx, "batch_size", "batch_size")
        crop = ctx.layer.proto.transform_param.crop_size
        h, w = (crop, crop) if crop else (p.new_height, p.new_width)
        data: Guess = (n, c, h, w) if h > 0 else _template(n, c, h, w)
        why = "the image size is read from the first image at run time"
        return resolve(ctx, [data, (n,)][: len(ctx.layer.tops)], why, "source")


@register
class SoftmaxCrossEntropyLoss(LayerDef):
    """Softmax over channels against a target distribution of the same shape; scalar loss."""

    type = "SoftmaxCrossEntropyLoss"
    param_field = "loss_param"
    is_loss = True
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        scores, target = ctx.bottoms
        if scores != target:
            names = ctx.layer.bottoms
            ctx.fail(
                f"'{names[0]}' ({shape_str(scores)}) and the target '{names[1]}' "
                f"({shape_str(target)}) must have the same shape (one probability per class "
                "and position)",
                "bottom",
                1,
            )
        if len(scores) < 2:
            ctx.fail(f"needs a channel axis (N, C, ...), got {shape_str(scores)}", "bottom", 0)
        return [()]

    def explain(self, ctx: ShapeContext) -> list[str]:
        return [
            "loss = -sum(target * log softmax_C(scores)) / normaliser; the forks disagree on "
            "the normaliser, so protocaffe checks shapes only (no lowering)"
        ]
