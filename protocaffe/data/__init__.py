"""Training data: Caffe's data layers as batch streams for the lowered module.

`make_feeder(graph, rank=0, world_size=1, seed=None)` returns a `Feeder`: an endless iterator
of `dict[blob name, torch.Tensor]` holding one batch for every input blob of the net, in
Caffe's record order, prefetched on a background thread (see `protocaffe.data.feeder`).
`PythonLayers.load(...)` sets up a net's Python data layers when the user allows it
(`protocaffe.data.pylayer`). `records` reads sources without torch (compile uses it for
first-record shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocaffe.data.feeder import Feeder, make_feeder
    from protocaffe.data.pylayer import PythonLayers

_LAZY = {"Feeder": "feeder", "make_feeder": "feeder", "PythonLayers": "pylayer"}


def __getattr__(name: str) -> Any:
    # Imported on first use: torch only when a feeder is asked for (compile stays light).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"protocaffe.data.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["Feeder", "PythonLayers", "make_feeder"]
