"""`protocaffe diff NET --against REF.npz|opencv`: where does protocaffe's output part from
Caffe's (or OpenCV's)?

Runs NET and a reference on one input and compares every blob both sides have, in execution
order. The reference is a .npz of blobs keyed by blob name (e.g. pycaffe's
`np.savez("ref.npz", **{k: v.data for k, v in net.blobs.items()})`), or `opencv`: OpenCV's
Caffe importer run on the same prototxt and weights (without --weights, on the seeded filler
weights protocaffe uses, written to a temporary .caffemodel). Like pycaffe's `net.blobs`, a
blob written in place (conv1 then relu1) is compared after its last writer. The first blob
that differs is located in the prototxt. Exit 0 when every common blob matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocaffe.commands._args import (
    add_input_shapes,
    add_net_arg,
    add_runtime_args,
    check_input_path,
    check_output_path,
    parse_input_shapes,
)
from protocaffe.diagnostics import Diagnostic, input_error

if TYPE_CHECKING:
    import numpy as np

    from protocaffe.ir.graph import Graph, Layer

DESCRIPTION = """\
Run NET and a reference on the same input and compare every blob both have, in execution
order: a table of blob, shape, max abs difference, relative difference (to the reference's
largest magnitude) and status, then the first blob that differs with the layer that wrote it.
--against takes a .npz of reference blobs by name (from pycaffe's net.blobs) or 'opencv'.
Without --input, the reference's own input blobs are fed (against OpenCV: a seeded random
normal input)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diff",
        help="compare every blob with pycaffe's (a .npz) or OpenCV's",
        description=DESCRIPTION,
    )
    add_net_arg(p)
    p.add_argument("-w", "--weights", metavar="W.caffemodel", help="trained weights")
    p.add_argument(
        "--against",
        required=True,
        metavar="REF.npz|opencv",
        help="reference blobs (.npz keyed by blob name) or 'opencv' (cv2.dnn's Caffe importer)",
    )
    p.add_argument(
        "--input",
        metavar="IMG|NPY|NPZ",
        help="the input: an image (preprocessed as `run` does), a .npy blob, or a .npz of "
        "input blobs by name (default: the reference's input blobs; against opencv, random "
        "normal values from --seed)",
    )
    add_input_shapes(p, "the net's input blob shape, for nets that do not fix it: data=1,3,H,W")
    p.add_argument("--rtol", type=float, default=1e-4, help="relative tolerance (1e-4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (1e-5)")
    p.add_argument("--save", metavar="OUT.npz", help="write every protocaffe blob to OUT.npz")
    add_runtime_args(p)
    # `run`'s preprocessing settings, at the net's transform_param defaults.
    p.set_defaults(func=diff, mean=None, scale=None, bgr=None, resize=None)


# --- comparing ---------------------------------------------------------------------------------


@dataclass
class Row:
    blob: str
    shape: str
    max_abs: float | None
    rel: float | None
    status: str  # ok, DIFF, SHAPE, ours only, ref only
    writers: list[Layer]


def blob_order(graph: Graph) -> list[tuple[str, list[Layer]]]:
    """Each blob name with the layers that write it, by the position of its last writer
    (pycaffe's net.blobs holds a blob as its last in-place writer left it)."""
    writers: dict[str, list[Layer]] = {}
    last: dict[str, int] = {}
    for i, layer in enumerate(graph.layers):
        for top in layer.tops:
            writers.setdefault(top, []).append(layer)
            last[top] = i
    return sorted(writers.items(), key=lambda item: last[item[0]])


def compare(
    ours: dict[str, np.ndarray],
    ref: dict[str, np.ndarray],
    order: list[tuple[str, list[Layer]]],
    rtol: float,
    atol: float,
) -> list[Row]:
    """One row per blob of the net in execution order (blobs neither side has are left out)."""
    import numpy as np

    from protocaffe.layers.base import shape_str

    rows = []
    for blob, writers in order:
        mine, theirs = ours.get(blob), ref.get(blob)
        if mine is None and theirs is None:
            continue
        if mine is None or theirs is None:
            have = mine if mine is not None else theirs
            status = "ours only" if theirs is None else "ref only"
            rows.append(Row(blob, shape_str(have.shape), None, None, status, writers))
            continue
        if mine.shape != theirs.shape:
            if mine.size == theirs.size:  # pycaffe keeps e.g. 2-D InnerProduct tops as they are
                theirs = theirs.reshape(mine.shape)
            else:
                shown = f"{shape_str(mine.shape)} vs {shape_str(theirs.shape)}"
                rows.append(Row(blob, shown, None, None, "SHAPE", writers))
                continue
        a, b = mine.astype(np.float64), theirs.astype(np.float64)
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
        same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
        ok = same_nan and err <= atol + rtol * scale
        rows.append(Row(blob, shape_str(mine.shape), err, rel, "ok" if ok else "DIFF", writers))
    return rows


def render_table(rows: list[Row]) -> str:
    header = ("blob", "shape", "max abs", "rel", "status")
    cells = [
        (
            r.blob,
            r.shape,
            "-" if r.max_abs is None else f"{r.max_abs:.3g}",
            "-" if r.rel is None else f"{r.rel:.3g}",
            r.status,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(5)]
    align = ("<", "<", ">", ">", "<")
    lines = [
        "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths, strict=True)).rstrip()
        for row in [header, *cells]
    ]
    return "\n".join(lines)


# Where OpenCV's importer knowingly departs from the fork a layer comes from (checked in the
# layer tests), for the divergence note.
OPENCV_DEPARTS = {
    "Axpy": "OpenCV's importer computes bottom0 * bottom2 + bottom1; SENet's Axpy computes "
    "bottom0 * bottom1 + bottom2",
    "Proposal": "OpenCV ignores min_size and pads the rois to post_nms_topn rows",
    "Interp": "OpenCV reads only zoom_factor or height/width (not shrink_factor, pad_beg, pad_end)",
}


def first_divergence(rows: list[Row], opencv: bool = False) -> Diagnostic | None:
    """The first compared blob that differs, located at the layer that wrote it."""
    bad = next((r for r in rows if r.status in ("DIFF", "SHAPE")), None)
    if bad is None:
        return None
    first = bad.writers[0]
    what = "has another shape" if bad.status == "SHAPE" else f"differs (max abs {bad.max_abs:.3g})"
    diag = Diagnostic(
        "error",
        f"first divergence: blob '{bad.blob}' {what}, written by {first.type} '{first.name}'",
        first.span,
        hint="the blobs before it match, so this layer (or its weights) is where the two "
        "sides part",
    )
    for later in bad.writers[1:]:
        where = f" ({later.span})" if later.span else ""
        diag.notes.append(f"then rewritten in place by {later.type} '{later.name}'{where}")
    if opencv and first.type in OPENCV_DEPARTS:
        diag.notes.append(f"a known difference: {OPENCV_DEPARTS[first.type]}")
    return diag


# --- the two sides -----------------------------------------------------------------------------


def load_npz(path: str, flag: str) -> dict[str, np.ndarray]:
    import numpy as np

    check_input_path(path, flag)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as err:
        raise input_error(f"{flag} {path}: not a readable .npz ({err})") from None


def feed_inputs(graph: Graph, args: argparse.Namespace, ref: dict[str, Any]) -> dict[str, Any]:
    """Input blobs by name: from --input, else from the reference."""
    from protocaffe.commands.run import fed_input, preprocess_for
    from protocaffe.runtime.preprocess import iter_samples

    names = [v.blob for v in graph.inputs]
    if args.input is None and args.against == "opencv":  # both sides get the same random input
        import numpy as np

        rng = np.random.default_rng(args.seed)
        return {v.blob: rng.normal(size=v.shape).astype(np.float32) for v in graph.inputs}
    if args.input is None:
        missing = [n for n in names if n not in ref]
        if missing:
            raise input_error(
                f"the reference has no input blob {', '.join(repr(n) for n in missing)}; "
                "pass --input",
                hint="an image, a .npy blob, or a .npz of input blobs by name",
            )
        return {n: ref[n] for n in names}
    if args.input.endswith(".npz"):
        given = load_npz(args.input, "--input")
        missing = [n for n in names if n not in given]
        if missing:
            raise input_error(f"--input {args.input} has no blob {', '.join(missing)}")
        return {n: given[n] for n in names}
    check_input_path(args.input, "--input")
    value = fed_input(graph)
    sample = next(iter_samples([Path(args.input)], preprocess_for(graph, args)))
    return {value.blob: sample.blob}


def run_ours(model: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    import torch

    from protocaffe.commands.run import to_input

    feed = {k: to_input(model, v) for k, v in inputs.items()}
    with torch.no_grad():
        result = model.module(feed)
    return {k: v.detach().to("cpu", torch.float64).numpy() for k, v in result.items()}


def opencv_blobs(
    net_path: str, weights: str | None, graph: Graph, module: Any, inputs: dict[str, Any]
) -> dict[str, np.ndarray]:
    """cv2.dnn's Caffe importer on the same net, weights and inputs: every layer's first top
    by blob name (fusion off, so that a blob is what its own layer wrote). Without `weights`,
    `module`'s blobs are written to a temporary .caffemodel for OpenCV."""
    try:
        import cv2
    except ImportError:
        raise input_error(
            "--against opencv needs OpenCV (pip install opencv-python-headless)"
        ) from None
    import numpy as np

    from protocaffe.runtime.caffemodel import save_caffemodel

    with tempfile.TemporaryDirectory() as tmp:
        if weights is None:  # our seeded filler weights, so both sides run the same net
            weights = str(Path(tmp) / "fillers.caffemodel")
            save_caffemodel(module, weights)
        try:
            net = cv2.dnn.readNetFromCaffe(net_path, weights)
        except cv2.error as err:
            raise input_error(f"OpenCV cannot read this net: {_cv_message(err)}") from None
    net.enableFusion(False)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, blob in inputs.items():
        net.setInput(np.ascontiguousarray(blob, dtype=np.float32), name)
    known = set(net.getLayerNames())
    layers = {}
    for blob, writers in blob_order(graph):
        last = writers[-1]
        if last.name in known and not last.spec.is_input and last.tops[0] == blob:
            layers[blob] = last.name
    try:
        outs = net.forward(list(layers.values())) if layers else []
    except cv2.error as err:
        raise input_error(f"OpenCV cannot run this net: {_cv_message(err)}") from None
    return {blob: np.asarray(out) for blob, out in zip(layers, outs, strict=True)} | dict(inputs)


def _cv_message(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


# --- the command -------------------------------------------------------------------------------


def diff(args: argparse.Namespace) -> int:
    import numpy as np

    from protocaffe.commands.run import load_model
    from protocaffe.diagnostics import print_diagnostics

    if args.weights is not None:
        check_input_path(args.weights, "--weights")
    if args.save:
        check_output_path(args.save, "--save")
    opencv = args.against == "opencv"
    ref = {} if opencv else load_npz(args.against, "--against")
    shapes = parse_input_shapes(args.shape) or _input_shapes_from(args, ref)
    model = load_model(args, args.weights, input_shapes=shapes, quiet_fillers=True)
    graph = model.module.caffe_graph
    model.module = model.module.with_outputs(b for layer in graph.layers for b in layer.tops)
    inputs = feed_inputs(graph, args, ref)
    ours = run_ours(model, inputs)
    if opencv:
        ref = opencv_blobs(args.net, args.weights, graph, model.module, inputs)
    if args.save:
        np.savez(args.save, **{k: v.astype(np.float32) for k, v in ours.items()})
    rows = compare(ours, ref, blob_order(graph), args.rtol, args.atol)
    common = [r for r in rows if r.max_abs is not None or r.status == "SHAPE"]
    if not common:
        raise input_error(
            f"no blob of {args.net} is in the reference {args.against}",
            hint="the .npz keys must be blob names (pycaffe: net.blobs.keys())",
        )
    print(render_table(rows))
    bad = sum(r.status in ("DIFF", "SHAPE") for r in rows)
    source = "OpenCV" if opencv else args.against
    print(
        f"\n{len(common) - bad} of {len(common)} common blobs match {source} "
        f"(rtol {args.rtol:g}, atol {args.atol:g})"
    )
    if args.save:
        print(f"wrote {len(ours)} blobs to {args.save}")
    divergence = first_divergence(rows, opencv)
    if divergence is not None:
        print_diagnostics([divergence])
        return 1
    return 0


def _input_shapes_from(
    args: argparse.Namespace, ref: dict[str, Any]
) -> dict[str, tuple[int, ...]] | None:
    """Without --input, the net's input blobs take the reference's shapes."""
    from protocaffe.frontend import load_net
    from protocaffe.layers.base import lookup

    if args.input is not None or not ref:
        return None
    net = load_net(Path(args.net)).message
    inputs = {
        top
        for layer in net.layer
        if getattr(lookup(layer.type), "is_input", False)
        for top in layer.top
    }
    return {k: tuple(v.shape) for k, v in ref.items() if k in inputs} or None
