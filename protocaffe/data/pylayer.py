"""Python layers (`type: "Python"`), run only when the user allows it.

A prototxt names a module and class (`python_param { module: "voc_layers" layer:
"SBDDSegDataLayer" param_str: "..." }`); running it means importing and executing user code,
so nothing here happens implicitly. The user opts in, on the command line with
`--python-layers DIR` (the directory holding the module) or from Python by calling
`PythonLayers.load(...)` (`allow_python_layers=True` in the APIs that take it):

    layers = PythonLayers.load(parsed.message, "TRAIN", path=["fcn/"])
    graph = build_graph(parsed, "TRAIN", input_shapes=layers.shapes)
    feeder = make_feeder(graph, python_layers=layers)

`load` imports each class with `protocaffe.pycaffe` standing in for `caffe`, builds it as
pycaffe does (param_str and phase set), and runs `setup(bottom, top)` then `reshape(bottom,
top)` (Caffe's Layer::SetUp): the tops' shapes are then known for the graph. Each batch is
then Caffe's Forward: `reshape` then `forward`, and the tops' `.data` are the batch.
A layer with bottoms is set up when `build_graph` reaches it (its bottoms' shapes known) and
runs inside the lowered module: `reshape` + `forward` on the bottoms' data, and in the
backward pass its own `backward(top, propagate_down, bottom)` on the tops' `.diff`. An
exception in the user's code is reported as an error naming the layer, the method, and where
in the user's file it was raised.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protocaffe import pycaffe
from protocaffe.diagnostics import input_error
from protocaffe.ir.state import layer_included, net_state

FLAG_HINT = (
    "pass --python-layers DIR (the directory holding the layer's module), or "
    "allow_python_layers=True from Python; protocaffe never imports user code unasked"
)


class PythonLayer:
    """One user layer instance with its bottom and top blobs.

    A data layer (no bottoms) is set up at once; a layer with bottoms when the graph knows
    their shapes (`set_up`), and then runs inside the lowered module (`op`)."""

    def __init__(self, proto: Any, phase: int, span: Any = None) -> None:
        self.proto = proto
        self.span = span
        p = proto.python_param
        self.where = f"Python layer '{proto.name}' ({p.module}.{p.layer})"
        module = _import(p.module, self.where, span)
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise input_error(f"{self.where}: module {p.module} has no class {p.layer}", span)
        self.bottom = [pycaffe.Blob() for _ in proto.bottom]
        self.top = [pycaffe.Blob() for _ in proto.top]
        self.instance = self._call(lambda: cls(proto), "__init__")
        self.instance.param_str = p.param_str
        self.instance.phase = phase
        self.ready = False
        if not self.bottom:
            self.set_up([])

    def set_up(self, bottom_shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        """Caffe's Layer::SetUp for these bottom shapes (setup once, reshape every time);
        the top shapes."""
        for blob, shape in zip(self.bottom, bottom_shapes, strict=True):
            blob.reshape(*shape)
        if not self.ready:
            self._call(lambda: self.instance.setup(self.bottom, self.top), "setup")
            self.ready = True
        self._call(lambda: self.instance.reshape(self.bottom, self.top), "reshape")
        return [blob.shape for blob in self.top]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: blob.shape for name, blob in zip(self.proto.top, self.top, strict=True)}

    def forward(self) -> list[np.ndarray]:
        """Caffe's Layer::Forward: reshape, then forward; the tops' data (copied)."""
        self._call(lambda: self.instance.reshape(self.bottom, self.top), "reshape")
        self._call(lambda: self.instance.forward(self.bottom, self.top), "forward")
        return [np.array(blob.data, dtype=np.float32) for blob in self.top]

    def backward(self, top_diffs: list[Any], propagate_down: list[bool]) -> list[np.ndarray]:
        """Caffe's Layer::Backward: the tops' diffs in, the bottoms' diffs (copied) out."""
        for blob, diff in zip(self.top, top_diffs, strict=True):
            blob.diff[...] = 0 if diff is None else diff
        for blob in self.bottom:
            blob.diff[...] = 0
        run = lambda: self.instance.backward(self.top, propagate_down, self.bottom)  # noqa: E731
        self._call(run, "backward")
        return [np.array(blob.diff, dtype=np.float32) for blob in self.bottom]

    def op(self) -> Any:
        """The function the lowered module calls: bottoms in, tops out, backward through
        the layer's own `backward` (see `protocaffe.lower.caffe_grad.python_layer`)."""
        from protocaffe.lower.caffe_grad import python_layer

        def run(*bottoms: Any) -> Any:
            return python_layer(self, *bottoms)

        run.__name__ = f"python_layer_{''.join(c if c.isalnum() else '_' for c in self.proto.name)}"
        return run

    def _call(self, run: Any, method: str) -> Any:
        try:
            return run()
        except Exception as err:
            frame = traceback.extract_tb(err.__traceback__)[-1]
            raise input_error(
                f"{self.where}: {method} raised {type(err).__name__}: {err} "
                f"({frame.filename}:{frame.lineno})",
                self.span,
            ) from None


@contextlib.contextmanager
def _caffe_shim(path: Sequence[str]) -> Iterator[None]:
    """`import caffe` gives protocaffe.pycaffe, and `path` is searched, while importing."""
    saved_path, saved_caffe = list(sys.path), sys.modules.get("caffe")
    sys.path[:0] = [str(Path(p).resolve()) for p in path]
    sys.modules["caffe"] = pycaffe
    try:
        yield
    finally:
        sys.path[:] = saved_path
        if saved_caffe is None:
            sys.modules.pop("caffe", None)
        else:
            sys.modules["caffe"] = saved_caffe


def _import(name: str, where: str, span: Any) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise input_error(
            f"{where}: cannot import module {name}: {err}",
            span,
            hint="pass --python-layers DIR with the directory that holds it",
        ) from None
    except Exception as err:  # the user's module failed while being imported
        frame = traceback.extract_tb(err.__traceback__)[-1]
        raise input_error(
            f"{where}: importing {name} raised {type(err).__name__}: {err} "
            f"({frame.filename}:{frame.lineno})",
            span,
        ) from None


class PythonLayers:
    """The allowed Python data layers of one net in one NetState, set up (see module doc)."""

    def __init__(self, layers: dict[str, PythonLayer]) -> None:
        self.layers = layers

    @classmethod
    def load(
        cls,
        net: Any,
        phase: str | int,
        stages: Sequence[str] = (),
        level: int | None = None,
        path: Sequence[str] = (),
        spans: Any = None,
    ) -> PythonLayers:
        """Import and set up every bottom-less Python layer of `net` (a NetParameter) in
        the NetState; `path` lists directories to import the modules from. `spans(i)` may
        locate layer i for errors."""
        state = net_state(net, phase, stages, level)
        layers = {}
        with _caffe_shim(path):
            for i, proto in enumerate(net.layer):
                if proto.type != "Python" or not layer_included(state, proto):
                    continue
                span = spans(i) if spans else None
                layers[proto.name] = PythonLayer(proto, state.phase, span)
        loaded = cls(layers)
        _ACTIVE.append(loaded)
        return loaded

    def unload(self) -> None:
        """Stop offering these layers to graphs built from now on."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Data layers' top shapes after setup, by top name (input_shapes for build_graph)."""
        return {
            k: v
            for layer in self.layers.values()
            if not layer.bottom
            for k, v in layer.shapes.items()
        }


# Loaded sets whose Python layers with bottoms the graph builder and lowering may run (the
# most recent first). Only `PythonLayers.load`, the user's opt-in, adds to it.
_ACTIVE: list[PythonLayers] = []


def allowed_layer(name: str, phase: int) -> PythonLayer | None:
    """The loaded user layer with bottoms named `name` for `phase`, if the user loaded one."""
    for loaded in reversed(_ACTIVE):
        layer = loaded.layers.get(name)
        if layer is not None and layer.bottom and layer.instance.phase == phase:
            return layer
    return None


def refuse(layer: Any) -> Exception:
    """The error for a Python layer met without the user's permission."""
    p = layer.proto.python_param
    return input_error(
        f"layer '{layer.name}' runs Python code ({p.module}.{p.layer}); it is not imported "
        "unless you allow it",
        layer.span,
        hint=FLAG_HINT,
    )
