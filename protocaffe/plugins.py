"""User layers: a layer type declared in the user's own module, loaded only on request.

    # mylayers.py
    import protocaffe

    @protocaffe.layer("Swish2")
    class Swish2:
        def shapes(self, ctx):            # Caffe's Reshape: bottom shapes -> top shapes
            return [ctx.bottoms[0]]

        def lower(self, ctx):             # fx nodes for the tops
            import torch
            x = ctx.inputs[0]
            return [ctx.call(torch.mul, x, ctx.call(torch.sigmoid, x))]

    $ protocaffe run net.prototxt --plugin mylayers
    >>> protocaffe.load("net.prototxt", plugins=["mylayers"])

The decorated class is mixed into `LayerDef` (protocaffe/layers/base.py), so it may define
everything a built-in layer does: `param_field`, `bottoms`/`tops` arities, `blobs`, `macs`,
`explain`, `reference`. A parameter message is declared with `protocaffe.proto.schema`
(`declare_message(..., param="my_param")`). A plugin is a module name on sys.path (the
current directory included) or a path to a .py file. Nothing is loaded unless asked for: a net
that uses an unknown type still gets the unknown-type error.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from protocaffe.diagnostics import CompileError, Diagnostic

# Type name -> the plugin module that registered it.
USER_TYPES: dict[str, str] = {}
_LOADED: set[str] = set()


def layer(type_name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Class decorator: register a user layer type `type_name` (mixed into LayerDef).

    A type protocaffe already knows is refused unless `replace=True`."""
    from protocaffe.layers.base import REGISTRY, LayerDef, lookup

    def add(cls: type) -> type:
        lookup(type_name)  # the built-in layers first, so that a clash is seen
        if not issubclass(cls, LayerDef):
            cls = type(cls.__name__, (cls, LayerDef), {"__module__": cls.__module__})
        cls.type = type_name
        if type_name in REGISTRY and not replace and USER_TYPES.get(type_name) != cls.__module__:
            owner = USER_TYPES.get(type_name, "protocaffe")
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"plugin {cls.__module__}: layer type '{type_name}' is already defined "
                        f"by {owner}",
                        hint="pick another type name, or pass replace=True to "
                        "protocaffe.layer() to override it",
                    )
                ]
            )
        REGISTRY[type_name] = cls()
        USER_TYPES[type_name] = cls.__module__
        return cls

    return add


def load_plugins(names: Iterable[str]) -> None:
    """Import each plugin (a module name or a .py path) once; a failure is a user error."""
    problems = []
    for name in names:
        if name in _LOADED:
            continue
        try:
            _import(name)
        except CompileError:
            raise
        except Exception as err:  # the user's module: report it, do not crash
            problems.append(
                Diagnostic(
                    "error",
                    f"cannot load plugin '{name}': {type(err).__name__}: {err}",
                    hint="a plugin is a module on the Python path (the current directory "
                    "included) or a path to a .py file",
                )
            )
        else:
            _LOADED.add(name)
    if problems:
        raise CompileError(problems)


def _import(name: str) -> Any:
    path = Path(name)
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {name}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # `--plugin mylayers` finds ./mylayers.py, as python -m does
    return importlib.import_module(name)
