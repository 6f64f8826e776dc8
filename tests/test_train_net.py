"""What the train net contributes to an update, against hand-derived gradients: loss_weight on
loss and non-loss tops, lr_mult/decay_mult per blob, `param { name }` sharing (one update with
the summed diff), propagate_down, force_backward, BatchNorm statistics as learnable blobs."""

from __future__ import annotations

import numpy as np
import pytest
from _train_util import make_solver

SGD1 = 'net: "net.prototxt"\nbase_lr: 1\nlr_policy: "fixed"\nmax_iter: 10\n%s'

X = np.arange(6, dtype=np.float32).reshape(2, 3) / 5 - 0.4
T = np.array([[0.5, -1.0], [0.25, 2.0]], np.float32)


def feed():
    while True:
        yield {"x": X, "t": T}


def ip(name, bottom, top, params="", n=2):
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {params}\n'
        f"  inner_product_param {{ num_output: {n} bias_term: false\n"
        '    weight_filler { type: "uniform" min: -1 max: 1 } } }\n'
    )


INPUT = (
    'layer { name: "in" type: "Input" top: "x" top: "t"\n'
    "  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }\n"
)


def weights(solver, layer):
    return solver.net.params[layer][0].detach().numpy().astype(np.float64).copy()


def test_loss_weights_scale_each_objective(tmp_path, monkeypatch):
    """loss = 0.5 * Euclid(y, t) + 3 * sum(y): dL/dW = (0.5 (y - t)/N + 3) x."""
    monkeypatch.chdir(tmp_path)
    net = (
        INPUT
        + ip("a", "x", "y")
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" '
        "loss_weight: 0.5 }\n"
        + 'layer { name: "p" type: "Power" bottom: "y" top: "pw" loss_weight: 3 }\n'
    )
    solver = make_solver(tmp_path, SGD1 % "", net, feed=feed())
    w = weights(solver, "a")
    solver.step(1)
    y = X.astype(np.float64) @ w.T
    dy = 0.5 * (y - T) / len(X) + 3.0
    np.testing.assert_allclose(weights(solver, "a"), w - dy.T @ X, rtol=1e-5, atol=1e-6)
    # The displayed/returned loss is the weighted sum.
    y = X.astype(np.float64) @ weights(solver, "a").T
    expected = 0.5 * ((y - T) ** 2).sum() / 4 + 3 * y.sum()
    assert solver.net.forward_loss() == pytest.approx(expected, rel=1e-5)


def test_lr_mult_and_decay_mult_per_blob(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = (
        INPUT
        + ip("a", "x", "y", "param { lr_mult: 0.5 decay_mult: 4 }")
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }\n'
    )
    solver = make_solver(tmp_path, SGD1 % "weight_decay: 0.1\n", net, feed=feed())
    w = weights(solver, "a")
    solver.step(1)
    g = ((X.astype(np.float64) @ w.T - T) / len(X)).T @ X + 0.1 * 4 * w
    np.testing.assert_allclose(weights(solver, "a"), w - 0.5 * g, rtol=1e-5, atol=1e-6)


def test_shared_params_update_once_with_the_summed_diff(tmp_path, monkeypatch):
    """Two layers share W (param { name: "w" }); the second sets lr_mult, which fills the
    owner's unset one (Caffe's AppendParam)."""
    monkeypatch.chdir(tmp_path)
    net = (
        INPUT
        + ip("a", "x", "y1", 'param { name: "w" }')
        + ip("b", "x", "y2", 'param { name: "w" lr_mult: 0.25 }')
        + 'layer { name: "e" type: "Eltwise" bottom: "y1" bottom: "y2" top: "y" }\n'
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }\n'
    )
    solver = make_solver(tmp_path, SGD1 % "", net, feed=feed())
    assert [b.label for b in solver.net.learnable] == ["a[0]"]
    assert solver.net.learnable[0].lr_mult == 0.25
    w = weights(solver, "a")
    solver.step(1)
    dy = (2 * X.astype(np.float64) @ w.T - T) / len(X)
    g = 2 * dy.T @ X  # both uses add into the one diff
    np.testing.assert_allclose(weights(solver, "a"), w - 0.25 * g, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(weights(solver, "b"), weights(solver, "a"))


def test_shared_params_with_different_lr_mult_are_an_error(tmp_path, monkeypatch):
    from protocaffe.diagnostics import CompileError

    monkeypatch.chdir(tmp_path)
    net = (
        INPUT
        + ip("a", "x", "y1", 'param { name: "w" lr_mult: 1 }')
        + ip("b", "x", "y2", 'param { name: "w" lr_mult: 2 }')
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y1" bottom: "t" top: "l" }\n'
        + 'layer { name: "l2" type: "EuclideanLoss" bottom: "y2" bottom: "t" top: "l2" }\n'
    )
    with pytest.raises(CompileError, match="shares param 'w'"):
        make_solver(tmp_path, SGD1 % "", net)


def test_propagate_down_false_stops_the_gradient(tmp_path, monkeypatch):
    """b's loss reaches a's weights only through the second path, which is cut."""
    monkeypatch.chdir(tmp_path)
    net = (
        INPUT
        + ip("a", "x", "h", n=3)
        + ip("b", "h", "y", "propagate_down: false")
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }\n'
    )
    solver = make_solver(tmp_path, SGD1 % "", net, feed=feed())
    a, b = weights(solver, "a"), weights(solver, "b")
    solver.step(1)
    np.testing.assert_array_equal(weights(solver, "a"), a)
    assert not np.array_equal(weights(solver, "b"), b)


@pytest.mark.parametrize("force", [False, True])
def test_force_backward_computes_diffs_of_frozen_blobs(force, tmp_path, monkeypatch):
    """AdaGrad's history of an lr_mult 0 blob accumulates its diff only with force_backward."""
    monkeypatch.chdir(tmp_path)
    net = (
        ("force_backward: true\n" if force else "")
        + INPUT
        + ip("a", "x", "y", "param { lr_mult: 0 }")
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "l" }\n'
    )
    text = 'net: "net.prototxt"\ntype: "AdaGrad"\nbase_lr: 1\nlr_policy: "fixed"\n'
    solver = make_solver(tmp_path, text, net, feed=feed())
    w = weights(solver, "a")
    solver.step(1)
    np.testing.assert_array_equal(weights(solver, "a"), w)
    g = ((X.astype(np.float64) @ w.T - T) / len(X)).T @ X
    expected = g * g if force else np.zeros_like(g)
    np.testing.assert_allclose(solver.rule.history[0].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_batchnorm_statistics_are_learnable_blobs_with_lr_mult_zero(tmp_path, monkeypatch):
    """Caffe lists BatchNorm's mean/variance/factor among learnable_params (lr_mult 0,
    decay_mult 1): Adam keeps history for them (decay makes it non-zero), weights only move
    by the layer's own running-average rule."""
    monkeypatch.chdir(tmp_path)
    net = (
        INPUT
        + ip("a", "x", "h", n=2)
        + 'layer { name: "bn" type: "BatchNorm" bottom: "h" top: "h" param { lr_mult: 0 } '
        "param { lr_mult: 0 } param { lr_mult: 0 } }\n"
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "l" }\n'
    )
    text = (
        'net: "net.prototxt"\ntype: "Adam"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: "fixed"\n'
        "weight_decay: 0.5\n"
    )
    solver = make_solver(tmp_path, text, net, feed=feed())
    blobs = solver.net.learnable
    assert [b.label for b in blobs] == ["a[0]", "bn[0]", "bn[1]", "bn[2]"]
    assert [(b.lr_mult, b.decay_mult) for b in blobs[1:]] == [(0.0, 1.0)] * 3
    solver.step(1)
    # After one TRAIN pass the factor blob is 1 (0 * 0.999 + 1); Adam's m for it is
    # (1 - 0.9) * decay * w, w being its value when the update ran.
    factor = solver.net.params["bn"][2].item()
    assert factor == pytest.approx(1.0)
    assert solver.rule.history[3].item() == pytest.approx(0.1 * 0.5 * factor, rel=1e-6)
    assert len(solver.rule.history) == 8


def test_memory_data_through_set_input_arrays(tmp_path, monkeypatch):
    """pycaffe's set_input_arrays feeds a MemoryData train net; one SGD step as the formula."""
    monkeypatch.chdir(tmp_path)
    net = (
        'layer { name: "m" type: "MemoryData" top: "x" top: "label"\n'
        "  memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } }\n"
        + ip("a", "x", "y", n=1)
        + 'layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "label" top: "l" }\n'
    )
    solver = make_solver(tmp_path, SGD1 % "", net)
    x = X.reshape(2, 3, 1, 1)
    labels = np.array([0.5, -1.0], np.float32)
    solver.net.set_input_arrays(x, labels)
    w = weights(solver, "a")
    solver.step(1)
    dy = (X.astype(np.float64) @ w.T - labels[:, None]) / 2
    np.testing.assert_allclose(weights(solver, "a"), w - dy.T @ X, rtol=1e-5, atol=1e-6)
