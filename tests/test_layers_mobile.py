"""MobileNet/ShuffleNet/SENet fork layers: ReLU6, DepthwiseConvolution, ConvolutionDepthwise,
ShuffleChannel, Axpy. Lowerings against the numpy oracles (the forks' CPU loops), shape errors,
and parity with OpenCV's importer, which runs all of them (Axpy through its rewrite)."""

from __future__ import annotations

import numpy as np
import pytest

from tests._dialect_parity import opencv_parity
from tests._layer_oracle import check_layer, error_of, needs_source_spans, oracle, shapes_of

RNG = np.random.default_rng(7)
X = (RNG.normal(size=(2, 6, 5, 7)) * 5).astype(np.float32)


def one(kind: str, extra: str = "", bottoms: tuple[str, ...] = ("x",)) -> str:
    bots = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "l" type: "{kind}" {bots} top: "y" {extra} }}'


@pytest.mark.parametrize(
    "extra, slope",
    [
        ("", 0.0),
        ("relu6_param { negative_slope: 0.1 }", 0.1),
        ("relu_param { negative_slope: 0.2 }", 0.2),
    ],
)
def test_relu6_clips_at_six_with_the_forks_slope(extra: str, slope: float) -> None:
    got = check_layer(one("ReLU6", extra), {"x": X}, "l")["y"]
    want = np.minimum(np.maximum(X, 0) + slope * np.minimum(X, 0), 6)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.max() == 6


@pytest.mark.parametrize("kind", ["DepthwiseConvolution", "ConvolutionDepthwise"])
def test_depthwise_types_are_grouped_convolution(kind: str) -> None:
    params = "convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 stride: 2 }"
    blobs = [
        RNG.normal(size=(6, 1, 3, 3)).astype(np.float32),
        RNG.normal(size=6).astype(np.float32),
    ]
    got = check_layer(one(kind, params), {"x": X}, "l", blobs=blobs)["y"]
    conv = oracle(one("Convolution", params), {"x": X}, "l", blobs)[0]
    np.testing.assert_allclose(got, conv, rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 6, 3, 4)


def test_shuffle_channel_interleaves_groups() -> None:
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    got = check_layer(one("ShuffleChannel", "shuffle_channel_param { group: 2 }"), {"x": x}, "l")
    assert got["y"].reshape(-1).tolist() == [0, 3, 1, 4, 2, 5]
    check_layer(one("ShuffleChannel", "shuffle_channel_param { group: 3 }"), {"x": X}, "l")


def test_shuffle_channel_group_must_divide_channels() -> None:
    needs_source_spans()
    err = error_of(one("ShuffleChannel", "shuffle_channel_param { group: 4 }"), {"x": X.shape})
    assert "group 4 does not divide the 6 channels" in err.message
    assert err.span is not None and err.span.line == 1


def test_axpy_scales_per_channel_then_adds() -> None:
    a = RNG.normal(size=(2, 6, 1, 1)).astype(np.float32)
    y = RNG.normal(size=X.shape).astype(np.float32)
    got = check_layer(one("Axpy", bottoms=("a", "x", "z")), {"a": a, "x": X, "z": y}, "l")["y"]
    np.testing.assert_allclose(got, a * X + y, rtol=1e-6, atol=1e-6)
    assert (
        shapes_of(one("Axpy", bottoms=("a", "x", "z")), {"a": a.shape, "x": X.shape, "z": y.shape})[
            "y"
        ]
        == X.shape
    )


def test_axpy_needs_a_per_channel_factor() -> None:
    err = error_of(
        one("Axpy", bottoms=("a", "x", "z")), {"a": (2, 6, 2, 1), "x": X.shape, "z": X.shape}
    )
    assert "must be N x C x 1 x 1" in err.message


G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def test_mobile_layers_match_opencv(tmp_path) -> None:
    body = "\n".join(
        [
            f'layer {{ name: "dw" type: "ConvolutionDepthwise" bottom: "x" top: "dw" '
            f"convolution_param {{ num_output: 6 group: 6 kernel_size: 3 pad: 1 {G} }} }}",
            'layer { name: "r6" type: "ReLU6" bottom: "dw" top: "r6" }',
            'layer { name: "sh" type: "ShuffleChannel" bottom: "r6" top: "sh" '
            "shuffle_channel_param { group: 3 } }",
            'layer { name: "gp" type: "Pooling" bottom: "sh" top: "gp" '
            "pooling_param { pool: AVE global_pooling: true } }",
            'layer { name: "ax" type: "Axpy" bottom: "gp" bottom: "sh" bottom: "x" top: "ax" }',
        ]
    )
    opencv_parity(tmp_path, body, {"x": X[:1]}, ["dw", "r6", "sh"])


def test_opencv_swaps_axpys_addends(tmp_path) -> None:
    """OpenCV's importer rewrites Axpy as bottom0 * bottom2 + bottom1; SENet's AxpyLayer
    computes bottom0 * bottom1 + bottom2 (its Forward_cpu copies bottom2, then axpy's bottom1
    into it). protocaffe follows the fork; this pins the difference the README states."""
    cv2 = pytest.importorskip("cv2")
    from tests._dialect_parity import net_text

    a = RNG.normal(size=(1, 6, 1, 1)).astype(np.float32)
    x, z = X[:1], RNG.normal(size=X[:1].shape).astype(np.float32)
    path = tmp_path / "axpy.prototxt"
    path.write_text(
        net_text({"a": a.shape, "x": x.shape, "z": z.shape}, one("Axpy", bottoms=("a", "x", "z")))
    )
    net = cv2.dnn.readNetFromCaffe(str(path))
    for name, blob in {"a": a, "x": x, "z": z}.items():
        net.setInput(blob, name)
    theirs = net.forward("l")
    ours = oracle(one("Axpy", bottoms=("a", "x", "z")), {"a": a, "x": x, "z": z}, "l")[0]
    np.testing.assert_allclose(ours, a * x + z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(theirs, a * z + x, rtol=1e-5, atol=1e-5)
