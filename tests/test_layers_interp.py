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
