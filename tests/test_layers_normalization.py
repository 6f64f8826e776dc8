"""BatchNorm, Scale, Bias and MVN: Caffe's shape and blob rules, errors, and the lowering checked
against explicit formulas and each layer's numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from _layer_oracle import check_layer, error_of

from protocaffe.ir.build import shape_context
from protocaffe.testing import compile_snippet, run_snippet

RTOL, ATOL = 1e-5, 1e-5

rng = np.random.default_rng(1)
X = (rng.standard_normal((2, 3, 4, 5)) * 2 + 1).astype(np.float32)
C4 = (1, 3, 1, 1)  # per-channel statistics broadcast over N x C x H x W


def layer(type_: str, params: str = "", bottoms=("data",), top="y", name="l") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{type_}" {bottom} top: "{top}" {params} }}\n'


def check(text: str, inputs: dict[str, np.ndarray], blobs=None) -> np.ndarray:
    """Layer 'l' lowered vs its numpy oracle (Caffe's forward); returns the lowered top."""
    return check_layer(text, inputs, "l", blobs, atol=ATOL)["y"]


def blob_specs(text: str, inputs: dict):
    return compile_snippet(text, inputs).layer("l").blob_specs


def message(text: str, inputs: dict) -> str:
    return error_of(text, inputs).message


def bn_blobs(mean, var, factor):
    return [np.asarray(a, dtype=np.float32) for a in (mean, var, [factor])]


# --- BatchNorm --------------------------------------------------------------------------------

MEAN, VAR = np.array([0.5, -1.0, 2.0]), np.array([1.0, 4.0, 0.25])


@pytest.mark.parametrize("factor", [1.0, 2.5, 999.0])
def test_batchnorm_test_phase_divides_stats_by_scale_factor(factor):
    """Caffe stores mean*f and var*f; torch's running stats have no f, so f != 1 must be divided
    out (the marvis-style conversion that loads blobs[0..1] as running stats is wrong here)."""
    blobs = bn_blobs(MEAN * factor, VAR * factor, factor)
    out = check(layer("BatchNorm"), {"data": X}, blobs)
    want = (X - MEAN.reshape(C4)) / np.sqrt(VAR.reshape(C4) + 1e-5)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    if factor != 1:
        naive = (X - (MEAN * factor).reshape(C4)) / np.sqrt((VAR * factor).reshape(C4) + 1e-5)
        assert not np.allclose(out, naive, atol=1e-3)


def test_batchnorm_zero_scale_factor_means_zero_stats():
    blobs = bn_blobs(MEAN, VAR, 0.0)
    out = check(layer("BatchNorm", "batch_norm_param { eps: 0.01 }"), {"data": X}, blobs)
    np.testing.assert_allclose(out, X / np.sqrt(0.01), rtol=RTOL)


def test_batchnorm_on_2d_input():
    x = rng.standard_normal((6, 3)).astype(np.float32)
    out = check(layer("BatchNorm"), {"data": x}, bn_blobs(MEAN * 2, VAR * 2, 2))
    np.testing.assert_allclose(out, (x - MEAN) / np.sqrt(VAR + 1e-5), rtol=RTOL, atol=ATOL)


def test_batchnorm_blobs():
    specs = blob_specs(layer("BatchNorm"), {"data": (2, 16, 7, 7)})
    assert [(s.name, s.shape, s.learnable) for s in specs] == [
        ("mean", (16,), False),
        ("variance", (16,), False),
        ("scale_factor", (1,), False),
    ]


def forward_at(phase: str, text: str, x: np.ndarray, blobs: list[np.ndarray]):
    """Lower layer 'l' at `phase`, load `blobs`, run once. Returns the top, the layer's blobs
    after the pass, and the oracle's (top, blobs) for the same pass."""
    import torch

    from protocaffe.lower import lower_graph
    from protocaffe.runtime.caffemodel import assign_blobs

    graph = compile_snippet(text, {"data": x.shape}, phase=phase)
    module = lower_graph(graph, seed=0)
    assign_blobs(module, {"l": blobs})
    with torch.no_grad():
        out = module({"data": torch.from_numpy(x)})["y"].numpy()
    bn = getattr(module, module.caffe_names["l"])
    after = [getattr(bn, n).numpy() for n in ("mean", "variance", "scale_factor")]
    lyr = graph.layer("l")
    oracle_blobs = [b.copy() for b in blobs]  # Caffe's forward updates them in place
    (want,) = lyr.spec.reference(shape_context(graph, lyr), [x], oracle_blobs)
    return out, after, want, oracle_blobs


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_batchnorm_batch_statistics_and_moving_average(phase):
    """TRAIN default (or use_global_stats: false): batch stats, and Caffe's running-sum update
    S = maf*S + stat, f = maf*f + 1, with the m/(m-1) correction on the variance."""
    params = "batch_norm_param { moving_average_fraction: 0.9 eps: 0.001"
    params += " }" if phase == "TRAIN" else " use_global_stats: false }"
    blobs = bn_blobs(MEAN, VAR, 2.0)
    out, after, want, oracle_after = forward_at(phase, layer("BatchNorm", params), X, blobs)
    mu = X.mean(axis=(0, 2, 3), dtype=np.float64)
    var = X.var(axis=(0, 2, 3), dtype=np.float64)
    formula = (X - mu.reshape(C4)) / np.sqrt(var.reshape(C4) + 1e-3)
    np.testing.assert_allclose(out, formula, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    m = X.size / 3
    expected = [0.9 * MEAN + mu, 0.9 * VAR + var * m / (m - 1), [0.9 * 2 + 1]]
    for got, oracle, value in zip(after, oracle_after, expected, strict=True):
        np.testing.assert_allclose(got, value, rtol=1e-5)
        np.testing.assert_allclose(oracle, value, rtol=1e-5)


def test_batchnorm_train_with_global_stats_uses_stored_values():
    text = layer("BatchNorm", "batch_norm_param { use_global_stats: true }")
    blobs = bn_blobs(MEAN * 4, VAR * 4, 4.0)
    out, after, want, _ = forward_at("TRAIN", text, X, blobs)
    formula = (X - MEAN.reshape(C4)) / np.sqrt(VAR.reshape(C4) + 1e-5)
    np.testing.assert_allclose(out, formula, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)
    for got, before in zip(after, blobs, strict=True):
        np.testing.assert_array_equal(got, before)  # stored statistics are left alone


def test_batchnorm_errors():
    assert "BatchNorm needs at least 2 axes" in message(layer("BatchNorm"), {"data": (5,)})
    text = layer("BatchNorm", "param { lr_mult: 0 } param { lr_mult: 1 } param { lr_mult: 0 }")
    err = message(text, {"data": (2, 3)})
    assert "param 1 has lr_mult 1" in err
    compile_snippet(layer("BatchNorm", "param { lr_mult: 0 } " * 3), {"data": (2, 3)})


# --- Scale / Bias -----------------------------------------------------------------------------

SCALE_BLOBS = [
    # (params, bottom shape, blob shape): shape = bottom[axis : axis+num_axes] (scale_layer.cpp)
    ("", (2, 3, 4, 5), (3,)),
    ("scale_param { num_axes: -1 }", (2, 3, 4, 5), (3, 4, 5)),
    ("scale_param { num_axes: 0 }", (2, 3, 4, 5), ()),
    ("scale_param { axis: 0 num_axes: 2 }", (2, 3, 4, 5), (2, 3)),
    ("scale_param { axis: -2 num_axes: 2 }", (2, 3, 4, 5), (4, 5)),
    ("scale_param { axis: -1 }", (2, 3, 4, 5), (5,)),
    ("scale_param { axis: 2 num_axes: -1 }", (2, 3, 4, 5), (4, 5)),
]


@pytest.mark.parametrize(("params", "bottom", "shape"), SCALE_BLOBS)
@pytest.mark.parametrize("type_", ["Scale", "Bias"])
def test_affine_blob_shapes_and_numerics(type_, params, bottom, shape):
    params = params.replace("scale_param", "bias_param") if type_ == "Bias" else params
    (spec,) = blob_specs(layer(type_, params), {"data": bottom})
    assert spec.shape == shape
    operand = rng.standard_normal(shape).astype(np.float32)
    check(layer(type_, params), {"data": X}, [operand])


def test_scale_explicit_broadcast_and_bias():
    text = layer("Scale", "scale_param { axis: 1 num_axes: 2 bias_term: true }")
    s = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    out = check(text, {"data": X}, [s, b])
    np.testing.assert_allclose(out, X * s[..., None] + b[..., None], rtol=RTOL, atol=ATOL)


def test_scale_default_fillers_are_identity():
    specs = blob_specs(layer("Scale", "scale_param { bias_term: true }"), {"data": (2, 3, 4, 5)})
    weight, bias = specs
    assert (weight.name, weight.filler.type, weight.filler.value) == ("weight", "constant", 1.0)
    assert (bias.name, bias.filler.type, bias.filler.value) == ("bias", "constant", 0.0)
    out = run_snippet(layer("Scale", "scale_param { bias_term: true }"), {"data": X})["y"]
    np.testing.assert_array_equal(out, X)
    text = layer("Scale", 'scale_param { filler { type: "constant" value: 3 } }')
    assert blob_specs(text, {"data": (2, 3)})[0].filler.value == 3


OPERANDS = [(1, (3,)), (1, (3, 4)), (0, (2, 3, 4, 5)), (-1, (5,)), (2, (4, 5)), (3, ())]


@pytest.mark.parametrize(("axis", "operand"), OPERANDS)
@pytest.mark.parametrize("type_", ["Scale", "Bias"])
def test_second_bottom_form(type_, axis, operand):
    field = "scale_param" if type_ == "Scale" else "bias_param"
    text = layer(type_, f"{field} {{ axis: {axis} }}", bottoms=("data", "s"))
    s = rng.standard_normal(operand).astype(np.float32)
    assert blob_specs(text, {"data": X.shape, "s": operand}) == []
    check(text, {"data": X, "s": s})


def test_scale_second_bottom_with_bias_term():
    text = layer("Scale", "scale_param { axis: 1 bias_term: true }", bottoms=("data", "s"))
    (bias,) = blob_specs(text, {"data": X.shape, "s": (3, 4)})
    assert (bias.name, bias.shape) == ("bias", (3, 4))
    s = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    out = check(text, {"data": X, "s": s}, [b])
    np.testing.assert_allclose(out, X * s[..., None] + b[..., None], rtol=RTOL, atol=ATOL)


AFFINE_ERRORS = [
    ("scale_param { axis: 4 }", {"data": (2, 3, 4, 5)}, "axis 4 is out of range for bottom 'data'"),
    ("scale_param { axis: -5 }", {"data": (2, 3, 4, 5)}, "axis -5 is out of range"),
    ("scale_param { axis: 2 num_axes: 3 }", {"data": (2, 3, 4, 5)}, "axis 2 + num_axes 3 extends"),
    ("scale_param { num_axes: -2 }", {"data": (2, 3, 4, 5)}, "num_axes must be >= 0"),
    (
        "scale_param { axis: 1 }",
        {"data": (2, 3, 4, 5), "s": (4,)},
        "bottom 's' of shape 4 does not match bottom 'data' 2x3x4x5 starting at axis 1",
    ),
    (
        "scale_param { axis: 2 }",
        {"data": (2, 3, 4, 5), "s": (4, 5, 1)},
        "bottom 's' of shape 4x5x1 does not match bottom 'data' 2x3x4x5 starting at axis 2",
    ),
]


@pytest.mark.parametrize(("params", "inputs", "expected"), AFFINE_ERRORS)
@pytest.mark.parametrize("type_", ["Scale", "Bias"])
def test_affine_errors(type_, params, inputs, expected):
    params = params.replace("scale_param", "bias_param") if type_ == "Bias" else params
    err = message(layer(type_, params, bottoms=tuple(inputs)), inputs)
    assert err.startswith(f"{type_} 'l': {expected}")


def test_affine_macs():
    assert compile_snippet(layer("Scale"), {"data": (2, 3, 4, 5)}).layers[-1].macs == 120
    assert compile_snippet(layer("Bias"), {"data": (2, 3, 4, 5)}).layers[-1].macs == 0


# --- MVN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize_variance", ["true", "false"])
@pytest.mark.parametrize("across_channels", ["true", "false"])
def test_mvn_matches_reference(normalize_variance, across_channels):
    params = f"normalize_variance: {normalize_variance} across_channels: {across_channels}"
    params = f"mvn_param {{ {params} }}"
    check(layer("MVN", params), {"data": X})


def test_mvn_adds_eps_to_the_standard_deviation():
    out = check(layer("MVN", "mvn_param { eps: 0.5 }"), {"data": X})
    centred = X - X.mean(axis=(2, 3), keepdims=True, dtype=np.float64)
    want = centred / (np.sqrt((centred**2).mean(axis=(2, 3), keepdims=True)) + 0.5)
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_mvn_output_is_legacy_4d():
    x = rng.standard_normal((4, 6)).astype(np.float32)
    graph = compile_snippet(layer("MVN", "mvn_param { across_channels: true }"), {"data": x.shape})
    assert graph.layers[-1].outputs[0].shape == (4, 6, 1, 1)
    check(layer("MVN", "mvn_param { across_channels: true }"), {"data": x})
    err = message(layer("MVN"), {"data": (1, 2, 3, 4, 5)})
    assert "MVN reads the legacy num/channels/height/width view, at most 4 axes" in err


def test_explain_lines():
    def explain(text, inputs):
        graph = compile_snippet(text, inputs)
        lyr = graph.layer("l")
        return lyr.spec.explain(shape_context(graph, lyr))

    x = {"data": (2, 3, 4, 5)}
    assert explain(layer("Scale", "scale_param { num_axes: 2 }"), x) == [
        "operand 3x4 from a learned blob, applied along axes 1..2"
    ]
    text = layer("Bias", "bias_param { axis: -1 }", bottoms=("data", "b"))
    assert explain(text, {**x, "b": (5,)}) == ["operand 5 from bottom 'b', applied along axis 3"]
    assert explain(layer("MVN"), {"data": (2, 3)}) == [
        "statistics over H x W per (sample, channel)",
        "2x3 read as legacy 4-D 2x3x1x1",
    ]
