"""Shared by the training tests: a tiny linear net with a numpy oracle for its gradient, and
a Solver built from prototxt text in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

LINEAR_NET = """
name: "linear"
layer { name: "data" type: "Input" top: "x" top: "t"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: %s decay_mult: %s }
  inner_product_param { num_output: 2
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def linear_net(bias_lr: float = 2, bias_decay: float = 0) -> str:
    return LINEAR_NET % (bias_lr, bias_decay)


def batches(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "x": rng.normal(size=(4, 3)).astype(np.float32),
            "t": rng.normal(size=(4, 2)).astype(np.float32),
        }
        for _ in range(n)
    ]


def linear_grads(w: np.ndarray, b: np.ndarray, batch: dict[str, np.ndarray]):
    """dLoss/dW, dLoss/db of EuclideanLoss(x W^T + b, t) = sum((y - t)^2) / (2N), float64."""
    x, t = batch["x"].astype(np.float64), batch["t"].astype(np.float64)
    dy = (x @ w.T + b - t) / len(x)
    return dy.T @ x, dy.sum(0)


def make_solver(tmp_path: Path, solver_text: str, net_text: str, feed=None, **kwargs):
    """A Solver for `solver_text` (which names net.prototxt); the caller has chdir'ed into
    `tmp_path` (solver paths are relative to the working directory, as in Caffe)."""
    import protocaffe

    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(solver_text)
    solver = protocaffe.Solver("solver.prototxt", device="cpu", **kwargs)
    if feed is not None:
        solver.net.set_feed(feed)
    return solver


def blob(solver, layer: str, i: int) -> np.ndarray:
    return solver.net.params[layer][i].detach().numpy().astype(np.float64)
