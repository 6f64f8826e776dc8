"""Caffe's weight fillers (include/caffe/filler.hpp), reproduced exactly.

`fill(filler, shape, generator=..., dtype=...)` returns a new CPU tensor. `filler` is a
caffe_pb2.FillerParameter (or None for Caffe's default, constant 0). Random fillers draw from
the given torch.Generator so that `seed=` makes a whole net reproducible. Values are computed
in float32 (Caffe's Dtype) unless float64 is asked for, then cast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from protocaffe.lazy import torch

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from protocaffe.layers.base import ShapeContext

# FillerParameter.VarianceNorm values.
FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


class FillerError(ValueError):
    """A filler that Caffe would reject (CHECK failure); the builder adds the layer's span.
    `compile` reports the same problems, located (`check_fillers`), before anything is filled."""


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


def filler_problem(filler: Any, shape: Sequence[int]) -> tuple[str, str] | None:
    """Why Caffe would CHECK-fail filling a blob of `shape` with `filler` (filler.hpp and the
    caffe_rng_* functions it calls), as (message, the field at fault); None when it would not.
    Values compare as Caffe's do: a NaN fails every CHECK."""
    kind = _get(filler, "type", "constant")
    if kind not in FILLERS:
        return f"unknown filler type '{kind}' (known: {', '.join(FILLERS)})", "type"
    sparse = _get(filler, "sparse", -1)
    if kind != "gaussian" and sparse != -1:
        return f"sparsity is not supported by the {kind} filler (only gaussian has it)", "sparse"
    if kind == "uniform":
        low, high = _get(filler, "min", 0.0), _get(filler, "max", 1.0)
        if not low <= high:
            return f"min {low:g} is greater than max {high:g} (Caffe checks min <= max)", "min"
    elif kind == "gaussian":
        std = _get(filler, "std", 1.0)
        if not std > 0:
            return f"std must be positive (Caffe checks std > 0), got {std:g}", "std"
        if sparse < -1:
            return f"sparse must be -1 (dense) or a count >= 0, got {sparse}", "sparse"
        if sparse >= 0 and not shape:
            return "a sparse gaussian filler needs a blob with at least one axis", "sparse"
        if sparse > (shape[0] if shape else 0):
            # Caffe keeps each weight with probability sparse / num_outputs, checked <= 1.
            return (
                f"sparse {sparse} exceeds the blob's {shape[0]} outputs (axis 0); "
                "Caffe keeps each weight with probability sparse / outputs",
                "sparse",
            )
    elif kind == "bilinear":
        if len(shape) != 4:
            return f"the bilinear filler needs a 4-D blob, got {len(shape)} axes", "type"
        if shape[2] != shape[3]:
            return (
                f"the bilinear filler needs a square kernel, got {shape[2]}x{shape[3]}",
                "type",
            )
    return None


def _constant(filler, out, gen):
    return out.fill_(_get(filler, "value", 0.0))


def _uniform(filler, out, gen):
    return out.uniform_(_get(filler, "min", 0.0), _get(filler, "max", 1.0), generator=gen)


def _gaussian(filler, out, gen):
    out.normal_(_get(filler, "mean", 0.0), _get(filler, "std", 1.0), generator=gen)
    sparse = _get(filler, "sparse", -1)
    if sparse >= 0:
        # Keep each weight with probability sparse / num_outputs (shape[0]); on average
        # `sparse` of the outputs fed by an input are non-zero.
        keep = sparse / out.shape[0]
        mask = torch.rand(out.shape, generator=gen, dtype=out.dtype) < keep
        out.mul_(mask)
    return out


def _positive_unitball(filler, out, gen):
    out.uniform_(0.0, 1.0, generator=gen)
    rows = out.reshape(out.shape[0] if out.dim() else 1, -1)
    rows.div_(rows.sum(dim=1, keepdim=True))
    return out


def _xavier(filler, out, gen):
    bound = math.sqrt(3.0 / _variance_n(filler, out.shape))
    return out.uniform_(-bound, bound, generator=gen)


def _msra(filler, out, gen):
    std = math.sqrt(2.0 / _variance_n(filler, out.shape))
    return out.normal_(0.0, std, generator=gen)


def bilinear_kernel(size: int) -> list[list[float]]:
    """Caffe's K x K bilinear interpolation kernel (equals FCN's surgery.upsample_filt)."""
    f = math.ceil(size / 2)
    c = (size - 1) / (2.0 * f)
    row = [1 - abs(x / f - c) for x in range(size)]
    return [[ry * rx for rx in row] for ry in row]


def _bilinear(filler, out, gen):
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
    problem = filler_problem(filler, shape)
    if problem is not None:
        raise FillerError(problem[0])
    rule = FILLERS[_get(filler, "type", "constant")]
    dtype = dtype or torch.float32
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(tuple(shape), dtype=work)
    if out.numel() == 0:
        raise FillerError(f"cannot fill an empty blob of shape {tuple(shape)}")
    return rule(filler, out, generator).to(dtype)


def check_fillers(ctx: ShapeContext, fillers: Iterable[tuple[str, Any, Sequence[int]]]) -> None:
    """Compile time: fail `ctx`'s layer, located at the field at fault, on the first of
    `fillers` ((what it fills, FillerParameter, blob shape)) that Caffe would CHECK-fail."""
    for what, filler, shape in fillers:
        if filler is None:
            continue
        problem = filler_problem(filler, shape)
        if problem is not None:
            message, field = problem
            path = filler_path(ctx.layer.proto, filler)
            ctx.fail(f"{what}: {message}", *(() if path is None else (*path, field)))


def filler_path(layer: Message, filler: Any) -> tuple[str | int, ...] | None:
    """Where in the LayerParameter `layer` a FillerParameter equal to `filler` is written."""
    todo: list[tuple[tuple[str | int, ...], Message]] = [((), layer)]
    while todo:
        path, msg = todo.pop(0)
        for fd, value in msg.ListFields():
            if fd.message_type is None:
                continue
            items = enumerate(value) if fd.is_repeated else [(None, value)]
            for i, sub in items:
                sub_path = (*path, fd.name) if i is None else (*path, fd.name, i)
                if fd.message_type.name == "FillerParameter":
                    if sub == filler:
                        return sub_path
                else:
                    todo.append((sub_path, sub))
    return None
