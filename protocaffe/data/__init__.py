"""Training data: Caffe's data layers as batch streams for the lowered module.

`make_feeder(graph, rank=0, world_size=1, seed=None)` returns a `Feeder`: an endless iterator
of `dict[blob name, torch.Tensor]` holding one batch for every input blob of the net, in
Caffe's record order, prefetched on a background thread (see `protocaffe.data.feeder`).
`records` reads sources without torch (compile uses it for first-record shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocaffe.data.feeder import Feeder, make_feeder


def __getattr__(name: str) -> Any:
    # torch is imported only when a feeder is asked for (the compile path stays light).
    if name in ("Feeder", "make_feeder"):
        from protocaffe.data import feeder

        return getattr(feeder, name)
    raise AttributeError(name)


__all__ = ["Feeder", "make_feeder"]
