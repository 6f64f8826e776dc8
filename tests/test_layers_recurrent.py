"""RNN, LSTM and LSTMUnit: Caffe's bottom/top layout, blob order and shapes, shape errors, MACs,
and the lowering checked against each layer's numpy reference (Caffe's unrolled net) and against
torch.nn.LSTMCell / RNNCell with the weights mapped from Caffe's layout."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from _layer_oracle import check_layer, error_of, shapes_of

from protocaffe.ir.build import shape_context
from protocaffe.testing import compile_snippet, run_snippet

rng = np.random.default_rng(7)
T, N, H = 5, 3, 4


def layer(type_: str, params: str = "", bottoms=("x", "cont"), tops=("y",), name="l") -> str:
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    top = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "{name}" type: "{type_}" {bottom} {top} {params} }}\n'


def rparam(num_output: int = H, expose: bool = False, extra: str = "") -> str:
    hidden = " expose_hidden: true" if expose else ""
    return f"recurrent_param {{ num_output: {num_output}{hidden} {extra} }}"


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def cont_flags(steps: int = T, streams: int = N) -> np.ndarray:
    """Sequence starts at t = 0 everywhere, plus resets mid-sequence in some streams."""
    cont = np.ones((steps, streams), dtype=np.float32)
    cont[0] = 0
    if steps > 3:
        cont[2, 0] = 0
        cont[3, -1] = 0
    return cont


def lstm_blobs(k: int, hidden: int = H, static: int | None = None) -> list[np.ndarray]:
    blobs = [randn(4 * hidden, k, scale=0.5), randn(4 * hidden, scale=0.5)]
    if static is not None:
        blobs.append(randn(4 * hidden, static, scale=0.5))
    return [*blobs, randn(4 * hidden, hidden, scale=0.5)]


def rnn_blobs(k: int, hidden: int = H, static: int | None = None) -> list[np.ndarray]:
    blobs = [randn(hidden, k, scale=0.5), randn(hidden, scale=0.5)]
    if static is not None:
        blobs.append(randn(hidden, static, scale=0.5))
    return [*blobs, randn(hidden, hidden, scale=0.5), randn(hidden, hidden), randn(hidden)]


def message(text: str, inputs: dict) -> str:
    return error_of(text, inputs).message


# --- shapes, blobs, MACs -----------------------------------------------------------------------

SHAPES = [
    # (type, params, bottoms: shapes, tops, expected top shapes)
    ("LSTM", rparam(), {"x": (5, 3, 7), "cont": (5, 3)}, ("y",), [(5, 3, 4)]),
    ("LSTM", rparam(6), {"x": (2, 8, 3, 4, 4), "cont": (2, 8)}, ("y",), [(2, 8, 6)]),
    ("LSTM", rparam(), {"x": (5, 3), "cont": (5, 3)}, ("y",), [(5, 3, 4)]),
    ("LSTM", rparam(), {"x": (5, 3, 7), "cont": (5, 3), "s": (3, 2, 5)}, ("y",), [(5, 3, 4)]),
    (
        "LSTM",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3), "h0": (1, 3, 4), "c0": (1, 3, 4)},
        ("y", "hT", "cT"),
        [(5, 3, 4), (1, 3, 4), (1, 3, 4)],
    ),
    (
        "LSTM",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3), "s": (3,), "h0": (1, 3, 4), "c0": (1, 3, 4)},
        ("y", "hT", "cT"),
        [(5, 3, 4), (1, 3, 4), (1, 3, 4)],
    ),
    ("RNN", rparam(9), {"x": (4, 2, 3, 5), "cont": (4, 2)}, ("y",), [(4, 2, 9)]),
    ("RNN", rparam(), {"x": (5, 3, 7), "cont": (5, 3), "s": (3, 6)}, ("y",), [(5, 3, 4)]),
    (
        "RNN",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3), "h0": (1, 3, 4)},
        ("y", "hT"),
        [(5, 3, 4), (1, 3, 4)],
    ),
    (
        "LSTMUnit",
        "",
        {"c": (1, 3, 4), "g": (1, 3, 16), "cont": (1, 3)},
        ("c1", "h1"),
        [(1, 3, 4), (1, 3, 4)],
    ),
]


@pytest.mark.parametrize(("type_", "params", "inputs", "tops", "want"), SHAPES)
def test_shapes(type_, params, inputs, tops, want):
    shapes = shapes_of(layer(type_, params, tuple(inputs), tops), inputs)
    assert [shapes[t] for t in tops] == want


BLOBS = [
    (
        "LSTM",
        {"x": (5, 3, 7), "cont": (5, 3)},
        [("W_xc", (16, 7)), ("b_c", (16,)), ("W_hc", (16, 4))],
    ),
    (
        "LSTM",
        {"x": (5, 3, 2, 3), "cont": (5, 3), "s": (3, 2, 5)},
        [("W_xc", (16, 6)), ("b_c", (16,)), ("W_xc_static", (16, 10)), ("W_hc", (16, 4))],
    ),
    (
        "RNN",
        {"x": (5, 3, 7), "cont": (5, 3)},
        [("W_xh", (4, 7)), ("b_h", (4,)), ("W_hh", (4, 4)), ("W_ho", (4, 4)), ("b_o", (4,))],
    ),
    (
        "RNN",
        {"x": (5, 3, 7), "cont": (5, 3), "s": (3, 6)},
        [
            ("W_xh", (4, 7)),
            ("b_h", (4,)),
            ("W_xh_static", (4, 6)),
            ("W_hh", (4, 4)),
            ("W_ho", (4, 4)),
            ("b_o", (4,)),
        ],
    ),
]


@pytest.mark.parametrize(("type_", "inputs", "want"), BLOBS)
def test_blob_order_and_shapes(type_, inputs, want):
    """Caffe's RecurrentLayer blobs are the unrolled net's owned params in layer order."""
    extra = 'weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 2 }'
    text = layer(type_, rparam(extra=extra), tuple(inputs))
    specs = compile_snippet(text, inputs).layer("l").blob_specs
    assert [(s.name, s.shape) for s in specs] == want
    for spec in specs:
        kind = "constant" if spec.name.startswith("b_") else "gaussian"
        assert spec.filler.type == kind and spec.learnable


def test_macs():
    inputs = {"x": (5, 3, 7), "cont": (5, 3), "s": (3, 6)}
    lstm = compile_snippet(layer("LSTM", rparam(), tuple(inputs)), inputs).layer("l")
    # x transform + static transform + recurrent product per step, gates = 4 * 4
    assert lstm.macs == 5 * 3 * 7 * 16 + 3 * 6 * 16 + 5 * 3 * 4 * 16
    rnn = compile_snippet(layer("RNN", rparam(), tuple(inputs)), inputs).layer("l")
    # W_xh x, W_xh_static x_static, W_hh h, W_ho h
    assert rnn.macs == 5 * 3 * 7 * 4 + 3 * 6 * 4 + 2 * 5 * 3 * 4 * 4
    unit = {"c": (1, 3, 4), "g": (1, 3, 16), "cont": (1, 3)}
    assert (
        compile_snippet(layer("LSTMUnit", "", tuple(unit), ("a", "b")), unit).layers[-1].macs == 0
    )


def test_explain():
    inputs = {"x": (5, 3, 2, 3), "cont": (5, 3), "s": (3, 4)}
    graph = compile_snippet(layer("LSTM", rparam(), tuple(inputs)), inputs)
    lyr = graph.layer("l")
    lines = lyr.spec.explain(shape_context(graph, lyr))
    assert lines[0] == "T = 5 timesteps, N = 3 streams, input dim K = 6 (2x3 flattened)"
    assert "static input: 4 features per stream, added at every step" in lines
    assert lines[-1] == "gates: 4 x num_output = 16, in order i, f, o, g"


ERRORS = [
    (
        "LSTM",
        rparam(),
        {"x": (5, 3, 7), "cont": (4, 3)},
        ("y",),
        "bottom 'cont' (cont) has shape 4x3, but bottom 'x' is 5x3x7: cont must be T x N = 5x3",
    ),
    (
        "RNN",
        rparam(),
        {"x": (5, 3, 7), "cont": (5, 2)},
        ("y",),
        "bottom 'cont' (cont) has shape 5x2, but bottom 'x' is 5x3x7: cont must be T x N = 5x3",
    ),
    (
        "LSTM",
        rparam(),
        {"x": (5, 3, 7), "cont": (5, 3, 1)},
        ("y",),
        "bottom 'cont' (cont) has shape 5x3x1",
    ),
    ("LSTM", rparam(), {"x": (5,), "cont": (5, 1)}, ("y",), "bottom 'x' has shape 5; LSTM needs"),
    (
        "LSTM",
        rparam(),
        {"x": (5, 3, 7), "cont": (5, 3), "s": (2, 6)},
        ("y",),
        "bottom 's' (static input) has shape 2x6, but its first axis must be N = 3",
    ),
    ("RNN", rparam(0), {"x": (5, 3, 7), "cont": (5, 3)}, ("y",), "num_output is required"),
    (
        "LSTM",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3), "h0": (1, 3, 5), "c0": (1, 3, 4)},
        ("y", "hT", "cT"),
        "bottom 'h0' (h_0) has shape 1x3x5; the initial state must be 1 x N x num_output = 1x3x4",
    ),
    (
        "LSTM",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3), "h0": (1, 3, 4), "c0": (3, 4)},
        ("y", "hT", "cT"),
        "bottom 'c0' (c_0) has shape 3x4",
    ),
    (
        "LSTM",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3)},
        ("y", "hT", "cT"),
        "takes 4 or 5 bottoms (x, cont, [x_static], h_0, c_0) with expose_hidden, but 2 are given",
    ),
    (
        "LSTM",
        rparam(),
        {"x": (5, 3, 7), "cont": (5, 3), "s": (3, 2), "h0": (1, 3, 4)},
        ("y",),
        "takes 2 or 3 bottoms (x, cont, [x_static]), but 4 are given",
    ),
    (
        "RNN",
        rparam(),
        {"x": (5, 3, 7), "cont": (5, 3)},
        ("y", "hT"),
        "takes 1 top (o), but 2 are given",
    ),
    (
        "RNN",
        rparam(expose=True),
        {"x": (5, 3, 7), "cont": (5, 3), "h0": (1, 3, 4)},
        ("y",),
        "takes 2 tops (o, h_T) with expose_hidden, but 1 are given",
    ),
    (
        "LSTMUnit",
        "",
        {"c": (1, 3, 4), "g": (1, 3, 12), "cont": (1, 3)},
        ("c1", "h1"),
        "bottom 'g' (x) has 12 gate inputs per stream; with D = 4 cells (bottom 'c' is 1x3x4) "
        "it needs 4 x D = 16",
    ),
    (
        "LSTMUnit",
        "",
        {"c": (1, 3, 4), "g": (1, 2, 16), "cont": (1, 3)},
        ("c1", "h1"),
        "bottom 'g' (x) has shape 1x2x16, but bottom 'c' (c_prev) 1x3x4 has N = 3 streams",
    ),
    (
        "LSTMUnit",
        "",
        {"c": (2, 3, 4), "g": (2, 3, 16), "cont": (2, 3)},
        ("c1", "h1"),
        "bottom 'c' (c_prev) has shape 2x3x4; LSTMUnit needs 1 x N x D (a single timestep)",
    ),
    (
        "LSTMUnit",
        "",
        {"c": (1, 3, 4), "g": (1, 3, 16), "cont": (1, 3, 1)},
        ("c1", "h1"),
        "bottom 'cont' (cont) has shape 1x3x1; LSTMUnit needs 1 x N",
    ),
]


@pytest.mark.parametrize(("type_", "params", "inputs", "tops", "expected"), ERRORS)
def test_shape_errors(type_, params, inputs, tops, expected):
    err = message(layer(type_, params, tuple(inputs), tops), inputs)
    assert err.startswith(f"{type_} 'l': {expected}"), err


def test_error_points_at_the_bottom():
    text = layer("LSTM", rparam(), ("x", "cont"))
    diag = error_of(text, {"x": (5, 3, 7), "cont": (4, 3)})
    assert diag.span is not None and diag.span.line == 1


# --- numerics: lowered vs the numpy oracle -----------------------------------------------------

CASES = [
    # (x shape, static shape or None, expose_hidden)
    ((T, N, 6), None, False),
    ((T, N, 2, 3), None, False),
    ((T, N, 6), (N, 5), False),
    ((T, N, 6), None, True),
    ((T, N, 6), (N, 2, 2), True),
    ((1, 2, 3), None, False),
]


def recurrent_case(type_: str, x_shape, static_shape, expose: bool):
    inputs = {"x": randn(*x_shape), "cont": cont_flags(*x_shape[:2])}
    streams = x_shape[1]
    if static_shape is not None:
        inputs["s"] = randn(*static_shape)
    tops = ["y"]
    if expose:
        inputs["h0"] = randn(1, streams, H)
        tops.append("hT")
        if type_ == "LSTM":
            inputs["c0"] = randn(1, streams, H)
            tops.append("cT")
    k = int(np.prod(x_shape[2:]))
    ks = int(np.prod(static_shape[1:])) if static_shape is not None else None
    make = lstm_blobs if type_ == "LSTM" else rnn_blobs
    text = layer(type_, rparam(expose=expose), tuple(inputs), tuple(tops))
    return text, inputs, make(k, static=ks), tops


@pytest.mark.parametrize(("x_shape", "static_shape", "expose"), CASES)
@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
def test_lowering_matches_reference(type_, x_shape, static_shape, expose):
    text, inputs, blobs, _ = recurrent_case(type_, x_shape, static_shape, expose)
    got = check_layer(text, inputs, "l", blobs, atol=1e-9)
    assert got["y"].shape == (*x_shape[:2], H)
    if expose and type_ == "LSTM":
        np.testing.assert_array_equal(got["hT"][0], got["y"][-1])  # h_T is the last output


def test_cont_zero_resets_state():
    """With a reset at t, the outputs from t on equal a fresh run on x[t:]."""
    import torch

    for type_, make in (("LSTM", lstm_blobs), ("RNN", rnn_blobs)):
        x = randn(T, N, 6)
        cont = np.ones((T, N), dtype=np.float32)
        cont[0] = 0
        cont[2] = 0
        blobs = make(6)
        text = layer(type_, rparam())
        full = run_snippet(text, {"x": x, "cont": cont}, {"l": blobs}, dtype=torch.float64)["y"]
        tail = run_snippet(text, {"x": x[2:], "cont": cont[2:]}, {"l": blobs}, dtype=torch.float64)[
            "y"
        ]
        np.testing.assert_allclose(full[2:], tail, rtol=1e-12, atol=1e-12)
        # and without the reset the outputs differ
        cont[2] = 1
        other = run_snippet(text, {"x": x, "cont": cont}, {"l": blobs}, dtype=torch.float64)["y"]
        assert not np.allclose(other[2:], tail)


@pytest.mark.parametrize("type_", ["LSTM", "RNN"])
def test_expose_hidden_carries_state_across_calls(type_):
    """Running T steps in two calls, feeding the final state back as the initial state, equals
    one call over all T steps (how Caffe's expose_hidden is meant to be used)."""
    import torch

    x, cont = randn(T, N, 6), cont_flags()
    blobs = (lstm_blobs if type_ == "LSTM" else rnn_blobs)(6)
    states = ("h0", "c0") if type_ == "LSTM" else ("h0",)
    finals = ("hT", "cT") if type_ == "LSTM" else ("hT",)
    text = layer(type_, rparam(expose=True), ("x", "cont", *states), ("y", *finals))
    zeros = {s: np.zeros((1, N, H), np.float32) for s in states}
    whole = run_snippet(text, {"x": x, "cont": cont, **zeros}, {"l": blobs}, dtype=torch.float64)
    plain = run_snippet(layer(type_, rparam()), {"x": x, "cont": cont}, {"l": blobs})
    np.testing.assert_allclose(whole["y"], plain["y"], rtol=1e-5, atol=1e-6)
    first = run_snippet(
        text, {"x": x[:3], "cont": cont[:3], **zeros}, {"l": blobs}, dtype=torch.float64
    )
    carried = dict(zip(states, (first[f] for f in finals), strict=True))
    second = run_snippet(
        text, {"x": x[3:], "cont": cont[3:], **carried}, {"l": blobs}, dtype=torch.float64
    )
    np.testing.assert_allclose(np.concatenate([first["y"], second["y"]]), whole["y"], rtol=1e-12)
    for f in finals:
        np.testing.assert_allclose(second[f], whole[f], rtol=1e-12)


def test_non_binary_cont_scales_the_state():
    """Caffe multiplies by cont (it does not threshold it): check a fractional cont too."""
    for type_, make in (("LSTM", lstm_blobs), ("RNN", rnn_blobs)):
        cont = rng.uniform(0.2, 1.0, (T, N)).astype(np.float32)
        cont[1, 1] = 0
        check_layer(layer(type_, rparam()), {"x": randn(T, N, 6), "cont": cont}, "l", make(6))


def test_lstm_unit_matches_reference():
    c, g = randn(1, N, H), randn(1, N, 4 * H, scale=2)
    cont = np.array([[1, 0, 0.5]], dtype=np.float32)
    text = layer("LSTMUnit", "", ("c", "g", "cont"), ("c1", "h1"))
    got = check_layer(text, {"c": c, "g": g, "cont": cont}, "l", atol=1e-9)
    sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
    i, f, o, gg = np.split(g[0].astype(np.float64), 4, axis=-1)
    c1 = cont[0, :, None] * sig(f) * c[0] + sig(i) * np.tanh(gg)
    np.testing.assert_allclose(got["c1"][0], c1, rtol=1e-12)
    np.testing.assert_allclose(got["h1"][0], sig(o) * np.tanh(c1), rtol=1e-12)


def test_float32_lowering_close_to_reference():
    text, inputs, blobs, _ = recurrent_case("LSTM", (T, N, 6), (N, 5), False)
    got = run_snippet(text, inputs, {"l": blobs})["y"]
    assert got.dtype == np.float32
    graph = compile_snippet(text, {k: v.shape for k, v in inputs.items()})
    lyr = graph.layer("l")
    (want,) = lyr.spec.reference(shape_context(graph, lyr), list(inputs.values()), blobs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fillers_initialise_blobs():
    text = layer("LSTM", rparam(extra='weight_filler { type: "uniform" min: -0.1 max: 0.1 }'))
    out = run_snippet(text, {"x": randn(T, N, 6), "cont": cont_flags()})["y"]
    assert out.shape == (T, N, H) and np.isfinite(out).all() and np.abs(out).sum() > 0


# --- against PyTorch's own cells (a check independent of the numpy reference) -----------------


def caffe_to_torch_gates(w):
    """Caffe's gate blocks i, f, o, g -> PyTorch's i, f, g, o (along axis 0)."""
    import torch

    i, f, o, g = torch.chunk(torch.as_tensor(w, dtype=torch.float64), 4, dim=0)
    return torch.cat([i, f, g, o])


def test_lstm_matches_torch_lstm_cell():
    import torch

    static = randn(N, 5)
    inputs = {"x": randn(T, N, 6), "cont": cont_flags(), "s": static}
    inputs |= {"h0": randn(1, N, H), "c0": randn(1, N, H)}
    w_xc, b_c, w_static, w_hc = lstm_blobs(6, static=5)
    text = layer("LSTM", rparam(expose=True), tuple(inputs), ("y", "hT", "cT"))
    got = run_snippet(text, inputs, {"l": [w_xc, b_c, w_static, w_hc]}, dtype=torch.float64)

    cell = torch.nn.LSTMCell(6 + 5, H).double()
    with torch.no_grad():
        # the static input is a second input concatenated to x_t, with its own weights
        cell.weight_ih.copy_(caffe_to_torch_gates(np.concatenate([w_xc, w_static], axis=1)))
        cell.bias_ih.copy_(caffe_to_torch_gates(b_c))
        cell.bias_hh.zero_()
        cell.weight_hh.copy_(caffe_to_torch_gates(w_hc))
        h = torch.as_tensor(inputs["h0"][0], dtype=torch.float64)
        c = torch.as_tensor(inputs["c0"][0], dtype=torch.float64)
        s = torch.as_tensor(static, dtype=torch.float64)
        outs = []
        for t in range(T):
            keep = torch.as_tensor(inputs["cont"][t], dtype=torch.float64)[:, None]
            x_t = torch.cat([torch.as_tensor(inputs["x"][t], dtype=torch.float64), s], dim=1)
            h, c = cell(x_t, (h * keep, c * keep))  # binary cont: a reset zeroes h and c
            outs.append(h)
    np.testing.assert_allclose(got["y"], torch.stack(outs).numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["hT"][0], h.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["cT"][0], c.numpy(), rtol=1e-10, atol=1e-12)


def test_rnn_matches_torch_rnn_cell():
    import torch

    x, cont = randn(T, N, 6), cont_flags()
    w_xh, b_h, w_hh, w_ho, b_o = rnn_blobs(6)
    got = run_snippet(
        layer("RNN", rparam()),
        {"x": x, "cont": cont},
        {"l": [w_xh, b_h, w_hh, w_ho, b_o]},
        dtype=torch.float64,
    )["y"]
    cell = torch.nn.RNNCell(6, H, nonlinearity="tanh").double()
    out = torch.nn.Linear(H, H).double()
    as64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        cell.weight_ih.copy_(as64(w_xh))
        cell.bias_ih.copy_(as64(b_h))
        cell.weight_hh.copy_(as64(w_hh))
        cell.bias_hh.zero_()
        out.weight.copy_(as64(w_ho))
        out.bias.copy_(as64(b_o))
        h = torch.zeros(N, H, dtype=torch.float64)
        want = []
        for t in range(T):
            h = cell(as64(x[t]), h * as64(cont[t])[:, None])
            want.append(torch.tanh(out(h)))
    np.testing.assert_allclose(got, torch.stack(want).numpy(), rtol=1e-10, atol=1e-12)


# --- the lowered module ------------------------------------------------------------------------


def test_lowering_is_one_call_per_layer_and_emits_python(tmp_path):
    import torch

    from protocaffe.layers.recurrent import caffe_lstm
    from protocaffe.lower import lower_graph
    from protocaffe.lower.emit import emit_python

    inputs = {"x": (T, N, 6), "cont": (T, N)}
    graph = compile_snippet(layer("LSTM", rparam()), inputs)
    module = lower_graph(graph, seed=0)
    calls = [n for n in module.graph.nodes if n.op == "call_function" and n.target is caffe_lstm]
    assert len(calls) == 1
    path = tmp_path / "lstm_net.py"
    emit_python(graph, path, class_name="LstmNet")
    spec = importlib.util.spec_from_file_location("lstm_net", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    standalone = mod.LstmNet()
    standalone.load_state_dict(module.state_dict())
    feed = {"x": torch.randn(T, N, 6), "cont": torch.from_numpy(cont_flags())}
    with torch.no_grad():
        assert torch.equal(standalone(feed)["y"], module(feed)["y"])


@pytest.mark.skipif(
    not importlib.util.find_spec("torch") or not __import__("torch").cuda.is_available(),
    reason="CUDA is not available",
)
def test_lstm_on_cuda_matches_cpu():
    import torch

    from protocaffe.lower import lower_graph

    text, inputs, blobs, _ = recurrent_case("LSTM", (T, N, 6), (N, 5), True)
    graph = compile_snippet(text, {k: v.shape for k, v in inputs.items()})
    module = lower_graph(graph, seed=0)
    from protocaffe.runtime.caffemodel import assign_blobs

    assign_blobs(module, {"l": blobs})
    feed = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        cpu = module(feed)
        gpu = module.to("cuda")({k: v.cuda() for k, v in feed.items()})
    for key in cpu:
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-4, atol=1e-5)
