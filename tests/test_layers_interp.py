"""DeepLab v2 / PSPNet `Interp`: the four output-size rules and cropping of InterpLayer::Reshape,
align-corners bilinear as caffe_cpu_interp2 computes it (float32 ratios), errors, and parity
with OpenCV's importer for the part it implements (zoom_factor, height/width)."""

from __future__ import annotations

import numpy as np
import pytest

from tests._dialect_parity import opencv_parity
from tests._layer_oracle import check_layer, error_of, needs_source_spans, shapes_of

RNG = np.random.default_rng(3)
X = RNG.normal(size=(2, 3, 7, 9)).astype(np.float32)


def interp(params: str) -> str:
    return f'layer {{ name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }} }}'


# params -> output H x W for a 7 x 9 input, worked from InterpLayer::Reshape by hand.
SIZES = {
    "zoom_factor: 3": (19, 25),  # 7 + 6*2, 9 + 8*2
    "shrink_factor: 2": (4, 5),  # (7-1)//2+1, (9-1)//2+1
    "height: 5 width: 13": (5, 13),
    "shrink_factor: 3 zoom_factor: 2": (5, 5),  # shrink to 3x3, then zoom
    "zoom_factor: 2 pad_beg: -1 pad_end: -2": (7, 11),  # crop to 4x6, then zoom
    "height: 7 width: 9": (7, 9),  # equal size: a copy
    "height: 1 width: 1": (1, 1),
    "shrink_factor: 2 pad_end: -1": (3, 4),  # crop to 6x8
}


@pytest.mark.parametrize("params", SIZES)
def test_output_size_and_values(params: str) -> None:
    assert shapes_of(interp(params), {"x": X.shape})["y"] == (2, 3, *SIZES[params])
    check_layer(interp(params), {"x": X}, "i", rtol=1e-5, atol=1e-5)


def test_align_corners_keeps_the_corners_and_interpolates_linearly() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 4) * np.ones((1, 1, 2, 1), np.float32)
    y = check_layer(interp("height: 2 width: 7"), {"x": x}, "i")["y"]
    np.testing.assert_allclose(y[0, 0, 0], [0, 0.5, 1, 1.5, 2, 2.5, 3], atol=1e-6)


def test_crop_reads_the_window_from_minus_pad_beg() -> None:
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    y = check_layer(interp("height: 3 width: 3 pad_beg: -1 pad_end: -1"), {"x": x}, "i")["y"]
    np.testing.assert_allclose(y[0, 0], x[0, 0, 1:4, 1:4])


@pytest.mark.parametrize(
    "params, message",
    [
        ("pad_beg: 1 zoom_factor: 2", "pad_beg must be <= 0"),
        ("width: 4", "interp_param gives no output size"),
        ("zoom_factor: 0", "zoom_factor must be at least 1"),
        ("pad_beg: -4 pad_end: -4 zoom_factor: 2", "crop the whole 7x9 input"),
    ],
)
def test_errors_are_located(params: str, message: str) -> None:
    needs_source_spans()
    err = error_of(interp(params), {"x": X.shape})
    assert message in err.message
    assert err.span is not None and err.span.line == 1


def test_matches_opencv_for_zoom_and_size(tmp_path) -> None:
    body = "\n".join(
        [
            'layer { name: "z" type: "Interp" bottom: "x" top: "z" '
            "interp_param { zoom_factor: 4 } }",
            'layer { name: "s" type: "Interp" bottom: "x" top: "s" '
            "interp_param { height: 11 width: 6 } }",
        ]
    )
    opencv_parity(tmp_path, body, {"x": X[:1]}, ["z", "s"])


# --- DeepLab v1: V1 enum types, hole, Padding --------------------------------------------

V1_NET = """name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 20 input_dim: 20
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" strict_dim: false
  convolution_param { num_output: 2 kernel_size: 3 hole: 2 } }
layers { name: "up" type: INTERP bottom: "conv" top: "up" interp_param { zoom_factor: 2 } }
layers { name: "crop" type: PADDING bottom: "up" top: "crop"
  padding_param { pad_beg: -2 pad_end: -3 } }
"""


def test_deeplab_v1_enum_types_and_hole_upgrade() -> None:
    from protocaffe.frontend import parse_text
    from protocaffe.frontend.upgrade import upgrade_net
    from protocaffe.ir.build import build_graph

    parsed, notes = upgrade_net(parse_text(V1_NET, "<v1>"))
    layers = {layer.name: layer for layer in parsed.message.layer}
    assert [layers[n].type for n in ("conv", "up", "crop")] == ["Convolution", "Interp", "Padding"]
    assert list(layers["conv"].convolution_param.dilation) == [2]
    assert any("renamed DeepLab v1's 'hole' to 'dilation'" in d.message for d in notes)
    graph = build_graph(parsed)
    # 20 -> conv k3 dilation 2: 16 -> zoom 2: 31 -> crop 2 + 3: 26
    assert graph.blob("conv").shape == (1, 2, 16, 16)
    assert graph.blob("crop").shape == (1, 2, 26, 26)
    strict = [d for d in graph.diagnostics if "strict_dim" in d.message]
    assert strict and strict[0].severity == "note" and strict[0].span.line == 4


@pytest.mark.parametrize("params", ["pad_beg: 2 pad_end: 1", "pad_beg: -1 pad_end: -2"])
def test_padding_pads_or_crops(params: str) -> None:
    text = (
        f'layer {{ name: "p" type: "Padding" bottom: "x" top: "y" padding_param {{ {params} }} }}'
    )
    got = check_layer(text, {"x": X}, "p")["y"]
    if "-" in params:
        np.testing.assert_array_equal(got, X[:, :, 1:5, 1:7])
    else:
        assert got.shape == (2, 3, 10, 12)
        np.testing.assert_array_equal(got[:, :, 2:9, 2:11], X)
        assert got[:, :, :2].sum() == 0 and got[:, :, 9:].sum() == 0


def test_padding_of_mixed_signs_is_an_error() -> None:
    text = (
        'layer { name: "p" type: "Padding" bottom: "x" top: "y" '
        "padding_param { pad_beg: 1 pad_end: -1 } }"
    )
    assert "both >= 0 (pad) or both" in error_of(text, {"x": X.shape}).message


def test_deeplab_v1_corpus_test_net_compiles() -> None:
    from tests._corpus import CORPUS

    path = CORPUS / "TheLegendAli__DeepLab-Context/voc12__vgg128_noup__test_val.prototxt"
    if not path.is_file():
        pytest.skip(f"corpus file absent: {path}")
    from protocaffe.runtime.api import compile_net

    graph = compile_net(path)
    # crop_size 514 = 32*16 + 2; the file's comment: interp to n + 15, then crop 7 + 8 to n.
    assert graph.blob("fc8_interp").shape == (1, 21, 529, 529)
    assert graph.blob("fc8_crop").shape == (1, 21, 514, 514)
