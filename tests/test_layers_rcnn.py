"""R-CNN family: ROIPooling, PSROIPooling, Proposal (PVANet's C++ layer) and py-faster-rcnn's
Python proposal layer run natively. Lowerings against numpy oracles of the forks' loops,
values worked out by hand, parity with OpenCV's importer, and the py-faster-rcnn test net."""

from __future__ import annotations

import numpy as np
import pytest

from protocaffe.testing import compile_snippet
from tests._corpus import CORPUS
from tests._dialect_parity import opencv_parity
from tests._layer_oracle import check_layer, error_of, oracle, shapes_of

RNG = np.random.default_rng(5)
X = RNG.normal(size=(2, 8, 10, 12)).astype(np.float32)
ROIS = np.float32(
    [
        [0, 1, 2, 15, 13],
        [1, 0, 0, 23, 19],
        [0, 5.5, 3.2, 9.7, 8.1],
        [1, -4, -3, 30, 25],
        [0, 9, 9, 9, 9],
    ]
)


def roi(params: str) -> str:
    return (
        'layer { name: "r" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        f"roi_pooling_param {{ {params} }} }}"
    )


def psroi(params: str) -> str:
    return (
        'layer { name: "r" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
        f"psroi_pooling_param {{ {params} }} }}"
    )


def test_roi_pooling_matches_its_oracle() -> None:
    got = check_layer(
        roi("pooled_h: 3 pooled_w: 4 spatial_scale: 0.5"), {"x": X, "rois": ROIS}, "r"
    )
    assert got["y"].shape == (5, 8, 3, 4)


def test_roi_pooling_by_hand() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    rois = np.float32([[0, 0, 0, 3, 3], [0, 1, 1, 1, 1]])
    y = check_layer(roi("pooled_h: 2 pooled_w: 2"), {"x": x, "rois": rois}, "r")["y"]
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])  # max of each 2x2 quarter
    np.testing.assert_array_equal(y[1, 0], [[5, 5], [5, 5]])  # a 1x1 roi fills every bin


def test_psroi_pooling_matches_its_oracle() -> None:
    text = psroi("spatial_scale: 0.5 output_dim: 2 group_size: 2")
    got = check_layer(text, {"x": X, "rois": ROIS}, "r", rtol=1e-5, atol=1e-6)
    assert got["y"].shape == (5, 2, 2, 2)


def test_psroi_pooling_checks_channels_and_required_fields() -> None:
    err = error_of(
        psroi("spatial_scale: 1 output_dim: 3 group_size: 2"), {"x": X.shape, "rois": (5, 5)}
    )
    assert "output_dim 3 x group_size² 4 = 12 are needed" in err.message
    err = error_of(psroi("output_dim: 2 group_size: 2"), {"x": X.shape, "rois": (5, 5)})
    assert "spatial_scale is required" in err.message


def test_roi_layers_match_opencv(tmp_path) -> None:
    ps = psroi("spatial_scale: 0.5 output_dim: 2 group_size: 2")
    ps = ps.replace('"r"', '"ps"').replace('top: "y"', 'top: "z"')
    body = "\n".join([roi("pooled_h: 3 pooled_w: 3 spatial_scale: 0.5"), ps])
    opencv_parity(tmp_path, body, {"x": X, "rois": ROIS[:4]}, ["y", "z"])


# --- Proposal --------------------------------------------------------------------------------

A = 9  # 3 ratios x 3 scales
SCORES = RNG.uniform(size=(1, 2 * A, 6, 8)).astype(np.float32)
DELTAS = (RNG.normal(size=(1, 4 * A, 6, 8)) * 0.2).astype(np.float32)


def proposal(params: str, tops: int = 2) -> str:
    names = " ".join(f'top: "{t}"' for t in ("rois", "scores")[:tops])
    return (
        'layer { name: "p" type: "Proposal" bottom: "s" bottom: "d" bottom: "info" '
        f"{names} proposal_param {{ ratio: 0.5 ratio: 1 ratio: 2 scale: 2 scale: 4 scale: 8 "
        f"{params} }} }}"
    )


def test_anchors_are_py_faster_rcnns() -> None:
    from protocaffe.layers.rcnn import generate_anchors

    anchors = generate_anchors(16, (0.5, 1, 2), (8, 16, 32))
    # py-faster-rcnn's generate_anchors() output, rows 0, 4 and 8.
    np.testing.assert_array_equal(anchors[0], [-84, -40, 99, 55])
    np.testing.assert_array_equal(anchors[4], [-120, -120, 135, 135])
    np.testing.assert_array_equal(anchors[8], [-168, -344, 183, 359])


@pytest.mark.parametrize("min_size", [0, 16, 40])
def test_proposal_matches_its_oracle(min_size: int) -> None:
    text = proposal(f"pre_nms_topn: 150 post_nms_topn: 30 nms_thresh: 0.6 min_size: {min_size}")
    info = np.float32([[96, 128, 1.5, 1.2]])
    got = check_layer(text, {"s": SCORES, "d": DELTAS, "info": info}, "p", rtol=1e-5, atol=1e-4)
    rows = len(got["rois"])  # NMS may leave fewer than post_nms_topn
    assert 0 < rows <= 30 and got["rois"].shape == (rows, 5) and got["scores"].shape == (rows,)
    assert np.all(got["rois"][:, 0] == 0)
    assert np.all(np.diff(got["scores"]) <= 0)


def test_small_boxes_keep_score_zero_in_the_cpp_layer() -> None:
    text = proposal("pre_nms_topn: 432 post_nms_topn: 432 nms_thresh: 1.0 min_size: 1000")
    info = np.float32([[96, 128, 1, 1]])
    got = check_layer(text, {"s": SCORES, "d": DELTAS, "info": info}, "p", rtol=1e-5, atol=1e-4)
    assert got["rois"].shape == (432, 5) and np.all(got["scores"] == 0)


def test_proposal_matches_opencv(tmp_path) -> None:
    """OpenCV ignores min_size (and pads to post_nms_topn rows): compared with min_size 0."""
    body = proposal("pre_nms_topn: 200 post_nms_topn: 40 min_size: 0").replace(
        'top: "rois" top: "scores"', 'top: "rois"'
    )
    info = np.float32([[96, 128, 1, 1]])
    opencv_parity(tmp_path, body, {"s": SCORES, "d": DELTAS, "info": info}, ["rois"])


def test_proposal_shape_checks() -> None:
    err = error_of(proposal(""), {"s": (1, 10, 6, 8), "d": (1, 36, 6, 8), "info": (1, 4)})
    assert "9 anchors (3 ratios x 3 scales) need 18" in err.message
    text = proposal("").replace("ratio: 0.5 ratio: 1 ratio: 2 ", "")
    err = error_of(text, {"s": SCORES.shape, "d": DELTAS.shape, "info": (1, 4)})
    assert "gives no ratio" in err.message
    assert shapes_of(
        proposal("post_nms_topn: 50"), {"s": SCORES.shape, "d": DELTAS.shape, "info": (1, 4)}
    )["rois"] == (50, 5)


PY_PROPOSAL = (
    'layer { name: "p" type: "Python" bottom: "s" bottom: "d" bottom: "info" top: "rois" '
    "top: \"scores\" python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' "
    "param_str: \"'feat_stride': 16\" } }"
)


def test_py_faster_rcnn_proposal_runs_natively() -> None:
    scores = RNG.uniform(size=(1, 18, 7, 9)).astype(np.float32)
    deltas = (RNG.normal(size=(1, 36, 7, 9)) * 0.3).astype(np.float32)
    info = np.float32([[112, 144, 1.0]])
    graph = compile_snippet(PY_PROPOSAL, {"s": scores.shape, "d": deltas.shape, "info": info.shape})
    layer = graph.layer("p")
    assert not layer.spec.is_input and layer.spec.type == "Python"
    inputs = {"s": scores, "d": deltas, "info": info}
    got = check_layer(PY_PROPOSAL, inputs, "p", rtol=1e-5, atol=1e-4)
    rois = got["rois"]
    assert rois.shape[1] == 5 and 0 < len(rois) <= 300 and got["scores"].shape == (len(rois), 1)
    # Boxes under RPN_MIN_SIZE (16 px at scale 1) are removed, not kept with score 0.
    widths, heights = rois[:, 3] - rois[:, 1] + 1, rois[:, 4] - rois[:, 2] + 1
    assert widths.min() >= 16 and heights.min() >= 16
    assert rois[:, 1:].min() >= 0 and rois[:, 3].max() <= 143 and rois[:, 4].max() <= 111


def test_python_layers_of_other_modules_stay_inputs() -> None:
    text = PY_PROPOSAL.replace("rpn.proposal_layer", "my.layer")
    err = error_of(text, {"s": SCORES.shape, "d": DELTAS.shape, "info": (1, 3)})
    assert "set at run time" in err.message


def test_param_str_without_feat_stride_is_an_error() -> None:
    text = PY_PROPOSAL.replace("'feat_stride': 16", "'stride': 16")
    err = error_of(text, {"s": SCORES.shape, "d": DELTAS.shape, "info": (1, 3)})
    assert "does not give feat_stride" in err.message


def test_py_faster_rcnn_test_net_compiles_without_python() -> None:
    from protocaffe.runtime.api import compile_net

    path = (
        CORPUS
        / "rbgirshick__py-faster-rcnn/models__pascal_voc__VGG16__faster_rcnn_end2end__test.prototxt"
    )
    if not path.is_file():
        pytest.skip(f"corpus file absent: {path}")
    graph = compile_net(path)
    assert graph.layer("proposal").spec.lowerable
    assert [v.blob for v in graph.inputs] == ["data", "im_info"]
    assert graph.blob("rois").shape == (300, 5)
    assert graph.blob("cls_prob").shape == (300, 21)


def test_oracle_keeps_the_same_rows_as_the_lowering_for_the_python_layer() -> None:
    scores = RNG.uniform(size=(1, 18, 5, 6)).astype(np.float32)
    deltas = (RNG.normal(size=(1, 36, 5, 6)) * 0.3).astype(np.float32)
    info = np.float32([[80, 96, 0.5]])
    want = oracle(PY_PROPOSAL, {"s": scores, "d": deltas, "info": info}, "p")
    assert want[0].shape[1] == 5 and want[1].shape == (len(want[0]), 1)


def test_roi_pooling_fast_and_masked_paths_match_the_oracle() -> None:
    """Random rois, inside the map (adaptive max pooling) and across its border (masks)."""
    from protocaffe.layers.rcnn import roi_pool

    x = RNG.normal(size=(2, 6, 20, 24)).astype(np.float32)
    rois = np.zeros((120, 5), np.float32)
    rois[:, 0] = RNG.integers(0, 2, 120)
    rois[:, 1:3] = RNG.uniform(-40, 400, (120, 2))
    rois[:, 3:] = rois[:, 1:3] + RNG.uniform(0, 200, (120, 2))
    text = roi("pooled_h: 7 pooled_w: 5 spatial_scale: 0.0625")
    want = oracle(text, {"x": x, "rois": rois}, "r")[0]
    import torch

    got = roi_pool(torch.from_numpy(x), torch.from_numpy(rois), (7, 5), 0.0625).numpy()
    np.testing.assert_array_equal(got, want)


def test_faster_rcnn_style_head_matches_opencv(tmp_path) -> None:
    """conv features -> RPN convs -> Proposal -> ROIPooling -> InnerProduct, whole, against
    OpenCV (min_size 0, which OpenCV ignores, and enough boxes to fill post_nms_topn)."""
    g = 'weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "gaussian" std: 0.1 }'
    body = "\n".join(
        [
            f'layer {{ name: "feat" type: "Convolution" bottom: "data" top: "feat" '
            f"convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 stride: 8 {g} }} }}",
            f'layer {{ name: "rpn_score" type: "Convolution" bottom: "feat" top: "rpn_score" '
            f"convolution_param {{ num_output: 18 kernel_size: 1 {g} }} }}",
            f'layer {{ name: "rpn_delta" type: "Convolution" bottom: "feat" top: "rpn_delta" '
            f"convolution_param {{ num_output: 36 kernel_size: 1 {g} }} }}",
            'layer { name: "proposal" type: "Proposal" bottom: "rpn_score" bottom: "rpn_delta" '
            'bottom: "im_info" top: "rois" proposal_param { feat_stride: 8 min_size: 0 '
            "ratio: 0.5 ratio: 1 ratio: 2 scale: 2 scale: 4 scale: 8 pre_nms_topn: 150 "
            "post_nms_topn: 12 } }",
            'layer { name: "pool" type: "ROIPooling" bottom: "feat" bottom: "rois" top: "pool" '
            "roi_pooling_param { pooled_h: 3 pooled_w: 3 spatial_scale: 0.125 } }",
            f'layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
            f"inner_product_param {{ num_output: 4 {g} }} }}",
        ]
    )
    data = RNG.normal(size=(1, 3, 48, 64)).astype(np.float32)
    info = np.float32([[48, 64, 1, 1]])
    opencv_parity(tmp_path, body, {"data": data, "im_info": info}, ["rois", "pool", "fc"])
