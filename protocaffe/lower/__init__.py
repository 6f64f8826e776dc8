"""Lowering a compiled Graph to PyTorch: `lower_graph` (a torch.fx GraphModule) and
`emit_python` (a standalone module file). Imported lazily: torch loads on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["CaffeModule", "emit_python", "lower_graph"]

_HOMES = {
    "lower_graph": "protocaffe.lower.builder",
    "CaffeModule": "protocaffe.lower.module",
    "emit_python": "protocaffe.lower.emit",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
