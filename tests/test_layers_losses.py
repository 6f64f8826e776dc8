"""Loss layers and Accuracy: shapes, Caffe's checks, and forward values (lowered vs oracle),
plus hand-computed values for the rules that decide parity (clamping, normalisers, ties)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _layer_oracle import check_layer, error_of, oracle, shapes_of

from protocaffe.layers import lookup

RNG = np.random.default_rng(1)


def layer(type_: str, bottoms: list[str], tops: list[str], body: str = "") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "L" type: "{type_}" {b} {t}\n  {body}\n}}'


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_loss_flags():
    for name in (
        "SoftmaxWithLoss",
        "EuclideanLoss",
        "SigmoidCrossEntropyLoss",
        "HingeLoss",
        "InfogainLoss",
        "ContrastiveLoss",
        "MultinomialLogisticLoss",
    ):
        assert lookup(name).is_loss, name
    assert not lookup("Accuracy").is_loss


def test_shapes():
    s = shapes_of(
        layer("SoftmaxWithLoss", ["x", "y"], ["loss", "prob"]),
        {"x": (2, 5, 3, 3), "y": (2, 1, 3, 3)},
    )
    assert s["loss"] == () and s["prob"] == (2, 5, 3, 3)
    s = shapes_of(layer("Accuracy", ["x", "y"], ["acc", "per"]), {"x": (4, 10), "y": (4,)})
    assert s["acc"] == () and s["per"] == (10,)
    s = shapes_of(
        layer("ContrastiveLoss", ["a", "b", "y"], ["l"]), {"a": (4, 3), "b": (4, 3), "y": (4,)}
    )
    assert s["l"] == ()


ERRORS = [
    (
        "SoftmaxWithLoss",
        {"x": (2, 5, 3, 3), "y": (2, 1, 3, 2)},
        ["'y'", "2x1x3x2", "12", "18", "2x9"],
    ),
    ("SoftmaxWithLoss", {"x": (2, 5), "y": (3,)}, ["first dimension", "2 vs 3"]),
    ("Accuracy", {"x": (4, 10), "y": (4, 2)}, ["'y'", "8 values", "4 positions"]),
    ("EuclideanLoss", {"a": (4, 3), "b": (4, 2)}, ["same size per item", "3 vs 2"]),
    ("SigmoidCrossEntropyLoss", {"a": (4, 3), "b": (4, 2)}, ["same count", "12 vs 8"]),
    ("MultinomialLogisticLoss", {"p": (4, 3), "y": (4, 2)}, ["'y'", "4x2", "N x 1 x 1 x 1"]),
]


@pytest.mark.parametrize(("type_", "bottoms", "parts"), ERRORS)
def test_errors(type_, bottoms, parts):
    d = error_of(layer(type_, list(bottoms), ["out"]), bottoms)
    for part in parts:
        assert part in d.message, d.message


def test_accuracy_top_k_too_large():
    d = error_of(
        layer("Accuracy", ["x", "y"], ["a"], "accuracy_param { top_k: 11 }"),
        {"x": (4, 10), "y": (4,)},
    )
    assert "top_k 11" in d.message and "10" in d.message


def test_softmax_axis_error_located_in_softmax_param():
    d = error_of(
        layer("SoftmaxWithLoss", ["x", "y"], ["l"], "softmax_param { axis: 4 }"),
        {"x": (2, 5), "y": (2,)},
    )
    assert "axis 4" in d.message


# --- values --------------------------------------------------------------------------------

NORMALIZATIONS = [
    "",
    "loss_param { normalization: FULL }",
    "loss_param { normalization: VALID }",
    "loss_param { normalization: BATCH_SIZE }",
    "loss_param { normalization: NONE }",
    "loss_param { normalize: false }",
    "loss_param { ignore_label: 2 }",
    "loss_param { ignore_label: 2 normalization: FULL }",
    "loss_param { ignore_label: 2 normalize: false }",
    "loss_param { ignore_label: 2 normalization: NONE } softmax_param { axis: 1 }",
]


@pytest.mark.parametrize("body", NORMALIZATIONS)
def test_softmax_with_loss(body):
    x = rand(2, 4, 3, 3)
    y = RNG.integers(0, 4, size=(2, 1, 3, 3)).astype(np.float32)
    check_layer(layer("SoftmaxWithLoss", ["x", "y"], ["loss", "prob"], body), {"x": x, "y": y}, "L")


def test_softmax_with_loss_by_hand():
    # p(label) = 1e-45 underflows to 0 in float: the loss is -log(FLT_MIN), not inf.
    x = np.array([[0.0, -200.0], [0.0, 0.0]], dtype=np.float32)
    y = np.array([1, 0], dtype=np.float32)
    [loss] = oracle(layer("SoftmaxWithLoss", ["x", "y"], ["l"]), {"x": x, "y": y}, "L")
    want = (-math.log(1.1754943508222875e-38) + math.log(2)) / 2
    assert loss == pytest.approx(want, rel=1e-6)
    # every label ignored: normaliser max(1, 0) = 1, loss 0 (not NaN)
    body = "loss_param { ignore_label: 0 }"
    zero = np.zeros(2, np.float32)
    [loss] = oracle(layer("SoftmaxWithLoss", ["x", "y"], ["l"], body), {"x": x, "y": zero}, "L")
    assert loss == 0.0


def test_softmax_with_loss_other_axis():
    x, y = rand(3, 2, 5), RNG.integers(0, 5, size=(3, 2)).astype(np.float32)
    check_layer(
        layer("SoftmaxWithLoss", ["x", "y"], ["l"], "softmax_param { axis: -1 }"),
        {"x": x, "y": y},
        "L",
    )


@pytest.mark.parametrize(
    "body",
    [
        "",
        "accuracy_param { top_k: 2 }",
        "accuracy_param { ignore_label: 1 }",
        "accuracy_param { axis: 1 top_k: 3 ignore_label: 0 }",
    ],
)
def test_accuracy(body):
    x = np.round(rand(6, 5, 2) * 2) / 2  # coarse values: many ties
    y = RNG.integers(0, 5, size=(6, 2)).astype(np.float32)
    check_layer(layer("Accuracy", ["x", "y"], ["acc", "per"], body), {"x": x, "y": y}, "L")


def test_accuracy_ties_count_against():
    # the true class ties with another: with top_k 1, Caffe counts it wrong.
    x = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]], dtype=np.float32)
    y = np.array([0, 1], dtype=np.float32)
    acc, per = oracle(layer("Accuracy", ["x", "y"], ["a", "p"]), {"x": x, "y": y}, "L")
    assert acc == 0.5
    np.testing.assert_array_equal(per, [0.0, 1.0, 0.0])
    got = check_layer(layer("Accuracy", ["x", "y"], ["a", "p"]), {"x": x, "y": y}, "L")
    assert got["a"] == 0.5


def test_euclidean_and_sigmoid_cross_entropy():
    a, b = rand(4, 3, 2), rand(4, 6)
    check_layer(layer("EuclideanLoss", ["a", "b"], ["l"]), {"a": a, "b": b}, "L")
    x = rand(4, 6) * 30  # large magnitudes: the overflow-safe form matters
    t = RNG.integers(0, 2, size=(4, 6)).astype(np.float32)
    for body in (
        "",
        "loss_param { normalization: VALID }",
        "loss_param { ignore_label: 1 normalization: VALID }",
        "loss_param { normalize: true }",
    ):
        check_layer(
            layer("SigmoidCrossEntropyLoss", ["x", "t"], ["l"], body),
            {"x": x, "t": t},
            "L",
            rtol=1e-5,
        )


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge(norm):
    x, y = rand(5, 4), RNG.integers(0, 4, size=(5,)).astype(np.float32)
    check_layer(
        layer("HingeLoss", ["x", "y"], ["l"], f"hinge_loss_param {{ norm: {norm} }}"),
        {"x": x, "y": y},
        "L",
    )


def test_multinomial_logistic():
    p = RNG.random((5, 4)).astype(np.float32)
    p[0, 1] = 0.0  # clamped to 1e-20
    y = np.array([1, 0, 3, 2, 2], dtype=np.float32)
    got = check_layer(layer("MultinomialLogisticLoss", ["p", "y"], ["l"]), {"p": p, "y": y}, "L")
    assert np.isfinite(got["l"])


@pytest.mark.parametrize(
    "body", ["", "contrastive_loss_param { margin: 2.5 legacy_version: true }"]
)
def test_contrastive(body):
    a, b = rand(6, 3), rand(6, 3)
    y = np.array([1, 0, 0, 1, 0, 1], dtype=np.float32).reshape(6, 1, 1, 1)
    check_layer(
        layer("ContrastiveLoss", ["a", "b", "y"], ["l"], body), {"a": a, "b": b, "y": y}, "L"
    )


def test_infogain_with_matrix_bottom():
    x, y = rand(3, 4), np.array([0, 3, 1], dtype=np.float32)
    h = RNG.random((4, 4)).astype(np.float32)
    check_layer(
        layer("InfogainLoss", ["x", "y", "h"], ["l", "prob"]), {"x": x, "y": y, "h": h}, "L"
    )
    body = "loss_param { normalize: false }"
    d = error_of(
        layer("InfogainLoss", ["x", "y", "h"], ["l"], body), {"x": (3, 4), "y": (3,), "h": (4, 4)}
    )
    assert "deprecated" in d.message
