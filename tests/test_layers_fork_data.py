"""Fork data and training layers outside SSD: HED's ImageLabelmapData, the colorization forks'
ImageDataModify and SoftmaxCrossEntropyLoss; PVANet's param_str flow mapping; and the one
corpus construct outside every dialect, a shell template's ${...} placeholder."""

from __future__ import annotations

import pytest
from PIL import Image

from protocaffe.diagnostics import CompileError
from protocaffe.frontend.textformat import parse_text
from protocaffe.ir import build_graph
from protocaffe.layers.rcnn import parse_param_str
from protocaffe.testing import compile_snippet


def build(text: str, **shapes: tuple[int, ...]):
    return build_graph(parse_text(text, "<snippet>"), phase="TRAIN", input_shapes=shapes)


def first_error(text: str, **shapes: tuple[int, ...]):
    with pytest.raises(CompileError) as info:
        build(text, **shapes)
    error = next(d for d in info.value.diagnostics if d.severity == "error")
    assert error.span is not None
    return error


def shapes(graph) -> dict[str, tuple[int, ...]]:
    return {v.blob: v.shape for v in graph.values.values()}


# --- HED ImageLabelmapData -----------------------------------------------------------------


def hed(params: str, transform: str = "") -> str:
    return (
        'layer { name: "data" type: "ImageLabelmapData" top: "data" top: "label" '
        f"transform_param {{ {transform} }} image_data_param {{ {params} }} }}"
    )


@pytest.mark.parametrize(
    ("params", "transform", "hw"),
    [
        ("batch_size: 2 new_height: 40 new_width: 60", "", (40, 60)),
        ("batch_size: 2 new_height: 40 new_width: 60", "crop_size: 32", (32, 32)),
    ],
)
def test_labelmap_tops_share_the_image_size(params, transform, hw) -> None:
    assert shapes(build(hed(params, transform))) == {"data": (2, 3, *hw), "label": (2, 1, *hw)}


def test_labelmap_size_from_the_first_listed_image(tmp_path) -> None:
    Image.new("RGB", (48, 36)).save(tmp_path / "a.png")
    Image.new("L", (48, 36)).save(tmp_path / "a_gt.png")
    (tmp_path / "pairs.lst").write_text("a.png a_gt.png\n")
    params = f'source: "{tmp_path / "pairs.lst"}" root_folder: "{tmp_path}/" batch_size: 1'
    assert shapes(build(hed(params + " is_color: false"))) == {
        "data": (1, 1, 36, 48),
        "label": (1, 1, 36, 48),
    }


def test_labelmap_without_a_size_asks_for_both_tops() -> None:
    error = first_error(hed("batch_size: 1"))
    assert "--shape data=1,3,H,W --shape label=1,1,H,W" in error.message
    given = build(hed("batch_size: 1"), data=(1, 3, 8, 9), label=(1, 1, 8, 9))
    assert shapes(given)["label"] == (1, 1, 8, 9)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("batch_size: 1 new_height: 5", "new_height and new_width must be set together"),
        ("batch_size: 0 new_height: 5 new_width: 5", "batch_size must be positive"),
    ],
)
def test_labelmap_checks(params, message) -> None:
    assert message in first_error(hed(params)).message


# --- colorization --------------------------------------------------------------------------


def modify(params: str, transform: str = "", tops: int = 1) -> str:
    top = ' top: "data"' + (' top: "label"' if tops == 2 else "")
    return (
        f'layer {{ name: "data" type: "ImageDataModify"{top} '
        f"transform_param {{ {transform} }} image_data_modify_param {{ {params} }} }}"
    )


def test_image_data_modify_shapes() -> None:
    assert shapes(build(modify("batch_size: 50 is_color: true", "crop_size: 176"))) == {
        "data": (50, 3, 176, 176)
    }
    grey = build(modify("batch_size: 4 new_height: 8 new_width: 6 is_color: false", tops=2))
    assert shapes(grey) == {"data": (4, 1, 8, 6), "label": (4,)}
    assert "--shape data=50,3,H,W" in first_error(modify("batch_size: 50")).message


def cross_entropy(scores: tuple[int, ...], target: tuple[int, ...]):
    text = (
        'layer { name: "loss" type: "SoftmaxCrossEntropyLoss" bottom: "s" bottom: "t" top: "loss" }'
    )
    return compile_snippet(text, {"s": scores, "t": target}, phase="TRAIN")


def test_softmax_cross_entropy_is_a_scalar_loss_on_matching_shapes() -> None:
    graph = cross_entropy((2, 313, 4, 4), (2, 313, 4, 4))
    assert graph.blob("loss").shape == () and graph.layer("loss").spec.is_loss
    with pytest.raises(CompileError) as info:
        cross_entropy((2, 313, 4, 4), (2, 1, 4, 4))
    assert "must have the same shape" in info.value.diagnostics[0].message


# --- PVANet's param_str and the shell template ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("'feat_stride': 16", {"feat_stride": 16}),
        ("'feat_stride': 16\n'scales': [8, 16]", {"feat_stride": 16, "scales": [8, 16]}),
        (
            "{'feat_stride': 16, 'ratios': [0.333, 0.5, 1], 'scales': [2, 3, 5]}",
            {"feat_stride": 16, "ratios": [0.333, 0.5, 1], "scales": [2, 3, 5]},
        ),
        ("{feat_stride: 8}", {"feat_stride": 8}),
        ("{'feat_stride': 16", None),
    ],
)
def test_param_str_forms(text, want) -> None:
    assert parse_param_str(text) == want


def test_pvanet_flow_mapping_sets_the_proposal_anchors() -> None:
    param = "{'feat_stride': 16, 'ratios': [0.5, 1, 2, 3], 'scales': [2, 4]}"
    text = (
        'layer { name: "p" type: "Python" bottom: "score" bottom: "deltas" bottom: "info" '
        'top: "rois" python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" '
        f'param_str: "{param}" }} }}'
    )
    # 4 ratios x 2 scales = 8 anchors: 2 * 8 scores and 4 * 8 deltas per position.
    graph = compile_snippet(text, {"score": (1, 16, 5, 5), "deltas": (1, 32, 5, 5), "info": (1, 3)})
    assert graph.blob("rois").shape[1] == 5


def test_a_shell_template_is_outside_every_dialect() -> None:
    with pytest.raises(CompileError) as info:
        parse_text('layer { name: "fc8" type: "InnerProduct" }\nname: ${NET}\n', "t.prototxt")
    error = info.value.diagnostics[0]
    assert (error.span.line, error.span.col) == (2, 7)
    assert "${NET} is a shell-template placeholder" in error.message
    assert "no Caffe dialect" in error.message and "substitute" in error.hint
