"""The SSD fork's training and evaluation layers (weiliu89/caffe, branch ssd): AnnotatedData,
MultiBoxLoss and DetectionEvaluate, with their parameter messages.

- `AnnotatedData` reads AnnotatedDatum records (a Datum plus groups of normalised boxes) from
  the LMDB named in data_param. Tops: data N x C x H x W, with H x W from the crop
  (crop_size, or SSD's crop_h/crop_w), else resize_param's height x width (WARP and
  FIT_LARGE_SIZE_AND_PAD; FIT_SMALL_SIZE keeps the image's aspect, so only the data says);
  C from the first record when `source` exists, else from force_color/force_gray, else from
  the mean_value count (the fork checks it equals C when there are several). The label top is
  1 x 1 x G x 8, one row [item, label, instance, xmin, ymin, xmax, ymax, difficult] per ground-
  truth box in the batch: G changes every batch; the fork's setup makes it max(1, boxes in
  the first record), protocaffe 1 unless --shape gives it. Without annotations (neither the
  record nor anno_type sets a type) the label is one value per item, N.
  The batch samplers, label map and augmentation are training-time data policy, not shapes.
  protocaffe reads no batches for this layer: its tops are module inputs.
- `MultiBoxLoss` (bottoms loc N x P*4*L, conf N x P*K, priors 1 x 2 x P*4, labels 1 x 1 x G x
  8; L = 1 if share_location else K) is a scalar loss; the shape rule applies the fork's
  checks. Its forward (matching, hard-negative mining, SmoothL1 + softmax losses) is not
  lowered: `run`/`train` stop at it with a located "no PyTorch lowering" error.
- `DetectionEvaluate` (bottoms: DetectionOutput's 1 x 1 x D x 7 and the labels 1 x 1 x G x 8)
  writes rows [image, label, confidence, true_pos, false_pos]: one per positive class (the
  ground-truth counts) plus one per valid detection, so 1 x 1 x (classes + D) x 5 at most;
  protocaffe gives that bound. Not lowered either.
"""

from __future__ import annotations

from typing import Any

# Imported first: ssd.py declares PriorBoxParameter (CodeType) and
# NonMaximumSuppressionParameter, and through ignored.py ResizeParameter, used below.
from protocaffe.layers import ssd  # noqa: F401
from protocaffe.layers.base import (
    LayerDef,
    Shape,
    ShapeContext,
    has_field,
    register,
    shape_str,
)
from protocaffe.layers.data import Guess, _first_record, _Input, _positive, _template, resolve
from protocaffe.layers.structural import legacy_dim
from protocaffe.proto.schema import Enum, Field, declare_message

_SSD = ("ssd", "nvidia", "yolo")

declare_message(
    "Sampler",
    Field("min_scale", 1, "float", default=1.0),
    Field("max_scale", 2, "float", default=1.0),
    Field("min_aspect_ratio", 3, "float", default=1.0),
    Field("max_aspect_ratio", 4, "float", default=1.0),
    dialects=_SSD,
)
declare_message(
    "SampleConstraint",
    *(
        Field(name, number, "float")
        for number, name in enumerate(
            (
                "min_jaccard_overlap",
                "max_jaccard_overlap",
                "min_sample_coverage",
                "max_sample_coverage",
                "min_object_coverage",
                "max_object_coverage",
            ),
            start=1,
        )
    ),
    dialects=_SSD,
)
declare_message(
    "BatchSampler",
    Field("use_original_image", 1, "bool", default=True),
    Field("sampler", 2, "Sampler"),
    Field("sample_constraint", 3, "SampleConstraint"),
    Field("max_sample", 4, "uint32"),
    Field("max_trials", 5, "uint32", default=100),
    dialects=_SSD,
)
declare_message(
    "NormalizedBBox",
    Field("xmin", 1, "float"),
    Field("ymin", 2, "float"),
    Field("xmax", 3, "float"),
    Field("ymax", 4, "float"),
    Field("label", 5, "int32"),
    Field("difficult", 6, "bool"),
    Field("score", 7, "float"),
    Field("size", 8, "float"),
    dialects=_SSD,
)
declare_message(
    "Annotation",
    Field("instance_id", 1, "int32", default=0),
    Field("bbox", 2, "NormalizedBBox"),
    dialects=_SSD,
)
declare_message(
    "AnnotationGroup",
    Field("group_label", 1, "int32"),
    Field("annotation", 2, "Annotation", repeated=True),
    dialects=_SSD,
)
AnnotatedDatum = declare_message(
    "AnnotatedDatum",
    Enum("AnnotationType", BBOX=0),
    Field("datum", 1, "Datum"),
    Field("type", 2, "AnnotationType"),
    Field("annotation_group", 3, "AnnotationGroup", repeated=True),
    dialects=_SSD,
)
AnnotatedDataParameter = declare_message(
    "AnnotatedDataParameter",
    Field("batch_sampler", 1, "BatchSampler", repeated=True),
    Field("label_map_file", 2, "string"),
    Field("anno_type", 3, "AnnotatedDatum.AnnotationType"),
    param="annotated_data_param",
)
MultiBoxLossParameter = declare_message(
    "MultiBoxLossParameter",
    Enum("LocLossType", L2=0, SMOOTH_L1=1),
    Enum("ConfLossType", SOFTMAX=0, LOGISTIC=1),
    Enum("MatchType", BIPARTITE=0, PER_PREDICTION=1),
    Enum("MiningType", NONE=0, MAX_NEGATIVE=1, HARD_EXAMPLE=2),
    Field("loc_loss_type", 1, "LocLossType", default="SMOOTH_L1"),
    Field("conf_loss_type", 2, "ConfLossType", default="SOFTMAX"),
    Field("loc_weight", 3, "float", default=1.0),
    Field("num_classes", 4, "uint32"),
    Field("share_location", 5, "bool", default=True),
    Field("match_type", 6, "MatchType", default="PER_PREDICTION"),
    Field("overlap_threshold", 7, "float", default=0.5),
    Field("use_prior_for_matching", 8, "bool", default=True),
    Field("background_label_id", 9, "uint32", default=0),
    Field("use_difficult_gt", 10, "bool", default=True),
    Field("do_neg_mining", 11, "bool"),
    Field("neg_pos_ratio", 12, "float", default=3.0),
    Field("neg_overlap", 13, "float", default=0.5),
    Field("code_type", 14, "PriorBoxParameter.CodeType", default="CORNER"),
    Field("encode_variance_in_target", 16, "bool", default=False),
    Field("map_object_to_agnostic", 17, "bool", default=False),
    Field("ignore_cross_boundary_bbox", 18, "bool", default=False),
    Field("bp_inside", 19, "bool", default=False),
    Field("mining_type", 20, "MiningType", default="MAX_NEGATIVE"),
    Field("nms_param", 21, "NonMaximumSuppressionParameter"),
    Field("sample_size", 22, "int32", default=64),
    Field("use_prior_for_nms", 23, "bool", default=False),
    param="multibox_loss_param",
)
DetectionEvaluateParameter = declare_message(
    "DetectionEvaluateParameter",
    Field("num_classes", 1, "uint32"),
    Field("background_label_id", 2, "uint32", default=0),
    Field("overlap_threshold", 3, "float", default=0.5),
    Field("evaluate_difficult_gt", 4, "bool", default=True),
    Field("name_size_file", 5, "string"),
    Field("resize_param", 6, "ResizeParameter"),
    param="detection_evaluate_param",
)
FIT_SMALL_SIZE = 2  # ResizeParameter.Resize_mode
SOFTMAX = 0  # MultiBoxLossParameter.ConfLossType
NO_MINING = 0  # MultiBoxLossParameter.MiningType
LABEL_WIDTH, DETECTION_WIDTH = 8, 7


# --- AnnotatedData ----------------------------------------------------------------------


def first_annotated_datum(ctx: ShapeContext) -> tuple[Shape, bool]:
    """((C, H, W) of the first record's image, whether it carries an annotation type)."""
    from google.protobuf.message import DecodeError

    from protocaffe.data import records
    from protocaffe.diagnostics import input_error

    p, t = ctx.param, ctx.layer.proto.transform_param
    key, value = records.first_record(p.source, p.backend)
    where = f"{p.source} record {key.decode(errors='replace')}"
    record = AnnotatedDatum()
    try:
        record.ParseFromString(value)
    except DecodeError:
        raise input_error(f"{where}: not an AnnotatedDatum (SSD's record)") from None
    image = records.decode_datum(
        record.datum.SerializeToString(), where, t.force_color, t.force_gray
    )
    return image[0].shape, record.HasField("type")


def _channels(ctx: ShapeContext) -> int:
    """C without the data: force_color/force_gray, else several mean_values (the fork checks
    that their count equals C), else unknown (0)."""
    t = ctx.layer.proto.transform_param
    if t.force_color or t.force_gray:
        return 3 if t.force_color else 1
    return len(t.mean_value) if len(t.mean_value) > 1 else 0


@register
class AnnotatedData(_Input):
    """SSD's annotated-image reader: data N x C x H x W and labels 1 x 1 x G x 8."""

    type = "AnnotatedData"
    param_field = "data_param"  # source and batch_size; the rest is annotated_data_param
    tops = (1, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        t = ctx.layer.proto.transform_param
        n = ctx.param.batch_size
        if not all(top in ctx.overrides for top in ctx.layer.tops):
            _positive(n, ctx, "batch_size", "batch_size")
        resize = t.resize_param if has_field(t, "resize_param") else None
        if resize is not None and resize.resize_mode == FIT_SMALL_SIZE and n != 1:
            ctx.fail(
                f"resize_mode FIT_SMALL_SIZE needs batch_size 1 (got {n}): each image keeps "
                "its own aspect ratio",
                "batch_size",
            )
        first = _first_record(ctx, lambda: first_annotated_datum(ctx))
        c, h, w = first[0] if first else (_channels(ctx), 0, 0)
        if resize is not None and resize.resize_mode != FIT_SMALL_SIZE:
            h, w = resize.height, resize.width
        crop_h, crop_w = (t.crop_size, t.crop_size) if t.crop_size else (t.crop_h, t.crop_w)
        h, w = crop_h or h, crop_w or w
        data: Guess = (n, c, h, w) if c and h and w else _template(n, c, h, w)
        annotated = (first[1] if first else True) or has_field(
            ctx.layer.proto.annotated_data_param, "anno_type"
        )
        label: Guess = (1, 1, 1, LABEL_WIDTH) if annotated else (n,)
        why = "the image size and channels are read from the database at run time"
        return resolve(ctx, [data, label][: len(ctx.layer.tops)], why, "source")

    def explain(self, ctx: ShapeContext) -> list[str]:
        return [
            "label: one row [item, label, instance, xmin, ymin, xmax, ymax, difficult] per "
            "ground-truth box in the batch; the row count changes per batch"
        ]


# --- MultiBoxLoss -----------------------------------------------------------------------


def _check_label_rows(ctx: ShapeContext, index: int, width: int, what: str) -> None:
    """A 1 x 1 x R x width box table (the fork reads num/channels/width of a 4-axis blob)."""
    shape = ctx.bottoms[index]
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 1 or shape[3] != width:
        ctx.fail(
            f"{what} '{ctx.layer.bottoms[index]}' must be 1 x 1 x R x {width}, got "
            f"{shape_str(shape)}",
            "bottom",
            index,
        )


def _num_classes(ctx: ShapeContext) -> int:
    if not ctx.has("num_classes"):
        ctx.fail("num_classes must be given", hint="add num_classes: K (background included)")
    k = ctx.param.num_classes
    if k < 1:
        ctx.fail(f"num_classes must be at least 1, got {k}", "num_classes")
    return k


@register
class MultiBoxLoss(LayerDef):
    """SSD's training loss over the prior boxes; a scalar."""

    type = "MultiBoxLoss"
    param_field = "multibox_loss_param"
    is_loss = True
    bottoms = (4, 4)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p, names = ctx.param, ctx.layer.bottoms
        k = _num_classes(ctx)
        if p.conf_loss_type == SOFTMAX and not p.background_label_id < k:
            ctx.fail(
                f"background_label_id {p.background_label_id} must be in [0, {k}) for the "
                "softmax confidence loss",
                "background_label_id",
            )
        if p.mining_type != NO_MINING and not p.share_location:
            ctx.fail(
                "negative mining needs share_location: true (the fork mines on shared boxes)",
                "share_location",
            )
        if ctx.has("do_neg_mining") and p.do_neg_mining != (p.mining_type != NO_MINING):
            ctx.fail(
                "do_neg_mining (deprecated) contradicts mining_type",
                "do_neg_mining",
                hint="remove do_neg_mining and set mining_type",
            )
        loc, conf, priors = ctx.bottoms[:3]
        _check_label_rows(ctx, 3, LABEL_WIDTH, "ground truth")
        num_priors = legacy_dim(priors, 2) // 4
        loc_classes = 1 if p.share_location else k
        if legacy_dim(loc, 0) != legacy_dim(conf, 0):
            ctx.fail(
                f"'{names[0]}' ({shape_str(loc)}) and '{names[1]}' ({shape_str(conf)}) must "
                "have the same batch size",
                "bottom",
                1,
            )
        for index, shape, per, what in (
            (0, loc, num_priors * loc_classes * 4, f"{loc_classes} x 4 box offsets"),
            (1, conf, num_priors * k, f"{k} class scores"),
        ):
            if legacy_dim(shape, 1) != per:
                ctx.fail(
                    f"'{names[index]}' ({shape_str(shape)}) must have {per} values per image: "
                    f"{num_priors} priors ('{names[2]}' {shape_str(priors)}) x {what}",
                    "bottom",
                    index,
                )
        return [()]

    def explain(self, ctx: ShapeContext) -> list[str]:
        p = ctx.param
        return [
            f"{legacy_dim(ctx.bottoms[2], 2) // 4} priors, {p.num_classes} classes; "
            f"match {MultiBoxLossParameter.MatchType.Name(p.match_type)} "
            f"(overlap {p.overlap_threshold:g}), mining "
            f"{MultiBoxLossParameter.MiningType.Name(p.mining_type)} "
            f"(neg:pos {p.neg_pos_ratio:g}, neg_overlap {p.neg_overlap:g})"
        ]


# --- DetectionEvaluate ------------------------------------------------------------------


@register
class DetectionEvaluate(LayerDef):
    """Per-detection true/false positive rows for SSD's mAP at test time."""

    type = "DetectionEvaluate"
    param_field = "detection_evaluate_param"
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        k = _num_classes(ctx)
        if p.overlap_threshold <= 0:
            ctx.fail(
                f"overlap_threshold must be positive, got {p.overlap_threshold:g}",
                "overlap_threshold",
            )
        _check_label_rows(ctx, 0, DETECTION_WIDTH, "detections")
        _check_label_rows(ctx, 1, LABEL_WIDTH, "ground truth")
        positive_classes = k - 1 if _background(p) >= 0 else k
        return [(1, 1, positive_classes + ctx.bottoms[0][2], 5)]


def _background(p: Any) -> int:
    # uint32 in the fork's message; -1 (no background) is written as 4294967295 there.
    return -1 if p.background_label_id >= 2**31 else p.background_label_id
