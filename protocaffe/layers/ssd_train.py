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
  checks. Forward (multibox_loss_layer.cpp with bbox_util.cpp): per image, each prior is
  matched to the ground truth (bipartite, then per prediction at overlap_threshold); with
  MAX_NEGATIVE mining the unmatched priors under neg_overlap with the largest background loss
  are kept, neg_pos_ratio per positive; the loss is loc_weight * SmoothL1 (or L2 / 2) between
  the positives' offsets and their encoded boxes plus the softmax loss of positives and kept
  negatives, each over the normaliser (VALID: the number of matches). A term counts only
  when propagate_down for its bottom is true (the fork's rule). Matching and mining choose
  indices; the losses are torch expressions, so autograd gives the fork's backward.
  Not run (a located error at lowering): per-class boxes, matching decoded predictions, the
  LOGISTIC confidence loss, HARD_EXAMPLE mining, NMS among negatives, bp_inside.
- `DetectionEvaluate` (bottoms: DetectionOutput's 1 x 1 x D x 7 and the labels 1 x 1 x G x 8)
  writes rows [image, label, confidence, true_pos, false_pos]: one per positive class (the
  ground-truth counts) plus one per valid detection, so 1 x 1 x (classes + D) x 5 at most;
  protocaffe gives that bound. Not lowered either.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import CompileError, Diagnostic

# ssd.py declares PriorBoxParameter (CodeType) and NonMaximumSuppressionParameter, and
# through ignored.py ResizeParameter: the messages below refer to them.
from protocaffe.layers import ssd
from protocaffe.layers.base import (
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    has_field,
    register,
    shape_str,
)
from protocaffe.layers.data import Guess, _first_record, _Input, _positive, _template, resolve
from protocaffe.layers.losses import FLT_MIN, normalization, normalizer
from protocaffe.layers.structural import legacy_dim
from protocaffe.lazy import np, torch
from protocaffe.proto.schema import Enum, Field, declare_message

if TYPE_CHECKING:
    from torch import fx

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


# The configuration protocaffe runs: what the published SSD nets train with. Others compile
# (shapes and checks) but stop at lowering with a located error naming the field.
_UNSUPPORTED = {
    "share_location": (False, "per-class boxes (share_location: false)"),
    "use_prior_for_matching": (False, "matching decoded predictions"),
    "conf_loss_type": (1, "the LOGISTIC confidence loss"),
    "mining_type": (2, "HARD_EXAMPLE mining"),
    "bp_inside": (True, "bp_inside"),
}
SMOOTH_L1, PER_PREDICTION, MAX_NEGATIVE = 1, 1, 1


def multibox_settings(ctx: ShapeContext | LowerContext) -> dict[str, Any]:
    """The fields the forward reads, plus which terms count: the fork adds the loc (conf)
    term only when propagate_down for bottom 0 (1) is true, as it is when none is given."""
    p = ctx.param
    down = list(ctx.layer.proto.propagate_down) or [True, True]
    return {
        "num_classes": p.num_classes,
        "background": p.background_label_id,
        "use_difficult_gt": p.use_difficult_gt,
        "per_prediction": p.match_type == PER_PREDICTION,
        "overlap_threshold": p.overlap_threshold,
        "ignore_cross_boundary": p.ignore_cross_boundary_bbox,
        "code_type": p.code_type,
        "variance_in_target": p.encode_variance_in_target,
        "agnostic": p.map_object_to_agnostic,
        "mining": p.mining_type == MAX_NEGATIVE,
        "neg_pos_ratio": p.neg_pos_ratio,
        "neg_overlap": p.neg_overlap,
        "smooth_l1": p.loc_loss_type == SMOOTH_L1,
        "loc_weight": p.loc_weight,
        "normalization": normalization(ctx),
        "loc_term": down[0],
        "conf_term": down[1],
    }


def ground_truth(gt: np.ndarray, s: dict[str, Any]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Image -> (labels, boxes) from the 1 x 1 x G x 8 rows [item, label, instance, xmin,
    ymin, xmax, ymax, difficult]; item -1 rows are padding, difficult boxes are dropped
    unless use_difficult_gt."""
    rows = gt.reshape(-1, LABEL_WIDTH)
    rows = rows[rows[:, 0].astype(np.int64) != -1]
    if (rows[:, 1].astype(np.int64) == s["background"]).any():
        raise ValueError("MultiBoxLoss: a ground-truth box has the background label")
    if not s["use_difficult_gt"]:
        rows = rows[rows[:, 7] == 0]
    labels, items = rows[:, 1].astype(np.int64), rows[:, 0].astype(np.int64)
    return {int(i): (labels[items == i], rows[items == i, 3:7]) for i in np.unique(items)}


def _areas(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return np.where((w < 0) | (h < 0), 0, w * h).astype(np.float32)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len a, len b) overlaps of normalised boxes, 0 where they do not intersect."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = hi - lo
    inter = (wh[..., 0] * wh[..., 1]).astype(np.float32)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    hit = (wh[..., 0] > 0) & (wh[..., 1] > 0)
    return np.where(hit, inter / np.where(hit, union, 1), 0).astype(np.float32)


def match_priors(priors: np.ndarray, boxes: np.ndarray, s: dict[str, Any]) -> tuple:
    """(ground-truth index per prior: -1 none, -2 ignored cross-boundary; best overlap per
    prior). Bipartite first: repeatedly the largest overlap among unmatched priors and
    unused boxes (first in prior-then-box order on ties); then, per prediction, each
    unmatched prior takes its best box at overlap >= overlap_threshold."""
    index = np.full(len(priors), -1, np.int64)
    iou = jaccard(priors, boxes)
    iou[iou <= 1e-6] = 0
    if s["ignore_cross_boundary"]:
        cross = ((priors < 0) | (priors > 1)).any(1)
        index[cross], iou[cross] = -2, 0
    overlap = iou.max(1) if boxes.size else np.zeros(len(priors), np.float32)
    free = iou.copy()
    for _ in range(len(boxes)):
        i, j = np.unravel_index(np.argmax(free), free.shape)
        if free[i, j] <= 0:
            break
        index[i], overlap[i] = j, iou[i, j]
        free[i, :], free[:, j] = 0, 0
    if s["per_prediction"]:
        rest = np.flatnonzero(index == -1)
        eligible = np.where(iou[rest] >= s["overlap_threshold"], iou[rest], 0)
        best = eligible.argmax(1) if boxes.size else np.zeros(len(rest), np.int64)
        hit = eligible[np.arange(len(rest)), best] > 0
        index[rest[hit]] = best[hit]
        overlap[rest[hit]] = eligible[hit, best[hit]]
    return index, overlap


def encode_boxes(priors: np.ndarray, var: np.ndarray, boxes: np.ndarray, s: dict) -> np.ndarray:
    """SSD's EncodeBBox: the regression target of each box against its prior."""
    scale = np.ones_like(var) if s["variance_in_target"] else var
    if s["code_type"] == ssd.CORNER:
        return (boxes - priors) / scale
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    if s["code_type"] == ssd.CORNER_SIZE:
        return (boxes - priors) / np.stack([pw, ph, pw, ph], 1) / scale
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 - (priors[:, :2] + priors[:, 2:]) / 2
    return (
        np.stack([centre[:, 0] / pw, centre[:, 1] / ph, np.log(bw / pw), np.log(bh / ph)], 1)
        / scale
    )


def multibox_loss(loc: Any, conf: Any, prior: Any, gt: Any, s: dict[str, Any]) -> Any:
    """The fork's forward: match, mine, then loc_weight * loc loss + conf loss, each over
    the normaliser. Matching and mining are index choices (no gradient); the losses are torch
    expressions of the predictions, so autograd gives the fork's backward."""
    n, k = loc.shape[0], s["num_classes"]
    num_priors = prior.shape[-1] // 4
    table = prior.detach().reshape(2, num_priors, 4).cpu().numpy().astype(np.float32)
    priors, variances = table[0], table[1]
    conf = conf.reshape(n, num_priors, k)
    log_p = torch.log_softmax(conf.float(), -1).clamp(min=math.log(FLT_MIN))
    background_loss = (-log_p[..., s["background"]]).detach().cpu().numpy()
    truth = ground_truth(gt.detach().cpu().numpy(), s)
    positives, targets, negatives, pos_labels = [], [], [], []
    for i in range(n):
        if i not in truth:
            continue
        labels, boxes = truth[i]
        index, overlap = match_priors(priors, boxes, s)
        pos = np.flatnonzero(index > -1)
        positives += [(i, j) for j in pos]
        targets.append(encode_boxes(priors[pos], variances[pos], boxes[index[pos]], s))
        pos_labels += [s["background"] + 1 if s["agnostic"] else labels[index[j]] for j in pos]
        if s["mining"]:
            pool = np.flatnonzero((index == -1) & (overlap < s["neg_overlap"]))
            count = min(int(np.float32(len(pos)) * np.float32(s["neg_pos_ratio"])), len(pool))
            hardest = pool[np.argsort(-background_loss[i, pool], kind="stable")[:count]]
            negatives += [(i, j) for j in hardest]
    matches = len(positives)
    norm = normalizer(s["normalization"], n, num_priors, matches)
    total = loc.new_zeros(())
    if s["loc_term"] and matches:
        img, idx = (torch.as_tensor([p[c] for p in positives], device=loc.device) for c in (0, 1))
        pred = loc.reshape(n, num_priors, 4)[img, idx]
        target = torch.as_tensor(np.concatenate(targets), dtype=pred.dtype, device=pred.device)
        if s["variance_in_target"]:
            scale = torch.as_tensor(variances[[p[1] for p in positives]], device=pred.device)
            pred, target = pred / scale, target / scale
        d = pred - target
        term = torch.where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5) if s["smooth_l1"] else d * d / 2
        total = total + s["loc_weight"] * term.sum() / norm
    if s["conf_term"]:
        if s["mining"]:
            rows = positives + negatives
            labels = pos_labels + [s["background"]] * len(negatives)
        else:
            rows = [(i, j) for i in range(n) for j in range(num_priors)]
            chosen = np.full((n, num_priors), s["background"], np.int64)
            for (i, j), label in zip(positives, pos_labels, strict=True):
                chosen[i, j] = label
            labels = list(chosen.reshape(-1))
        if rows:
            img, idx, lab = (
                torch.as_tensor(np.asarray(v, np.int64), device=conf.device)
                for v in ([r[0] for r in rows], [r[1] for r in rows], labels)
            )
            picked = log_p[img, idx, lab]
            total = total - picked.sum().to(total.dtype) / norm
    return total


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

    def _refuse_unsupported(self, ctx: LowerContext) -> None:
        for name, (value, what) in _UNSUPPORTED.items():
            if getattr(ctx.param, name) == value:
                raise CompileError(
                    [
                        Diagnostic(
                            "error",
                            f"MultiBoxLoss '{ctx.layer.name}': {what} ({name}) is not "
                            "implemented; protocaffe runs shared boxes matched by the priors, "
                            "the softmax confidence loss and NONE or MAX_NEGATIVE mining",
                            ctx.layer.span,
                            "compile still checks this net's shapes",
                        )
                    ]
                )
        nms = ctx.param.nms_param if has_field(ctx.param, "nms_param") else None
        if ctx.param.mining_type == MAX_NEGATIVE and nms is not None and nms.nms_threshold > 0:
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"MultiBoxLoss '{ctx.layer.name}': NMS among mined negatives "
                        "(nms_param) is not implemented",
                        ctx.layer.span,
                    )
                ]
            )

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        self._refuse_unsupported(ctx)
        return [ctx.call(multibox_loss, *ctx.inputs, multibox_settings(ctx))]

    def reference(self, ctx, inputs, blobs):
        return [np.array(multibox_reference(inputs, multibox_settings(ctx)), np.float32)]


def _oracle_overlap(a: list[float], b: list[float]) -> float:
    """JaccardOverlap of two [xmin, ymin, xmax, ymax] boxes, as bbox_util.cpp computes it."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0

    def size(x: list[float]) -> float:
        return 0.0 if x[2] < x[0] or x[3] < x[1] else (x[2] - x[0]) * (x[3] - x[1])

    return w * h / (size(a) + size(b) - w * h)


def _oracle_match(priors: list, boxes: list, s: dict) -> tuple[list[int], list[float]]:
    """MatchBBox's loops: a dict of positive overlaps, a pool of unused boxes."""
    index, best = [-1] * len(priors), [0.0] * len(priors)
    overlaps: dict[int, dict[int, float]] = {}
    for i, prior in enumerate(priors):
        if s["ignore_cross_boundary"] and any(v < 0 or v > 1 for v in prior):
            index[i] = -2
            continue
        for j, box in enumerate(boxes):
            o = _oracle_overlap(prior, box)
            if o > 1e-6:
                best[i] = max(best[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(boxes)))
    while pool:
        pick, top = None, -1.0
        for i in sorted(overlaps):
            if index[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > top:
                    pick, top = (i, j), overlaps[i][j]
        if pick is None:
            break
        index[pick[0]], best[pick[0]] = pick[1], top
        pool.remove(pick[1])
    if s["per_prediction"]:
        for i in sorted(overlaps):
            if index[i] != -1:
                continue
            pick, top = -1, -1.0
            for j in range(len(boxes)):
                o = overlaps[i].get(j)
                if o is not None and o >= s["overlap_threshold"] and o > top:
                    pick, top = j, o
            if pick != -1:
                index[i], best[i] = pick, top
    return index, best


def _oracle_encode(prior: list, var: list, box: list, s: dict) -> list[float]:
    v = [1.0] * 4 if s["variance_in_target"] else var
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    if s["code_type"] == ssd.CORNER:
        return [(box[c] - prior[c]) / v[c] for c in range(4)]
    if s["code_type"] == ssd.CORNER_SIZE:
        return [(box[c] - prior[c]) / (pw, ph)[c % 2] / v[c] for c in range(4)]
    bw, bh = box[2] - box[0], box[3] - box[1]
    dx = (box[0] + box[2]) / 2 - (prior[0] + prior[2]) / 2
    dy = (box[1] + box[3]) / 2 - (prior[1] + prior[3]) / 2
    return [dx / pw / v[0], dy / ph / v[1], math.log(bw / pw) / v[2], math.log(bh / ph) / v[3]]


def multibox_reference(inputs: list[np.ndarray], s: dict[str, Any]) -> float:
    """Numpy oracle: MultiBoxLossLayer::Forward_cpu's loops (GetGroundTruth, FindMatches,
    MineHardExamples, EncodeLocPrediction, EncodeConfPrediction), one prior at a time."""
    loc, conf, prior, gt = (x.astype(np.float64) for x in inputs)
    n, k, bg = loc.shape[0], s["num_classes"], s["background"]
    num_priors = prior.size // 8
    priors = prior.reshape(-1)[: num_priors * 4].reshape(-1, 4).tolist()
    variances = prior.reshape(-1)[num_priors * 4 :].reshape(-1, 4).tolist()
    truth: dict[int, list[tuple[int, list[float]]]] = {}
    for row in gt.reshape(-1, 8).tolist():
        if int(row[0]) == -1 or (not s["use_difficult_gt"] and row[7]):
            continue
        truth.setdefault(int(row[0]), []).append((int(row[1]), row[3:7]))
    conf = conf.reshape(n, num_priors, k)

    def neg_log_p(i: int, j: int, label: int) -> float:
        z = conf[i, j] - conf[i, j].max()
        return -math.log(max(math.exp(z[label]) / np.exp(z).sum(), FLT_MIN))

    loc_loss, conf_rows, matches = 0.0, [], 0
    for i in range(n):
        if i not in truth:
            conf_rows += [] if s["mining"] else [(i, j, bg) for j in range(num_priors)]
            continue
        labels = [t[0] for t in truth[i]]
        index, best = _oracle_match(priors, [t[1] for t in truth[i]], s)
        for j in range(num_priors):
            if index[j] <= -1:
                continue
            matches += 1
            target = _oracle_encode(priors[j], variances[j], truth[i][index[j]][1], s)
            pred = loc[i].reshape(-1, 4)[j].tolist()
            scale = variances[j] if s["variance_in_target"] else [1.0] * 4
            for c in range(4):
                d = (pred[c] - target[c]) / scale[c]
                if s["smooth_l1"]:
                    loc_loss += 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
                else:
                    loc_loss += d * d / 2
        label_of = {
            j: (bg + 1 if s["agnostic"] else labels[index[j]])
            for j in range(num_priors)
            if index[j] > -1
        }
        if not s["mining"]:
            conf_rows += [(i, j, label_of.get(j, bg)) for j in range(num_priors)]
            continue
        candidates = [
            (neg_log_p(i, j, bg), j)
            for j in range(num_priors)
            if index[j] == -1 and best[j] < s["neg_overlap"]
        ]
        count = min(
            int(np.float32(len(label_of)) * np.float32(s["neg_pos_ratio"])), len(candidates)
        )
        chosen = sorted(candidates, key=lambda c: -c[0])[:count]
        conf_rows += [(i, j, label) for j, label in label_of.items()]
        conf_rows += [(i, j, bg) for _, j in chosen]
    norm = normalizer(s["normalization"], n, num_priors, matches)
    total = 0.0
    if s["loc_term"] and matches:
        total += s["loc_weight"] * loc_loss / norm
    if s["conf_term"]:
        total += sum(neg_log_p(i, j, label) for i, j, label in conf_rows) / norm
    return total


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
