"""Data layers: where a net's blobs come from, and the sinks that take them out.

Input and the database/file readers (Data, ImageData, HDF5Data, MemoryData, WindowData,
Python) are `is_input`: their tops become the lowered module's inputs, so only their shapes
matter here. Caffe decides many of those shapes from the data itself (the first record of a
database, the first image, an HDF5 dataset, a Python layer's reshape()). We never read data
at compile time: what the prototxt fixes is used, `--shape name=N,C,H,W` (ctx.overrides, by
top name) supplies or replaces the rest, and a shape that is still unknown is an error that
says which `--shape` to pass, with the known dims filled in. An override always wins, even
with another number of axes. Label tops of the readers are [batch_size], as in Caffe.

DummyData is not an input: it lowers to tensors made by its fillers on every forward pass
(Caffe refills random fillers each pass too). HDF5Output and Silence-like sinks have no tops.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import CompileError, Diagnostic
from protocaffe.layers.base import LayerDef, LowerContext, Shape, ShapeContext, register
from protocaffe.lower.fillers import check_fillers

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.ir.graph import Layer

# What a top's shape is before overrides: a known Shape, or a template for the --shape hint
# with the known dims filled in ("64,C,227,227").
Guess = Shape | str


def _template(*dims: int | str | None) -> str:
    return ",".join(str(d) if d else name for d, name in zip(dims, "NCHW", strict=False))


SIZES_HINT = "replace the letters with the sizes your data has"


def resolve(
    ctx: ShapeContext, guesses: list[Guess], why: str, *field: str | int, hint: str = SIZES_HINT
) -> list[Shape]:
    """Each top's override, else its known shape; fail listing every top still unknown."""
    out: list[Shape] = []
    missing: list[str] = []
    for top, guess in zip(ctx.layer.tops, guesses, strict=True):
        if top in ctx.overrides:
            out.append(tuple(ctx.overrides[top]))
        elif isinstance(guess, tuple):
            out.append(guess)
        else:
            missing.append(f"--shape {top}={guess}")
    if missing:
        ctx.fail(
            f"{why}; pass {' '.join(missing)}",
            *field,
            hint=hint,
        )
    return out


def _positive(value: int, ctx: ShapeContext, what: str, *field: str | int) -> int:
    if value <= 0:
        ctx.fail(f"{what} must be positive, got {value}", *field)
    return value


def _overridden(ctx: ShapeContext) -> bool:
    """Every top has a --shape shape, so the prototxt's own sizes do not matter."""
    return all(t in ctx.overrides for t in ctx.layer.tops)


class _Input(LayerDef):
    is_input = True
    bottoms = (0, 0)


@register
class Input(_Input):
    type = "Input"
    param_field = "input_param"
    tops = (1, None)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        given = [tuple(s.dim) for s in ctx.param.shape]
        tops = ctx.layer.tops
        if len(given) not in (0, 1, len(tops)):
            ctx.fail(
                f"{len(given)} shapes for {len(tops)} tops; give one shape for all tops, "
                "one per top, or none (and pass --shape)",
                "shape",
            )
        guesses: list[Guess] = [
            (given[0] if len(given) == 1 else given[i]) if given else "N,C,H,W"
            for i in range(len(tops))
        ]
        return resolve(ctx, guesses, "input_param gives no shape")


def _batch(ctx: ShapeContext) -> int:
    return ctx.param.batch_size


def _crop(ctx: ShapeContext) -> int:
    return ctx.layer.proto.transform_param.crop_size


def _first_record(ctx: ShapeContext, read: Callable[[], Any]) -> Any:
    """The item shape `read` gets from the layer's source, when it exists and no --input
    replaces it (Caffe's setup reads it the same way); a bad source is this layer's error."""
    source = ctx.param.source
    if _overridden(ctx) or not source or not Path(source).exists():
        return None
    try:
        return read()
    except CompileError as err:
        first = err.diagnostics[0]
        ctx.fail(first.message, "source", hint=first.hint)


def _reader_tops(ctx: ShapeContext, data: Guess, why: str) -> list[Shape]:
    """[data, label] tops of a database/file reader; the label is one value per item."""
    n = _batch(ctx)
    guesses: list[Guess] = [data, (n,) if n > 0 else "N"][: len(ctx.layer.tops)]
    if n <= 0 and not _overridden(ctx):
        _positive(n, ctx, "batch_size", "batch_size")
    return resolve(ctx, guesses, why, "source")


@register
class Data(_Input):
    """LevelDB/LMDB records: C (and H, W without crop_size) come from the first record."""

    type = "Data"
    param_field = "data_param"
    tops = (1, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        crop, n = _crop(ctx), _batch(ctx)
        item = _first_record(ctx, lambda: _first_datum(ctx))
        data: Guess = _template(n, None, crop, crop)
        if item and n > 0:
            data = (n, item[0], crop, crop) if crop else (n, *item)
        return _reader_tops(ctx, data, "the data shape is read from the database at run time")


def _first_datum(ctx: ShapeContext) -> Shape:
    from protocaffe.data import records

    p, t = ctx.param, ctx.layer.proto.transform_param
    key, value = records.first_record(p.source, p.backend)
    where = f"{p.source} record {key.decode(errors='replace')}"
    return records.decode_datum(value, where, t.force_color, t.force_gray)[0].shape


def check_resize_pair(ctx: ShapeContext) -> None:
    """Image readers' new_height/new_width: both set (resize) or neither (keep the size)."""
    p = ctx.param
    if (p.new_height > 0) != (p.new_width > 0):
        ctx.fail(
            "new_height and new_width must be set together "
            f"(got new_height {p.new_height}, new_width {p.new_width})",
            "new_height" if p.new_height else "new_width",
        )


@register
class ImageData(_Input):
    """Images listed in a text file; known when crop_size or new_height/new_width is set."""

    type = "ImageData"
    param_field = "image_data_param"
    tops = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        check_resize_pair(ctx)
        n, c, crop = p.batch_size, 3 if p.is_color else 1, _crop(ctx)
        h, w = (crop, crop) if crop else (p.new_height, p.new_width)
        if h <= 0:
            item = _first_record(ctx, lambda: _first_image(ctx))
            h, w = item[1:] if item else (h, w)
        data: Guess = (n, c, h, w) if n > 0 and h > 0 else _template(n, c, h, w)
        return _reader_tops(ctx, data, "the image size is read from the first image at run time")


def _first_image(ctx: ShapeContext) -> Shape:
    from protocaffe.data import records

    p = ctx.param
    path, _ = records.read_labelled_list(p.source)[0]
    return records.image_shape(p.root_folder + path, f"{p.source}:1", p.is_color)


@register
class WindowData(_Input):
    """Windows cropped from images to crop_size; channels come from the window file."""

    type = "WindowData"
    param_field = "window_data_param"
    tops = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        crop = _crop(ctx)
        if crop <= 0 and not _overridden(ctx):
            ctx.fail(
                "WindowData needs transform_param.crop_size > 0",
                "transform_param",
                "crop_size",
            )
        data = _template(_batch(ctx), None, crop, crop)
        return _reader_tops(ctx, data, "the channel count is read from the window file at run time")


@register
class MemoryData(_Input):
    """Arrays handed in from code; every dim is in memory_data_param."""

    type = "MemoryData"
    param_field = "memory_data_param"
    tops = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        dims = (p.batch_size, p.channels, p.height, p.width)
        if not _overridden(ctx):
            for name, value in zip(
                ("batch_size", "channels", "height", "width"), dims, strict=True
            ):
                _positive(value, ctx, name, name)
        return resolve(ctx, [dims, (p.batch_size,)], "")


@register
class HDF5Data(_Input):
    """Datasets named after the tops, read from the HDF5 files listed in `source`."""

    type = "HDF5Data"
    param_field = "hdf5_data_param"
    tops = (1, None)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        n = _batch(ctx)
        template = f"{n},..." if n > 0 else "N,..."
        rows = _first_record(ctx, lambda: _first_rows(ctx)) if n > 0 else None
        return resolve(
            ctx,
            [(n, *row) for row in rows] if rows else [template] * len(ctx.layer.tops),
            "shapes come from the HDF5 datasets at run time",
            "source",
        )


def _first_rows(ctx: ShapeContext) -> Any:
    from protocaffe.data import records

    first = records.read_list(ctx.param.source)[0]
    return records.hdf5_row_shapes(first, list(ctx.layer.tops))


# Python layers that protocaffe runs natively, by (module, layer) as python_param names them.
NATIVE_PYTHON_LAYERS: dict[tuple[str, str], LayerDef] = {}


def native_python_layer(module: str, layer: str) -> Any:
    """Class decorator: run `type: "Python"` layers of this module and class natively."""

    def add(cls: type[LayerDef]) -> type[LayerDef]:
        NATIVE_PYTHON_LAYERS[(module, layer)] = cls()
        return cls

    return add


@register
class Python(_Input):
    """A layer written in Python: its reshape() decides the top shapes at run time.

    Treated as an input: its tops are fed to the lowered module by the caller, unless
    protocaffe implements that Python class natively (NATIVE_PYTHON_LAYERS).
    """

    type = "Python"
    param_field = "python_param"
    bottoms = (0, None)
    tops = (0, None)

    def for_layer(self, proto: Any) -> LayerDef:
        p = proto.python_param
        native = NATIVE_PYTHON_LAYERS.get((p.module, p.layer))
        if native is not None:
            return native
        return PYTHON_COMPUTE if len(proto.bottom) and _user_loaded(proto.name) else self

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p = ctx.param
        where = ".".join(x for x in (p.module, p.layer) if x) or "its Python class"
        return resolve(
            ctx,
            ["N,C,H,W"] * len(ctx.layer.tops),
            f"output shapes of {where} are set at run time",
            "module",
            hint=f"{SIZES_HINT}; or let protocaffe run the layer's own code to learn them "
            "(train/test: --python-layers DIR; Python: protocaffe.data.PythonLayers.load)",
        )


def _user_loaded(name: str) -> bool:
    """Whether the user loaded a Python layer with bottoms named `name` (any phase)."""
    import sys

    pylayer = sys.modules.get("protocaffe.data.pylayer")  # only after PythonLayers.load
    return pylayer is not None and any(
        pylayer.allowed_layer(name, phase) is not None for phase in (0, 1)
    )


class PythonCompute(LayerDef):
    """A Python layer with bottoms that the user loaded (`protocaffe.data.PythonLayers`):
    its setup/reshape give the top shapes, and the lowered module runs its forward and
    backward. Without the user's opt-in, `Python` treats it as an input, as before."""

    type = "Python"
    param_field = "python_param"
    bottoms = (1, None)
    tops = (0, None)

    def mixes_items(self, layer: Layer, phase: int) -> bool:
        return True  # the user's forward sees the whole batch

    def _user(self, ctx: ShapeContext | LowerContext) -> Any:
        from protocaffe.data.pylayer import FLAG_HINT, allowed_layer

        user = allowed_layer(ctx.layer.name, ctx.phase)
        if user is None:
            p = ctx.layer.proto.python_param
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"runs Python code ({p.module}.{p.layer}) that was not loaded for "
                        "this phase",
                        ctx.layer.span,
                        FLAG_HINT,
                    )
                ]
            )
        return user

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        try:
            return self._user(ctx).set_up(ctx.bottoms)
        except CompileError as err:
            first = err.diagnostics[0]
            ctx.fail(first.message, "module", hint=first.hint)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        import operator

        both = ctx.call(self._user(ctx).op(), *ctx.inputs)
        return [ctx.call(operator.getitem, both, i) for i in range(len(ctx.top_shapes))]


PYTHON_COMPUTE = PythonCompute()


@register
class DummyData(LayerDef):
    """Blobs filled by fillers (constant 0 by default); lowered, not an input."""

    type = "DummyData"
    param_field = "dummy_data_param"
    bottoms = (0, 0)
    tops = (1, None)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        p, tops = ctx.param, len(ctx.layer.tops)
        if len(p.data_filler) not in (0, 1, tops):
            ctx.fail(
                f"{len(p.data_filler)} data_fillers for {tops} tops; give 0, 1 or one per top",
                "data_filler",
            )
        legacy = ("num", "channels", "height", "width")
        if any(len(getattr(p, f)) for f in legacy):
            if len(p.shape):
                ctx.fail("give either shape or num/channels/height/width, not both", "shape")
            for f in legacy:
                if len(getattr(p, f)) not in (1, tops):
                    ctx.fail(
                        f"'{f}' is given {len(getattr(p, f))} times for {tops} tops; "
                        "give it once or once per top",
                        f,
                    )
            shapes = [tuple(_pick(getattr(p, f), i) for f in legacy) for i in range(tops)]
        elif len(p.shape) not in (1, tops):
            ctx.fail(
                f"{len(p.shape)} shapes for {tops} tops; give one shape or one per top", "shape"
            )
        else:
            shapes = [tuple(_pick(p.shape, i).dim) for i in range(tops)]
        fillers = [_pick(p.data_filler, i) if len(p.data_filler) else None for i in range(tops)]
        names = (f"data_filler of top {i}" for i in range(tops))
        check_fillers(ctx, zip(names, fillers, shapes, strict=True))
        return shapes

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        from protocaffe.lazy import torch

        fillers = list(ctx.param.data_filler)
        out = []
        for i, shape in enumerate(ctx.top_shapes):
            f = _pick(fillers, i) if fillers else None
            if f is None or f.type == "constant":
                value = f.value if f is not None else 0.0
                out.append(ctx.call(torch.full, tuple(shape), value))
            else:
                out.append(ctx.call(fill_fresh, _filler_fields(f), tuple(shape)))
        return out

    def reference(self, ctx, inputs, blobs):
        import numpy as np

        # Only constant fillers have a deterministic oracle.
        fillers = list(ctx.param.data_filler)
        out = []
        for i, shape in enumerate(self.shapes(ctx)):
            f = _pick(fillers, i) if fillers else None
            if f is not None and f.type != "constant":
                raise NotImplementedError("random DummyData fillers have no numpy oracle")
            out.append(np.full(shape, f.value if f else 0.0, dtype=np.float32))
        return out


def _pick(values: Any, i: int) -> Any:
    """The i-th of a per-top repeated field given once (for all tops) or once per top."""
    return values[i if len(values) > 1 else 0]


_FILLER_FIELDS = ("type", "value", "min", "max", "mean", "std", "sparse", "variance_norm")


def _filler_fields(filler: Any) -> dict[str, Any]:
    # fx node arguments must be plain values, so the message travels as a dict.
    return {name: getattr(filler, name) for name in _FILLER_FIELDS}


def fill_fresh(fields: dict[str, Any], shape: tuple[int, ...]) -> Any:
    """A tensor filled by Caffe's filler `fields` from torch's global generator."""
    from protocaffe.lower.fillers import fill

    return fill(SimpleNamespace(**fields), shape)


@register
class HDF5Output(LayerDef):
    """Writes its two bottoms to an HDF5 file in Caffe; protocaffe drops them (no tops)."""

    type = "HDF5Output"
    param_field = "hdf5_output_param"
    bottoms = (2, 2)
    tops = (0, 0)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        ctx.warn(
            f"writes nothing here: protocaffe does not write '{ctx.param.file_name}'",
            "file_name",
        )
        return []

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        return []


__all__ = ["fill_fresh", "resolve"]
