"""Net surgery: moving weights between nets the way FCN was made from a classifier.

Three operations, each a plan of `Change`s (what happened to every layer, and why) applied to
a destination CaffeModule whose blobs start from its fillers (or a weights file):

- `fully_conv`: InnerProduct blobs into the same-named (or mapped) Convolution layers of the
  fully convolutional net, (N, C*k*k) read as (N, C, k, k): the same row-major memory, which is
  why Caffe's net_surgery example can assign them flat. Other same-named layers must match.
- `interp`: bilinear upsampling weights for Deconvolution layers, in FCN's variant (the kernel
  on the channel diagonal W[i, i], every other slice 0; FCN's `surgery.interp`) or Caffe's
  `bilinear` filler variant (the kernel in every slice; meant for `group: C`).
- `transplant`: every same-named blob of a weights file, copied when the shapes agree, coerced
  (flat, row-major) when only the element counts agree, else the overlapping leading slice on
  every axis (how FCN's `expand_score` grows a score layer to more classes). FCN's own
  `transplant` assigns `.flat` in that last case too, which repeats or truncates in flat
  order; the per-axis overlap keeps each output's filter intact instead.

A mismatch is an error naming both shapes and where each side is defined.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocaffe.diagnostics import CompileError, Diagnostic, Diagnostics, Span, suggestion_hint
from protocaffe.layers.base import count, shape_str

FCN = "fcn"  # kernel on the channel diagonal only (FCN's surgery.interp)
FILLER = "filler"  # kernel in every (out, in) slice (Caffe's `bilinear` filler)
VARIANTS = (FCN, FILLER)


@dataclass
class Change:
    """What one surgery did to one layer: a status word and the reason, blob by blob."""

    layer: str
    type: str
    status: str  # copied / coerced / partial / converted / interpolated / skipped / dropped / kept
    detail: str


@dataclass
class SourceLayer:
    """A layer's blobs on the source side, with where the layer is defined (for messages)."""

    name: str
    type: str
    blobs: list[Any]  # tensors
    where: str  # "file:line" or "layer #i of file.caffemodel"
    span: Span | None = None


def _first_layers(module: Any) -> dict[str, Any]:
    """Net layers with stored blobs by name; the first of same-named ones gets weights (Caffe)."""
    first: dict[str, Any] = {}
    for layer in module.caffe_graph.layers:
        if layer.blob_specs and layer in module._layer_attrs:
            first.setdefault(layer.name, layer)
    return first


def _blob_shapes(blobs: Sequence[Any]) -> str:
    return " ".join(shape_str(tuple(b.shape)) for b in blobs) or "(none)"


def _where(span: Span | None, fallback: str) -> str:
    return str(span) if span is not None else fallback


def _mismatch(diags: Diagnostics, message: str, dst: Any, src: SourceLayer, hint: str) -> None:
    """An error at the destination layer plus a note at the source layer's definition."""
    diags.add(Diagnostic("error", message, dst.span, hint))
    diags.add(Diagnostic("note", f"'{src.name}' is defined here ({src.where})", src.span))


def source_from_module(module: Any) -> dict[str, SourceLayer]:
    """The source side from a loaded net: its (first same-named) layers with their blobs."""
    out = {}
    for name, layer in _first_layers(module).items():
        blobs = [module.blob_tensor(layer, s.name).detach() for s in layer.blob_specs]
        if layer.type == "InnerProduct" and layer.proto.inner_product_param.transpose:
            blobs[0] = blobs[0].t()  # stored K x N; a convolution wants N x (C*k*k)
        where = _where(layer.span, module.caffe_graph.name)
        out[name] = SourceLayer(name, layer.type, blobs, where, layer.span)
    return out


def source_from_caffemodel(path: str) -> dict[str, SourceLayer]:
    """The source side from a weights file alone; of same-named file layers the last wins,
    as when Caffe copies them one after another."""
    from protocaffe.runtime.caffemodel import read_blobs, read_index

    weights = read_index(path)
    out = {}
    for i, record in enumerate(weights.layers):
        if record.blobs:
            where = f"layer #{i} of {path}"
            out[record.name] = SourceLayer(
                record.name, record.type, read_blobs(weights, record), where
            )
    return out


# ---------------------------------------------------------------------------- fully-conv


def parse_map(pairs: Iterable[str]) -> dict[str, str]:
    """`--map fc6=fc6-conv` entries: source layer name -> destination layer name."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        src, sep, dst = pair.partition("=")
        if not sep or not src or not dst:
            raise ValueError(f"--map expects SRC=DST layer names, not {pair!r}")
        if src in mapping:
            raise ValueError(f"--map gives source layer '{src}' twice")
        mapping[src] = dst
    return mapping


def fully_conv(
    source: Mapping[str, SourceLayer], dst: Any, mapping: Mapping[str, str]
) -> list[Change]:
    """Copy `source` into `dst`: InnerProduct -> Convolution reshaped, others by exact shape.

    Destination layers take the source layer `mapping` names for them, else their own name's.
    Nothing is changed when any layer mismatches (every mismatch is reported at once).
    """
    targets = _first_layers(dst)
    diags = Diagnostics()
    origin = {d: s for s, d in mapping.items()}
    for src_name, dst_name in mapping.items():
        if src_name not in source:
            diags.error(
                f"--map {src_name}={dst_name}: the source net has no layer '{src_name}' with "
                "weights",
                hint=suggestion_hint(src_name, source),
            )
        if dst_name not in targets:
            diags.error(
                f"--map {src_name}={dst_name}: the destination net has no layer "
                f"'{dst_name}' with blobs",
                hint=suggestion_hint(dst_name, targets),
            )
    diags.check()
    changes: list[Change] = []
    plan: list[tuple[Any, Any]] = []  # (destination tensor, source tensor reshaped)
    used: set[str] = set()
    for name, layer in targets.items():
        # A source layer mapped elsewhere (fc6=fc6-conv) does not also fill a same-named layer.
        src = None if name in mapping and name not in origin else source.get(origin.get(name, name))
        if src is None:
            changes.append(Change(name, layer.type, "kept", "not in the source: fillers"))
            continue
        used.add(src.name)
        wanted = [tuple(s.shape) for s in layer.blob_specs]
        have = [tuple(b.shape) for b in src.blobs]
        label = name if src.name == name else f"{src.name} -> {name}"
        if len(have) != len(wanted):
            _mismatch(
                diags,
                f"{label}: {src.type} '{src.name}' has {len(have)} blobs "
                f"({_blob_shapes(src.blobs)}) but {layer.type} '{name}' has {len(wanted)} "
                f"({' '.join(shape_str(s) for s in wanted)})",
                layer,
                src,
                "bias_term must agree on both sides",
            )
            continue
        convert = src.type == "InnerProduct" and layer.type == "Convolution"
        for j, (blob, shape) in enumerate(zip(src.blobs, wanted, strict=True)):
            if tuple(blob.shape) == shape:
                plan.append((dst.blob_tensor(layer, layer.blob_specs[j].name), blob))
            elif convert and blob.numel() == count(shape):
                plan.append((dst.blob_tensor(layer, layer.blob_specs[j].name), blob.reshape(shape)))
            else:
                why = (
                    "an InnerProduct becomes a Convolution with num_output N and kernel k over "
                    "C channels when its weights are N x (C*k*k); check num_output and "
                    "kernel_size against the source's input"
                    if convert
                    else "only InnerProduct -> Convolution changes shape; other layers must match"
                )
                _mismatch(
                    diags,
                    f"{label}: blob {j} is {shape_str(tuple(blob.shape))} ({blob.numel()} values)"
                    f" in {src.type} '{src.name}' but {shape_str(shape)} ({count(shape)} values) "
                    f"in {layer.type} '{name}'",
                    layer,
                    src,
                    why,
                )
        if convert:
            detail = f"{_blob_shapes(src.blobs)} -> {' '.join(shape_str(s) for s in wanted)}"
            changes.append(Change(label, layer.type, "converted", detail + " (same memory)"))
        else:
            changes.append(Change(label, layer.type, "copied", " ".join(map(shape_str, wanted))))
    diags.check()
    _apply(plan)
    for name, src in source.items():
        if name not in used:
            changes.append(Change(name, src.type, "dropped", "not in the destination net"))
    return changes


def _apply(plan: Sequence[tuple[Any, Any]]) -> None:
    import torch

    with torch.no_grad():
        for target, value in plan:
            target.copy_(value.reshape(target.shape))


# ---------------------------------------------------------------------------- transplant


def transplant(source: Mapping[str, SourceLayer], dst: Any) -> list[Change]:
    """Every same-named blob of `source` into `dst`: copied, coerced or partial (see module)."""
    import torch

    changes: list[Change] = []
    targets = _first_layers(dst)
    with torch.no_grad():
        for name, layer in targets.items():
            src = source.get(name)
            if src is None:
                changes.append(Change(name, layer.type, "skipped", "not in the source: fillers"))
                continue
            kinds: list[str] = []
            notes: list[str] = []
            for j, spec in enumerate(layer.blob_specs):
                if j >= len(src.blobs):
                    kinds.append("skipped")
                    notes.append(f"blob {j} {shape_str(spec.shape)}: not in the source")
                    continue
                kind, note = _transplant_blob(src.blobs[j], dst.blob_tensor(layer, spec.name))
                kinds.append(kind)
                notes.append(f"blob {j} {note}")
            for j in range(len(layer.blob_specs), len(src.blobs)):
                notes.append(f"source blob {j} {shape_str(tuple(src.blobs[j].shape))} dropped")
            changes.append(Change(name, layer.type, _layer_status(kinds), "; ".join(notes)))
    for name, src in source.items():
        if name not in targets:
            changes.append(Change(name, src.type, "dropped", "not in the destination net"))
    return changes


def _transplant_blob(blob: Any, target: Any) -> tuple[str, str]:
    have, want = tuple(blob.shape), tuple(target.shape)
    if have == want:
        target.copy_(blob)
        return "copied", shape_str(want)
    if blob.numel() == target.numel():
        target.copy_(blob.reshape(want))
        return "coerced", f"{shape_str(have)} -> {shape_str(want)} (same count, row-major)"
    if len(have) == len(want):
        overlap = tuple(slice(0, min(a, b)) for a, b in zip(have, want, strict=True))
        target[overlap] = blob[overlap]
        part = shape_str(tuple(min(a, b) for a, b in zip(have, want, strict=True)))
        return "partial", f"{shape_str(have)} -> {shape_str(want)}: overlap {part} copied"
    return "skipped", (
        f"{shape_str(have)} -> {shape_str(want)}: counts ({blob.numel()} vs {target.numel()}) "
        "and axes differ"
    )


def _layer_status(kinds: Sequence[str]) -> str:
    for status in ("partial", "coerced"):
        if status in kinds:
            return status
    if all(k == "skipped" for k in kinds):
        return "skipped"
    return "copied" if all(k == "copied" for k in kinds) else "partial"


# ---------------------------------------------------------------------------- interp


def select_layers(module: Any, patterns: Sequence[str]) -> list[Any]:
    """Deconvolution layers whose names match any glob (all of them without patterns).

    A pattern naming a layer of another type, or matching nothing, is an error."""
    layers = list(_first_layers(module).values())
    deconvs = [layer for layer in layers if layer.type == "Deconvolution"]
    if not patterns:
        if not deconvs:
            raise CompileError([Diagnostic("error", "the net has no Deconvolution layers")])
        return deconvs
    diags = Diagnostics()
    chosen: list[Any] = []
    for pattern in patterns:
        hits = [layer for layer in layers if fnmatch.fnmatchcase(layer.name, pattern)]
        wrong = [layer for layer in hits if layer.type != "Deconvolution"]
        if not any(layer.type == "Deconvolution" for layer in hits):
            names = ", ".join(layer.name for layer in deconvs) or "none"
            diags.error(
                f"--layers {pattern}: matches no Deconvolution layer (the net's: {names})",
                wrong[0].span if wrong else None,
                hint=suggestion_hint(pattern, [layer.name for layer in deconvs]),
            )
        chosen.extend(h for h in hits if h.type == "Deconvolution" and h not in chosen)
    diags.check()
    return chosen


def interp(
    module: Any, layers: Sequence[Any], variant: str = FCN
) -> tuple[list[Change], list[Diagnostic]]:
    """Write bilinear upsampling weights into each Deconvolution layer of `layers`; the
    changes, and warnings about kernels that do not upsample bilinearly by their stride."""
    import torch

    from protocaffe.lower import fillers
    from protocaffe.proto import caffe_pb2

    diags = Diagnostics()
    plan: list[tuple[Any, Any, Change]] = []
    for layer in layers:
        weight = module.blob_tensor(layer, layer.blob_specs[0].name)
        channels_in, per_group, kh, kw = weight.shape
        param = layer.proto.convolution_param
        out = param.num_output
        groups = out // per_group
        kernel_span = module.caffe_graph.span_of((*layer.path, "convolution_param")) or layer.span
        if kh != kw:
            diags.error(
                f"Deconvolution '{layer.name}': bilinear weights need a square kernel, "
                f"this one is {kh}x{kw}",
                kernel_span,
                hint="use one kernel_size (FCN: 2 x the stride, e.g. kernel 4 for stride 2)",
            )
            continue
        if channels_in != out:
            diags.error(
                f"Deconvolution '{layer.name}': bilinear upsampling maps each channel to "
                f"itself, but it has {channels_in} input and {out} output channels",
                kernel_span,
                hint=f"set num_output: {channels_in}",
            )
            continue
        if variant == FCN and groups not in (1, out):
            diags.error(
                f"Deconvolution '{layer.name}': FCN's diagonal weights need group 1 or group "
                f"{out} (one per channel), not group {groups}",
                kernel_span,
                hint="use --variant filler, or group: 1",
            )
            continue
        stride = (param.stride_h or (param.stride[0] if param.stride else 1)) or 1
        if (kh + 1) // 2 != stride:  # the kernel's interpolation factor is ceil(K / 2)
            diags.warning(
                f"Deconvolution '{layer.name}': kernel {kh} interpolates at a factor of "
                f"{(kh + 1) // 2} but the stride is {stride}; a bilinear {stride}x upsampling "
                f"needs kernel {2 * stride - stride % 2}",
                kernel_span,
            )
        if variant == FCN:
            value = torch.zeros(weight.shape)
            kernel = torch.tensor(fillers.bilinear_kernel(kh))
            for c in range(channels_in):
                value[c, c if per_group == out else 0] = kernel
            how = "kernel on the channel diagonal, other slices 0 (FCN)"
        else:
            filler = caffe_pb2.FillerParameter(type="bilinear")
            value = fillers.fill(filler, tuple(weight.shape))
            how = "kernel in every slice (Caffe's bilinear filler)"
        detail = f"{shape_str(tuple(weight.shape))}, {kh}x{kw} kernel, stride {stride}: {how}"
        if len(layer.blob_specs) > 1:
            detail += "; bias kept as is (FCN's upsampling layers have bias_term: false)"
        plan.append((weight, value, Change(layer.name, layer.type, "interpolated", detail)))
    diags.check()
    _apply([(target, value) for target, value, _ in plan])
    return [change for _, _, change in plan], list(diags)


# ---------------------------------------------------------------------------- output


def render_changes(changes: Sequence[Change]) -> str:
    """The changes as an aligned table (layer, type, status, detail)."""
    header = ("layer", "type", "status", "detail")
    cells = [header] + [(c.layer, c.type, c.status, c.detail) for c in changes]
    widths = [max(len(r[i]) for r in cells) for i in range(3)]
    lines = []
    for i, row in enumerate(cells):
        lines.append(
            "  ".join(v.ljust(w) for v, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(line.rstrip() for line in lines)


def summary(changes: Sequence[Change]) -> str:
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.status] = counts.get(c.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())
