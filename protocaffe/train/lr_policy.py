"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), evaluated as Caffe does.

The rate for update k uses the iteration count before the update (`iter` = k). Caffe computes
in float: `pow(float, int)` promotes to double (step, exp, multistep) and `pow(float, float)`
stays float (inv, poly, sigmoid); the result is stored as a float. numpy's float32 reproduces
both. `multistep` advances `current_step` at most once per call and the solver keeps it (it is
saved in the .solverstate); `step` recomputes it from `iter`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protocaffe.diagnostics import Diagnostics

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_NEEDS_GAMMA = ("step", "exp", "inv", "multistep", "sigmoid")
_NEEDS_STEPSIZE = ("step", "sigmoid")

f32 = np.float32


def check_policy(param: Any, diags: Diagnostics, span_of: Any) -> None:
    """Caffe's CHECKs on the policy's fields, as diagnostics located at the field."""
    policy = param.lr_policy
    if policy not in POLICIES:
        what = f"unknown learning rate policy '{policy}'" if policy else "lr_policy is not set"
        diags.error(what, span_of(("lr_policy",)), hint="use one of " + ", ".join(POLICIES))
        return
    if policy in _NEEDS_STEPSIZE and param.stepsize <= 0:
        diags.error(
            f"lr_policy '{policy}' needs stepsize > 0 (got {param.stepsize})",
            span_of(("stepsize",)) or span_of(("lr_policy",)),
        )
    if policy in _NEEDS_GAMMA and param.gamma < 0:
        diags.error(f"gamma must be >= 0 (got {param.gamma:g})", span_of(("gamma",)))
    if policy == "poly" and param.max_iter <= 0:
        diags.error(
            f"lr_policy 'poly' needs max_iter > 0 (got {param.max_iter})", span_of(("max_iter",))
        )


def learning_rate(param: Any, it: int, current_step: int) -> tuple[float, int]:
    """(rate as a float32 value, the new current_step) for iteration `it`."""
    policy = param.lr_policy
    base, gamma, power = f32(param.base_lr), f32(param.gamma), f32(param.power)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = it // param.stepsize
        rate = f32(float(base) * float(gamma) ** current_step)
    elif policy == "exp":
        rate = f32(float(base) * float(gamma) ** it)
    elif policy == "inv":
        with np.errstate(all="ignore"):
            rate = base * np.power(f32(1) + gamma * f32(it), -power)
    elif policy == "multistep":
        steps = param.stepvalue
        if current_step < len(steps) and it >= steps[current_step]:
            current_step += 1
        rate = f32(float(base) * float(gamma) ** current_step)
    elif policy == "poly":
        with np.errstate(all="ignore"):
            rate = base * np.power(f32(1) - f32(it) / f32(param.max_iter), power)
    elif policy == "sigmoid":
        with np.errstate(all="ignore"):
            rate = base * (f32(1) / (f32(1) + np.exp(-gamma * (f32(it) - f32(param.stepsize)))))
    else:
        raise ValueError(f"unknown learning rate policy {policy!r}")
    return float(f32(rate)), current_step
