"""CaffeModule: the torch.fx.GraphModule a Caffe net lowers to.

`forward(blobs)` takes a dict of input blobs by Caffe name and returns a dict of output blobs
by Caffe name. Calling the module also accepts a single tensor (for a one-input net) or
keyword arguments: `model(x)`, `model(data=x)`, `model({"data": x})`.

The fx code is specialised to the input shapes the net was compiled for (Crop sizes, Reshape
targets and the pooling path depend on them). Calling the module with other input shapes does
what Caffe's Net::Reshape does: the net is re-compiled for those shapes (cached per shape) and
runs on the same parameters, so an FCN takes any image size. The `max_variants` most recently
used variants are kept (least recently used dropped first), so a server fed many sizes stays
bounded; a size the net cannot take raises `InputShapeError` (a CompileError and a ValueError)
carrying the located diagnostic, and one whose activations would not fit the device raises
`ResourceError` (unless `allow_oversize`). Floating inputs are cast to the module's dtype and
moved to its device, so a bfloat16 module takes the float32 tensors a float32 one takes.

Each layer with stored blobs is a child module named after the layer (sanitised to an
identifier; `caffe_names` maps the Caffe name to the attribute), holding its blobs under their
BlobSpec names (`conv1.weight`, `conv1.bias`, ...).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

if TYPE_CHECKING:
    from protocaffe.ir.graph import Graph, Layer


def _tensors(module: torch.nn.Module) -> dict[str, int]:
    """Every tensor `module`'s code can reach, by name, as identities."""
    named = itertools.chain(
        module.named_parameters(remove_duplicate=False),
        module.named_buffers(remove_duplicate=False),
        ((k, v) for k, v in vars(module).items() if isinstance(v, torch.Tensor)),
    )
    return {name: id(t) for name, t in named}


class LayerBlobs(torch.nn.Module):
    """The stored blobs of one Caffe layer (parameters, or buffers for statistics)."""

    def __init__(self, caffe_name: str, caffe_type: str) -> None:
        super().__init__()
        self.caffe_name = caffe_name
        self.caffe_type = caffe_type

    def extra_repr(self) -> str:
        return f"{self.caffe_type} {self.caffe_name!r}"


class CaffeModule(fx.GraphModule):
    """A lowered Caffe net. See the module docstring for calling conventions."""

    caffe_graph: Graph
    caffe_names: dict[str, str]  # Caffe layer name -> child module attribute
    input_names: list[str]  # Caffe blob names of the inputs, in net order
    output_names: list[str]  # keys of the returned dict
    max_variants: int = 8  # re-specialised variants kept (LRU); 0 keeps none
    allow_oversize: bool = False  # skip the memory guard for new input shapes
    fast_cpu: bool = True  # TEST convolutions take lower/passes.py's fast CPU path

    def __call__(self, blobs: Any = None, /, **named: Any) -> dict[str, Any]:
        inputs = self._gather_inputs(blobs, named)
        shapes = tuple(tuple(inputs[n].shape) for n in self.input_names)
        target = self if shapes == self.input_shapes else self.reshaped(shapes)
        if self.__dict__.get("_freezing"):
            # Inductor reads `freezing` outside its own options too: set it for the call
            # that compiles (and for later ones, so guards see the same configuration).
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=True):
                return fx.GraphModule.__call__(target, inputs)
        return fx.GraphModule.__call__(target, inputs)

    @property
    def input_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The input blob shapes this module's code is specialised to, in `input_names` order."""
        return tuple(tuple(v.shape) for v in self.caffe_graph.inputs)

    def reshaped(self, shapes: Iterable[Iterable[int]]) -> CaffeModule:
        """This net compiled for other input shapes (in `input_names` order), sharing blobs."""
        key = tuple(tuple(int(d) for d in s) for s in shapes)
        if key == self.input_shapes:
            return self
        variants: OrderedDict = self.__dict__.setdefault("_variants", OrderedDict())
        variant = variants.get(key)
        if variant is not None:
            variants.move_to_end(key)
            return variant
        from protocaffe.lower.builder import reshape_module
        from protocaffe.runtime.guards import check_fits

        variant = reshape_module(self, dict(zip(self.input_names, key, strict=True)))
        ref = self._reference_tensor()  # None for a net without stored blobs: CPU float32
        check_fits(  # the parameters exist already: only the activations are new
            variant.caffe_graph,
            ref.device if ref is not None else "cpu",
            ref.dtype if ref is not None else "float32",
            params=False,
            allow_oversize=self.allow_oversize,
        )
        variants[key] = variant
        while len(variants) > max(int(self.max_variants), 0):
            variants.popitem(last=False)
        return variant

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """torch.compile in place. Without arguments, a TEST module keeps the fast CPU path's
        convolutions (lower/passes.py) as one opaque op each and lets inductor fuse the rest,
        so inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR) serves the next process. With
        `fast_cpu=False`, an inference module on the CPU compiles with inductor freezing
        instead: weights become constants that oneDNN pre-packs, which no cache can store, and
        frozen weights are not re-read, so re-load the module after changing them."""
        self.__dict__["_freezing"] = (
            not args and not kwargs and not self.fast_cpu and not self.training and self._on_cpu()
        )
        super().compile(*args, **kwargs)

    def runs_as(self, other: CaffeModule) -> bool:
        """The same code on the same tensors: `other` computes what this module computes (a
        re-specialised variant whose code reads every size from its inputs, as FCN's do)."""
        return self.code == other.code and _tensors(self) == _tensors(other)

    def _on_cpu(self) -> bool:
        tensor = self._reference_tensor()
        return tensor is None or tensor.device.type == "cpu"

    def _reference_tensor(self) -> torch.Tensor | None:
        """A floating stored blob: its device and dtype are the module's."""
        blobs = itertools.chain(self.parameters(), self.buffers())
        return next((t for t in blobs if t.is_floating_point()), None)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # Moving or casting may replace buffers; re-specialised variants are rebuilt lazily.
        self.__dict__.pop("_variants", None)
        return super()._apply(fn, recurse)

    def _gather_inputs(self, blobs: Any, named: dict[str, Any]) -> dict[str, Any]:
        if blobs is None:
            given: dict[str, Any] = dict(named)
        elif isinstance(blobs, Mapping):
            given = {**blobs, **named}
        elif len(self.input_names) == 1 and not named:
            given = {self.input_names[0]: blobs}
        else:
            raise TypeError(
                f"this net has inputs {self.input_names}: pass a dict of tensors by blob name"
            )
        missing = [n for n in self.input_names if n not in given]
        extra = [n for n in given if n not in self.input_names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input blob(s) {missing}")
            if extra:
                parts.append(f"unknown input blob(s) {extra}")
            raise TypeError(f"{'; '.join(parts)} (the net's inputs are {self.input_names})")
        return {n: self._as_tensor(given[n]) for n in self.input_names}

    def _as_tensor(self, x: Any) -> Any:
        """A tensor on the module's device; floating values in the module's dtype."""
        ref = self._reference_tensor()
        x = torch.as_tensor(x)
        if ref is None:
            return x
        if x.is_floating_point() and x.dtype != ref.dtype:
            return x.to(device=ref.device, dtype=ref.dtype)
        return x.to(ref.device)

    def layer_module(self, caffe_name: str) -> LayerBlobs:
        """The child module holding Caffe layer `caffe_name`'s blobs."""
        return self.get_submodule(self.caffe_names[caffe_name])

    def blob_tensor(self, layer: Layer, name: str) -> torch.Tensor:
        """Layer `layer`'s stored blob `name` (a view of the owner's for reshaped sharing)."""
        owner = self._sharing.get((layer, name))
        if owner is not None:
            spec = next(s for s in layer.blob_specs if s.name == name)
            return self.get_parameter_or_buffer(owner).view(spec.shape)
        return self.get_parameter_or_buffer(f"{self._layer_attrs[layer]}.{name}")

    def get_parameter_or_buffer(self, path: str) -> torch.Tensor:
        owner, _, leaf = path.rpartition(".")
        return getattr(self.get_submodule(owner), leaf)

    def with_outputs(self, outputs: Iterable[str]) -> CaffeModule:
        """The same net (sharing this module's parameters) returning the named blobs too.

        `outputs` are Caffe blob names (the last definition is meant) or IR value ids
        (`conv1@relu1` for a blob before an in-place layer redefined it).
        """
        from protocaffe.lower.builder import assemble

        return assemble(
            self.caffe_graph, self, self._layer_attrs, self._sharing, list(outputs), self.fast_cpu
        )

    _layer_attrs: dict[Layer, str]
    _sharing: dict[tuple[Layer, str], str]  # reshaped shared blobs -> owner's path
