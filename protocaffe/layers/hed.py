"""HED's data layer (s9xie/hed): `ImageLabelmapData`, an image + edge-map reader.

It reads image_data_param (BVLC's message); each `source` line is `image_path labelmap_path`.
Tops: data N x C x H x W and the label map N x 1 x H x W (one grey channel, the fork reads
it with is_color 0 and checks it has the image's size). H x W is transform_param.crop_size,
else new_height x new_width, else the first image's size (the fork's setup reads it), which
protocaffe takes from the image header when `source` exists and --shape does not replace it.

The fork's reader divides each label pixel by 255 in uint8 (rounding, so an edge marked by
fewer than half the annotators becomes 0). protocaffe reads no batches for this layer: its tops
are the module's inputs, fed by the caller (`run --input`).
"""

from __future__ import annotations

from protocaffe.diagnostics import input_error
from protocaffe.layers.base import Shape, ShapeContext, register
from protocaffe.layers.data import (
    Guess,
    _first_record,
    _Input,
    _positive,
    _template,
    check_resize_pair,
    resolve,
)


def first_pair_image_shape(ctx: ShapeContext) -> Shape:
    """(C, H, W) of the first image listed in `source` (`image labelmap` per line)."""
    from protocaffe.data import records  # pulls numpy: only when the shape is asked for

    p = ctx.param
    for line in records.read_text(p.source, "ImageLabelmapData source").splitlines():
        names = line.split()
        if len(names) == 2:
            return records.image_shape(p.root_folder + names[0], f"{p.source}:1", p.is_color)
        if names:
            break
    raise input_error(f"{p.source}: expected `image_path labelmap_path` on its first line")


@register
class ImageLabelmapData(_Input):
    """HED's image + label-map reader: data N x C x H x W, label N x 1 x H x W."""

    type = "ImageLabelmapData"
    param_field = "image_data_param"
    tops = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        check_resize_pair(ctx)
        n, c = p.batch_size, 3 if p.is_color else 1
        crop = ctx.layer.proto.transform_param.crop_size
        h, w = (crop, crop) if crop else (p.new_height, p.new_width)
        if h <= 0:
            item = _first_record(ctx, lambda: first_pair_image_shape(ctx))
            h, w = item[1:] if item else (h, w)
        if not all(t in ctx.overrides for t in ctx.layer.tops):
            _positive(n, ctx, "batch_size", "batch_size")
        known = h > 0
        data: Guess = (n, c, h, w) if known else _template(n, c, h, w)
        label: Guess = (n, 1, h, w) if known else _template(n, 1, h, w)
        why = "the image size is read from the first image at run time"
        return resolve(ctx, [data, label], why, "source")
