"""Training: Caffe's solvers over lowered nets (`protocaffe train`, `protocaffe.Solver`).

lr_policy (learning-rate policies), updates (ApplyUpdate and each solver type's rule),
params (learnable blobs with lr_mult/decay_mult), net (a net with loss weights and a data
feed), snapshot (.caffemodel/.solverstate files), report (log lines, progress, JSON lines),
solver (the Solve/Step loop), distributed (torch.distributed, Caffe's multi-GPU semantics).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Solver"]


def __getattr__(name: str) -> Any:
    if name == "Solver":
        from protocaffe.train.solver import Solver

        return Solver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
