"""SmoothL1Loss (Fast/Faster R-CNN forks): values from the fork's formula, the lowering against
the numpy oracle, its gradient against finite differences, and shape errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _layer_oracle import check_layer, error_of

WEIGHTED = (
    'layer { name: "loss" type: "SmoothL1Loss" bottom: "p" bottom: "t" bottom: "wi" bottom: "wo" '
    'top: "loss" smooth_l1_loss_param { sigma: 3 } }'
)


def inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (2, 8, 3, 4)
    return {
        "p": rng.normal(0, 0.5, shape),
        "t": rng.normal(0, 0.5, shape),
        "wi": rng.integers(0, 2, shape).astype(np.float64),
        "wo": rng.uniform(0, 1, shape),
    }


def test_weighted_loss_matches_the_formula_and_the_oracle() -> None:
    x = inputs()
    got = check_layer(WEIGHTED, x, "loss")["loss"]
    d = x["wi"] * (x["p"] - x["t"])
    terms = np.where(np.abs(d) < 1 / 9, 4.5 * d * d, np.abs(d) - 0.5 / 9)
    np.testing.assert_allclose(got, (x["wo"] * terms).sum() / 2, rtol=1e-10)


def test_unweighted_loss_defaults_sigma_to_one() -> None:
    x = {k: v for k, v in inputs(1).items() if k in ("p", "t")}
    text = 'layer { name: "loss" type: "SmoothL1Loss" bottom: "p" bottom: "t" top: "loss" }'
    got = check_layer(text, x, "loss")["loss"]
    d = x["p"] - x["t"]
    np.testing.assert_allclose(got, np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum() / 2)


def test_gradient_matches_finite_differences() -> None:
    from protocaffe.lower.builder import lower_graph
    from protocaffe.testing import compile_snippet

    x = inputs(2)
    graph = compile_snippet(WEIGHTED, {k: v.shape for k, v in x.items()}, phase="TRAIN")
    module = lower_graph(graph, dtype=torch.float64)
    feed = {k: torch.tensor(v, requires_grad=k == "p") for k, v in x.items()}
    module(feed)["loss"].backward()
    eps = 1e-6
    for index in [(0, 0, 0, 0), (1, 5, 2, 3), (0, 7, 1, 1)]:
        bumped = []
        for sign in (1, -1):
            moved = {k: torch.tensor(v) for k, v in x.items()}
            moved["p"][index] += sign * eps
            bumped.append(float(module(moved)["loss"]))
        numeric = (bumped[0] - bumped[1]) / (2 * eps)
        assert feed["p"].grad[index].item() == pytest.approx(numeric, abs=1e-6)


def test_shape_errors() -> None:
    shapes = {"p": (2, 8, 3, 4), "t": (2, 8, 3, 5), "w": (2, 8, 3, 4)}
    text = 'layer { name: "l" type: "SmoothL1Loss" bottom: "p" bottom: "t" top: "l" }'
    assert "must match 'p'" in error_of(text, shapes).message
    text = 'layer { name: "l" type: "SmoothL1Loss" bottom: "p" bottom: "w" bottom: "w" top: "l" }'
    assert "both the inside and the outside weights" in error_of(text, shapes).message
