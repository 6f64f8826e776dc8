"""The SSD detector's layers (weiliu89/caffe, branch ssd): Normalize, Permute, PriorBox and
DetectionOutput, as the SSD fork runs them and, where they differ, as OpenCV's Caffe importer
does (`ctx.dialect`: "ssd" and "nvidia" follow the fork, anything else OpenCV). SSD's Flatten
is BVLC's (structural.py).

Where the two differ:
  - PriorBox: SSD truncates min_size/max_size to integers and defaults `clip` to false;
    OpenCV keeps fractional sizes, defaults `clip` to true, and ignores img_size/img_h/img_w
    (it always normalises by the image bottom's size).
  - DetectionOutput: the fork's top has one row per kept detection, grouped per image and
    then by label; OpenCV's has N * keep_top_k rows, each image's detections sorted by score,
    zero rows after the last. protocaffe's top has a fixed row count (shapes are static): N *
    keep_top_k, or every detection NMS can keep when keep_top_k is -1. In the SSD dialect the
    rows after the last detection hold -1, Caffe's "no detection" marker. OpenCV also ignores
    `eta`.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass
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
from protocaffe.layers.ignored import IGNORED  # noqa: F401  (declares ResizeParameter first)
from protocaffe.lazy import np, torch
from protocaffe.proto import caffe_pb2
from protocaffe.proto.schema import Enum, Field, declare_message

if TYPE_CHECKING:
    from torch import fx

FORK_RULES = ("ssd", "nvidia")  # dialects that run these layers as the SSD fork does

NormalizeParameter = declare_message(
    "NormalizeParameter",
    Field("across_spatial", 1, "bool", default=True),
    Field("scale_filler", 2, "FillerParameter"),
    Field("channel_shared", 3, "bool", default=True),
    Field("eps", 4, "float", default=1e-10),
    param="norm_param",
)
PermuteParameter = declare_message(
    "PermuteParameter", Field("order", 1, "uint32", repeated=True), param="permute_param"
)
PriorBoxParameter = declare_message(
    "PriorBoxParameter",
    Enum("CodeType", CORNER=1, CENTER_SIZE=2, CORNER_SIZE=3),
    Field("min_size", 1, "float", repeated=True),
    Field("max_size", 2, "float", repeated=True),
    Field("aspect_ratio", 3, "float", repeated=True),
    Field("flip", 4, "bool", default=True),
    Field("clip", 5, "bool"),  # default by dialect: SSD false, OpenCV true
    Field("variance", 6, "float", repeated=True),
    Field("img_size", 7, "uint32"),
    Field("img_h", 8, "uint32"),
    Field("img_w", 9, "uint32"),
    Field("step", 10, "float"),
    Field("step_h", 11, "float"),
    Field("step_w", 12, "float"),
    Field("offset", 13, "float", default=0.5),
    param="prior_box_param",
)
NonMaximumSuppressionParameter = declare_message(
    "NonMaximumSuppressionParameter",
    Field("nms_threshold", 1, "float", default=0.3),
    Field("top_k", 2, "int32"),
    Field("eta", 3, "float", default=1.0),
)
SaveOutputParameter = declare_message(
    "SaveOutputParameter",
    Field("output_directory", 1, "string"),
    Field("output_name_prefix", 2, "string"),
    Field("output_format", 3, "string"),
    Field("label_map_file", 4, "string"),
    Field("name_size_file", 5, "string"),
    Field("num_test_image", 6, "uint32"),
    Field("resize_param", 7, "ResizeParameter"),
)
DetectionOutputParameter = declare_message(
    "DetectionOutputParameter",
    Field("num_classes", 1, "uint32"),
    Field("share_location", 2, "bool", default=True),
    Field("background_label_id", 3, "int32", default=0),
    Field("nms_param", 4, "NonMaximumSuppressionParameter"),
    Field("save_output_param", 5, "SaveOutputParameter"),
    Field("code_type", 6, "PriorBoxParameter.CodeType", default="CORNER"),
    Field("keep_top_k", 7, "int32", default=-1),
    Field("variance_encoded_in_target", 8, "bool", default=False),
    Field("confidence_threshold", 9, "float"),
    Field("visualize", 10, "bool", default=False),
    Field("visualize_threshold", 11, "float"),
    Field("save_file", 12, "string"),
    Field("normalized_bbox", 10, "bool", default=True),  # OpenCV's field 10
    Field("clip", 1000, "bool", default=False),  # OpenCV
    param="detection_output_param",
)
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


def _fork_rules(ctx: Any) -> bool:
    return ctx.layer.dialect in FORK_RULES


# --- Normalize --------------------------------------------------------------------------


def l2_normalize(x: Any, scale: Any, across_spatial: bool, eps: float) -> Any:
    """SSD's Normalize: x / sqrt(sum x^2 + eps) over C*H*W (across_spatial) or over C per
    position, times the scale (one value, or one per channel)."""
    if across_spatial:
        sums = x.square().flatten(1).sum(1).reshape(-1, *(1,) * (x.dim() - 1))
    else:
        sums = x.square().sum(1, keepdim=True)
    y = x / torch.sqrt(sums + eps)
    return y * scale.reshape(-1, *(1,) * (x.dim() - 2))


@register
class Normalize(LayerDef):
    """L2 normalisation with a learned scale (SSD's conv4_3_norm)."""

    type = "Normalize"
    param_field = "norm_param"
    coord_identity = True

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        bottom = ctx.bottoms[0]
        if len(bottom) < 2:
            ctx.fail(f"needs at least 2 axes (N, C, ...), got {shape_str(bottom)}")
        return [bottom]

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        # NormalizeLayer::LayerSetUp: a 0-axis blob when shared, else one value per channel.
        shape = () if ctx.param.channel_shared else (ctx.bottoms[0][1],)
        filler = (
            ctx.param.scale_filler
            if ctx.has("scale_filler")
            else caffe_pb2.FillerParameter(type="constant", value=1.0)
        )
        return [BlobSpec("scale", shape, filler)]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return 3 * count(tops[0])  # square-and-sum, divide, scale

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        return [ctx.call(l2_normalize, ctx.inputs[0], ctx.blob("scale"), p.across_spatial, p.eps)]

    def reference(self, ctx, inputs, blobs):
        x = inputs[0].astype(np.float64)
        p = ctx.param
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        out = np.empty_like(flat)
        scale = np.broadcast_to(blobs[0].reshape(-1), (c,))
        for i in range(n):
            if p.across_spatial:
                norm = math.sqrt(float((flat[i] ** 2).sum()) + p.eps)
                out[i] = flat[i] / norm
            else:
                for s in range(flat.shape[2]):
                    out[i, :, s] = flat[i, :, s] / math.sqrt(
                        float((flat[i, :, s] ** 2).sum()) + p.eps
                    )
            out[i] *= scale[:, None]
        return [out.reshape(x.shape)]


# --- Permute ----------------------------------------------------------------------------


def permute_order(ctx: ShapeContext) -> tuple[int, ...]:
    """PermuteLayer's order: the given axes, then the missing ones in increasing order."""
    ndim = len(ctx.bottoms[0])
    order = list(ctx.param.order) if ctx.param is not None else []
    for i, axis in enumerate(order):
        if axis >= ndim:
            ctx.fail(
                f"order {axis} is out of range for bottom '{ctx.layer.bottoms[0]}' of shape "
                f"{shape_str(ctx.bottoms[0])} ({ndim} axes)",
                "order",
                i,
            )
        if axis in order[:i]:
            ctx.fail(f"axis {axis} appears twice in order", "order", i)
    return (*order, *(a for a in range(ndim) if a not in order))


@register
class Permute(LayerDef):
    type = "Permute"
    param_field = "permute_param"

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        bottom = ctx.bottoms[0]
        return [tuple(bottom[a] for a in permute_order(ctx))]

    def explain(self, ctx: ShapeContext) -> list[str]:
        return [f"order {list(permute_order(ctx))} (missing axes appended in order)"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        order = tuple(int(a) for a in _order_from_shapes(ctx))
        return [ctx.call(torch.permute, ctx.inputs[0], order)]

    def reference(self, ctx, inputs, blobs):
        return [np.transpose(inputs[0], permute_order(ctx))]


def _order_from_shapes(ctx: LowerContext) -> tuple[int, ...]:
    ndim = len(ctx.bottom_shapes[0])
    given = list(ctx.param.order)
    return (*given, *(a for a in range(ndim) if a not in given))


# --- PriorBox ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Priors:
    """Everything PriorBox's output depends on, resolved from params, dialect and shapes."""

    sizes: tuple[tuple[float, float], ...]  # (width, height) of each prior at a cell, in order
    variance: tuple[float, float, float, float]
    layer_hw: tuple[int, int]
    img_hw: tuple[float, float]
    step_hw: tuple[float, float]
    offset: float
    clip: bool

    @property
    def count(self) -> int:
        return self.layer_hw[0] * self.layer_hw[1] * len(self.sizes)


def aspect_ratios(param: Any) -> list[float]:
    """1, then each given ratio not already listed (within 1e-6), and its inverse if flip."""
    ratios = [1.0]
    for ar in param.aspect_ratio:
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(ar)
        if param.flip:
            ratios.append(1.0 / ar)
    return ratios


def prior_settings(ctx: ShapeContext) -> Priors:
    p = ctx.param
    fork = _fork_rules(ctx)
    if not len(p.min_size):
        ctx.fail("min_size must be given", hint="add prior_box_param { min_size: ... }")
    for i, size in enumerate(p.min_size):
        if size <= 0:
            ctx.fail(f"min_size must be positive, got {size:g}", "min_size", i)
    if len(p.max_size) and len(p.max_size) != len(p.min_size):
        ctx.fail(
            f"{len(p.max_size)} max_size values for {len(p.min_size)} min_size values; "
            "give one max_size per min_size",
            "max_size",
        )
    for i, (lo, hi) in enumerate(zip(p.min_size, p.max_size, strict=False)):
        if hi <= lo:
            ctx.fail(f"max_size {hi:g} must be greater than min_size {lo:g}", "max_size", i)
    variance = list(p.variance)
    if len(variance) not in (0, 1, 4):
        ctx.fail(f"variance takes 1 or 4 values, got {len(variance)}", "variance")
    for i, v in enumerate(variance):
        if v <= 0:
            ctx.fail(f"variance must be positive, got {v:g}", "variance", i)
    var4 = tuple(variance * 4 if len(variance) == 1 else variance or [0.1] * 4)

    layer_hw = ctx.bottoms[0][2:4]
    image = ctx.bottoms[1]
    if len(ctx.bottoms[0]) != 4 or len(image) != 4:
        ctx.fail(
            f"bottoms must be 4-axis blobs (N, C, H, W), got {shape_str(ctx.bottoms[0])} and "
            f"{shape_str(image)}"
        )
    img_hw: tuple[float, float] = (image[2], image[3])
    given_size = [f for f in ("img_size", "img_h", "img_w") if ctx.has(f)]
    if ctx.has("img_size") and (ctx.has("img_h") or ctx.has("img_w")):
        ctx.fail("give either img_size or img_h/img_w, not both", "img_size")
    if given_size and not fork:
        ctx.warn(
            f"{given_size[0]} is ignored: OpenCV normalises prior boxes by the size of the image "
            "bottom",
            given_size[0],
            hint="use --dialect ssd to read it as the SSD fork does",
        )
    elif ctx.has("img_size"):
        img_hw = (p.img_size, p.img_size)
    elif ctx.has("img_h") or ctx.has("img_w"):
        if not (ctx.has("img_h") and ctx.has("img_w")):
            ctx.fail("img_h and img_w go together", given_size[0])
        img_hw = (p.img_h, p.img_w)
    if ctx.has("step") and (ctx.has("step_h") or ctx.has("step_w")):
        ctx.fail("give either step or step_h/step_w, not both", "step")
    if ctx.has("step"):
        step_hw = (p.step, p.step)
    elif ctx.has("step_h") or ctx.has("step_w"):
        if not (ctx.has("step_h") and ctx.has("step_w")):
            ctx.fail("step_h and step_w go together", "step_h" if ctx.has("step_h") else "step_w")
        step_hw = (p.step_h, p.step_w)
    else:
        step_hw = (img_hw[0] / layer_hw[0], img_hw[1] / layer_hw[1])

    sizes: list[tuple[float, float]] = []
    ratios = aspect_ratios(p)
    for i, min_size in enumerate(p.min_size):
        # The fork stores sizes as float but reads them into ints when it generates boxes.
        side = float(int(min_size)) if fork else min_size
        sizes.append((side, side))
        if len(p.max_size):
            top = float(int(p.max_size[i])) if fork else p.max_size[i]
            sizes.append((math.sqrt(side * top),) * 2)
        for ar in ratios:
            if abs(ar - 1.0) >= 1e-6:
                sizes.append((side * math.sqrt(ar), side / math.sqrt(ar)))
    clip = p.clip if ctx.has("clip") else not fork
    return Priors(tuple(sizes), var4, layer_hw, img_hw, step_hw, p.offset, clip)  # type: ignore[arg-type]


def prior_boxes(feature: Any, *settings: Any) -> Any:
    """PriorBox's top [1, 2, H*W*P*4] (boxes, then variances) on `feature`'s device;
    `settings` are a Priors' fields (fx graphs hold plain values)."""
    priors = Priors(*settings)
    (h, w), (img_h, img_w), (step_h, step_w) = priors.layer_hw, priors.img_hw, priors.step_hw
    f32 = dict(dtype=torch.float32, device=feature.device)
    cy = (torch.arange(h, **f32) + priors.offset) * step_h
    cx = (torch.arange(w, **f32) + priors.offset) * step_w
    half = torch.tensor(priors.sizes, dtype=torch.float64, device=feature.device) / 2
    cy, cx = cy.double()[:, None, None], cx.double()[None, :, None]
    hw, hh = half[:, 0], half[:, 1]
    boxes = torch.stack(
        torch.broadcast_tensors(
            (cx - hw) / img_w, (cy - hh) / img_h, (cx + hw) / img_w, (cy + hh) / img_h
        ),
        -1,
    ).to(torch.float32)
    if priors.clip:
        boxes = boxes.clamp(0.0, 1.0)
    variances = torch.tensor(priors.variance, **f32).expand(boxes.shape)
    return torch.stack((boxes.reshape(-1), variances.reshape(-1)))[None].to(feature.dtype)


@register
class PriorBox(LayerDef):
    """Default boxes of one feature map: per cell, a box per min_size, per max_size and per
    aspect ratio, normalised by the image size; channel 1 holds their variances."""

    type = "PriorBox"
    param_field = "prior_box_param"
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        return [(1, 2, prior_settings(ctx).count * 4)]

    def explain(self, ctx: ShapeContext) -> list[str]:
        s = prior_settings(ctx)
        sizes = ", ".join(f"{w:g}x{h:g}" for w, h in s.sizes)
        rules = "SSD fork" if _fork_rules(ctx) else "OpenCV"
        return [
            f"{len(s.sizes)} priors per cell ({sizes}) on a {s.layer_hw[0]}x{s.layer_hw[1]} map",
            f"step {s.step_hw[0]:g}x{s.step_hw[1]:g}, offset {s.offset:g}, image "
            f"{s.img_hw[0]:g}x{s.img_hw[1]:g}, clip {str(s.clip).lower()} ({rules} rules)",
        ]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        settings = astuple(prior_settings(_shape_ctx(ctx)))
        return [ctx.call(prior_boxes, ctx.inputs[0], *settings)]

    def reference(self, ctx, inputs, blobs):
        s = prior_settings(ctx)
        (h, w), (img_h, img_w), (step_h, step_w) = s.layer_hw, s.img_hw, s.step_hw
        out = np.zeros((1, 2, s.count * 4), np.float32)
        k = 0
        for i in range(h):
            for j in range(w):
                cx, cy = (j + s.offset) * step_w, (i + s.offset) * step_h
                for bw, bh in s.sizes:
                    out[0, 0, k : k + 4] = [
                        (cx - bw / 2.0) / img_w,
                        (cy - bh / 2.0) / img_h,
                        (cx + bw / 2.0) / img_w,
                        (cy + bh / 2.0) / img_h,
                    ]
                    out[0, 1, k : k + 4] = s.variance
                    k += 4
        if s.clip:
            out[0, 0] = np.minimum(np.maximum(out[0, 0], 0.0), 1.0)
        return [out]


def _shape_ctx(ctx: LowerContext) -> ShapeContext:
    """A ShapeContext for a layer being lowered (shape rules reused at lowering time)."""
    return ShapeContext(ctx.layer, list(ctx.bottom_shapes), lambda path: None, ctx.phase)


# --- DetectionOutput --------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """DetectionOutput's settings, resolved from params and dialect."""

    num_classes: int
    share_location: bool
    background: int
    nms_threshold: float
    top_k: int
    eta: float
    code_type: int
    keep_top_k: int
    variance_encoded: bool
    confidence_threshold: float
    clip: bool
    by_score: bool  # OpenCV's layout: each image's rows sorted by score, zeros after
    num_priors: int
    rows: int  # the fixed row count of the top


def detection_settings(ctx: ShapeContext) -> Detection:
    p = ctx.param
    fork = _fork_rules(ctx)
    if not ctx.has("num_classes") or p.num_classes < 1:
        ctx.fail("num_classes must be given", hint="add detection_output_param { num_classes: N }")
    for unused in ("save_output_param", "visualize"):
        if ctx.has(unused):
            ctx.warn(
                f"{unused} is ignored (it writes files or windows, not the top)",
                "detection_output_param",
                unused,
            )
    if not p.normalized_bbox:
        ctx.fail("normalized_bbox: false (pixel boxes and an image-size bottom) is not supported")
    loc, conf, priors = ctx.bottoms
    # Boxes and variances; OpenCV takes boxes alone when the variance is in the target.
    channels = (1, 2) if p.variance_encoded_in_target else (2,)
    if len(priors) < 3 or priors[-2] not in channels or priors[-1] % 4:
        ctx.fail(f"bottom 2 (priors) must be PriorBox output [1, 2, P*4], got {shape_str(priors)}")
    num_priors = priors[-1] // 4
    if loc[0] != conf[0]:
        ctx.fail(f"loc and conf disagree on the batch size: {loc[0]} vs {conf[0]}")
    classes = p.num_classes
    loc_classes = 1 if p.share_location else classes
    if count(loc[1:]) != num_priors * loc_classes * 4:
        ctx.fail(
            f"loc {shape_str(loc)} holds {count(loc[1:])} values per image, expected "
            f"{num_priors} priors x {loc_classes} x 4 = {num_priors * loc_classes * 4}"
        )
    if count(conf[1:]) != num_priors * classes:
        ctx.fail(
            f"conf {shape_str(conf)} holds {count(conf[1:])} values per image, expected "
            f"{num_priors} priors x {classes} classes = {num_priors * classes}"
        )
    nms = p.nms_param
    if nms.nms_threshold < 0:
        ctx.fail(f"nms_threshold must be non-negative, got {nms.nms_threshold:g}", "nms_param")
    if not 0 < nms.eta <= 1:
        ctx.fail(f"eta must be in (0, 1], got {nms.eta:g}", "nms_param")
    top_k = nms.top_k if has_field(nms, "top_k") else -1
    if ctx.has("confidence_threshold"):
        threshold = p.confidence_threshold
    else:
        threshold = -math.inf if fork else 0.0
    per_class = num_priors if top_k < 0 else min(top_k, num_priors)
    labels = classes - (1 if 0 <= p.background_label_id < classes else 0)
    most = labels * per_class
    if p.keep_top_k > -1:  # OpenCV's top always has keep_top_k rows per image
        most = p.keep_top_k if not fork else min(p.keep_top_k, most)
    rows = loc[0] * most
    return Detection(
        classes,
        p.share_location,
        p.background_label_id,
        nms.nms_threshold,
        top_k,
        nms.eta if fork else 1.0,
        p.code_type,
        p.keep_top_k,
        p.variance_encoded_in_target,
        threshold,
        p.clip,
        not fork,
        num_priors,
        max(rows, 1),
    )


def decode_boxes(loc: Any, prior: Any, variance: Any, code_type: int, encoded: bool) -> Any:
    """bbox_util's DecodeBBox, vectorised: loc [..., 4] against prior boxes [..., 4]."""
    if encoded:
        variance = np.ones_like(variance)
    pw, ph = prior[..., 2] - prior[..., 0], prior[..., 3] - prior[..., 1]
    if code_type == CORNER:
        return prior + variance * loc
    if code_type == CORNER_SIZE:
        scale = np.stack([pw, ph, pw, ph], -1)
        return prior + variance * loc * scale
    cx = variance[..., 0] * loc[..., 0] * pw + (prior[..., 0] + prior[..., 2]) / 2
    cy = variance[..., 1] * loc[..., 1] * ph + (prior[..., 1] + prior[..., 3]) / 2
    w = np.exp(variance[..., 2] * loc[..., 2]) * pw
    h = np.exp(variance[..., 3] * loc[..., 3]) * ph
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _sizes(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), 0, w * h)


def _overlaps(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """JaccardOverlap of one normalised box with each of `others` (no +1)."""
    apart = (
        (others[:, 0] > box[2])
        | (others[:, 2] < box[0])
        | (others[:, 1] > box[3])
        | (others[:, 3] < box[1])
    )
    iw = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    ih = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = iw * ih
    union = _sizes(box) + _sizes(others) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(apart, 0, inter / union)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, d: Detection) -> list[int]:
    """ApplyNMSFast: scores above the threshold, best first (stable), top_k of them, then
    keep each box whose overlap with every kept box is at most the (eta-adapted) threshold."""
    order = np.flatnonzero(scores > d.confidence_threshold)
    order = order[np.argsort(-scores[order], kind="stable")]
    if d.top_k > -1:
        order = order[: d.top_k]
    kept: list[int] = []
    threshold = d.nms_threshold
    for idx in order:
        if kept and (_overlaps(boxes[idx], boxes[kept]) > threshold).any():
            continue
        kept.append(int(idx))
        if d.eta < 1 and threshold > 0.5:
            threshold *= d.eta
    return kept


def detect(loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, d: Detection) -> np.ndarray:
    """DetectionOutput's forward in float32 numpy: the [1, 1, rows, 7] top."""
    n = loc.shape[0]
    p = d.num_priors
    loc_classes = 1 if d.share_location else d.num_classes
    prior, variance = _priors_and_variances(priors, p)
    boxes = decode_boxes(
        loc.reshape(n, p, loc_classes, 4),
        prior[:, None, :],
        variance[:, None, :],
        d.code_type,
        d.variance_encoded,
    ).astype(np.float32)
    if d.clip:
        boxes = np.clip(boxes, 0, 1)
    scores = conf.reshape(n, p, d.num_classes)
    out = np.full((d.rows, 7), 0.0 if d.by_score else -1.0, np.float32)
    row = 0
    for i in range(n):
        found: list[tuple[float, int, int]] = []  # (score, label, prior) in label, NMS order
        for c in range(d.num_classes):
            if c == d.background:
                continue
            b = boxes[i, :, 0 if d.share_location else c]
            found += [(float(scores[i, k, c]), c, k) for k in greedy_nms(b, scores[i, :, c], d)]
        if d.keep_top_k > -1 and len(found) > d.keep_top_k:
            best = sorted(range(len(found)), key=lambda j: -found[j][0])[: d.keep_top_k]
            found = [found[j] for j in sorted(best)]
        if d.by_score:
            found.sort(key=lambda f: -f[0])
        else:
            found.sort(key=lambda f: f[1])  # by label (stable: keeps each label's NMS order)
        for score, label, k in found:
            box = boxes[i, k, 0 if d.share_location else label]
            out[row] = (i, label, score, *box)
            row += 1
    return out[None, None]


def _priors_and_variances(priors: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The [P, 4] boxes and variances of image 0's priors (ones when only boxes are given)."""
    planes = priors.reshape(-1, priors.shape[-2], p, 4)[0]
    return planes[0], planes[1] if len(planes) == 2 else np.ones_like(planes[0])


def detection_output(loc: Any, conf: Any, priors: Any, *settings: Any) -> Any:
    """The lowering: runs `detect` on the CPU (NMS is sequential) and returns on loc's device;
    `settings` are a Detection's fields."""
    arrays = [t.detach().to("cpu", torch.float32).numpy() for t in (loc, conf, priors)]
    return torch.from_numpy(detect(*arrays, Detection(*settings))).to(loc.device, loc.dtype)


@register
class DetectionOutput(LayerDef):
    """SSD's detection head: decode boxes against priors, per-class NMS, keep_top_k; one row
    [image, label, score, xmin, ymin, xmax, ymax] per detection."""

    type = "DetectionOutput"
    param_field = "detection_output_param"
    bottoms = (3, 3)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        return [(1, 1, detection_settings(ctx).rows, 7)]

    def explain(self, ctx: ShapeContext) -> list[str]:
        d = detection_settings(ctx)
        layout = (
            "each image's rows by score, zero rows after (OpenCV)"
            if d.by_score
            else "rows grouped by image and label, -1 rows after (SSD fork)"
        )
        return [f"{d.num_priors} priors, {d.num_classes} classes, {d.rows} rows: {layout}"]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        settings = astuple(detection_settings(_shape_ctx(ctx)))
        return [ctx.call(detection_output, *ctx.inputs, *settings)]

    def reference(self, ctx, inputs, blobs):
        """Caffe's loops, box by box, in float64 (apart from the float32 decode)."""
        d = detection_settings(ctx)
        loc, conf, priors = inputs
        n, p = loc.shape[0], d.num_priors
        loc_classes = 1 if d.share_location else d.num_classes
        loc = loc.reshape(n, p, loc_classes, 4)
        conf = conf.reshape(n, p, d.num_classes)
        prior, variance = _priors_and_variances(priors, p)
        out = np.full((d.rows, 7), 0.0 if d.by_score else -1.0)
        row = 0
        for i in range(n):
            decoded = {}
            for c in range(loc_classes):
                decoded[c] = [_decode_one(loc[i, k, c], prior[k], variance[k], d) for k in range(p)]
            indices: dict[int, list[int]] = {}
            for c in range(d.num_classes):
                if c == d.background:
                    continue
                boxes = decoded[0 if d.share_location else c]
                indices[c] = _nms_loop(boxes, conf[i, :, c], d)
            pairs = [(conf[i, k, c], c, k) for c, ks in indices.items() for k in ks]
            if d.keep_top_k > -1 and len(pairs) > d.keep_top_k:
                pairs.sort(key=lambda t: -t[0])
                pairs = pairs[: d.keep_top_k]
                indices = {}
                for _, c, k in pairs:
                    indices.setdefault(c, []).append(k)
            rows = [(conf[i, k, c], c, k) for c in sorted(indices) for k in indices[c]]
            if d.by_score:
                rows.sort(key=lambda t: -t[0])
            for score, c, k in rows:
                box = decoded[0 if d.share_location else c][k]
                out[row] = (i, c, score, *box)
                row += 1
        return [out[None, None]]


def _decode_one(loc: Any, prior: Any, var: Any, d: Detection) -> list[float]:
    v = [1.0] * 4 if d.variance_encoded else [float(x) for x in var]
    x0, y0, x1, y1 = (float(x) for x in prior)
    pw, ph = x1 - x0, y1 - y0
    if d.code_type == CORNER:
        box = [x0 + v[0] * loc[0], y0 + v[1] * loc[1], x1 + v[2] * loc[2], y1 + v[3] * loc[3]]
    elif d.code_type == CORNER_SIZE:
        box = [
            x0 + v[0] * loc[0] * pw,
            y0 + v[1] * loc[1] * ph,
            x1 + v[2] * loc[2] * pw,
            y1 + v[3] * loc[3] * ph,
        ]
    else:
        cx = v[0] * loc[0] * pw + (x0 + x1) / 2
        cy = v[1] * loc[1] * ph + (y0 + y1) / 2
        w, h = math.exp(v[2] * loc[2]) * pw, math.exp(v[3] * loc[3]) * ph
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if d.clip:
        box = [min(max(b, 0.0), 1.0) for b in box]
    return [float(b) for b in box]


def _size_one(b: list[float]) -> float:
    return 0.0 if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])


def _overlap_one(a: list[float], b: list[float]) -> float:
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    inter = (min(a[2], b[2]) - max(a[0], b[0])) * (min(a[3], b[3]) - max(a[1], b[1]))
    return inter / (_size_one(a) + _size_one(b) - inter)


def _nms_loop(boxes: list[list[float]], scores: Any, d: Detection) -> list[int]:
    candidates = [(float(s), k) for k, s in enumerate(scores) if s > d.confidence_threshold]
    candidates.sort(key=lambda t: -t[0])  # Python's sort is stable, like std::stable_sort
    if d.top_k > -1:
        candidates = candidates[: d.top_k]
    kept: list[int] = []
    threshold = d.nms_threshold
    for _, k in candidates:
        if all(_overlap_one(boxes[k], boxes[j]) <= threshold for j in kept):
            kept.append(k)
            if d.eta < 1 and threshold > 0.5:
                threshold *= d.eta
    return kept
