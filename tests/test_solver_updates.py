"""Each Caffe solver type and lr policy against updates computed from Caffe's formulas.

The oracle below is written from Caffe's SGDSolver::ApplyUpdate and each ComputeUpdateValue
(float64 numpy, the net's gradient derived by hand), not from protocaffe's code: clip the
summed gradient, divide by iter_size, add weight_decay * decay_mult * w (or * sign(w)), then
the type's history update with lr * lr_mult, then w -= step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _train_util import batches, blob, linear_grads, linear_net, make_solver

from protocaffe.proto import caffe_pb2
from protocaffe.train.lr_policy import learning_rate


def oracle_step(kind, p, hist, w, g, lr, it):
    """One blob's Caffe update; `hist` is [h] or [h1, h2]; returns the new w."""
    m, delta = p["momentum"], p.get("delta", 1e-8)
    if kind == "SGD":
        hist[0] = m * hist[0] + lr * g
        return w - hist[0]
    if kind == "Nesterov":
        old = hist[0]
        hist[0] = m * hist[0] + lr * g
        return w - ((1 + m) * hist[0] - m * old)
    if kind == "AdaGrad":
        hist[0] = hist[0] + g * g
        return w - lr * g / (np.sqrt(hist[0]) + delta)
    if kind == "RMSProp":
        d = p["rms_decay"]
        hist[0] = d * hist[0] + (1 - d) * g * g
        return w - lr * g / (np.sqrt(hist[0]) + delta)
    if kind == "AdaDelta":
        hist[0] = m * hist[0] + (1 - m) * g * g
        step = g * np.sqrt((hist[1] + delta) / (hist[0] + delta))
        hist[1] = m * hist[1] + (1 - m) * step * step
        return w - lr * step
    if kind == "Adam":
        b2, t = p["momentum2"], it + 1
        hist[0] = m * hist[0] + (1 - m) * g
        hist[1] = b2 * hist[1] + (1 - b2) * g * g
        corr = math.sqrt(1 - b2**t) / (1 - m**t)
        return w - lr * corr * hist[0] / (np.sqrt(hist[1]) + delta)
    raise AssertionError(kind)


def caffe_rate(p, it):
    """Caffe's GetLearningRate, from its definitions."""
    base, policy = p["base_lr"], p.get("lr_policy", "fixed")
    gamma, power = p.get("gamma", 0.0), p.get("power", 0.0)
    if policy == "fixed":
        return base
    if policy == "step":
        return base * gamma ** (it // p["stepsize"])
    if policy == "exp":
        return base * gamma**it
    if policy == "inv":
        return base * (1 + gamma * it) ** -power
    if policy == "multistep":  # at most one step further per iteration
        step, values = 0, p["stepvalue"]
        for k in range(it + 1):
            step += step < len(values) and k >= values[step]
        return base * gamma**step
    if policy == "poly":
        return base * (1 - it / p["max_iter"]) ** power
    if policy == "sigmoid":
        return base / (1 + math.exp(-gamma * (it - p["stepsize"])))
    raise AssertionError(policy)


def run_oracle(kind, p, w, b, feed, iters, bias_lr=2.0, bias_decay=0.0):
    mults = [(1.0, 1.0), (bias_lr, bias_decay)]
    params = [w.copy(), b.copy()]
    sets = 2 if kind in ("Adam", "AdaDelta") else 1
    hist = [[np.zeros_like(x) for _ in range(sets)] for x in params]
    n, batch = p.get("iter_size", 1), iter(feed)
    for it in range(iters):
        grads = [np.zeros_like(params[0]), np.zeros_like(params[1])]
        for _ in range(n):
            gw, gb = linear_grads(params[0], params[1], next(batch))
            grads[0] += gw
            grads[1] += gb
        # Caffe computes no diff for an lr_mult 0 blob (param_propagate_down is false).
        grads = [g * (lr_mult != 0) for g, (lr_mult, _) in zip(grads, mults, strict=True)]
        clip = p.get("clip_gradients", -1)
        if clip >= 0:
            norm = math.sqrt(sum((g * g).sum() for g in grads))
            if norm > clip:
                grads = [g * clip / norm for g in grads]
        lr = caffe_rate(p, it)
        for k, (lr_mult, decay_mult) in enumerate(mults):
            g = grads[k] / n
            decay = p.get("weight_decay", 0.0) * decay_mult
            reg = params[k] if p.get("regularization_type", "L2") == "L2" else np.sign(params[k])
            g = g + decay * reg
            params[k] = oracle_step(kind, p, hist[k], params[k], g, lr * lr_mult, it)
    return params, hist


def solver_text(kind, p):
    lines = ['net: "net.prototxt"', f'type: "{kind}"', "random_seed: 7"]
    lines.append(f'lr_policy: "{p.get("lr_policy", "fixed")}"')
    if "max_iter" not in p:
        lines.append("max_iter: 100")
    for key, value in p.items():
        if key == "stepvalue":
            lines += [f"stepvalue: {v}" for v in value]
        elif key != "lr_policy":
            lines.append(f'{key}: "{value}"' if isinstance(value, str) else f"{key}: {value}")
    return "\n".join(lines) + "\n"


CASES = {
    "SGD": {"base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.01},
    "SGD-step-iter_size": {
        "base_lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 0.05,
        "lr_policy": "step",
        "gamma": 0.5,
        "stepsize": 2,
        "iter_size": 2,
    },
    "SGD-clip-L1": {
        "base_lr": 0.3,
        "momentum": 0.5,
        "weight_decay": 0.02,
        "regularization_type": "L1",
        "clip_gradients": 0.4,
    },
    "Nesterov": {"base_lr": 0.1, "momentum": 0.95, "weight_decay": 0.01},
    "AdaGrad": {"base_lr": 0.2, "momentum": 0.0, "weight_decay": 0.01, "delta": 1e-6},
    "RMSProp": {"base_lr": 0.05, "momentum": 0.0, "rms_decay": 0.9, "weight_decay": 0.01},
    "AdaDelta": {"base_lr": 1.0, "momentum": 0.95, "weight_decay": 0.01, "delta": 1e-6},
    "Adam": {
        "base_lr": 0.05,
        "momentum": 0.9,
        "momentum2": 0.999,
        "weight_decay": 0.01,
        "lr_policy": "step",
        "gamma": 0.1,
        "stepsize": 3,
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_matches_caffe_formulas(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kind, p, iters = case.split("-")[0], CASES[case], 5
    feed = batches(iters * p.get("iter_size", 1))
    solver = make_solver(tmp_path, solver_text(kind, p), linear_net(), feed=feed)
    w0, b0 = blob(solver, "ip", 0), blob(solver, "ip", 1)
    solver.step(iters)
    (w, b), hist = run_oracle(kind, p, w0, b0, feed, iters)
    np.testing.assert_allclose(blob(solver, "ip", 0), w, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(blob(solver, "ip", 1), b, rtol=2e-5, atol=2e-6)
    # History blobs in Caffe's order: all first-set blobs, then the second set.
    got = [h.numpy() for h in solver.rule.history]
    want = [h[s] for s in range(len(hist[0])) for h in hist]
    assert len(got) == len(want)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)
    assert solver.iter == iters


POLICIES = {
    "exp": {"gamma": 0.8},
    "inv": {"gamma": 0.5, "power": 0.75},
    "multistep": {"gamma": 0.5, "stepvalue": [1, 3, 3]},
    "poly": {"power": 2.0, "max_iter": 6},
    "sigmoid": {"gamma": 1.0, "stepsize": 2},
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_each_lr_policy_drives_sgd_momentum(policy, tmp_path, monkeypatch):
    """SGD's history keeps the lr-scaled velocity, so every rate change shows in the weights."""
    monkeypatch.chdir(tmp_path)
    p = {"base_lr": 0.2, "momentum": 0.9, "weight_decay": 0.01, "lr_policy": policy}
    p.update(POLICIES[policy])
    feed = batches(5)
    solver = make_solver(tmp_path, solver_text("SGD", p), linear_net(), feed=feed)
    w0, b0 = blob(solver, "ip", 0), blob(solver, "ip", 1)
    solver.step(5)
    (w, b), _ = run_oracle("SGD", p, w0, b0, feed, 5)
    np.testing.assert_allclose(blob(solver, "ip", 0), w, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(blob(solver, "ip", 1), b, rtol=2e-5, atol=2e-6)


def test_lr_mult_zero_blob_keeps_its_value_but_adam_history_sees_decay(tmp_path, monkeypatch):
    """A frozen blob (lr_mult 0) is still regularised: SGD history stays 0, Adam's does not."""
    monkeypatch.chdir(tmp_path)
    p = CASES["Adam"]
    feed = batches(3)
    net = linear_net(bias_lr=0, bias_decay=1)
    solver = make_solver(tmp_path, solver_text("Adam", p), net, feed=feed)
    w0, b0 = blob(solver, "ip", 0), blob(solver, "ip", 1)
    solver.step(3)
    (w, _), hist = run_oracle("Adam", p, w0, b0, feed, 3, bias_lr=0, bias_decay=1)
    np.testing.assert_array_equal(blob(solver, "ip", 1), b0)
    np.testing.assert_allclose(blob(solver, "ip", 0), w, rtol=2e-5, atol=2e-6)
    m_bias = solver.rule.history[1].numpy()
    assert np.abs(m_bias).max() > 0
    np.testing.assert_allclose(m_bias, hist[1][0], rtol=2e-5)


def _param(**fields):
    p = caffe_pb2.SolverParameter()
    for key, value in fields.items():
        if key == "stepvalue":
            p.stepvalue.extend(value)
        else:
            setattr(p, key, value)
    return p


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lr_policy": "fixed", "base_lr": 0.01}, lambda it: 0.01),
        (
            {"lr_policy": "step", "base_lr": 0.01, "gamma": 0.1, "stepsize": 3},
            lambda it: 0.01 * 0.1 ** (it // 3),
        ),
        ({"lr_policy": "exp", "base_lr": 0.01, "gamma": 0.9}, lambda it: 0.01 * 0.9**it),
        (
            {"lr_policy": "inv", "base_lr": 0.01, "gamma": 1e-4, "power": 0.75},
            lambda it: 0.01 * (1 + 1e-4 * it) ** -0.75,
        ),
        (
            {"lr_policy": "poly", "base_lr": 0.01, "power": 2.0, "max_iter": 10},
            lambda it: 0.01 * (1 - it / 10) ** 2,
        ),
        (
            {"lr_policy": "sigmoid", "base_lr": 0.01, "gamma": 0.5, "stepsize": 4},
            lambda it: 0.01 / (1 + math.exp(-0.5 * (it - 4))),
        ),
    ],
    ids=lambda v: v["lr_policy"] if isinstance(v, dict) else "",
)
def test_lr_policy(fields, expected):
    p = _param(**fields)
    for it in range(10):
        rate, _ = learning_rate(p, it, 0)
        assert rate == pytest.approx(expected(it), rel=1e-6)


def test_sigmoid_rejects_negative_gamma_like_caffe():
    from protocaffe.diagnostics import Diagnostics
    from protocaffe.train.lr_policy import check_policy

    diags = Diagnostics()
    check_policy(
        _param(lr_policy="sigmoid", base_lr=0.1, gamma=-1, stepsize=2), diags, lambda p: None
    )
    assert any("gamma" in d.message for d in diags.items)


def test_multistep_advances_once_per_call_and_keeps_its_step():
    p = _param(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[2, 3, 3])
    step, rates = 0, []
    for it in range(6):
        rate, step = learning_rate(p, it, step)
        rates.append(rate)
    # At iteration 3 two step values are due; Caffe moves one step per call.
    assert rates == [1.0, 1.0, 0.5, 0.25, 0.125, 0.125]
    assert step == 3


def test_unknown_policy_and_solver_type_are_located_errors(tmp_path, monkeypatch):
    from protocaffe.diagnostics import CompileError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError) as err:
        make_solver(
            tmp_path, 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "cosine"\n', linear_net()
        )
    assert "unknown learning rate policy 'cosine'" in str(err.value.diagnostics[0].message)
    assert err.value.diagnostics[0].span.line == 3
    text = 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\ntype: "AdaGrad"\nmomentum: 0.9\n'
    with pytest.raises(CompileError) as err:
        make_solver(tmp_path, text, linear_net())
    assert "momentum must be 0" in err.value.diagnostics[0].message
