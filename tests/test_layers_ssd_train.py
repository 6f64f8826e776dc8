"""SSD's training layers (AnnotatedData, MultiBoxLoss, DetectionEvaluate): shapes as the fork's
setup and Reshape compute them (annotated_data_layer.cpp, data_transformer.cpp's
InferBlobShape, multibox_loss_layer.cpp, detection_evaluate_layer.cpp), and their checks as
located errors."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.frontend.textformat import parse_text
from protocaffe.ir import build_graph
from protocaffe.layers.ssd_train import AnnotatedDatum
from protocaffe.testing import compile_snippet

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
    assert not layer.spec.lowerable
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


def test_a_net_with_multibox_loss_does_not_run() -> None:
    from protocaffe.lower.builder import check_lowerable

    with pytest.raises(CompileError) as info:
        check_lowerable(mbox(f"num_classes: {K}"))
    assert "'MultiBoxLoss' has no PyTorch lowering" in info.value.diagnostics[0].message


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
