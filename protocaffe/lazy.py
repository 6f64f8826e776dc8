"""Lazy imports of heavy modules (torch, numpy), so that parsing and compiling stay fast.

`from protocaffe.lazy import torch, F, np` gives proxies that import on first attribute access
(numpy is only needed by the layers' `reference()` oracles and runtime helpers).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._lazy_name = name
        self._module: ModuleType | None = None

    def _load(self) -> ModuleType:
        if self._module is None:
            self._module = importlib.import_module(self._lazy_name)
        return self._module

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)


torch: Any = LazyModule("torch")
F: Any = LazyModule("torch.nn.functional")
np: Any = LazyModule("numpy")
