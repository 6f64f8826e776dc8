"""Every Caffe layer type protocaffe knows, one LayerDef each (see base.py).

Importing this package imports each module in it, which registers its layers in `REGISTRY`.
"""

import importlib
import pkgutil

from protocaffe.layers.base import REGISTRY, LayerDef, lookup, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "LayerDef", "lookup", "register"]
