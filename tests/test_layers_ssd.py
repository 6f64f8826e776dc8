"""SSD layers (Normalize, Permute, PriorBox, DetectionOutput): shapes and errors, values from
the fork's formulas, lowering against the numpy oracle, and parity with OpenCV 4.14's Caffe
importer per layer and on whole SSD-style nets with seeded random weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.ir.build import shape_context
from protocaffe.testing import compile_snippet, run_snippet

VAR = "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2"


def layer(name: str, kind: str, bottoms: list[str], extra: str = "") -> str:
    bots = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{kind}" {bots} top: "{name}" {extra} }}\n'


def priorbox(params: str, bottoms: tuple[str, str] = ("f", "im")) -> str:
    return layer("pb", "PriorBox", list(bottoms), f"prior_box_param {{ {params} }}")


def detection(params: str, classes: int = 4) -> str:
    return layer(
        "det",
        "DetectionOutput",
        ["loc", "conf", "pri"],
        f"detection_output_param {{ num_classes: {classes} {params} }}",
    )


def oracle(text: str, inputs: dict, name: str, dialect: str | None, blobs=()) -> list:
    graph = compile_snippet(text, {k: v.shape for k, v in inputs.items()}, dialect=dialect)
    lay = graph.layer(name)
    return lay.spec.reference(shape_context(graph, lay), [inputs[b] for b in lay.bottoms], blobs)


def check_lowering(text, inputs, name, dialect=None, blobs=None, atol=1e-6) -> np.ndarray:
    """The lowered layer agrees with its numpy oracle; returns the lowered output."""
    want = oracle(text, inputs, name, dialect, list(blobs or []))[0]
    got = run_snippet(
        text, inputs, blobs={name: blobs} if blobs else None, outputs=[name], dialect=dialect
    )[name]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    return got


def error(text: str, inputs: dict[str, tuple[int, ...]], dialect: str | None = None):
    with pytest.raises(CompileError) as info:
        compile_snippet(text, inputs, dialect=dialect)
    return next(d for d in info.value.diagnostics if d.severity == "error")


FEATURE = {"f": (1, 2, 3, 4), "im": (1, 3, 30, 40)}


def zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    return {k: np.zeros(v, np.float32) for k, v in shapes.items()}


# --- Normalize ----------------------------------------------------------------------------


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_values(across: bool, shared: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    text = layer(
        "n",
        "Normalize",
        ["x"],
        f"norm_param {{ across_spatial: {str(across).lower()} "
        f"channel_shared: {str(shared).lower()} eps: 0.001 }}",
    )
    scale = np.array([1.5]) if shared else np.array([1.0, 2.0, 3.0])
    got = check_lowering(text, {"x": x}, "n", blobs=[scale.reshape(() if shared else 3)])
    axes = (1, 2, 3) if across else (1,)
    want = x / np.sqrt((x**2).sum(axis=axes, keepdims=True) + 0.001)
    want = want * scale.reshape((1, -1, 1, 1) if not shared else ())
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_normalize_blob_shape_and_default_filler() -> None:
    g = compile_snippet(layer("n", "Normalize", ["x"]), {"x": (1, 3, 2, 2)})
    (spec,) = g.layer("n").blob_specs
    assert spec.shape == () and spec.filler.type == "constant" and spec.filler.value == 1.0
    text = layer("n", "Normalize", ["x"], "norm_param { channel_shared: false }")
    assert compile_snippet(text, {"x": (1, 3, 2, 2)}).layer("n").blob_specs[0].shape == (3,)
    assert "at least 2 axes" in error(layer("n", "Normalize", ["x"]), {"x": (5,)}).message


# --- Permute ------------------------------------------------------------------------------


def test_permute_appends_missing_axes() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    text = layer("p", "Permute", ["x"], "permute_param { order: 0 order: 2 }")
    got = check_lowering(text, {"x": x}, "p")
    np.testing.assert_array_equal(got, x.transpose(0, 2, 1, 3))
    text = layer("p", "Permute", ["x"], "permute_param { order: 0 order: 2 order: 3 order: 1 }")
    assert check_lowering(text, {"x": x}, "p").shape == (2, 4, 5, 3)


@pytest.mark.parametrize(
    ("order", "message"),
    [("order: 0 order: 4", "order 4 is out of range"), ("order: 1 order: 1", "appears twice")],
)
def test_permute_bad_orders(order: str, message: str) -> None:
    d = error(layer("p", "Permute", ["x"], f"permute_param {{ {order} }}"), {"x": (1, 2, 3, 4)})
    assert message in d.message and d.span is not None


# --- PriorBox -----------------------------------------------------------------------------


def test_priorbox_first_cell_from_the_formulas() -> None:
    # 3x4 map on a 30x40 image: step 10x10, first centre (5, 5).
    text = priorbox(f"min_size: 10 max_size: 20 aspect_ratio: 2 clip: false {VAR}")
    out = check_lowering(text, zeros(FEATURE), "pb", "ssd")
    assert out.shape == (1, 2, 3 * 4 * 4 * 4)  # 4 priors per cell: min, sqrt(min*max), 2, 1/2
    boxes = out[0, 0].reshape(-1, 4)
    big = math.sqrt(10 * 20)
    w2, h2 = 10 * math.sqrt(2), 10 / math.sqrt(2)
    want = [
        [0 / 40, 0 / 30, 10 / 40, 10 / 30],
        [(5 - big / 2) / 40, (5 - big / 2) / 30, (5 + big / 2) / 40, (5 + big / 2) / 30],
        [(5 - w2 / 2) / 40, (5 - h2 / 2) / 30, (5 + w2 / 2) / 40, (5 + h2 / 2) / 30],
        [(5 - h2 / 2) / 40, (5 - w2 / 2) / 30, (5 + h2 / 2) / 40, (5 + w2 / 2) / 30],
    ]
    np.testing.assert_allclose(boxes[:4], want, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1].reshape(-1, 4), [[0.1, 0.1, 0.2, 0.2]] * 48, rtol=1e-7)


def test_priorbox_dialects_differ_in_size_rounding_clip_and_image_size() -> None:
    text = priorbox(f"min_size: 10.7 {VAR}")
    ssd = check_lowering(text, zeros(FEATURE), "pb", "ssd")[0, 0, :4]
    cv = check_lowering(text, zeros(FEATURE), "pb", "opencv")[0, 0, :4]
    # SSD: integer size 10, no clip: xmin = (5 - 5) / 40 = 0, xmax = 10 / 40.
    np.testing.assert_allclose(ssd, [0.0, 0.0, 10 / 40, 10 / 30], atol=1e-7)
    # OpenCV: 10.7 kept, clip on by default: xmin = (5 - 5.35) / 40 < 0 -> 0.
    np.testing.assert_allclose(cv, [0.0, 0.0, 10.35 / 40, 10.35 / 30], rtol=1e-6)
    text = priorbox(f"min_size: 30 img_size: 50 clip: false {VAR}")
    ssd = check_lowering(text, zeros(FEATURE), "pb", "ssd")[0, 0, :4]
    np.testing.assert_allclose(
        ssd, np.array([50 / 8 - 15, 50 / 6 - 15, 50 / 8 + 15, 50 / 6 + 15]) / 50
    )
    graph = compile_snippet(text, FEATURE, dialect="opencv")
    assert any("img_size is ignored" in d.message for d in graph.diagnostics)


def test_priorbox_repeated_sizes_steps_offset_and_duplicate_ratios() -> None:
    text = priorbox(
        "min_size: 10 min_size: 15 max_size: 20 max_size: 25 aspect_ratio: 2 aspect_ratio: 0.5 "
        f"aspect_ratio: 1 step_h: 9 step_w: 11 offset: 0.3 clip: false {VAR}"
    )
    out = check_lowering(text, zeros(FEATURE), "pb", "ssd")
    assert out.shape == (1, 2, 3 * 4 * 8 * 4)  # per min_size: min, max, 2, 1/2
    second_cell = out[0, 0].reshape(3, 4, 8, 4)[0, 1, 0]
    cx, cy = 1.3 * 11, 0.3 * 9
    np.testing.assert_allclose(
        second_cell, [(cx - 5) / 40, (cy - 5) / 30, (cx + 5) / 40, (cy + 5) / 30], rtol=1e-6
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (VAR, "min_size must be given"),
        (f"min_size: 10 max_size: 20 max_size: 30 {VAR}", "2 max_size values for 1 min_size"),
        (f"min_size: 10 max_size: 5 {VAR}", "must be greater than min_size"),
        ("min_size: 10 variance: 0.1 variance: 0.2", "variance takes 1 or 4 values"),
        (f"min_size: 10 step: 8 step_h: 8 {VAR}", "either step or step_h/step_w"),
    ],
)
def test_priorbox_errors(params: str, message: str) -> None:
    assert message in error(priorbox(params), FEATURE).message


# --- DetectionOutput ----------------------------------------------------------------------


def detection_inputs(p=30, classes=4, n=2, share=True, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 0.8, (p, 2))
    wh = rng.uniform(0.1, 0.3, (p, 2))
    priors = np.stack(
        [np.concatenate([xy, xy + wh], 1).reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], p)]
    )
    loc_classes = 1 if share else classes
    return {
        "loc": rng.normal(0, 1, (n, p * loc_classes * 4)).astype(np.float32),
        "conf": rng.uniform(0, 1, (n, p * classes)).astype(np.float32),
        "pri": priors[None].astype(np.float32),
    }


NMS = "nms_param { nms_threshold: 0.45 top_k: 20 }"


@pytest.mark.parametrize("dialect", ["ssd", "opencv"])
@pytest.mark.parametrize(
    "params",
    [
        f"{NMS} code_type: CENTER_SIZE keep_top_k: 15 confidence_threshold: 0.3",
        f"{NMS} code_type: CORNER keep_top_k: -1 confidence_threshold: 0.5",
        f"{NMS} code_type: CORNER_SIZE variance_encoded_in_target: true keep_top_k: 8",
        "nms_param { nms_threshold: 0.7 eta: 0.9 } code_type: CENTER_SIZE keep_top_k: 40 "
        "background_label_id: -1 confidence_threshold: 0.2",
    ],
)
def test_detection_output_lowering_matches_oracle(dialect: str, params: str) -> None:
    check_lowering(detection(params), detection_inputs(), "det", dialect)


def test_detection_output_share_location_false_and_clip() -> None:
    params = f"share_location: false {NMS} code_type: CENTER_SIZE keep_top_k: 10 clip: true"
    out = check_lowering(detection(params), detection_inputs(share=False), "det", "opencv")
    rows = out[0, 0][out[0, 0, :, 2] > 0]
    assert ((rows[:, 3:] >= 0) & (rows[:, 3:] <= 1)).all()


def test_detection_output_layouts() -> None:
    inputs = detection_inputs()
    text = detection(f"{NMS} code_type: CENTER_SIZE keep_top_k: 10 confidence_threshold: 0.9")
    ssd = run_snippet(text, inputs, dialect="ssd")["det"][0, 0]
    cv = run_snippet(text, inputs, dialect="opencv")["det"][0, 0]
    assert ssd.shape == cv.shape == (20, 7)  # N * keep_top_k rows
    ssd_kept, cv_kept = ssd[ssd[:, 1] >= 0], cv[cv[:, 2] > 0]
    assert (ssd[len(ssd_kept) :] == -1).all() and (cv[len(cv_kept) :] == 0).all()
    # The same detections; SSD groups each image's by label, OpenCV sorts them by score.
    key = lambda rows: sorted(map(tuple, rows.round(6)))  # noqa: E731
    assert key(ssd_kept) == key(cv_kept) and len(ssd_kept) > 3
    for image in (0, 1):
        s, c = ssd_kept[ssd_kept[:, 0] == image], cv_kept[cv_kept[:, 0] == image]
        assert (np.diff(s[:, 1]) >= 0).all() and (np.diff(c[:, 2]) <= 0).all()


def test_detection_output_greedy_nms_with_eta() -> None:
    # Three priors, CORNER code, zero offsets: a = [0,0,1,1] (score 0.9), b = [0,0,0.6,1] (0.8),
    # c = [0.45,0,1,1] (0.7). IoU(a,b) = 0.6, IoU(a,c) = 0.55. The threshold starts at 0.7;
    # eta 0.8 lowers it to 0.56 once a is kept, so b goes and c stays.
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.6, 1], [0.45, 0, 1, 1]], np.float32)
    inputs = {
        "loc": np.zeros((1, 12), np.float32),
        "conf": np.array([[0.1, 0.9, 0.1, 0.8, 0.1, 0.7]], np.float32),
        "pri": np.stack([boxes.reshape(-1), np.full(12, 0.1)])[None].astype(np.float32),
    }
    text = detection("nms_param { nms_threshold: 0.7 eta: 0.8 } code_type: CORNER", classes=2)
    rows = check_lowering(text, inputs, "det", "ssd")[0, 0]
    assert rows[:, 2].tolist() == pytest.approx([0.9, 0.7, -1])  # a and c kept
    rows = check_lowering(text, inputs, "det", "opencv")[0, 0]  # OpenCV ignores eta
    assert rows[:, 2].tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_detection_output_warns_about_save_output_and_checks_inputs() -> None:
    shapes = {k: v.shape for k, v in detection_inputs().items()}
    text = detection(f'{NMS} save_output_param {{ output_directory: "/tmp/x" }}')
    graph = compile_snippet(text, shapes, dialect="ssd")
    assert any("save_output_param is ignored" in d.message for d in graph.diagnostics)
    d = error(layer("det", "DetectionOutput", ["loc", "conf", "pri"]), shapes)
    assert "num_classes must be given" in d.message
    d = error(detection(NMS, classes=5), shapes)
    assert "conf 2x120 holds 120 values per image, expected 30 priors x 5 classes" in d.message


# --- OpenCV parity ------------------------------------------------------------------------

cv2 = pytest.importorskip("cv2")


def opencv_forward(tmp_path: Path, text: str, feeds: dict, out: str, weights=None):
    proto = tmp_path / "net.prototxt"
    head = "".join(
        f'input: "{k}" input_shape {{ {" ".join(f"dim: {d}" for d in v.shape)} }}\n'
        for k, v in feeds.items()
    )
    proto.write_text(head + text)
    net = cv2.dnn.readNetFromCaffe(str(proto), *([str(weights)] if weights else []))
    for k, v in feeds.items():
        net.setInput(v, k)
    return net.forward(out)


@pytest.mark.parametrize(
    "params",
    [
        f"min_size: 10.5 max_size: 20.7 aspect_ratio: 2 flip: true {VAR}",
        f"min_size: 10 min_size: 15 max_size: 20 max_size: 25 aspect_ratio: 2 aspect_ratio: 3 "
        f"clip: false offset: 0.3 {VAR}",
        f"min_size: 30 step_h: 9 step_w: 11 flip: false aspect_ratio: 3 {VAR}",
        "min_size: 8 step: 7 variance: 0.2",
    ],
)
def test_priorbox_matches_opencv(params: str, tmp_path: Path) -> None:
    feeds = zeros(FEATURE)
    theirs = opencv_forward(tmp_path, priorbox(params), feeds, "pb")
    ours = run_snippet(priorbox(params), feeds, dialect="opencv")["pb"]
    np.testing.assert_allclose(ours, theirs, atol=2e-7)


def test_permute_and_normalize_match_opencv(tmp_path: Path) -> None:
    from protocaffe.proto import caffe_pb2

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    scale = np.array([2.0, 3.0, 4.0], np.float32)
    text = (
        layer("n", "Normalize", ["x"], "norm_param { across_spatial: false channel_shared: false }")
        + layer("nn", "Normalize", ["x"], "norm_param { eps: 0.01 }")
        + layer("p", "Permute", ["n"], "permute_param { order: 0 order: 2 order: 3 order: 1 }")
    )
    weights = caffe_pb2.NetParameter()
    for name, blob in (("n", scale), ("nn", np.array(1.5, np.float32))):
        lp = weights.layer.add(name=name, type="Normalize")
        b = lp.blobs.add(data=blob.reshape(-1).tolist())
        b.shape.dim.extend(blob.shape or (1,))  # OpenCV cannot create a 0-axis blob
    path = tmp_path / "w.caffemodel"
    path.write_bytes(weights.SerializeToString())
    ours = run_snippet(
        text, {"x": x}, blobs={"n": [scale], "nn": [np.array(1.5)]}, outputs=["p", "nn"]
    )
    for out in ("p", "nn"):
        theirs = opencv_forward(tmp_path, text, {"x": x}, out, path)
        np.testing.assert_allclose(ours[out], theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "share"),
    [
        (f"{NMS} code_type: CENTER_SIZE keep_top_k: 30 confidence_threshold: 0.3", True),
        (f"{NMS} code_type: CENTER_SIZE keep_top_k: 30 confidence_threshold: 0.96", True),
        (f"{NMS} code_type: CORNER keep_top_k: 12 confidence_threshold: 0.5", False),
        (
            "nms_param { nms_threshold: 0.3 } code_type: CENTER_SIZE keep_top_k: 50 "
            "variance_encoded_in_target: true confidence_threshold: 0.1",
            True,
        ),
        (f"{NMS} code_type: CENTER_SIZE keep_top_k: 7 confidence_threshold: 0.999", True),
        # keep_top_k above what NMS can keep (3 classes x top_k 20): still its rows.
        (f"{NMS} code_type: CENTER_SIZE keep_top_k: 90 confidence_threshold: 0.2", True),
    ],
)
def test_detection_output_matches_opencv(params: str, share: bool, tmp_path: Path) -> None:
    feeds = detection_inputs(p=50, share=share, seed=5)
    if "variance_encoded_in_target: true" in params:
        feeds["pri"] = feeds["pri"][:, :1]  # OpenCV then takes the boxes alone
    text = detection(f"share_location: {str(share).lower()} background_label_id: 0 {params}")
    theirs = opencv_forward(tmp_path, text, feeds, "det")
    ours = run_snippet(text, feeds, dialect="opencv")["det"]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


# --- whole SSD-style nets -----------------------------------------------------------------

G = 'weight_filler { type: "gaussian" std: 0.08 } bias_filler { type: "gaussian" std: 0.1 }'


def conv(name: str, bottom: str, out: int, extra: str = "kernel_size: 3 pad: 1") -> str:
    return layer(
        name, "Convolution", [bottom], f"convolution_param {{ num_output: {out} {extra} {G} }}"
    )


def ssd_net(classes: int = 3) -> str:
    """A small SSD: two feature maps (the first L2-normalised), a loc and a conf head and a
    PriorBox per map, concatenated into DetectionOutput, as ssd_pascal.py writes them."""
    text = (
        'name: "tiny_ssd"\ninput: "data" input_shape { dim: 2 dim: 3 dim: 64 dim: 64 }\n'
        + conv("conv1", "data", 8, "kernel_size: 3 pad: 1 stride: 2")
        + layer("relu1", "ReLU", ["conv1"])
        + conv("conv2", "relu1", 16, "kernel_size: 3 pad: 1 stride: 2")
        + layer("relu2", "ReLU", ["conv2"])
        + layer(
            "norm2",
            "Normalize",
            ["relu2"],
            "norm_param { across_spatial: false channel_shared: false "
            'scale_filler { type: "constant" value: 20 } }',
        )
        + conv("conv3", "relu2", 16, "kernel_size: 3 pad: 1 stride: 2")
        + layer("relu3", "ReLU", ["conv3"])
    )
    heads = {
        "norm2": ("min_size: 12 max_size: 24 aspect_ratio: 2", 4),
        "relu3": ("min_size: 24 max_size: 40 aspect_ratio: 2 aspect_ratio: 3", 6),
    }
    locs, confs, priors = [], [], []
    for feature, (sizes, p) in heads.items():
        for kind, width in (("loc", p * 4), ("conf", p * classes)):
            name = f"{feature}_{kind}"
            text += conv(name, feature, width)
            text += layer(
                f"{name}_perm",
                "Permute",
                [name],
                "permute_param { order: 0 order: 2 order: 3 order: 1 }",
            )
            text += layer(f"{name}_flat", "Flatten", [f"{name}_perm"], "flatten_param { axis: 1 }")
            (locs if kind == "loc" else confs).append(f"{name}_flat")
        text += layer(
            f"{feature}_priorbox",
            "PriorBox",
            [feature, "data"],
            f"prior_box_param {{ {sizes} flip: true clip: false {VAR} offset: 0.5 }}",
        )
        priors.append(f"{feature}_priorbox")
    text += layer("mbox_loc", "Concat", locs, "concat_param { axis: 1 }")
    text += layer("mbox_conf", "Concat", confs, "concat_param { axis: 1 }")
    text += layer("mbox_priorbox", "Concat", priors, "concat_param { axis: 2 }")
    text += layer(
        "conf_reshape",
        "Reshape",
        ["mbox_conf"],
        f"reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }}",
    )
    text += layer("conf_softmax", "Softmax", ["conf_reshape"], "softmax_param { axis: 2 }")
    text += layer("conf_flat", "Flatten", ["conf_softmax"])
    text += layer(
        "detection_out",
        "DetectionOutput",
        ["mbox_loc", "conf_flat", "mbox_priorbox"],
        f"detection_output_param {{ num_classes: {classes} share_location: true "
        "background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 100 } "
        "code_type: CENTER_SIZE keep_top_k: 50 confidence_threshold: 0.3 }",
    )
    return text


def compare_with_opencv(
    proto: Path, x: np.ndarray, blobs: list[str], he_scaled: bool = False
) -> dict[str, np.ndarray]:
    """Seeded weights (the fillers, or He-scaled for a deep net) saved as a caffemodel; the
    `blobs` computed by protocaffe and by OpenCV agree to 1e-4 of their scale."""
    import torch
    from test_parity_corpus_nets import randomize

    from protocaffe.runtime.api import load
    from protocaffe.runtime.caffemodel import save_caffemodel

    weights = proto.with_suffix(".caffemodel")
    module = load(proto, device="cpu", seed=0)
    if he_scaled:
        randomize(module, seed=0)
    save_caffemodel(module, weights)
    module = load(proto, weights, device="cpu", outputs=blobs)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in module({"data": torch.from_numpy(x)}).items()}
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    net.setInput(x, "data")
    for name, theirs in zip(blobs, net.forward(blobs), strict=True):
        theirs = np.asarray(theirs).reshape(ours[name].shape)
        scale = max(float(np.abs(theirs).max()), 1e-6)
        np.testing.assert_allclose(ours[name], theirs, atol=1e-4 * scale, err_msg=name)
    return ours


def test_tiny_ssd_matches_opencv(tmp_path: Path) -> None:
    proto = tmp_path / "ssd.prototxt"
    proto.write_text(ssd_net())
    x = np.random.default_rng(11).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    ours = compare_with_opencv(
        proto, x, ["mbox_loc", "conf_flat", "mbox_priorbox", "detection_out"]
    )
    det = ours["detection_out"][0, 0]
    kept = det[det[:, 2] > 0]
    assert det.shape == (100, 7) and len(kept) > 10 and set(kept[:, 0]) == {0.0, 1.0}


@pytest.mark.slow
def test_corpus_mobilenet_ssd_matches_opencv(tmp_path: Path) -> None:
    """chuanqi305/MobileNet-SSD deploy.prototxt (300x300, 21 classes) with seeded weights;
    its confidence threshold is lowered so that random weights still detect something."""
    from _corpus import CORPUS

    source = CORPUS / "chuanqi305__MobileNet-SSD" / "deploy.prototxt"
    if not source.is_file():
        pytest.skip(f"corpus not found at {CORPUS}")
    proto = tmp_path / "mobilenet_ssd.prototxt"
    proto.write_text(
        source.read_text().replace("confidence_threshold: 0.25", "confidence_threshold: 0.06")
    )
    x = np.random.default_rng(5).uniform(-1, 1, (1, 3, 300, 300)).astype(np.float32)
    ours = compare_with_opencv(
        proto, x, ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox", "detection_out"], True
    )
    assert (ours["detection_out"][0, 0, :, 2] > 0).sum() > 5


def test_face_detector_style_ssd_with_fp16_weights_matches_opencv(tmp_path: Path) -> None:
    """The res10 face detector's recipe: BatchNorm + Scale in the trunk, PriorBox with a
    step, DetectionOutput keeping 200 of top_k 400 at confidence 0.01, fp16 raw_data weights
    (as OpenCV's shrinkCaffeModel stores them)."""
    import torch
    from test_parity_corpus_nets import randomize

    import protocaffe
    from protocaffe.runtime.caffemodel import save_caffemodel

    bn = layer("bn2", "BatchNorm", ["conv2"]).replace('top: "bn2"', 'top: "conv2"') + layer(
        "sc2", "Scale", ["conv2"], "scale_param { bias_term: true }"
    ).replace('top: "sc2"', 'top: "conv2"')
    text = (
        ssd_net(classes=2)
        .replace('layer { name: "relu2"', bn + 'layer { name: "relu2"', 1)
        .replace(
            "keep_top_k: 50 confidence_threshold: 0.3", "keep_top_k: 200 confidence_threshold: 0.01"
        )
        .replace("top_k: 100", "top_k: 400")
        .replace("flip: true clip: false", "flip: true clip: false step: 16")
    )
    proto, weights = tmp_path / "face.prototxt", tmp_path / "face_fp16.caffemodel"
    proto.write_text(text)
    module = protocaffe.load(proto, device="cpu", seed=0)
    randomize(module, seed=0)
    save_caffemodel(module, weights, fp16=True)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ours = protocaffe.load(proto, weights, device="cpu")({"data": torch.from_numpy(x)})
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    net.setInput(x)
    theirs = net.forward("detection_out")
    assert (ours["detection_out"][0, 0, :, 2] > 0).sum() > 100
    np.testing.assert_allclose(ours["detection_out"].numpy(), theirs, atol=1e-5)
