"""protocaffe: a Caffe prototxt compiler and runtime.

    import protocaffe
    net = protocaffe.load("deploy.prototxt", "weights.caffemodel")   # a torch nn.Module
    out = net(image_tensor)                                         # {"prob": tensor}
    graph = protocaffe.compile("deploy.prototxt")                   # shapes, no torch

Names are imported on first use, so `import protocaffe` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load": "protocaffe.runtime.api",
    "compile": "protocaffe.runtime.api",
    "lower_graph": "protocaffe.lower.builder",
    "emit_python": "protocaffe.lower.emit",
    "CaffeModule": "protocaffe.lower.module",
    "load_caffemodel": "protocaffe.runtime.caffemodel",
    "save_caffemodel": "protocaffe.runtime.caffemodel",
    "build_graph": "protocaffe.ir.build",
    "load_net": "protocaffe.frontend",
    "parse_text": "protocaffe.frontend",
    "CompileError": "protocaffe.diagnostics",
    "Diagnostic": "protocaffe.diagnostics",
    "Solver": "protocaffe.train.solver",
    "InputShapeError": "protocaffe.runtime.guards",
    "ResourceError": "protocaffe.runtime.guards",
    "layer": "protocaffe.plugins",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    home = _EXPORTS.get(name)
    if home is None:
        raise AttributeError(f"module 'protocaffe' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
