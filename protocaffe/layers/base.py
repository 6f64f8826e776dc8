"""The layer registry: each Caffe layer type is declared once, by a `LayerDef` subclass.

A LayerDef says, for one type name:
  - `param_field`: which LayerParameter field holds its parameters (e.g. "convolution_param"),
  - `bottoms` / `tops`: how many blobs it takes and produces (min, max; max None = unbounded),
  - `shapes()`: Caffe's Reshape() rule, bottom shapes -> top shapes,
  - `blobs()`: its learnable / stored blobs in Caffe's order (blobs[0], blobs[1], ...),
  - `macs()`: multiply-accumulates for one forward pass,
  - `coord_map()`: the affine output->input coordinate map used for Crop alignment,
  - `lower()`: its PyTorch lowering, emitting torch.fx nodes.

Adding a layer type is one subclass decorated with `@register`, in one file under
protocaffe/layers/, plus its test, then `make layer-index` (layers/_index.py says which file
registers each type; tests/test_layer_index.py checks it). Nothing here imports torch:
lowering code imports it lazily (see `protocaffe.lazy`) so that `protocaffe compile` stays fast.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, NoReturn

from protocaffe.diagnostics import CompileError, Diagnostic, Severity, Span

if TYPE_CHECKING:
    import numpy as np
    from torch import fx

    from protocaffe.ir.graph import Layer

Shape = tuple[int, ...]
Arity = tuple[int, int | None]


def shape_str(shape: Sequence[int]) -> str:
    """Caffe-style shape text, e.g. 1x21x34x34."""
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def has_field(param: Any, name: str) -> bool:
    """Whether protobuf message `param` sets field `name` (a repeated field: non-empty)."""
    try:
        return param.HasField(name)  # a singular BVLC field, the common case
    except ValueError:  # a repeated field, or a fork field (an extension)
        pass
    from protocaffe.proto.schema import declared_fields, fields_by_name

    desc = declared_fields(param.DESCRIPTOR).get(name) or fields_by_name(param.DESCRIPTOR)[name]
    if desc.is_repeated:
        return len(getattr(param, name)) > 0
    return param.HasExtension(desc) if desc.is_extension else param.HasField(name)


def canonical_axis(axis: int, ndim: int) -> int:
    """Caffe's CanonicalAxisIndex without the CHECK: negative axes count from the end."""
    return axis + ndim if axis < 0 else axis


class BlobSpec(NamedTuple):
    """One of a layer's stored blobs, in Caffe order.

    `name` is the attribute under the layer's module (`conv1.weight`); `filler` is the
    FillerParameter message to initialise it with when no weights are loaded (None means
    constant 0). `learnable=False` marks statistics such as BatchNorm's running mean, which
    become buffers rather than nn.Parameters.
    """

    name: str
    shape: Shape
    filler: Any = None
    learnable: bool = True


class Affine(NamedTuple):
    """Coordinate map on the spatial axes: input_coord = scale * output_coord + shift.

    Mirrors the FCN authors' coord_map: conv/pool have scale = stride, deconv 1/stride.
    Stored as output->input in the direction of data flow: a top coordinate y corresponds to
    bottom coordinate scale*y + shift.
    """

    scale: float
    shift: float

    def then(self, inner: Affine) -> Affine:
        """Compose: first map through self (top->bottom), then inner (bottom->its bottom)."""
        return Affine(inner.scale * self.scale, inner.scale * self.shift + inner.shift)


IDENTITY = Affine(1.0, 0.0)


class LayerError(CompileError):
    """A shape or parameter error tied to one layer (and optionally one of its fields)."""


# LayerParameter fields a diagnostic may point at (others are looked up in the layer's param).
LAYER_FIELDS = ("bottom", "top", "param", "loss_weight", "propagate_down")


class ShapeContext:
    """What a shape rule sees: the layer, its parameters and its bottoms' shapes."""

    def __init__(
        self,
        layer: Layer,
        bottoms: list[Shape],
        span_of: Callable[[tuple[str | int, ...]], Span | None],
        phase: int = 1,
        overrides: dict[str, Shape] | None = None,
    ) -> None:
        self.layer = layer
        self.bottoms = bottoms
        self.phase = phase  # caffe_pb2.TRAIN == 0, TEST == 1
        # User-given shapes (--input name=N,C,H,W) by top name; input/data layers honour them.
        self.overrides = overrides or {}
        self._span_of = span_of
        self.warnings: list[Diagnostic] = []
        # What a rule works out once for shapes(), blobs(), macs() and coord_map() to share
        # (a convolution's window), by the rule's own key.
        self.memo: dict[str, Any] = {}
        spec = layer.spec
        self.param = getattr(layer.proto, spec.param_field) if spec and spec.param_field else None

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def dialect(self) -> str | None:
        """The fork dialect the net is read in (--dialect or the file's evidence), or None."""
        return self.layer.dialect

    @property
    def type(self) -> str:
        return self.layer.type

    def has(self, field: str) -> bool:
        """Whether the layer's param message sets `field` (scalar or repeated)."""
        return self.param is not None and has_field(self.param, field)

    def span(self, *field_path: str | int) -> Span | None:
        """Span of a field inside this layer's param message (or of the layer itself)."""
        spec = self.layer.spec
        path: tuple[str | int, ...] = self.layer.path
        if field_path:
            # bottom/top/param and the other *_param messages (loss_param, transform_param,
            # softmax_param, ...) hang off the LayerParameter, not off this layer's own param;
            # so does any name that the param message lacks (a fork's strict_dim).
            first = str(field_path[0])
            layer_level = first in LAYER_FIELDS or first.endswith("_param")
            if self.param is not None and not layer_level:
                from protocaffe.proto.schema import fields_by_name

                layer_level = first not in fields_by_name(self.param.DESCRIPTOR)
            if spec and spec.param_field and not layer_level:
                path = (*path, spec.param_field)
            path = (*path, *field_path)
        return self._span_of(path)

    def fail(self, message: str, *field_path: str | int, hint: str | None = None) -> NoReturn:
        """Stop this layer's shape rule with an error located at the layer or one field."""
        raise LayerError([self._diagnostic("error", message, field_path, hint)])

    def warn(self, message: str, *field_path: str | int, hint: str | None = None) -> None:
        self.warnings.append(self._diagnostic("warning", message, field_path, hint))

    def note(self, message: str, *field_path: str | int) -> None:
        """A remark for `compile` (a choice made from the file's evidence, an ignored field)."""
        self.warnings.append(self._diagnostic("note", message, field_path, None))

    def _diagnostic(
        self, severity: Severity, message: str, field_path: tuple[str | int, ...], hint: str | None
    ) -> Diagnostic:
        span = self.span(*field_path) if field_path else None
        text = f"{self.type} '{self.name}': {message}"
        return Diagnostic(severity, text, span or self.layer.span, hint)


def checked_axis(ctx: ShapeContext, axis: int, *field: str | int) -> int:
    """Caffe's CanonicalAxisIndex with its CHECK, as a diagnostic: `axis` of bottom[0].

    `field` locates the axis among the layer's parameters (default `axis`); its last name
    starts the message.
    """
    field = field or ("axis",)
    ndim = len(ctx.bottoms[0])
    if not -ndim <= axis < ndim:
        ctx.fail(
            f"{field[-1]} {axis} is out of range for bottom '{ctx.layer.bottoms[0]}' of shape "
            f"{shape_str(ctx.bottoms[0])} ({ndim} axes; valid: {-ndim}..{ndim - 1})",
            *field,
        )
    return canonical_axis(axis, ndim)


class LowerContext:
    """What a lowering sees. Implemented by protocaffe.lower.builder; documented here.

    Attributes: `layer`, `param`, `inputs` (fx nodes of the bottoms, in order),
    `bottom_shapes`, `top_shapes`, `phase` (0 TRAIN / 1 TEST), `graph` (the fx.Graph).
    Methods: `call(fn, *args, **kwargs)` emits a call_function node; `blob(name)` emits a
    get_attr node for this layer's stored blob; `can_modify_input(i)` says whether input i
    has no other consumer, so an in-place op is safe.
    """

    layer: Layer
    param: Any
    inputs: list[fx.Node]
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    phase: int
    graph: fx.Graph

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> fx.Node:
        raise NotImplementedError

    def blob(self, name: str) -> fx.Node:
        raise NotImplementedError

    def can_modify_input(self, index: int) -> bool:
        raise NotImplementedError


class LayerDef:
    """Base class of every layer declaration. Subclass, set the class attributes, register."""

    type: ClassVar[str]
    param_field: ClassVar[str | None] = None
    bottoms: ClassVar[Arity] = (1, 1)
    tops: ClassVar[Arity] = (1, 1)
    # Caffe computes it correctly when top == bottom (ReLU, Dropout, BatchNorm, Scale, ...).
    in_place: ClassVar[bool] = False
    # Spatial coordinates pass through unchanged (elementwise layers, Concat, Eltwise, ...).
    coord_identity: ClassVar[bool] = False
    # Data layers: produce blobs from outside the net (shape from params or --input).
    is_input: ClassVar[bool] = False
    # Loss layers: top[0] is a loss, weighted by loss_weight (default 1).
    is_loss: ClassVar[bool] = False

    def for_layer(self, proto: Any) -> LayerDef:
        """The declaration that handles this layer: itself, unless the type's meaning depends on
        the layer's parameters (a Python layer that protocaffe runs natively)."""
        return self

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        raise NotImplementedError

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        return []

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        return 0

    def blob_count_hint(self, count: int) -> str | None:
        """What a weights file with `count` blobs for this layer suggests (a fork variant)."""
        return None

    def coord_map(self, ctx: ShapeContext) -> Affine | None:
        """Affine map from top to bottom[0] coordinates on spatial axes; None = not defined."""
        return IDENTITY if self.coord_identity else None

    def explain(self, ctx: ShapeContext) -> list[str]:
        """Lines for `protocaffe compile --explain`: the shape formula with numbers filled in."""
        return []

    def mixes_items(self, layer: Layer, phase: int) -> bool:
        """Whether one batch item's tops depend on other items' bottoms while every blob keeps
        the batch axis (Softmax over axis 0, BatchNorm on batch statistics): `run` stacks
        inputs into a batch only when no layer of the net does."""
        return False

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        raise NotImplementedError(f"{self.type} has no PyTorch lowering")

    @property
    def lowerable(self) -> bool:
        return type(self).lower is not LayerDef.lower

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Slow numpy oracle mirroring Caffe's C++ forward loop (optional, for tests)."""
        raise NotImplementedError


class Registry(MutableMapping[str, LayerDef]):
    """Caffe type name -> its LayerDef. A built-in type's layer file is imported the first time
    the type is asked for (layers/_index.py says which file), so a compile imports only the
    layer files its net uses; listing the registry imports them all. Plugins add to it."""

    def __init__(self) -> None:
        self._defs: dict[str, LayerDef] = {}

    def __getitem__(self, type_name: str) -> LayerDef:
        found = self._defs.get(type_name)
        if found is None:
            from protocaffe.layers._index import MODULES

            for module in MODULES.get(type_name, ()):
                importlib.import_module(f"protocaffe.layers.{module}")
            found = self._defs[type_name]
        return found

    def get(self, type_name: str, default: Any = None) -> Any:
        found = self._defs.get(type_name)  # the common case, without the KeyError machinery
        return found if found is not None else super().get(type_name, default)

    def __setitem__(self, type_name: str, spec: LayerDef) -> None:
        self._defs[type_name] = spec

    def __delitem__(self, type_name: str) -> None:
        del self._defs[type_name]

    def __iter__(self) -> Iterator[str]:
        from protocaffe.layers import load_all

        load_all()
        return iter(self._defs)

    def __len__(self) -> int:
        from protocaffe.layers import load_all

        load_all()
        return len(self._defs)

    def add(self, cls: type[LayerDef]) -> None:
        if cls.type in self._defs:
            raise ValueError(f"layer type {cls.type!r} registered twice")
        self._defs[cls.type] = cls()


REGISTRY = Registry()


def register(cls: type[LayerDef]) -> type[LayerDef]:
    """Class decorator: make a layer type known by its Caffe type name."""
    REGISTRY.add(cls)
    return cls


def lookup(type_name: str) -> LayerDef | None:
    return REGISTRY.get(type_name)
