"""Pointwise activations, Eltwise, Softmax, ArgMax and Reduction: Caffe's shape rules and errors,
and the PyTorch lowering checked against each layer's numpy reference (Caffe's forward loop)."""

from __future__ import annotations

import numpy as np
import pytest
from _layer_oracle import check_layer, error_of, shapes_of

from protocaffe.ir.build import shape_context
from protocaffe.layers import REGISTRY
from protocaffe.testing import compile_snippet, run_snippet

RTOL, ATOL = 1e-5, 1e-6


def layer(type_: str, params: str = "", bottoms=("data",), top="y", name="l") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {bottom} top: "{top}" {params} }}\n'


def check(text: str, inputs: dict[str, np.ndarray], blobs=None) -> np.ndarray:
    """Layer 'l' lowered vs its numpy oracle (Caffe's forward); returns the lowered top."""
    return check_layer(text, inputs, "l", blobs)["y"]


def message(text: str, inputs: dict) -> str:
    return error_of(text, inputs).message


rng = np.random.default_rng(0)
X = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float32)
POS = (np.abs(X) + 0.1).astype(np.float32)
# Values far into both tails (softplus / exp overflow territory) plus exact zeros.
WIDE = np.concatenate([X.ravel(), [-80.0, -40.0, 0.0, 40.0, 80.0]]).astype(np.float32)[None]

# --- pointwise activations: lowering vs reference ---------------------------------------------

POINTWISE = [
    ("ReLU", "", X),
    ("ReLU", "relu_param { negative_slope: 0.1 }", X),
    ("ELU", "", X),
    ("ELU", "elu_param { alpha: 0.5 }", X),
    ("Sigmoid", "", WIDE),
    ("TanH", "", WIDE),
    ("AbsVal", "", X),
    ("BNLL", "", WIDE),
    ("Power", "", X),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 1 }", X),
    ("Power", "power_param { power: 0.5 scale: 2 shift: 0.1 }", POS),
    ("Power", "power_param { power: 3 scale: 0 shift: 2 }", X),  # constant 2^3
    ("Power", "power_param { power: 0 scale: 4 shift: -1 }", X),  # constant 1
    ("Exp", "", X),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", X),
    ("Exp", "exp_param { base: 10 shift: -2 }", X),
    ("Log", "", POS),
    ("Log", "log_param { base: 10 scale: 2 shift: 3 }", POS),
    ("Log", "log_param { base: 2 shift: 1 }", POS),
    ("Threshold", "", X),
    ("Threshold", "threshold_param { threshold: 0.7 }", X),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }", X),
    ("Swish", "", WIDE),
    ("Swish", "swish_param { beta: 2.5 }", X),
    ("Clip", "clip_param { min: -0.5 max: 2 }", X),
    ("Clip", "clip_param { min: 1 max: -1 }", X),  # Caffe: every output is min
]


@pytest.mark.parametrize(("type_", "params", "x"), POINTWISE, ids=lambda v: str(v)[:40])
def test_pointwise_lowering_matches_reference(type_, params, x):
    check(layer(type_, params), {"data": x})


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_matches_reference(shared):
    text = layer("PReLU", f"prelu_param {{ channel_shared: {str(shared).lower()} }}")
    slope = np.array(0.25 if shared else [0.1, -0.5, 2.0], dtype=np.float32)
    check(text, {"data": X}, [slope])


def test_prelu_blob_shape_and_default_filler():
    graph = compile_snippet(layer("PReLU"), {"data": (2, 3, 4, 5)})
    (spec,) = graph.layers[-1].blob_specs
    assert spec.shape == (3,) and spec.filler.type == "constant" and spec.filler.value == 0.25
    graph = compile_snippet(
        layer("PReLU", "prelu_param { channel_shared: true }"), {"data": (2, 3)}
    )
    # PReLULayer::LayerSetUp makes the shared slope a 0-axis blob (Blob(vector<int>(0))).
    assert graph.layers[-1].blob_specs[0].shape == ()
    # Filler-initialised (no weights given): slope 0.25 everywhere.
    out = run_snippet(layer("PReLU"), {"data": X})["y"]
    np.testing.assert_allclose(out, np.where(X > 0, X, 0.25 * X), rtol=RTOL)


def test_explicit_formulas():
    """A few spot values straight from Caffe's definitions, independent of the oracles."""
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], dtype=np.float32)
    run = lambda t, p="": run_snippet(layer(t, p), {"data": x})["y"]  # noqa: E731
    np.testing.assert_allclose(run("ELU", "elu_param { alpha: 2 }")[0, 0], 2 * (np.exp(-2) - 1))
    np.testing.assert_allclose(run("BNLL")[0], np.log1p(np.exp(x[0])), rtol=1e-6)
    np.testing.assert_allclose(
        run("Exp", "exp_param { base: 2 scale: 3 shift: 1 }")[0], 2.0 ** (1 + 3 * x[0]), rtol=1e-6
    )
    np.testing.assert_allclose(
        run("Log", "log_param { base: 10 scale: 2 shift: 5 }")[0], np.log10(5 + 2 * x[0]), rtol=1e-6
    )
    assert run("Threshold", "threshold_param { threshold: 0 }")[0].tolist() == [0, 0, 0, 1, 1]
    assert run("Power", "power_param { power: 2 shift: 1 }")[0].tolist() == [1, 0.25, 1, 2.25, 16]


def test_bnll_stays_finite_in_the_tails():
    out = run_snippet(layer("BNLL"), {"data": np.array([[-1e4, 1e4]], dtype=np.float32)})["y"]
    assert out.tolist() == [[0.0, 1e4]]


def test_dropout_train_scales_kept_units():
    import torch

    torch.manual_seed(0)
    x = np.ones((1, 200, 50, 50), dtype=np.float32)
    out = run_snippet(
        layer("Dropout", "dropout_param { dropout_ratio: 0.3 }"), {"data": x}, phase="TRAIN"
    )["y"]
    kept = out != 0
    assert np.allclose(out[kept], 1 / 0.7)  # inverted dropout: survivors are scaled by 1/(1-p)
    assert abs(kept.mean() - 0.7) < 0.005  # 500k Bernoulli draws: sd ~ 0.0006
    assert abs(out.mean() - 1.0) < 0.01  # the expectation is preserved


def test_dropout_test_phase_is_identity():
    out = run_snippet(layer("Dropout", "dropout_param { dropout_ratio: 0.9 }"), {"data": X})["y"]
    np.testing.assert_array_equal(out, X)


def test_inplace_lowering_does_not_clobber_other_readers():
    """t feeds both ReLU (whose top is new) and the Eltwise: an in-place relu would corrupt t."""
    text = (
        layer("TanH", top="t")
        + layer("ReLU", bottoms=("t",), top="r", name="relu")
        + layer("ReLU", bottoms=("r",), top="r", name="relu_again")
        + layer("Eltwise", bottoms=("t", "r"), top="y", name="sum")
    )
    out = run_snippet(text, {"data": X})["y"]
    t = np.tanh(X)
    np.testing.assert_allclose(out, t + np.maximum(t, 0), rtol=RTOL, atol=ATOL)


def test_in_place_flags():
    assert REGISTRY["ReLU"].in_place and REGISTRY["Dropout"].in_place
    assert not REGISTRY["AbsVal"].in_place  # AbsValLayer CHECKs top != bottom
    assert not REGISTRY["Eltwise"].in_place  # SUM zeroes its top before reading bottom[0]
    identity = ["AbsVal", "BNLL", "Dropout", "ELU", "Eltwise", "Exp", "Log", "Power", "ReLU"]
    identity += ["PReLU", "Sigmoid", "TanH", "Threshold", "Swish", "Clip"]
    assert all(REGISTRY[t].coord_identity for t in identity)
    graph = compile_snippet(layer("AbsVal", bottoms=("data",), top="data"), {"data": (1, 2)})
    assert any("in place" in d.message for d in graph.diagnostics)


POINTWISE_ERRORS = [
    ("PReLU", "", (5,), "PReLU needs at least 2 axes"),
    ("Exp", "exp_param { base: -2 }", (2, 3), "base must be strictly positive"),
    ("Log", "log_param { base: 0 }", (2, 3), "base must be strictly positive"),
    ("Log", "log_param { base: 1 }", (2, 3), "base 1 has no logarithm"),
    ("Dropout", "dropout_param { dropout_ratio: 1 }", (2, 3), "dropout_ratio must be in [0, 1)"),
]


@pytest.mark.parametrize(("type_", "params", "shape", "expected"), POINTWISE_ERRORS)
def test_pointwise_parameter_errors(type_, params, shape, expected):
    err = message(layer(type_, params), {"data": shape})
    assert err.startswith(f"{type_} 'l': ") and expected in err


def test_clip_min_above_max_warns():
    graph = compile_snippet(layer("Clip", "clip_param { min: 1 max: 0 }"), {"data": (2, 3)})
    assert any("every output is 1" in d.message for d in graph.diagnostics)


# --- Eltwise ----------------------------------------------------------------------------------

A, B, C = (rng.standard_normal((2, 3, 4, 5)).astype(np.float32) for _ in range(3))
ELTWISE = [
    ("", 2),
    ("eltwise_param { operation: SUM coeff: 1 coeff: -1 }", 2),
    ("eltwise_param { operation: SUM coeff: 0.5 coeff: 2 coeff: -3 }", 3),
    ("eltwise_param { operation: PROD }", 3),
    ("eltwise_param { operation: MAX }", 3),
]


@pytest.mark.parametrize(("params", "n"), ELTWISE)
def test_eltwise_matches_reference(params, n):
    names = ("a", "b", "c")[:n]
    text = layer("Eltwise", params, bottoms=names)
    check(text, dict(zip(names, (A, B, C), strict=False)))


def test_eltwise_coeff_formula():
    text = layer("Eltwise", "eltwise_param { coeff: 0.5 coeff: -2 }", bottoms=("a", "b"))
    out = run_snippet(text, {"a": A, "b": B})["y"]
    np.testing.assert_allclose(out, 0.5 * A - 2 * B, rtol=RTOL, atol=ATOL)


def test_eltwise_shape_mismatch_names_blobs_and_points_at_crop():
    text = (
        'layer { name: "score_pool4c" type: "Crop" bottom: "score_pool4" bottom: "ref"\n'
        '        top: "score_pool4c" crop_param { axis: 2 offset: 5 } }\n'
        'layer { name: "fuse_pool4" type: "Eltwise" bottom: "upscore2"\n'
        '        bottom: "score_pool4c" top: "fuse_pool4" }\n'
    )
    shapes = {"upscore2": (1, 21, 34, 34), "score_pool4": (1, 21, 46, 46), "ref": (1, 3, 35, 35)}
    diag = error_of(text, shapes)
    assert diag.message == (
        "Eltwise 'fuse_pool4': bottom shapes differ: upscore2 1x21x34x34 vs score_pool4c 1x21x35x35"
    )
    assert diag.hint == "check the Crop offset/axis that produces one of them"
    assert diag.span.line == 4  # the offending bottom


def test_eltwise_errors():
    two = ("a", "b")
    shapes = {"a": (2, 3), "b": (2, 3)}
    err = message(layer("Eltwise", "eltwise_param { coeff: 1 }", bottoms=two), shapes)
    assert "1 coeff values for 2 bottoms" in err
    err = message(
        layer("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", bottoms=two), shapes
    )
    assert "coeff only applies to operation SUM" in err
    diag = error_of(layer("Eltwise", bottoms=two), {"a": (2, 3), "b": (3, 2)})
    assert diag.message == "Eltwise 'l': bottom shapes differ: a 2x3 vs b 3x2"
    assert "align them with a Crop" in diag.hint  # no Crop upstream: the generic advice
    graph = compile_snippet(
        layer("Eltwise", "eltwise_param { operation: MAX coeff: 1 coeff: 2 }", bottoms=two), shapes
    )
    assert any("ignored" in d.message for d in graph.diagnostics)


def test_eltwise_macs():
    shapes = {"a": (2, 3, 4, 5), "b": (2, 3, 4, 5), "c": (2, 3, 4, 5)}
    three = ("a", "b", "c")
    macs = lambda p: compile_snippet(layer("Eltwise", p, bottoms=three), shapes).layers[-1].macs  # noqa: E731
    assert macs("") == 0
    assert macs("eltwise_param { operation: PROD }") == 2 * 120
    assert macs("eltwise_param { coeff: 1 coeff: 2 coeff: 1 }") == 3 * 120


# --- Softmax, ArgMax, Reduction ---------------------------------------------------------------


@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -4])
def test_softmax_matches_reference(axis):
    params = "" if axis is None else f"softmax_param {{ axis: {axis} }}"
    check(layer("Softmax", params), {"data": X * 10})


@pytest.mark.parametrize("axis", [4, -5])
def test_softmax_bad_axis(axis):
    err = message(layer("Softmax", f"softmax_param {{ axis: {axis} }}"), {"data": (2, 3, 4, 5)})
    assert f"axis {axis} is out of range for bottom 'data' of shape 2x3x4x5" in err


ARGMAX_SHAPES = [
    # Without axis: N x (1 or 2) x top_k, padded with 1s to max(rank, 3) (argmax_layer.cpp).
    ("", (10, 20, 5, 5), (10, 1, 1, 1)),
    ("argmax_param { top_k: 3 }", (10, 20, 5, 5), (10, 1, 3, 1)),
    ("argmax_param { top_k: 3 out_max_val: true }", (10, 20, 5, 5), (10, 2, 3, 1)),
    ("", (10, 20), (10, 1, 1)),
    ("argmax_param { out_max_val: true }", (7,), (7, 2, 1)),
    ("", (2, 3, 4, 5, 6), (2, 1, 1, 1, 1)),
    # With axis: top_k replaces that axis.
    ("argmax_param { axis: 1 }", (10, 20, 5, 5), (10, 1, 5, 5)),
    ("argmax_param { axis: 1 top_k: 2 out_max_val: true }", (10, 20, 5, 5), (10, 2, 5, 5)),
    ("argmax_param { axis: -1 top_k: 5 }", (10, 20, 5, 5), (10, 20, 5, 5)),
    ("argmax_param { axis: 0 }", (10, 20), (1, 20)),
]


@pytest.mark.parametrize(("params", "bottom", "top"), ARGMAX_SHAPES)
def test_argmax_shapes(params, bottom, top):
    assert shapes_of(layer("ArgMax", params), {"data": bottom})["y"] == top


@pytest.mark.parametrize(("params", "bottom", "_top"), ARGMAX_SHAPES[:-1])
def test_argmax_matches_reference_with_ties(params, bottom, _top):
    # Few distinct values, so most rows have ties; Caffe breaks them toward the larger index.
    x = rng.integers(0, 4, size=bottom).astype(np.float32)
    check(layer("ArgMax", params), {"data": x})
    check(layer("ArgMax", params), {"data": rng.standard_normal(bottom).astype(np.float32)})


def test_argmax_tie_goes_to_larger_index():
    x = np.array([[1, 3, 3, 0, 2]], dtype=np.float32)
    out = run_snippet(layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }"), {"data": x})
    assert out["y"].reshape(2, 3).tolist() == [[2, 1, 4], [3, 3, 2]]


def test_argmax_errors():
    err = message(layer("ArgMax", "argmax_param { top_k: 21 }"), {"data": (1, 4, 5)})
    assert "top_k 21 exceeds the 20 entries per sample" in err
    err = message(layer("ArgMax", "argmax_param { axis: 1 top_k: 5 }"), {"data": (1, 4, 5)})
    assert "top_k 5 exceeds axis 1" in err
    err = message(layer("ArgMax", "argmax_param { top_k: 0 }"), {"data": (1, 4, 5)})
    assert "top_k must be at least 1" in err
    err = message(layer("ArgMax", "argmax_param { axis: 3 }"), {"data": (1, 4, 5)})
    assert "axis 3 is out of range" in err


@pytest.mark.parametrize(
    ("axis", "top"), [(None, ()), (0, ()), (1, (2,)), (2, (2, 3)), (-1, (2, 3, 4)), (-4, ())]
)
def test_reduction_shapes(axis, top):
    params = "" if axis is None else f"reduction_param {{ axis: {axis} }}"
    assert shapes_of(layer("Reduction", params), {"data": (2, 3, 4, 5)})["y"] == top


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize(("axis", "coeff"), [(0, 1.0), (1, 0.5), (-1, -2.0)])
def test_reduction_matches_reference(op, axis, coeff):
    text = layer("Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}")
    check(text, {"data": X})


def test_reduction_formula_and_errors():
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2  # [[-2,-1,0],[1,2,3]]
    run = lambda op: run_snippet(  # noqa: E731
        layer("Reduction", f"reduction_param {{ operation: {op} axis: 1 coeff: 2 }}"), {"data": x}
    )["y"].tolist()
    assert run("SUM") == [-6, 12] and run("ASUM") == [6, 12]
    assert run("SUMSQ") == [10, 28] and run("MEAN") == [-2, 4]
    err = message(layer("Reduction", "reduction_param { axis: 2 }"), {"data": (2, 3)})
    assert "axis 2 is out of range" in err


def test_explain_lines():
    def explain(text, inputs):
        graph = compile_snippet(text, inputs)
        lyr = graph.layer("l")
        return lyr.spec.explain(shape_context(graph, lyr))

    shape = {"data": (2, 21, 5, 5)}
    assert explain(layer("ArgMax", "argmax_param { axis: 1 top_k: 2 }"), shape) == [
        "axis 1: 21 -> top_k 2 indices"
    ]
    assert explain(layer("ArgMax", "argmax_param { out_max_val: true }"), shape) == [
        "each of 2 samples: top_k 1 of 525 flattened -> indices and values"
    ]
    assert explain(layer("Reduction", "reduction_param { operation: MEAN axis: -2 }"), shape) == [
        "MEAN over axes 2..3 (25 entries each), times coeff 1; keeps 2x21"
    ]
