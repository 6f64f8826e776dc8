"""The R-CNN family's layers: ROIPooling, PSROIPooling, Proposal, and py-faster-rcnn's Python
proposal layer run natively.

- `ROIPooling` (rbgirshick/caffe-fast-rcnn): rois are rows (batch, x1, y1, x2, y2) in image
  pixels. Each roi's corners are round()ed after scaling by spatial_scale, its size is
  max(end - start + 1, 1), and bin (ph, pw) covers rows [floor(ph * bin_h), ceil((ph+1) *
  bin_h)) + start (clipped to the map), likewise for columns; the top is the bin's max, or 0
  for an empty bin. Top R x C x pooled_h x pooled_w.
- `PSROIPooling` (R-FCN, daijifeng001/caffe-rfcn): position-sensitive average pooling. The roi
  is round(x1) * scale .. (round(x2) + 1) * scale (at least 0.1 wide), split into group_size²
  bins; bin (ph, pw) of output channel k averages input channel (k * group + ph) * group + pw
  over [floor(start + ph * bin), ceil(start + (ph+1) * bin)) (clipped); empty bins give 0.
- `Proposal` (PVANet's C++ layer, sanghoon/caffe; the same fields as OpenCV's): anchors from
  base_size, ratio and scale, shifted by feat_stride over the score map, moved by the deltas
  (the +1 box convention), clipped to the image; boxes smaller than min_size * im_info scale
  keep score 0; the best pre_nms_topn go through greedy NMS (IoU > nms_thresh suppresses) and
  at most post_nms_topn remain. im_info is (height, width, scale_h, scale_w).
- py-faster-rcnn's `type: "Python"` layer `rpn.proposal_layer.ProposalLayer` runs as the same
  algorithm with that file's differences: im_info is (height, width, scale), boxes under the
  minimum size are removed (not zero-scored), the NMS has no disjoint-box shortcut, and the
  top-n / threshold values come from py-faster-rcnn's config for the net's phase. So its test
  nets run without Python (as ncnn does).

The proposal tops have as many rows as survive NMS: their shapes in the graph are the most
rows there can be (Caffe's own Reshape also starts there), the run gives the true count.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocaffe.layers._spatial import FLT_MAX
from protocaffe.layers.base import LayerDef, LowerContext, Shape, ShapeContext, register, shape_str
from protocaffe.layers.data import native_python_layer
from protocaffe.lazy import F, np, torch
from protocaffe.proto import caffe_pb2
from protocaffe.proto.schema import Field, declare_message

if TYPE_CHECKING:
    from torch import fx

declare_message(
    "ROIPoolingParameter",
    Field("pooled_h", 1, "uint32", default=0),
    Field("pooled_w", 2, "uint32", default=0),
    Field("spatial_scale", 3, "float", default=1),
    param="roi_pooling_param",
)
# R-FCN makes all three `required`; a missing one is a located error here instead.
declare_message(
    "PSROIPoolingParameter",
    Field("spatial_scale", 1, "float"),
    Field("output_dim", 2, "int32"),
    Field("group_size", 3, "int32"),
    param="psroi_pooling_param",
)
declare_message(
    "ProposalParameter",
    Field("feat_stride", 1, "uint32", default=16),
    Field("base_size", 2, "uint32", default=16),
    Field("min_size", 3, "uint32", default=16),
    Field("ratio", 4, "float", repeated=True),
    Field("scale", 5, "float", repeated=True),
    Field("pre_nms_topn", 6, "uint32", default=6000),
    Field("post_nms_topn", 7, "uint32", default=300),
    Field("nms_thresh", 8, "float", default=0.7),
    param="proposal_param",
)


def c_round(x: Any) -> Any:
    """C's round(): halves away from zero (numpy and torch round halves to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _check_rois(ctx: ShapeContext) -> None:
    rois = ctx.bottoms[1]
    x = ctx.bottoms[0]
    names = ctx.layer.bottoms
    if len(x) != 4:
        ctx.fail(f"bottom '{names[0]}' ({shape_str(x)}) must have 4 axes (N, C, H, W)")
    if len(rois) < 2 or math.prod(rois[1:]) != 5:
        ctx.fail(
            f"bottom '{names[1]}' ({shape_str(rois)}) must hold one roi of 5 values per row: "
            "(batch index, x1, y1, x2, y2)",
            "bottom",
            1,
        )


def _rois(r: Any) -> Any:
    return r.reshape(r.shape[0], 5)


# --- ROIPooling --------------------------------------------------------------------------------


def _c_round_t(v: Any) -> Any:
    """C's round() on a tensor: halves away from zero (torch.round halves to even)."""
    t = torch.trunc(v)
    return torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t)


def roi_bins(start: Any, size: Any, pooled: int, limit: int) -> tuple[Any, Any]:
    """Bin edges [lo, hi) per roi (rows) and bin (columns), in float32 as the fork computes."""
    bin_size = size.float() / pooled
    steps = torch.arange(pooled, dtype=torch.float32, device=size.device)
    lo = torch.floor(steps[None, :] * bin_size[:, None]).long() + start[:, None]
    hi = torch.ceil((steps[None, :] + 1) * bin_size[:, None]).long() + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


def adaptive_bins(start: Any, size: Any, pooled: int) -> tuple[Any, Any]:
    """adaptive_max_pool2d's bins over [start, start + size): integer floor and ceil."""
    steps = torch.arange(pooled, device=size.device)
    lo = (steps[None, :] * size[:, None]) // pooled + start[:, None]
    hi = -((-(steps[None, :] + 1) * size[:, None]) // pooled) + start[:, None]
    return lo, hi


def roi_pool(x: Any, rois: Any, pooled: tuple[int, int], scale: float) -> Any:
    """ROIPoolingLayer's forward: per roi, the max of each bin (0 for an empty bin).

    A roi inside the map whose float32 bins equal adaptive max pooling's runs that kernel on
    its window; any other (clipped at the border, or a bin edge that float rounding moves) is
    pooled bin by bin with masks over the roi's window."""
    rois = _rois(rois).float()
    height, width = x.shape[-2:]
    corners = _c_round_t(rois[:, 1:] * torch.tensor(scale, dtype=torch.float32)).long()
    starts = (corners[:, 1], corners[:, 0])
    sizes = (
        (corners[:, 3] - starts[0] + 1).clamp(min=1),
        (corners[:, 2] - starts[1] + 1).clamp(min=1),
    )
    hlo, hhi = roi_bins(starts[0], sizes[0], pooled[0], height)
    wlo, whi = roi_bins(starts[1], sizes[1], pooled[1], width)
    fast = (starts[0] >= 0) & (starts[0] + sizes[0] <= height)
    fast &= (starts[1] >= 0) & (starts[1] + sizes[1] <= width)
    for (lo, hi), mine in zip(
        (
            adaptive_bins(starts[0], sizes[0], pooled[0]),
            adaptive_bins(starts[1], sizes[1], pooled[1]),
        ),
        ((hlo, hhi), (wlo, whi)),
        strict=True,
    ):
        fast &= (lo == mine[0]).all(1) & (hi == mine[1]).all(1)
    out = x.new_zeros((rois.shape[0], x.shape[1], *pooled))
    lowest = torch.tensor(-FLT_MAX, dtype=x.dtype, device=x.device)
    edges = [t.tolist() for t in (hlo, hhi, wlo, whi)]
    for r, (batch, quick) in enumerate(zip(rois[:, 0].long().tolist(), fast.tolist(), strict=True)):
        h0, h1, w0, w1 = min(edges[0][r]), max(edges[1][r]), min(edges[2][r]), max(edges[3][r])
        if h1 <= h0 or w1 <= w0:
            continue  # every bin is empty: 0
        window = x[batch, :, h0:h1, w0:w1]
        if quick:
            out[r] = F.adaptive_max_pool2d(window, pooled)
            continue
        rows = torch.arange(h0, h1, device=x.device)
        cols = torch.arange(w0, w1, device=x.device)
        in_rows = (rows[None, :] >= hlo[r, :, None]) & (rows[None, :] < hhi[r, :, None])
        in_cols = (cols[None, :] >= wlo[r, :, None]) & (cols[None, :] < whi[r, :, None])
        # the max of each column bin, then of each row bin: (C, h, Pw) -> (C, Ph, Pw)
        by_col = torch.where(in_cols[None, None], window[:, :, None, :], lowest).amax(-1)
        by_row = torch.where(in_rows[None, :, :, None], by_col[:, None], lowest).amax(2)
        empty = (in_rows.sum(1)[:, None] == 0) | (in_cols.sum(1)[None, :] == 0)
        out[r] = torch.where(empty[None], torch.zeros_like(by_row), by_row)
    return out


@register
class ROIPooling(LayerDef):
    type = "ROIPooling"
    param_field = "roi_pooling_param"
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _check_rois(ctx)
        p = ctx.param
        for name in ("pooled_h", "pooled_w"):
            if getattr(p, name) <= 0:
                ctx.fail(f"{name} must be positive, got {getattr(p, name)}", name)
        return [(ctx.bottoms[1][0], ctx.bottoms[0][1], p.pooled_h, p.pooled_w)]

    def explain(self, ctx: ShapeContext) -> list[str]:
        p = ctx.param
        return [
            f"max over {p.pooled_h}x{p.pooled_w} bins of each roi, scaled by {p.spatial_scale:g}"
        ]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        pooled = (p.pooled_h, p.pooled_w)
        return [ctx.call(roi_pool, ctx.inputs[0], ctx.inputs[1], pooled, p.spatial_scale)]

    def reference(self, ctx, inputs, blobs):
        """ROIPoolingLayer::Forward_cpu."""
        p = ctx.param
        x, rois = inputs[0].astype(np.float32), _rois(inputs[1]).astype(np.float32)
        height, width = x.shape[2:]
        top = np.zeros((len(rois), x.shape[1], p.pooled_h, p.pooled_w), dtype=np.float32)
        for r, roi in enumerate(rois):
            x1, y1, x2, y2 = (int(c_round(v * np.float32(p.spatial_scale))) for v in roi[1:])
            roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
            bin_h = np.float32(roi_h) / np.float32(p.pooled_h)
            bin_w = np.float32(roi_w) / np.float32(p.pooled_w)
            for ph in range(p.pooled_h):
                for pw in range(p.pooled_w):
                    hs = min(max(int(np.floor(np.float32(ph) * bin_h)) + y1, 0), height)
                    he = min(max(int(np.ceil(np.float32(ph + 1) * bin_h)) + y1, 0), height)
                    ws = min(max(int(np.floor(np.float32(pw) * bin_w)) + x1, 0), width)
                    we = min(max(int(np.ceil(np.float32(pw + 1) * bin_w)) + x1, 0), width)
                    if he <= hs or we <= ws:
                        continue
                    top[r, :, ph, pw] = x[int(roi[0]), :, hs:he, ws:we].max(axis=(1, 2))
        return [top]


# --- PSROIPooling ------------------------------------------------------------------------------


def ps_roi_bins(rois: Any, scale: float, group: int, limit: int, lo_col: int) -> tuple[Any, Any]:
    """R-FCN's bin edges on one axis (x: lo_col 1, y: lo_col 2), each R x group."""
    s = torch.tensor(scale, dtype=torch.float32)
    start = _c_round_t(rois[:, lo_col]) * s
    end = (_c_round_t(rois[:, lo_col + 2]) + 1) * s
    bin_size = (end - start).clamp(min=0.1) / group
    steps = torch.arange(group, dtype=torch.float32, device=rois.device)
    lo = torch.floor(steps[None] * bin_size[:, None] + start[:, None]).long()
    hi = torch.ceil((steps[None] + 1) * bin_size[:, None] + start[:, None]).long()
    return lo.clamp(0, limit), hi.clamp(0, limit)


def ps_roi_pool(x: Any, rois: Any, output_dim: int, group: int, scale: float) -> Any:
    """R-FCN's PSROIPoolingForward, through a summed-area table (float64 sums)."""
    rois = _rois(rois).float()
    n, _, height, width = x.shape
    hs, he = ps_roi_bins(rois, scale, group, height, 2)
    ws, we = ps_roi_bins(rois, scale, group, width, 1)
    table = torch.zeros(
        (n, x.shape[1], height + 1, width + 1), dtype=torch.float64, device=x.device
    )
    table[:, :, 1:, 1:] = x.double().cumsum(2).cumsum(3)
    batch = rois[:, 0].long()
    r = rois.shape[0]
    ph = torch.arange(group, device=x.device)[:, None]
    pw = torch.arange(group, device=x.device)[None, :]
    # channel (k * group + ph) * group + pw for every (roi, k, ph, pw)
    k = torch.arange(output_dim, device=x.device)[:, None, None]
    channel = (k * group + ph) * group + pw
    b = batch[:, None, None, None].expand(r, output_dim, group, group)
    c = channel[None].expand(r, output_dim, group, group)
    h0 = hs[:, None, :, None].expand(r, output_dim, group, group)
    h1 = he[:, None, :, None].expand(r, output_dim, group, group)
    w0 = ws[:, None, None, :].expand(r, output_dim, group, group)
    w1 = we[:, None, None, :].expand(r, output_dim, group, group)
    total = table[b, c, h1, w1] - table[b, c, h0, w1] - table[b, c, h1, w0] + table[b, c, h0, w0]
    area = ((h1 - h0) * (w1 - w0)).to(torch.float64)
    empty = (h1 <= h0) | (w1 <= w0)
    mean = torch.where(empty, torch.zeros_like(total), total / area.clamp(min=1))
    return mean.to(x.dtype)


@register
class PSROIPooling(LayerDef):
    type = "PSROIPooling"
    param_field = "psroi_pooling_param"
    bottoms = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        _check_rois(ctx)
        p = ctx.param
        for name in ("spatial_scale", "output_dim", "group_size"):
            if not ctx.has(name):
                ctx.fail(f"psroi_pooling_param.{name} is required (R-FCN has no default)")
        for name in ("output_dim", "group_size"):
            if getattr(p, name) <= 0:
                ctx.fail(f"{name} must be positive, got {getattr(p, name)}", name)
        channels = ctx.bottoms[0][1]
        if channels != p.output_dim * p.group_size**2:
            ctx.fail(
                f"bottom '{ctx.layer.bottoms[0]}' has {channels} channels; output_dim "
                f"{p.output_dim} x group_size² {p.group_size**2} = "
                f"{p.output_dim * p.group_size**2} are needed",
                "output_dim",
            )
        return [(ctx.bottoms[1][0], p.output_dim, p.group_size, p.group_size)]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        p = ctx.param
        args = (p.output_dim, p.group_size, p.spatial_scale)
        return [ctx.call(ps_roi_pool, ctx.inputs[0], ctx.inputs[1], *args)]

    def reference(self, ctx, inputs, blobs):
        """PSROIPoolingForward's loop (the fork has only the CUDA kernel)."""
        p = ctx.param
        x, rois = inputs[0].astype(np.float32), _rois(inputs[1]).astype(np.float32)
        g, scale = p.group_size, np.float32(p.spatial_scale)
        height, width = x.shape[2:]
        top = np.zeros((len(rois), p.output_dim, g, g), dtype=np.float32)
        for r, roi in enumerate(rois):
            x0, y0 = np.float32(c_round(roi[1])) * scale, np.float32(c_round(roi[2])) * scale
            x1 = np.float32(c_round(roi[3]) + 1) * scale
            y1 = np.float32(c_round(roi[4]) + 1) * scale
            bin_w = np.float32(max(x1 - x0, np.float32(0.1))) / np.float32(g)
            bin_h = np.float32(max(y1 - y0, np.float32(0.1))) / np.float32(g)
            for k in range(p.output_dim):
                for ph in range(g):
                    for pw in range(g):
                        h0 = min(max(int(np.floor(np.float32(ph) * bin_h + y0)), 0), height)
                        h1 = min(max(int(np.ceil(np.float32(ph + 1) * bin_h + y0)), 0), height)
                        w0 = min(max(int(np.floor(np.float32(pw) * bin_w + x0)), 0), width)
                        w1 = min(max(int(np.ceil(np.float32(pw + 1) * bin_w + x0)), 0), width)
                        if h1 <= h0 or w1 <= w0:
                            continue
                        plane = x[int(rois[r, 0]), (k * g + ph) * g + pw]
                        total = np.float32(0)
                        for h in range(h0, h1):
                            for w in range(w0, w1):
                                total = np.float32(total + plane[h, w])
                        top[r, k, ph, pw] = total / np.float32((h1 - h0) * (w1 - w0))
        return [top]


# --- Proposal ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposalConfig:
    """One proposal layer's settings, whichever way the file gave them."""

    feat_stride: int
    base_size: int
    min_size: float
    ratios: tuple[float, ...]
    scales: tuple[float, ...]
    pre_nms_topn: int
    post_nms_topn: int
    nms_thresh: float
    python: bool  # py-faster-rcnn's semantics (3-value im_info, removal, plain IoU)


def generate_anchors(base_size: int, ratios: Any, scales: Any) -> np.ndarray:
    """(A, 4) anchors x1 y1 x2 y2 around the base box's centre, ratios outer, scales inner."""
    area = np.float32(base_size * base_size)
    centre = np.float32(0.5) * np.float32(base_size - 1)
    out = []
    for r in ratios:
        w = np.floor(np.sqrt(area / np.float32(r)) + np.float32(0.5))
        h = np.floor(w * np.float32(r) + np.float32(0.5))
        for s in scales:
            half_w = np.float32(0.5) * (w * np.float32(s) - 1)
            half_h = np.float32(0.5) * (h * np.float32(s) - 1)
            out.append([centre - half_w, centre - half_h, centre + half_w, centre + half_h])
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


def _min_box(info: Any, cfg: ProposalConfig) -> tuple[Any, Any]:
    """Minimum (height, width): min_size times the image scale(s) in im_info."""
    if cfg.python:
        return cfg.min_size * info[2], cfg.min_size * info[2]
    return cfg.min_size * info[2], cfg.min_size * info[3]


def decode_proposals(
    scores: Any, deltas: Any, info: Any, cfg: ProposalConfig, anchors: Any
) -> tuple[Any, Any]:
    """All H*W*A boxes (moved by the deltas, clipped) and their foreground scores, rows in
    (h, w, anchor) order as both forks enumerate them."""
    a = anchors.shape[0]
    fg = scores[0, a:].float()  # (A, H, W): the foreground half
    height, width = fg.shape[1:]
    steps_y = torch.arange(height, device=fg.device)
    steps_x = torch.arange(width, device=fg.device)
    ys, xs = torch.meshgrid(steps_y, steps_x, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).float() * cfg.feat_stride
    boxes = (shifts + anchors[None]).reshape(-1, 4)
    d = deltas[0].float().reshape(a, 4, height, width).permute(2, 3, 0, 1).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    cx = d[:, 0] * w + (boxes[:, 0] + 0.5 * w)
    cy = d[:, 1] * h + (boxes[:, 1] + 0.5 * h)
    pw, ph = torch.exp(d[:, 2]) * w, torch.exp(d[:, 3]) * h
    img_h, img_w = info[0], info[1]
    x1 = torch.minimum(cx - 0.5 * pw, img_w - 1).clamp(min=0)
    y1 = torch.minimum(cy - 0.5 * ph, img_h - 1).clamp(min=0)
    x2 = torch.minimum(cx + 0.5 * pw, img_w - 1).clamp(min=0)
    y2 = torch.minimum(cy + 0.5 * ph, img_h - 1).clamp(min=0)
    return torch.stack([x1, y1, x2, y2], 1), fg.permute(1, 2, 0).reshape(-1)


def box_iou(box: Any, boxes: Any, disjoint_zero: bool) -> Any:
    """IoU of one box with many (the +1 pixel convention). PVANet's C++ calls boxes that do not
    touch disjoint first (IoU 0, although +1 widths would give a half-pixel gap some overlap)."""
    x1 = torch.maximum(box[0], boxes[:, 0])
    y1 = torch.maximum(box[1], boxes[:, 1])
    x2 = torch.minimum(box[2], boxes[:, 2])
    y2 = torch.minimum(box[3], boxes[:, 3])
    inter = (x2 - x1 + 1).clamp(min=0) * (y2 - y1 + 1).clamp(min=0)
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    iou = inter / (area + areas - inter)
    if disjoint_zero:
        apart = (box[0] > boxes[:, 2]) | (box[1] > boxes[:, 3])
        apart |= (box[2] < boxes[:, 0]) | (box[3] < boxes[:, 1])
        iou = torch.where(apart, torch.zeros_like(iou), iou)
    return iou


def greedy_nms(boxes: Any, thresh: float, limit: int, disjoint_zero: bool) -> Any:
    """Indices kept by greedy NMS in score order (IoU > thresh suppresses), at most `limit`."""
    alive = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    keep: list[int] = []
    while len(keep) < limit:
        live = torch.nonzero(alive)
        if len(live) == 0:
            break
        i = int(live[0])
        keep.append(i)
        alive[i] = False
        alive &= box_iou(boxes[i], boxes, disjoint_zero) <= thresh
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def proposal_tops(
    scores: Any, deltas: Any, im_info: Any, fields: dict[str, Any], anchors: Any, tops: int
) -> tuple[Any, ...]:
    """rois (K, 5) and, with 2 tops, their scores, for a batch of one image."""
    cfg = ProposalConfig(**fields)
    info = im_info.reshape(-1).float()
    anchors_t = torch.tensor(anchors, device=scores.device)
    boxes, s = decode_proposals(scores, deltas, info, cfg, anchors_t)
    min_h, min_w = _min_box(info, cfg)
    big = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_w) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_h)
    if cfg.python:
        boxes, s = boxes[big], s[big]
    else:
        s = s * big.to(s.dtype)
    order = torch.sort(s, descending=True, stable=True).indices[: cfg.pre_nms_topn]
    boxes, s = boxes[order], s[order]
    keep = greedy_nms(boxes, cfg.nms_thresh, cfg.post_nms_topn, disjoint_zero=not cfg.python)
    rois = torch.cat([boxes.new_zeros((len(keep), 1)), boxes[keep]], 1).to(scores.dtype)
    if tops == 1:
        return (rois,)
    kept = s[keep].to(scores.dtype)
    return rois, (kept[:, None] if cfg.python else kept)


def proposal_reference(inputs: list[np.ndarray], cfg: ProposalConfig) -> tuple[Any, Any]:
    """The forks' loops (enumerate, sort, NMS) in numpy float32: (rois, scores)."""
    scores, deltas, im_info = (a.astype(np.float32) for a in inputs)
    anchors = generate_anchors(cfg.base_size, cfg.ratios, cfg.scales)
    a, (height, width) = len(anchors), scores.shape[2:]
    info = im_info.reshape(-1)
    min_h, min_w = _min_box(info, cfg)
    one, half = np.float32(1), np.float32(0.5)
    found = []
    for h in range(height):
        for w in range(width):
            for k in range(a):
                box = anchors[k] + np.float32([w, h, w, h]) * np.float32(cfg.feat_stride)
                dx, dy, dw, dh = deltas[0, 4 * k : 4 * k + 4, h, w]
                bw, bh = box[2] - box[0] + one, box[3] - box[1] + one
                cx, cy = dx * bw + (box[0] + half * bw), dy * bh + (box[1] + half * bh)
                pw, ph = np.exp(dw) * bw, np.exp(dh) * bh
                out = np.float32([cx - half * pw, cy - half * ph, cx + half * pw, cy + half * ph])
                out = np.clip(out, 0, np.float32([info[1], info[0], info[1], info[0]]) - one)
                big = out[2] - out[0] + one >= min_w and out[3] - out[1] + one >= min_h
                score = scores[0, a + k, h, w]
                if big or not cfg.python:
                    found.append((out, score if big else np.float32(0)))
    order = sorted(range(len(found)), key=lambda i: -found[i][1])[: cfg.pre_nms_topn]
    keep: list[int] = []
    dead = [False] * len(order)
    for i in range(len(order)):
        if dead[i]:
            continue
        keep.append(order[i])
        if len(keep) == cfg.post_nms_topn:
            break
        bi = found[order[i]][0]
        for j in range(i + 1, len(order)):
            bj = found[order[j]][0]
            if not cfg.python and (
                bi[0] > bj[2] or bi[1] > bj[3] or bi[2] < bj[0] or bi[3] < bj[1]
            ):
                continue
            iw = max(min(bi[2], bj[2]) - max(bi[0], bj[0]) + one, 0)
            ih = max(min(bi[3], bj[3]) - max(bi[1], bj[1]) + one, 0)
            inter = np.float32(iw * ih)
            area_i = (bi[2] - bi[0] + one) * (bi[3] - bi[1] + one)
            area_j = (bj[2] - bj[0] + one) * (bj[3] - bj[1] + one)
            if inter / (area_i + area_j - inter) > cfg.nms_thresh:
                dead[j] = True
    rois = np.float32([[0, *found[i][0]] for i in keep]).reshape(-1, 5)
    return rois, np.float32([found[i][1] for i in keep])


class _ProposalBase(LayerDef):
    bottoms = (3, 3)
    tops = (1, 2)

    def config(self, ctx: ShapeContext) -> ProposalConfig:
        raise NotImplementedError

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        cfg = self.config(ctx)
        scores, deltas, info = ctx.bottoms
        names = ctx.layer.bottoms
        a = len(cfg.ratios) * len(cfg.scales)
        if len(scores) != 4 or scores[0] != 1:
            ctx.fail(
                f"bottom '{names[0]}' ({shape_str(scores)}) must be 1 x 2A x H x W: "
                "one image per batch, as in the forks"
            )
        if scores[1] != 2 * a:
            ctx.fail(
                f"bottom '{names[0]}' has {scores[1]} channels, but {a} anchors "
                f"({len(cfg.ratios)} ratios x {len(cfg.scales)} scales) need {2 * a}"
            )
        if tuple(deltas) != (1, 4 * a, *scores[2:]):
            ctx.fail(
                f"bottom '{names[1]}' ({shape_str(deltas)}) must be 1x{4 * a}x"
                f"{scores[2]}x{scores[3]} (4 deltas per anchor)",
                "bottom",
                1,
            )
        need = 3 if cfg.python else 4
        if math.prod(info) < need:
            ctx.fail(
                f"bottom '{names[2]}' ({shape_str(info)}) must hold {need} values: "
                + ("height, width, scale" if cfg.python else "height, width, scale_h, scale_w"),
                "bottom",
                2,
            )
        rows = min(cfg.post_nms_topn, cfg.pre_nms_topn, a * scores[2] * scores[3])
        tops = [(rows, 5)]
        if len(ctx.layer.tops) == 2:
            tops.append((rows, 1) if cfg.python else (rows,))
        return tops

    def explain(self, ctx: ShapeContext) -> list[str]:
        cfg = self.config(ctx)
        return [
            f"{len(cfg.ratios) * len(cfg.scales)} anchors per position, stride "
            f"{cfg.feat_stride}; top {cfg.pre_nms_topn} -> NMS {cfg.nms_thresh:g} -> at most "
            f"{cfg.post_nms_topn} rois (the row count is known at run time)"
        ]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        cfg = self.config_of(ctx.layer.proto, ctx.phase)
        anchors = generate_anchors(cfg.base_size, cfg.ratios, cfg.scales).tolist()
        # fx node arguments must be plain values: the config travels as a dict.
        fields = dataclasses.asdict(cfg)
        tops = len(ctx.top_shapes)
        both = ctx.call(proposal_tops, *ctx.inputs, fields, anchors, tops)
        return [ctx.call(operator.getitem, both, i) for i in range(tops)]

    def reference(self, ctx, inputs, blobs):
        cfg = self.config(ctx)
        rois, s = proposal_reference(inputs, cfg)
        tops = [rois, s[:, None] if cfg.python else s]
        return tops[: len(ctx.layer.tops)]

    def config_of(self, proto: Any, phase: int) -> ProposalConfig:
        raise NotImplementedError


@register
class Proposal(_ProposalBase):
    type = "Proposal"
    param_field = "proposal_param"

    def config(self, ctx: ShapeContext) -> ProposalConfig:
        p = ctx.param
        for name in ("ratio", "scale"):
            if not ctx.has(name):
                ctx.fail(
                    f"proposal_param gives no {name}: the layer would make no anchors",
                    hint="py-faster-rcnn's anchors are ratio: 0.5 ratio: 1 ratio: 2 and "
                    "scale: 8 scale: 16 scale: 32",
                )
        for name in ("feat_stride", "base_size", "post_nms_topn", "pre_nms_topn"):
            if getattr(p, name) <= 0:
                ctx.fail(f"{name} must be positive, got {getattr(p, name)}", name)
        return self.config_of(ctx.layer.proto, ctx.phase)

    def config_of(self, proto: Any, phase: int) -> ProposalConfig:
        p = getattr(proto, self.param_field)
        return ProposalConfig(
            p.feat_stride,
            p.base_size,
            float(p.min_size),
            tuple(p.ratio),
            tuple(p.scale),
            p.pre_nms_topn,
            p.post_nms_topn,
            p.nms_thresh,
            python=False,
        )


# py-faster-rcnn lib/fast_rcnn/config.py: RPN_PRE_NMS_TOP_N, RPN_POST_NMS_TOP_N, RPN_NMS_THRESH,
# RPN_MIN_SIZE per phase; generate_anchors() defaults.
PY_FASTER_RCNN_RPN = {
    caffe_pb2.TRAIN: (12000, 2000, 0.7, 16),
    caffe_pb2.TEST: (6000, 300, 0.7, 16),
}
PY_FASTER_RCNN_RATIOS = (0.5, 1.0, 2.0)
PY_FASTER_RCNN_SCALES = (8.0, 16.0, 32.0)
_YAML_PAIR = re.compile(r"""^\s*['"]?(\w+)['"]?\s*:\s*(.+?)\s*$""")


def parse_param_str(text: str) -> dict[str, Any] | None:
    """The YAML mappings py-faster-rcnn writes in param_str ("'feat_stride': 16", one pair a
    line, values numbers or [lists]) or PVANet's flow mapping ("{'feat_stride': 16, ...}");
    None when it is something else."""
    out: dict[str, Any] = {}
    text = text.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    for line in re.split(r"[\n,](?![^\[\(]*[\]\)])", text):
        if not line.strip():
            continue
        m = _YAML_PAIR.match(line)
        if m is None:
            return None
        try:
            out[m.group(1)] = ast.literal_eval(m.group(2))
        except (ValueError, SyntaxError):
            return None
    return out


@native_python_layer("rpn.proposal_layer", "ProposalLayer")
class PyFasterRCNNProposal(_ProposalBase):
    """py-faster-rcnn's Python ProposalLayer, run natively (it is not a registered type)."""

    type = "Python"
    param_field = "python_param"

    def config(self, ctx: ShapeContext) -> ProposalConfig:
        values = parse_param_str(ctx.param.param_str)
        if values is None or not isinstance(values.get("feat_stride"), int):
            ctx.fail(
                f"param_str {ctx.param.param_str!r} does not give feat_stride",
                "param_str",
                hint="py-faster-rcnn writes param_str: \"'feat_stride': 16\"",
            )
        return self.config_of(ctx.layer.proto, ctx.phase)

    def config_of(self, proto: Any, phase: int) -> ProposalConfig:
        values = parse_param_str(proto.python_param.param_str) or {}
        pre, post, nms, min_size = PY_FASTER_RCNN_RPN[phase]
        return ProposalConfig(
            int(values["feat_stride"]),
            16,
            float(min_size),
            tuple(float(r) for r in values.get("ratios", PY_FASTER_RCNN_RATIOS)),
            tuple(float(s) for s in values.get("scales", PY_FASTER_RCNN_SCALES)),
            pre,
            post,
            nms,
            python=True,
        )
