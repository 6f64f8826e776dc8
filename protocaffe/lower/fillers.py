"""Caffe's weight fillers (include/caffe/filler.hpp), reproduced exactly.

`fill(filler, shape, generator=..., dtype=...)` returns a new CPU tensor. `filler` is a
caffe_pb2.FillerParameter (or None for Caffe's default, constant 0). Random fillers draw from
the given torch.Generator so that `seed=` makes a whole net reproducible. Values are computed
in float32 (Caffe's Dtype) unless float64 is asked for, then cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from protocaffe.lazy import torch

# FillerParameter.VarianceNorm values.
FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


class FillerError(ValueError):
    """A filler that Caffe would reject (CHECK failure); the builder adds the layer's span."""


def _get(filler: Any, field: str, default: Any) -> Any:
    return getattr(filler, field) if filler is not None else default


def _fans(shape: Sequence[int]) -> tuple[int, int]:
    # Caffe: fan_in = count / num, fan_out = count / channels (integer division; a 1-axis
    # blob has channels() == 1 through the legacy accessor).
    count = math.prod(shape)
    fan_in = count // shape[0] if shape else count
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(filler: Any, shape: Sequence[int]) -> float:
    fan_in, fan_out = _fans(shape)
    norm = _get(filler, "variance_norm", FAN_IN)
    if norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _no_sparse(filler: Any, kind: str) -> None:
    if _get(filler, "sparse", -1) != -1:
        raise FillerError(f"sparsity is not supported by the {kind} filler")


def _constant(filler, out, gen):
    _no_sparse(filler, "constant")
    return out.fill_(_get(filler, "value", 0.0))


def _uniform(filler, out, gen):
    _no_sparse(filler, "uniform")
    return out.uniform_(_get(filler, "min", 0.0), _get(filler, "max", 1.0), generator=gen)


def _gaussian(filler, out, gen):
    out.normal_(_get(filler, "mean", 0.0), _get(filler, "std", 1.0), generator=gen)
    sparse = _get(filler, "sparse", -1)
    if sparse < -1:
        raise FillerError(f"sparse must be >= -1, got {sparse}")
    if sparse >= 0:
        # Keep each weight with probability sparse / num_outputs (shape[0]); on average
        # `sparse` of the outputs fed by an input are non-zero.
        if out.dim() < 1:
            raise FillerError("sparse gaussian filler needs a blob with at least one axis")
        keep = sparse / out.shape[0]
        mask = torch.rand(out.shape, generator=gen, dtype=out.dtype) < keep
        out.mul_(mask)
    return out


def _positive_unitball(filler, out, gen):
    _no_sparse(filler, "positive_unitball")
    out.uniform_(0.0, 1.0, generator=gen)
    rows = out.reshape(out.shape[0] if out.dim() else 1, -1)
    rows.div_(rows.sum(dim=1, keepdim=True))
    return out


def _xavier(filler, out, gen):
    _no_sparse(filler, "xavier")
    bound = math.sqrt(3.0 / _variance_n(filler, out.shape))
    return out.uniform_(-bound, bound, generator=gen)


def _msra(filler, out, gen):
    _no_sparse(filler, "msra")
    std = math.sqrt(2.0 / _variance_n(filler, out.shape))
    return out.normal_(0.0, std, generator=gen)


def bilinear_kernel(size: int) -> list[list[float]]:
    """Caffe's K x K bilinear interpolation kernel (equals FCN's surgery.upsample_filt)."""
    f = math.ceil(size / 2)
    c = (size - 1) / (2.0 * f)
    row = [1 - abs(x / f - c) for x in range(size)]
    return [[ry * rx for rx in row] for ry in row]


def _bilinear(filler, out, gen):
    if out.dim() != 4:
        raise FillerError(f"the bilinear filler needs a 4-D blob, got {out.dim()} axes")
    if out.shape[2] != out.shape[3]:
        raise FillerError(
            f"the bilinear filler needs a square kernel, got {out.shape[2]}x{out.shape[3]}"
        )
    kernel = torch.tensor(bilinear_kernel(out.shape[3]), dtype=out.dtype)
    # Caffe writes the same kernel into every (out, in) slice, whatever the group count.
    return out.copy_(kernel.expand_as(out))


FILLERS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


def fill(
    filler: Any,
    shape: Sequence[int],
    *,
    generator: Any = None,
    dtype: Any = None,
) -> Any:
    """A new CPU tensor of `shape` filled as Caffe's `filler` would fill it."""
    kind = _get(filler, "type", "constant")
    rule = FILLERS.get(kind)
    if rule is None:
        raise FillerError(f"unknown filler type '{kind}' (known: {', '.join(FILLERS)})")
    dtype = dtype or torch.float32
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(tuple(shape), dtype=work)
    if out.numel() == 0:
        raise FillerError(f"cannot fill an empty blob of shape {tuple(shape)}")
    return rule(filler, out, generator).to(dtype)
