"""SSD's training layers (AnnotatedData, MultiBoxLoss, DetectionEvaluate): shapes as the fork's
setup and Reshape compute them (annotated_data_layer.cpp, data_transformer.cpp's
InferBlobShape, multibox_loss_layer.cpp, detection_evaluate_layer.cpp), and their checks as
located errors."""

from __future__ import annotations

import math
from pathlib import Path

import lmdb
import numpy as np
import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.frontend.textformat import parse_text
from protocaffe.ir import build_graph
from protocaffe.ir.build import shape_context
from protocaffe.layers.ssd_train import AnnotatedDatum, multibox_settings
from protocaffe.testing import compile_snippet, run_snippet

TRANSFORM = "transform_param { mean_value: 127.5 mean_value: 127.5 mean_value: 127.5 %s }"


def annotated(transform: str = "", data: str = "batch_size: 24", extra: str = "") -> str:
    return (
        'layer { name: "data" type: "AnnotatedData" top: "data" top: "label" '
        f"{TRANSFORM % transform} data_param {{ {data} backend: LMDB }} "
        f"annotated_data_param {{ batch_sampler {{ max_sample: 1 }} {extra} }} }}"
    )


def build(text: str, phase: str = "TRAIN", **shapes: tuple[int, ...]):
    return build_graph(parse_text(text, "<snippet>"), phase=phase, input_shapes=shapes)


def first_error(text: str, **kw) -> str:
    with pytest.raises(CompileError) as info:
        build(text, **kw)
    error = next(d for d in info.value.diagnostics if d.severity == "error")
    assert error.span is not None
    return error.message


def blob_shapes(graph) -> dict[str, tuple[int, ...]]:
    return {v.blob: v.shape for v in graph.values.values()}


RESIZE = "resize_param { resize_mode: %s height: 300 width: 400 }"


@pytest.mark.parametrize(
    ("transform", "hw"),
    [
        (RESIZE % "WARP", (300, 400)),
        (RESIZE % "FIT_LARGE_SIZE_AND_PAD", (300, 400)),
        (RESIZE % "WARP" + " crop_size: 256", (256, 256)),
        (RESIZE % "WARP" + " crop_h: 200 crop_w: 100", (200, 100)),
    ],
)
def test_annotated_data_size_from_crop_then_resize(transform, hw) -> None:
    shapes = blob_shapes(build(annotated(transform)))
    # C = 3: the fork checks that several mean_values number C.
    assert shapes == {"data": (24, 3, *hw), "label": (1, 1, 1, 8)}


def test_annotated_data_without_a_size_asks_for_shape() -> None:
    message = first_error(annotated())
    assert "--shape data=24,3,H,W" in message
    shapes = blob_shapes(build(annotated(), data=(2, 3, 64, 64), label=(1, 1, 5, 8)))
    assert shapes == {"data": (2, 3, 64, 64), "label": (1, 1, 5, 8)}


def test_fit_small_size_needs_batch_one() -> None:
    assert "needs batch_size 1" in first_error(annotated(RESIZE % "FIT_SMALL_SIZE"))


def write_annotated_lmdb(path: Path, typed: bool) -> None:
    record = AnnotatedDatum()
    record.datum.channels, record.datum.height, record.datum.width = 1, 20, 30
    record.datum.data = bytes(20 * 30)
    if typed:
        record.type = AnnotatedDatum.BBOX
        box = record.annotation_group.add(group_label=1).annotation.add().bbox
        box.xmin, box.ymin, box.xmax, box.ymax = 0.1, 0.1, 0.5, 0.5
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", record.SerializeToString())
    env.close()


@pytest.mark.parametrize(("typed", "label"), [(True, (1, 1, 1, 8)), (False, (4,))])
def test_annotated_data_reads_the_first_record(tmp_path, typed, label) -> None:
    write_annotated_lmdb(tmp_path / "db", typed)
    text = annotated(data=f'source: "{tmp_path / "db"}" batch_size: 4').replace(
        "mean_value: 127.5 mean_value: 127.5 mean_value: 127.5", ""
    )
    # No resize: the record's own 1 x 20 x 30; labels: boxes when the record is typed.
    assert blob_shapes(build(text)) == {"data": (4, 1, 20, 30), "label": label}
    typed_by_param = text.replace("max_sample: 1 }", "max_sample: 1 } anno_type: BBOX")
    assert blob_shapes(build(typed_by_param))["label"] == (1, 1, 1, 8)


def test_annotated_data_reports_augmentation_as_ignored_notes() -> None:
    graph = build(annotated(RESIZE % "WARP" + " distort_param { brightness_prob: 0.5 }"))
    notes = [d.message for d in graph.diagnostics if d.severity == "note"]
    assert any("distort_param" in n and "ignored" in n for n in notes)


# --- MultiBoxLoss --------------------------------------------------------------------------

P, K = 10, 3  # priors, classes
MBOX = {"loc": (2, P * 4), "conf": (2, P * K), "pri": (1, 2, P * 4), "gt": (1, 1, 5, 8)}


def mbox(params: str = "", shapes: dict | None = None):
    text = (
        'layer { name: "loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" '
        'bottom: "pri" bottom: "gt" top: "loss" '
        f"multibox_loss_param {{ {params} }} }}"
    )
    return compile_snippet(text, shapes or MBOX, phase="TRAIN")


def mbox_error(params: str, shapes: dict | None = None) -> str:
    with pytest.raises(CompileError) as info:
        mbox(params, shapes)
    error = next(d for d in info.value.diagnostics if d.severity == "error")
    assert error.span is not None
    return error.message


def test_multibox_loss_is_a_scalar_loss() -> None:
    graph = mbox(f"num_classes: {K}")
    layer = graph.layer("loss")
    assert graph.blob("loss").shape == () and layer.spec.is_loss
    # Unshared boxes: K x 4 offsets per prior.
    unshared = {**MBOX, "loc": (2, P * K * 4)}
    assert mbox(f"num_classes: {K} share_location: false mining_type: NONE", unshared)


@pytest.mark.parametrize(
    ("params", "shapes", "message"),
    [
        ("", None, "num_classes must be given"),
        (f"num_classes: {K} background_label_id: {K}", None, "must be in [0, 3)"),
        (f"num_classes: {K} share_location: false", None, "needs share_location: true"),
        (f"num_classes: {K} do_neg_mining: false", None, "contradicts mining_type"),
        (f"num_classes: {K}", {**MBOX, "loc": (2, P * 4 + 4)}, "must have 40 values per image"),
        (f"num_classes: {K}", {**MBOX, "conf": (2, P * 2)}, "must have 30 values per image"),
        (f"num_classes: {K}", {**MBOX, "conf": (3, P * K)}, "the same batch size"),
        (f"num_classes: {K}", {**MBOX, "gt": (1, 1, 5, 7)}, "must be 1 x 1 x R x 8"),
    ],
)
def test_multibox_loss_checks(params, shapes, message) -> None:
    assert message in mbox_error(params, shapes)


MBOX_TEXT = (
    'layer { name: "loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "pri" '
    'bottom: "gt" top: "loss" %s multibox_loss_param { num_classes: %d %s } }'
)


def mbox_inputs(n: int, k: int, seed: int) -> dict[str, np.ndarray]:
    """Priors on a 4 x 4 grid in two sizes (some crossing the image border), random boxes for
    images 0 and 1 (image 2 has none), a padding row and a difficult box."""
    rng = np.random.default_rng(seed)
    centres = (np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) + 0.5) / 4
    boxes = [np.concatenate([centres - h, centres + h], 1) for h in (0.15, 0.3)]
    priors = np.concatenate(boxes).astype(np.float32)
    variances = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (len(priors), 1))
    rows = []
    for item, count in ((0, 3), (1, 2)):
        for _ in range(count):
            lo = rng.uniform(0, 0.6, 2)
            hi = lo + rng.uniform(0.15, 0.4, 2)
            rows.append([item, rng.integers(1, k), 0, *lo, *np.minimum(hi, 1), 0])
    rows.append([1, 1, 0, 0.05, 0.6, 0.35, 0.95, 1])  # difficult
    rows.append([-1, 0, 0, 0, 0, 0, 0, 0])  # padding
    p = len(priors)
    return {
        "loc": rng.normal(0, 1, (n, p * 4)).astype(np.float32),
        "conf": rng.normal(0, 2, (n, p * k)).astype(np.float32),
        "pri": np.stack([priors.reshape(-1), variances.reshape(-1)])[None],
        "gt": np.float32(rows)[None, None],
    }


def run_mbox(params: str, inputs, k: int, extra: str = "") -> float:
    text = MBOX_TEXT % (extra, k, params)
    return float(run_snippet(text, inputs, phase="TRAIN", outputs=["loss"])["loss"])


def oracle_mbox(params: str, inputs, k: int, extra: str = "") -> float:
    graph = compile_snippet(
        MBOX_TEXT % (extra, k, params), {n: v.shape for n, v in inputs.items()}, phase="TRAIN"
    )
    layer = graph.layer("loss")
    ctx = shape_context(graph, layer)
    return float(layer.spec.reference(ctx, [inputs[b] for b in layer.bottoms], [])[0])


def test_multibox_loss_by_hand() -> None:
    # Prior 0 is the box itself (target 0 0 0 0), prior 1 misses it and is the one negative.
    inputs = {
        "loc": np.float32([[0.5, -2, 0, 0, 9, 9, 9, 9]]),
        "conf": np.float32([[0, 0, math.log(3), 0]]),
        "pri": np.float32([[[0, 0, 0.5, 0.5, 0.5, 0.5, 1, 1], [0.1, 0.1, 0.2, 0.2] * 2]]),
        "gt": np.float32([[[[0, 1, 0, 0, 0, 0.5, 0.5, 0]]]]),
    }
    smooth_l1 = 0.5 * 0.5**2 + (2 - 0.5)
    want = smooth_l1 - math.log(0.5) - math.log(0.75)  # / 1 match
    params = "code_type: CENTER_SIZE"
    assert run_mbox(params, inputs, 2) == pytest.approx(want, rel=1e-6)
    assert oracle_mbox(params, inputs, 2) == pytest.approx(want, rel=1e-6)
    # propagate_down false for loc drops its term from the value, as the fork does.
    no_loc = (
        "propagate_down: false propagate_down: true propagate_down: false propagate_down: false"
    )
    assert run_mbox(params, inputs, 2, no_loc) == pytest.approx(want - smooth_l1, rel=1e-6)


@pytest.mark.parametrize(
    "params",
    [
        "code_type: CENTER_SIZE",
        "code_type: CENTER_SIZE match_type: BIPARTITE neg_pos_ratio: 1.5",
        "code_type: CORNER mining_type: NONE overlap_threshold: 0.3",
        "code_type: CORNER_SIZE encode_variance_in_target: true loc_loss_type: L2",
        "code_type: CENTER_SIZE ignore_cross_boundary_bbox: true use_difficult_gt: false",
        "code_type: CENTER_SIZE neg_overlap: 0.2 loc_weight: 0.5 background_label_id: 2",
        "code_type: CENTER_SIZE map_object_to_agnostic: true",
    ],
)
@pytest.mark.parametrize("norm", ["", "loss_param { normalization: FULL }"])
def test_multibox_loss_matches_the_oracle(params, norm) -> None:
    k = 2 if "agnostic" in params else 4
    inputs = mbox_inputs(3, k, seed=len(params))
    if "background_label_id: 2" in params:
        inputs["gt"][..., 1] = np.where(inputs["gt"][..., 1] == 2, 1, inputs["gt"][..., 1])
        inputs["gt"][..., -1, 1] = 0
    got, want = run_mbox(params, inputs, k, norm), oracle_mbox(params, inputs, k, norm)
    assert got == pytest.approx(want, rel=1e-5)


def test_multibox_loss_gradient_is_the_forks() -> None:
    import torch

    from protocaffe.layers.ssd_train import multibox_loss, multibox_reference

    inputs = mbox_inputs(2, 3, seed=7)
    graph = compile_snippet(
        MBOX_TEXT % ("", 3, "code_type: CENTER_SIZE"),
        {n: v.shape for n, v in inputs.items()},
        phase="TRAIN",
    )
    settings = multibox_settings(shape_context(graph, graph.layer("loss")))
    loc, conf = (
        torch.tensor(inputs[b], dtype=torch.float64, requires_grad=True) for b in ("loc", "conf")
    )
    multibox_loss(
        loc, conf, torch.tensor(inputs["pri"]), torch.tensor(inputs["gt"]), settings
    ).backward()
    rng = np.random.default_rng(0)
    for name, grad in (("loc", loc.grad), ("conf", conf.grad)):
        for flat in rng.choice(inputs[name].size, 12, replace=False):
            at = np.unravel_index(flat, inputs[name].shape)
            values = []
            for step in (1e-4, -1e-4):
                moved = {b: v.astype(np.float64) for b, v in inputs.items()}
                moved[name][at] += step
                values.append(multibox_reference(list(moved.values()), settings))
            numeric = (values[0] - values[1]) / 2e-4
            assert float(grad[at]) == pytest.approx(numeric, rel=1e-4, abs=1e-6), (name, at)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("share_location: false mining_type: NONE", "per-class boxes"),
        ("conf_loss_type: LOGISTIC", "LOGISTIC confidence loss"),
        ("nms_param { nms_threshold: 0.5 }", "NMS among mined negatives"),
    ],
)
def test_multibox_options_not_run_are_located_errors(params, message) -> None:
    from protocaffe.lower.builder import check_lowerable

    inputs = {n: np.zeros(shape, np.float32) for n, shape in MBOX.items()}
    if "share_location: false" in params:
        inputs["loc"] = np.zeros((2, P * K * 4), np.float32)
    with pytest.raises(CompileError) as info:
        run_snippet(MBOX_TEXT % ("", K, params), inputs, phase="TRAIN")
    error = info.value.diagnostics[0]
    assert message in error.message and error.span is not None
    check_lowerable(mbox(f"num_classes: {K}"))  # the type itself has a lowering


# --- DetectionEvaluate ---------------------------------------------------------------------


def evaluate(params: str, det: tuple[int, ...] = (1, 1, 7, 7)):
    text = (
        'layer { name: "ev" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "ev" '
        f"detection_evaluate_param {{ {params} }} }}"
    )
    return compile_snippet(text, {"det": det, "gt": (1, 1, 4, 8)})


def test_detection_evaluate_rows_are_classes_plus_detections() -> None:
    # 21 classes less the background, plus at most one row per detection (7 here).
    assert evaluate("num_classes: 21").blob("ev").shape == (1, 1, 27, 5)


@pytest.mark.parametrize(
    ("params", "det", "message"),
    [
        ("", (1, 1, 7, 7), "num_classes must be given"),
        ("num_classes: 21 overlap_threshold: 0", (1, 1, 7, 7), "must be positive"),
        ("num_classes: 21", (1, 1, 7, 6), "must be 1 x 1 x R x 7"),
    ],
)
def test_detection_evaluate_checks(params, det, message) -> None:
    with pytest.raises(CompileError) as info:
        evaluate(params, det)
    assert message in info.value.diagnostics[0].message
