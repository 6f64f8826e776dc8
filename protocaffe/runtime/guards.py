"""Resource guards: refuse, before allocating, a plan that the device cannot hold.

A well-formed net can still ask for absurd memory (`num_output: 100000000`, `pad: 100000000`,
an Input of 1e8x3x224x224). Allocating first and failing later means minutes of swapping, an
out-of-memory kill or a PyTorch traceback; instead the compiler's own figures (parameters and
activations at the requested shapes and dtype, from `ir.report`) are compared with what the
device has free, and the run is refused with the numbers. `allow_oversize=True` (`--force`)
skips the comparison; a blob too large for any machine's address space is refused regardless.

Nothing here imports torch at module level: `compile` uses it to warn.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from protocaffe.diagnostics import CompileError, Diagnostic, Span

# Bytes per element by dtype name (what `resolve_dtype` accepts, without "torch.").
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# No machine addresses more than 2^57 bytes (5-level paging); PyTorch's own size arithmetic
# overflows int64 beyond that too. Such a plan is refused even with allow_oversize.
ADDRESSABLE = 1 << 57
FORCE_HINT = "pass --force (allow_oversize=True in protocaffe.load) to try anyway"


class ResourceError(CompileError):
    """A plan needs more memory than the device has (or than any machine can address)."""


class InputShapeError(CompileError, ValueError):
    """A loaded module was called with input shapes its net cannot take (an InnerProduct
    whose stored weights fix the input size, a window larger than its input, ...). Carries
    the located diagnostics like every CompileError; `str(err)` is their rendering."""


@dataclass
class Plan:
    """What running a net allocates: stored blobs and activations, in bytes at one dtype."""

    param_bytes: int
    activation_bytes: int
    largest: tuple[str, int, Span | None]  # the layer needing most: name, bytes, span
    dtype: str

    @property
    def total(self) -> int:
        return self.param_bytes + self.activation_bytes


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def plan_of(graph: Any, dtype: Any = "float32", params: bool = True) -> Plan:
    """The memory `graph` needs at `dtype`: every stored blob (when `params`) plus every blob
    Caffe would allocate (the report's activations, the sum over distinct tops)."""
    from protocaffe.ir.report import FLOAT32_BYTES, build_report

    name = dtype_name(dtype)
    size = ITEMSIZE.get(name, 4)
    param_total = act_total = 0
    largest: tuple[str, int, Span | None] = ("", -1, None)
    entries = build_report(graph)["layers"]  # one per layer, in graph order
    for layer, entry in zip(graph.layers, entries, strict=True):
        stored = (entry["params"] + entry["buffers"]) * size if params else 0
        acts = entry["activation_bytes"] // FLOAT32_BYTES * size
        param_total += stored
        act_total += acts
        if stored + acts > largest[1]:
            largest = (layer.name, stored + acts, layer.span)
    return Plan(param_total, act_total, largest, name)


def available_bytes(device: Any = "cpu") -> int | None:
    """Memory free for a new allocation on `device`: CUDA's free memory, or the host's
    available RAM (MemAvailable, capped by a cgroup limit); None when it cannot be told."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    if kind != "cpu":
        return None
    return _host_available()


def _host_available() -> int | None:
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        found += [int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:")]
    if not found:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):  # cgroup v2: a container's limit
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                found.append(int(limit) - int(f.read()))
    return min(found) if found else None


def nbytes(n: int) -> str:
    from protocaffe.ir.report import nbytes as human

    if n < 1 << 40:
        return human(n)
    return f"{n / (1 << 40):.1f} TiB" if n < 1 << 50 else f"{n / (1 << 50):.4g} PiB"


def _shapes_text(graph: Any) -> str:
    from protocaffe.layers.base import shape_str

    return ", ".join(f"{v.blob} {shape_str(v.shape)}" for v in graph.inputs) or "no inputs"


def excess(
    graph: Any,
    device: Any,
    dtype: Any,
    *,
    params: bool = True,
    allow_oversize: bool = False,
    where: str | None = None,
) -> Diagnostic | None:
    """An error diagnostic when `graph`'s plan does not fit `device` (called `where` in the
    message; the device's name by default), else None."""
    plan = plan_of(graph, dtype, params)
    where = where or str(device)
    name, biggest, span = plan.largest
    detail = (
        (f"parameters {nbytes(plan.param_bytes)} + " if params else "")
        + f"activations {nbytes(plan.activation_bytes)} at {plan.dtype} for input "
        + _shapes_text(graph)
    )
    if plan.total >= ADDRESSABLE:
        return Diagnostic(
            "error",
            f"this net needs {nbytes(plan.total)} ({detail}), more than any machine can "
            f"address; layer '{name}' alone needs {nbytes(biggest)}",
            span,
            "check the sizes in this layer and the input shapes",
        )
    if allow_oversize:
        return None
    free = available_bytes(device)
    if free is None or plan.total <= free:
        return None
    return Diagnostic(
        "error",
        f"this net needs {nbytes(plan.total)} ({detail}) but {where} has {nbytes(free)} "
        f"available; layer '{name}' needs {nbytes(biggest)}",
        span,
        f"use smaller input shapes, or {FORCE_HINT}",
    )


def check_fits(
    graph: Any, device: Any, dtype: Any, *, params: bool = True, allow_oversize: bool = False
) -> None:
    """Raise ResourceError when `graph` does not fit `device` (see `excess`)."""
    problem = excess(graph, device, dtype, params=params, allow_oversize=allow_oversize)
    if problem is not None:
        raise ResourceError([problem])


def plan_warning(graph: Any) -> Diagnostic | None:
    """For `compile`: a warning when the float32 plan exceeds this machine's available RAM."""
    problem = excess(graph, "cpu", "float32", where="this machine")
    if problem is None:
        return None
    return Diagnostic(
        "warning",
        problem.message,
        problem.span,
        "run/bench/convert/load will refuse it here unless forced",
    )
