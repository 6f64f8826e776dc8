"""Fork fields on BVLC layers: Pooling ceil_mode (OpenCV / DenseNet) beside round_mode,
Dropout scale_train (Faster R-CNN, OpenCV) and sample_weights_test (Bayesian SegNet),
BatchNorm scale_bias (NVIDIA Caffe's 5 blobs), and training-only fields reported as notes."""

from __future__ import annotations

import numpy as np
import pytest

from protocaffe.testing import compile_snippet, run_snippet
from tests._dialect_parity import opencv_parity
from tests._layer_oracle import check_layer, error_of, needs_source_spans, shapes_of

RNG = np.random.default_rng(2)
X = RNG.normal(size=(1, 4, 7, 7)).astype(np.float32)


def pool(params: str) -> str:
    return (
        'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
        f"pooling_param {{ pool: MAX kernel_size: 2 stride: 2 {params} }} }}"
    )


@pytest.mark.parametrize(
    "params, size",
    [("", 4), ("ceil_mode: true", 4), ("ceil_mode: false", 3), ("round_mode: FLOOR", 3)],
)
def test_ceil_mode_and_round_mode_both_set_the_rounding(params: str, size: int) -> None:
    assert shapes_of(pool(params), {"x": X.shape})["y"] == (1, 4, size, size)


def test_contradicting_rounding_fields_are_an_error() -> None:
    needs_source_spans()
    err = error_of(pool("ceil_mode: false round_mode: CEIL"), {"x": X.shape})
    assert "ceil_mode: false contradicts round_mode: CEIL" in err.message
    assert err.span is not None


def dropout(params: str) -> str:
    return (
        f'layer {{ name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param {{ {params} }} }}'
    )


def test_dropout_scale_train_false_scales_at_test() -> None:
    text = dropout("dropout_ratio: 0.25 scale_train: false")
    y = check_layer(text, {"x": X}, "d")["y"]
    np.testing.assert_allclose(y, X * 0.75, rtol=1e-6)


def test_dropout_scale_train_false_does_not_scale_at_train() -> None:
    text = dropout("dropout_ratio: 0.5 scale_train: false")
    y = run_snippet(text, {"x": np.ones((4000,), np.float32)}, phase="TRAIN")["y"]
    assert set(np.unique(y)) == {0.0, 1.0}
    assert 0.45 < (y == 0).mean() < 0.55


def test_sample_weights_test_samples_at_test_with_a_note() -> None:
    text = dropout("sample_weights_test: true")
    y = run_snippet(text, {"x": np.ones((4000,), np.float32)})["y"]
    assert set(np.unique(y)) == {0.0, 2.0}
    graph = compile_snippet(text, {"x": (4000,)})
    assert any("outputs are random" in d.message for d in graph.diagnostics)


BN5 = (
    'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
    "batch_norm_param { scale_bias: true eps: 1e-6 } }"
)


def test_batch_norm_scale_bias_has_five_blobs_and_ignores_the_factor() -> None:
    graph = compile_snippet(BN5, {"x": X.shape})
    names = [b.name for b in graph.layer("bn").blob_specs]
    assert names == ["mean", "variance", "scale_factor", "scale", "bias"]
    mean, var = (
        RNG.normal(size=4).astype(np.float32),
        (RNG.uniform(size=4) + 0.5).astype(np.float32),
    )
    scale, bias = RNG.normal(size=4).astype(np.float32), RNG.normal(size=4).astype(np.float32)
    blobs = [mean, var, np.float32([7.0]), scale, bias]
    y = check_layer(BN5, {"x": X}, "bn", blobs=blobs)["y"]
    c = (1, 4, 1, 1)
    want = (X - mean.reshape(c)) / np.sqrt(var.reshape(c) + 1e-5) * scale.reshape(c) + bias.reshape(
        c
    )
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)  # eps raised to 1e-5


def test_fork_fields_match_opencv(tmp_path) -> None:
    body = "\n".join(
        [
            pool("ceil_mode: false")
            .replace('top: "y"', 'top: "p"')
            .replace('"p" type', '"pl" type'),
            'layer { name: "d" type: "Dropout" bottom: "p" top: "d" '
            "dropout_param { dropout_ratio: 0.3 scale_train: false } }",
            'layer { name: "bn" type: "BatchNorm" bottom: "d" top: "bn" '
            "batch_norm_param { scale_bias: true } }",
        ]
    )
    # random statistics, scale and bias (OpenCV cannot read a prototxt with both fillers)
    stats = [
        RNG.normal(size=4),
        RNG.uniform(size=4) + 0.5,
        [1.0],
        RNG.normal(size=4),
        RNG.normal(size=4),
    ]
    blobs = {"bn": [np.asarray(b, np.float32) for b in stats]}
    opencv_parity(tmp_path, body, {"x": X}, ["p", "d", "bn"], blobs=blobs)


def test_training_only_fork_fields_are_notes() -> None:
    text = (
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
        "loss_param { weight_by_label_freqs: true class_weighting: 0.2 class_weighting: 0.8 } }"
    )
    graph = compile_snippet(text, {"x": (2, 2, 3, 3), "label": (2, 1, 3, 3)}, phase="TRAIN")
    notes = [d for d in graph.diagnostics if d.severity == "note" and "ignored" in d.message]
    assert [n.message.split(": ", 1)[1].split(" (")[0] for n in notes] == [
        "weight_by_label_freqs",
        "class_weighting",
    ]
    assert all(n.span is not None for n in notes)
