"""Shared by the layer tests: run one layer lowered and through its numpy oracle."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.ir.build import shape_context
from protocaffe.testing import compile_snippet


def needs_source_spans() -> None:
    """Skip until the prototxt frontend (which records spans) is importable."""
    try:
        from protocaffe.frontend import parse_text  # noqa: F401
    except ImportError:
        pytest.skip("protocaffe.frontend.parse_text is not available: no source spans")


def shapes_of(text: str, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    graph = compile_snippet(text, inputs)
    return {v.blob: v.shape for v in graph.values.values()}


def error_of(text: str, inputs: dict[str, tuple[int, ...]]) -> Any:
    """The first error diagnostic compiling `text` raises (fails the test when none)."""
    try:
        compile_snippet(text, inputs)
    except CompileError as err:
        return next(d for d in err.diagnostics if d.severity == "error")
    raise AssertionError("expected a compile error")


def oracle(text: str, inputs: dict[str, np.ndarray], layer: str, blobs=None) -> list:
    graph = compile_snippet(text, {k: v.shape for k, v in inputs.items()})
    lay = graph.layer(layer)
    ctx = shape_context(graph, lay)
    return lay.spec.reference(ctx, [inputs[b] for b in lay.bottoms], list(blobs or []))


def check_layer(
    text: str,
    inputs: dict[str, np.ndarray],
    layer: str,
    blobs: list[np.ndarray] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Lowered output == numpy oracle for every top of `layer` (bottoms must be inputs)."""
    import torch

    from protocaffe.testing import run_snippet

    expected = oracle(text, inputs, layer, blobs)
    tops = compile_snippet(text, {k: v.shape for k, v in inputs.items()}).layer(layer).tops
    got = run_snippet(
        text,
        inputs,
        blobs={layer: blobs} if blobs else None,
        outputs=tops,
        dtype=torch.float64,
    )
    for top, want in zip(tops, expected, strict=True):
        assert got[top].shape == want.shape, (top, got[top].shape, want.shape)
        np.testing.assert_allclose(got[top], want, rtol=rtol, atol=atol, err_msg=top)
    return got
