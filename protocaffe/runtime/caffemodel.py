"""Reading and writing binary .caffemodel files (a serialized caffe.NetParameter).

Weights files are large (VGG16 is ~550 MB), so neither direction builds a NetParameter holding
the data. Reading walks the protobuf wire format over an mmap of the file, parsing only each
layer's name, type and blobs (shape and where the packed data lies), then reads every blob's
bytes straight from the file into its parameter's memory: peak memory is the parameters plus
a small staging buffer. Writing streams one blob at a time in Caffe's own layout (what
`Net::ToProto` serializes: each layer's full definition with its phase, then its blobs).

Matching follows Caffe's `CopyTrainedLayersFrom` (the binary-proto path): each file layer goes
to the FIRST net layer with its name (Caffe searches `layer_names_` from the front), blob count
and shape checked (a legacy num/channels/height/width shape matches a target of at most 4 axes
padded with leading 1s, like `Blob::ShapeEquals`). So of same-named net layers only the first
receives weights (the others keep their filler values), and of same-named file layers the last
wins (each is copied over the one before). Unlike Caffe, a net layer with blobs that the file
lacks is an error unless `allow_missing=True`; a file layer with blobs that the net lacks is
skipped with a warning, as Caffe skips it.
"""

from __future__ import annotations

import mmap
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocaffe.diagnostics import CompileError, Diagnostic, Diagnostics, suggestion_hint
from protocaffe.layers.base import count, shape_str

_STAGING = 1 << 22  # elements per chunk when converting dtype or device while reading

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Field numbers (caffe.proto).
_NET_NAME, _NET_LAYERS_V1, _NET_LAYER = 1, 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_V0LAYER, _V1_NAME, _V1_TYPE, _V1_BLOBS = 1, 4, 5, 6
_V0_NAME, _V0_TYPE, _V0_BLOBS = 1, 2, 50
_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH = 1, 2, 3, 4
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
# NVIDIA Caffe's (and OpenCV's) typed raw storage: raw_data holds the values as raw_data_type.
_BLOB_RAW_DATA_TYPE, _BLOB_RAW_DATA = 10, 12
_RAW_TYPES = {0: ("<f8", "double"), 1: ("<f4", "float"), 2: ("<f2", "fp16")}
_UNREADABLE_RAW_TYPES = {3: "int", 4: "uint", 5: "bool"}


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def np_itemsize(dtype: str) -> int:
    """Bytes per value of a numpy dtype string such as "<f2"."""
    return int(dtype[-1])


@dataclass
class BlobRecord:
    """One BlobProto of a weights file: its shape and where its values lie in the file."""

    shape: tuple[int, ...] | None = None  # BlobShape, when given
    legacy: tuple[int, int, int, int] | None = None  # num/channels/height/width, when any set
    dtype: str = "<f4"  # "<f8" for double_data, "<f2" for fp16 raw_data
    segments: list[tuple[int, int]] = field(default_factory=list)  # (byte offset, count)
    storage: str = "data"  # where the values are: data, double_data, raw_data
    raw: tuple[int, str] | None = None  # raw_data (bytes, type name) as found
    dataset: str | None = None  # an HDF5 dataset read through h5py (not contiguous)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.segments)

    @property
    def shape_text(self) -> str:
        if self.legacy is not None and self.shape is None:
            return shape_str(self.legacy)
        return shape_str(self.shape or ())

    def describe(self) -> str:
        """What the blob holds, e.g. "raw_data of 540 bytes, fp16, shape 10x3x3x3"."""
        if self.raw is not None:
            what = f"raw_data of {self.raw[0]} bytes, {self.raw[1]}"
        else:
            kind = {"f4": "float", "f8": "double", "f2": "fp16"}[self.dtype[1:]]
            what = f"{self.size} {kind} values" + (
                f" in {self.storage}" if self.storage != "data" else ""
            )
        return f"{what}, shape {self.shape_text}"

    @property
    def unreadable(self) -> str | None:
        """Why the values cannot be read (raw_data of a type that is not floating point)."""
        if self.raw is not None and self.raw[1] == "no raw_data_type":
            return "raw_data needs a raw_data_type (FLOAT16, FLOAT or DOUBLE) to be read"
        if self.raw is not None and self.raw[1] not in ("fp16", "float", "double"):
            return f"raw_data_type {self.raw[1]} is not a floating-point type"
        if self.raw is not None and self.raw[0] % np_itemsize(self.dtype):
            return f"{self.raw[0]} bytes is not a whole number of {self.raw[1]} values"
        return None

    def matches(self, target: Sequence[int]) -> bool:
        """Caffe's Blob::ShapeEquals(BlobProto)."""
        if self.legacy is not None:
            if len(target) > 4:
                return False
            padded = (1,) * (4 - len(target)) + tuple(target)
            return padded == self.legacy
        return tuple(self.shape or ()) == tuple(target)


@dataclass
class LayerRecord:
    name: str
    type: str
    blobs: list[BlobRecord]


@dataclass
class WeightsFile:
    path: str
    name: str
    layers: list[LayerRecord]
    legacy_layers: bool  # V1 `layers` (or V0) rather than V2 `layer`


# ---------------------------------------------------------------------------------- reading


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end or varint value) over [start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, pos, value
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {number} runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            yield number, wire, pos, pos + width
            pos += width
        else:
            raise WireError(f"unsupported wire type {wire} (field {number})")
    if pos != end:
        raise WireError("message overruns its length")


def _text(buf: Any, start: int, end: int) -> str:
    return bytes(buf[start:end]).decode("utf-8", errors="replace")


def _blob(buf: Any, start: int, end: int) -> BlobRecord:
    rec = BlobRecord()
    legacy: dict[int, int] = {}
    segments: dict[str, list[tuple[int, int]]] = {"<f4": [], "<f8": []}
    raw: tuple[int, int] | None = None  # (offset, bytes)
    raw_type: int | None = None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _BLOB_RAW_DATA and wire == _LEN:
            raw = (a, b - a)
            continue
        if number == _BLOB_RAW_DATA_TYPE and wire == _VARINT:
            raw_type = b
            continue
        if number in (_BLOB_DATA, _BLOB_DOUBLE_DATA):
            width, dtype = (4, "<f4") if number == _BLOB_DATA else (8, "<f8")
            if wire == _LEN:  # packed
                if (b - a) % width:
                    raise WireError("packed blob data length is not a multiple of its width")
                segments[dtype].append((a, (b - a) // width))
            else:
                segments[dtype].append((a, 1))
        elif number == _BLOB_SHAPE and wire == _LEN:
            dims: list[int] = []
            for n2, w2, a2, b2 in _fields(buf, a, b):
                if n2 != 1:
                    continue
                if w2 == _LEN:
                    p = a2
                    while p < b2:
                        d, p = _varint(buf, p)
                        dims.append(d)
                else:
                    dims.append(b2)
            rec.shape = tuple(dims)
        elif number in (_BLOB_NUM, _BLOB_CHANNELS, _BLOB_HEIGHT, _BLOB_WIDTH) and wire == _VARINT:
            legacy[number] = b
    # Blob::FromProto reads double_data whenever it is non-empty, else data; NVIDIA Caffe
    # (and OpenCV) read raw_data first when it is there.
    rec.dtype = "<f8" if segments["<f8"] else "<f4"
    rec.segments = segments[rec.dtype]
    rec.storage = "double_data" if segments["<f8"] else "data"
    if raw is not None:
        dtype, name = _RAW_TYPES.get(raw_type, ("<f4", None))  # type: ignore[arg-type]
        if name is None:
            name = (
                _UNREADABLE_RAW_TYPES.get(raw_type, f"type {raw_type}")  # type: ignore[arg-type]
                if raw_type is not None
                else "no raw_data_type"
            )
        rec.raw, rec.dtype, rec.storage = (raw[1], name), dtype, "raw_data"
        rec.segments = [] if rec.unreadable else [(raw[0], raw[1] // np_itemsize(dtype))]
    if legacy:
        rec.legacy = tuple(legacy.get(n, 0) for n in range(1, 5))  # type: ignore[assignment]
    return rec


def _layer(buf: Any, start: int, end: int, v1: bool) -> LayerRecord:
    name_f, type_f, blobs_f = (
        (_V1_NAME, _V1_TYPE, _V1_BLOBS) if v1 else (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS)
    )
    name, type_name, blobs = "", "", []
    for number, wire, a, b in _fields(buf, start, end):
        if number == name_f and wire == _LEN:
            name = _text(buf, a, b)
        elif number == type_f:
            type_name = _v1_type(b) if v1 and wire == _VARINT else _text(buf, a, b)
        elif number == blobs_f and wire == _LEN:
            blobs.append(_blob(buf, a, b))
        elif v1 and number == _V1_V0LAYER and wire == _LEN:
            v0 = _v0_layer(buf, a, b)
            name, type_name, blobs = v0.name or name, v0.type or type_name, v0.blobs or blobs
    return LayerRecord(name, type_name, blobs)


def _v0_layer(buf: Any, start: int, end: int) -> LayerRecord:
    rec = LayerRecord("", "", [])
    for number, wire, a, b in _fields(buf, start, end):
        if wire != _LEN:
            continue
        if number == _V0_NAME:
            rec.name = _text(buf, a, b)
        elif number == _V0_TYPE:
            rec.type = _text(buf, a, b)
        elif number == _V0_BLOBS:
            rec.blobs.append(_blob(buf, a, b))
    return rec


def _v1_type(value: int) -> str:
    from protocaffe.proto import caffe_pb2

    try:
        return caffe_pb2.V1LayerParameter.LayerType.Name(value)
    except ValueError:
        return f"V1 type {value}"


def read_index(path: str | Path) -> WeightsFile:
    """Every layer's name, type and blob records, without reading the blob data."""
    from protocaffe.frontend.loader import check_input_file

    path = str(path)
    try:
        check_input_file(path, "the weights file")  # a directory or device says so
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise CompileError([Diagnostic("error", f"{path}: the weights file is empty")])
            f.seek(0)
            if f.read(len(_HDF5_MAGIC)) == _HDF5_MAGIC:
                return _index_hdf5(path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _index(mm, path)
    except OSError as err:
        raise CompileError(
            [Diagnostic("error", f"cannot read weights file {path}: {err.strerror or err}")]
        ) from None
    except WireError as err:
        raise CompileError(
            [
                Diagnostic(
                    "error",
                    f"{path}: not a binary caffemodel (caffe.NetParameter): {err}",
                    hint=_what_it_is(path),
                )
            ]
        ) from None


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _index_hdf5(path: str) -> WeightsFile:
    """A .caffemodel.h5 (Caffe's HDF5 snapshot, Net::ToHDF5): group `data`, a group per
    layer name, datasets "0", "1", ... holding its blobs. Contiguous datasets are read by
    offset like caffemodel data; chunked or compressed ones through h5py."""
    import h5py

    net = WeightsFile(path, "", [], False)
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise CompileError(
            [Diagnostic("error", f"{path}: an HDF5 file that cannot be opened ({err})")],
        ) from None
    with h5:
        data = h5.get("data")
        if not isinstance(data, h5py.Group):
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"{path}: an HDF5 file without Caffe's 'data' group, so not a "
                        f"Caffe weights snapshot (top-level names: {', '.join(h5) or 'none'})",
                    )
                ]
            )
        layers: dict[str, dict[int, BlobRecord]] = {}

        def visit(name: str, obj: Any) -> None:
            # Layer names may hold '/', which HDF5 reads as nested groups.
            layer, _, index = name.rpartition("/")
            if isinstance(obj, h5py.Dataset) and index.isdigit():
                layers.setdefault(layer, {})[int(index)] = _hdf5_blob(obj, path)
            elif isinstance(obj, h5py.Group):
                layers.setdefault(name, {})

        data.visititems(visit)
    for name, blobs in layers.items():
        if blobs and sorted(blobs) != list(range(len(blobs))):
            raise CompileError(
                [
                    Diagnostic(
                        "error",
                        f"{path}: layer '{name}' has datasets {sorted(blobs)}, "
                        f"not 0..{len(blobs) - 1}",
                    )
                ]
            )
        if blobs or not any(other.startswith(f"{name}/") for other in layers):
            net.layers.append(LayerRecord(name, "", [blobs[i] for i in sorted(blobs)]))
    return net


def _hdf5_blob(dataset: Any, path: str) -> BlobRecord:
    kind = dataset.dtype
    if kind.kind != "f" or kind.itemsize not in (2, 4, 8):
        raise CompileError(
            [
                Diagnostic(
                    "error",
                    f"{path}: dataset '{dataset.name}' holds {kind} values, shape "
                    f"{shape_str(dataset.shape)}; Caffe snapshots hold floating-point blobs",
                )
            ]
        )
    rec = BlobRecord(shape=tuple(dataset.shape), dtype=kind.str, storage="HDF5 dataset")
    offset = dataset.id.get_offset()
    if dataset.chunks is None and offset is not None and dataset.size:
        rec.segments = [(offset, dataset.size)]
    else:
        rec.dataset, rec.segments = dataset.name, [(-1, dataset.size)]
    return rec


def _what_it_is(path: str | Path) -> str:
    """A hint naming what an unreadable weights file most likely is."""
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "is it a truncated download, or another framework's file?"
    if any(word in text for word in ("layer", "name:", "type:", "input")):
        return "this is a text prototxt (the net definition); --weights takes the binary file"
    return "is it a text file, a truncated download, or another framework's file?"


def _index(buf: Any, path: str) -> WeightsFile:
    net = WeightsFile(path, "", [], False)
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if wire != _LEN:
            continue
        if number == _NET_NAME:
            net.name = _text(buf, a, b)
        elif number == _NET_LAYER:
            net.layers.append(_layer(buf, a, b, v1=False))
        elif number == _NET_LAYERS_V1:
            net.layers.append(_layer(buf, a, b, v1=True))
            net.legacy_layers = True
    return net


def _read_into(f: Any, blob: BlobRecord, target: Any) -> None:
    """Fill tensor `target` with the blob's values, reading straight from the file."""
    import numpy as np
    import torch

    flat = target.detach().view(-1)
    if blob.dataset is not None:
        import h5py

        with h5py.File(f.name, "r") as h5:
            values = np.asarray(h5[blob.dataset][()], dtype=np.float32).reshape(-1)
        flat.copy_(torch.from_numpy(values))
        return
    direct = (
        flat.device.type == "cpu"
        and flat.dtype == {"<f4": torch.float32, "<f8": torch.float64}.get(blob.dtype)
        and sys.byteorder == "little"
    )
    pos = 0
    for offset, n in blob.segments:
        f.seek(offset)
        if direct:
            view = memoryview(flat[pos : pos + n].numpy()).cast("B")
            if f.readinto(view) != view.nbytes:
                raise CompileError([Diagnostic("error", f"{f.name}: unexpected end of file")])
        else:
            width = np.dtype(blob.dtype).itemsize
            for start in range(0, n, _STAGING):
                m = min(_STAGING, n - start)
                chunk = np.frombuffer(f.read(m * width), dtype=blob.dtype)
                if chunk.size != m:
                    raise CompileError([Diagnostic("error", f"{f.name}: unexpected end of file")])
                flat[pos + start : pos + start + m].copy_(torch.from_numpy(chunk.copy()))
        pos += n


def read_blobs(weights: WeightsFile, record: LayerRecord) -> list[Any]:
    """A file layer's blobs as float32 CPU tensors in their stored shapes (net-free reading,
    for net surgery); a legacy num/channels/height/width blob keeps its four axes."""
    import torch

    out = []
    with open(weights.path, "rb") as f:
        for blob in record.blobs:
            shape = blob.shape if blob.shape is not None else blob.legacy or (blob.size,)
            if blob.unreadable or count(shape) != blob.size:
                why = blob.unreadable or f"{blob.size} values for shape {blob.shape_text}"
                raise CompileError(
                    [
                        Diagnostic(
                            "error",
                            f"{weights.path}: cannot read the blob of layer '{record.name}' "
                            f"({blob.describe()}): {why}",
                        )
                    ]
                )
            target = torch.empty(shape, dtype=torch.float64 if blob.dtype == "<f8" else None)
            _read_into(f, blob, target)
            out.append(target.float())
    return out


@dataclass
class LoadReport:
    """What a weights load did: layers loaded, net layers left to fillers, file layers unused."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def load_caffemodel(
    module: Any, path: str | Path, *, allow_missing: bool = False, seed: int | None = None
) -> LoadReport:
    """Copy a .caffemodel's blobs into a CaffeModule's layers, matched by layer name.

    Every mismatch is reported at once and nothing is copied when any is an error. With
    `allow_missing`, net layers the file lacks keep their current values and file layers the
    net lacks are skipped; both become warnings in the report. A net layer that shares its
    name with an earlier one receives no weights (as in Caffe): its blobs are (re)filled from
    its fillers, seeded by `seed`, and the report warns about it.
    """
    import torch

    weights = read_index(path)
    path = str(path)
    # Caffe's target for a file layer: the first net layer with its name, blobs or not.
    first: dict[str, Any] = {}
    shadowed: list[Any] = []  # later same-named layers with blobs: no weights, as in Caffe
    for layer in module.caffe_graph.layers:
        if layer.name not in first:
            first[layer.name] = layer
        elif layer.blob_specs and layer in module._layer_attrs:
            shadowed.append(layer)
    report = LoadReport()
    diags = Diagnostics()
    plans: dict[str, list[tuple[BlobRecord, Any]]] = {}  # by name: the last file layer wins
    sources: dict[str, int] = {}  # file layers per name
    for rec in weights.layers:
        target = first.get(rec.name)
        if target is None:
            if rec.blobs:
                report.unused.append(rec.name)
            continue
        if not target.blob_specs and not rec.blobs:
            continue
        sources[rec.name] = sources.get(rec.name, 0) + 1
        if not target.blob_specs and any(lay.name == rec.name for lay in shadowed):
            diags.error(
                f"incompatible number of blobs for layer '{rec.name}': {path} has "
                f"{len(rec.blobs)}, the net's first layer with that name ({target.type}) has 0",
                target.span,
                hint="Caffe copies weights into the first net layer with the name and fails "
                "the same way; give each layer a unique name",
            )
            continue
        plans[rec.name] = _check_layer(rec, target, module, path, diags)
    seen = set(plans)
    report.missing = [
        name
        for name, layer in first.items()
        if layer.blob_specs and layer in module._layer_attrs and name not in seen
    ]
    severity = "warning" if allow_missing else "error"
    opt_out = "allow_missing=True (--allow-missing)"
    for name in report.missing:
        layer = first[name]
        shapes = ", ".join(shape_str(s.shape) for s in layer.blob_specs)
        diags.add(
            Diagnostic(
                severity,
                f"{layer.type} '{name}' has no weights in {path} (blobs {shapes})",
                layer.span,
                hint=suggestion_hint(name, [r.name for r in weights.layers if r.blobs])
                or (None if allow_missing else f"{opt_out} keeps its filler values"),
            )
        )
    for name, n in sources.items():
        if n > 1:
            diags.warning(
                f"{path} has {n} layers named '{name}'; the last one's weights are used "
                "(Caffe copies each over the one before)"
            )
    refill = [layer for layer in shadowed if layer.name in seen]
    for layer in refill:
        where = f" (line {first[layer.name].span.line})" if first[layer.name].span else ""
        diags.warning(
            f"{layer.type} '{layer.name}' keeps its filler values: Caffe copies the weights "
            f"of '{layer.name}' in {path} only into the first net layer with that name{where}",
            layer.span,
            hint="give each layer a unique name",
        )
    if report.unused:
        # Caffe skips these too ("Ignoring source layer"): deploy nets routinely drop layers
        # that training had, e.g. GoogLeNet's auxiliary classifiers.
        names = ", ".join(f"'{n}'" for n in report.unused[:10])
        more = f" and {len(report.unused) - 10} more" if len(report.unused) > 10 else ""
        diags.warning(
            f"{path} has weights for {len(report.unused)} layer(s) not in this net, "
            f"ignored as Caffe does: {names}{more}"
        )
    diags.check()
    plan = [step for steps in plans.values() for step in steps]
    with open(path, "rb") as f, torch.no_grad():
        for blob, target in plan:
            _read_into(f, blob, target)
        _fill_shadowed(module, refill, [target for _, target in plan], seed)
    report.loaded = sorted(seen)
    report.diagnostics = diags.items
    return report


def _fill_shadowed(module: Any, layers: list[Any], loaded: list[Any], seed: int | None) -> None:
    """Fill the blobs of same-named layers that got no weights from their fillers (a module
    lowered with init=False has them uninitialised), but not a blob shared (param { name })
    with a layer that did get weights."""
    if not layers:
        return
    from protocaffe.lower.builder import fill_layers

    fill_layers(module, layers, seed, keep={t.data_ptr() for t in loaded})


def _check_layer(
    rec: LayerRecord, layer: Any, module: Any, path: str, diags: Diagnostics
) -> list[tuple[BlobRecord, Any]]:
    specs = layer.blob_specs
    if len(rec.blobs) != len(specs):
        diags.error(
            f"incompatible number of blobs for layer '{rec.name}': {path} has "
            f"{len(rec.blobs)}, the net's {layer.type} layer has {len(specs)}",
            layer.span,
            layer.spec.blob_count_hint(len(rec.blobs)) if layer.spec else None,
        )
        return []
    plan = []
    for j, (blob, spec) in enumerate(zip(rec.blobs, specs, strict=True)):
        if not blob.matches(spec.shape):
            diags.error(
                f"cannot copy param {j} ({spec.name}) weights from layer '{rec.name}'; shape "
                f"mismatch. Source param shape is {blob.shape_text}; target param shape is "
                f"{shape_str(spec.shape)}",
                layer.span,
                hint="to learn this layer's parameters from scratch rather than copying "
                "them from the weights file, rename the layer",
            )
        elif blob.unreadable:
            diags.error(
                f"cannot read blob {j} of layer '{rec.name}' in {path} ({blob.describe()}): "
                f"{blob.unreadable}",
                layer.span,
            )
        elif blob.size != count(spec.shape):
            diags.error(
                f"blob {j} of layer '{rec.name}' in {path} holds {blob.size} values "
                f"({blob.describe()}) for shape {shape_str(spec.shape)} "
                f"({count(spec.shape)} values)",
                layer.span,
            )
        else:
            plan.append((blob, module.blob_tensor(layer, spec.name)))
    return plan


# ---------------------------------------------------------------------------------- writing


def _key(number: int, wire: int) -> bytes:
    return _uvarint(number << 3 | wire)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _len_field(number: int, payload_len: int) -> bytes:
    return _key(number, _LEN) + _uvarint(payload_len)


def _nbytes(parts: Sequence[Any]) -> int:
    """The length of pieces (bytes and memoryviews) written one after another."""
    return sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)


def _blob_parts(data: Any, shape: Sequence[int], fp16: bool = False) -> list[Any]:
    """The pieces of one BlobProto field, in protobuf's field order: float data then shape,
    or (`fp16`) shape then raw_data_type FLOAT16 and raw_data, as OpenCV's shrinkCaffeModel
    writes them."""
    raw = memoryview(data.astype("<f2") if fp16 else data).cast("B")
    parts: list[Any] = [_len_field(_BLOB_DATA, raw.nbytes), raw] if raw.nbytes and not fp16 else []
    if shape:  # Caffe's Blob::ToProto adds no BlobShape at all for a 0-axis blob
        dims = b"".join(_uvarint(d) for d in shape)
        dim_field = _len_field(1, len(dims)) + dims
        parts += [_len_field(_BLOB_SHAPE, len(dim_field)), dim_field]
    if fp16:
        parts += [
            _key(_BLOB_RAW_DATA_TYPE, _VARINT) + _uvarint(2),
            _len_field(_BLOB_RAW_DATA, raw.nbytes),
            raw,
        ]
    size = _nbytes(parts)
    return [_len_field(_LAYER_BLOBS, size), *parts]


def _layer_bytes(layer: Any, phase: int) -> tuple[bytes, bytes]:
    """The layer's definition serialized without blobs, split where the blobs field goes."""
    from protocaffe.proto import caffe_pb2

    msg = caffe_pb2.LayerParameter()
    msg.CopyFrom(layer.proto)
    msg.ClearField("blobs")
    if not msg.HasField("phase"):
        msg.phase = phase  # Net::Init gives every layer the net's phase
    raw = msg.SerializeToString(deterministic=True)
    pos = 0
    while pos < len(raw) and _varint(raw, pos)[0] >> 3 <= _LAYER_BLOBS:
        pos = _next_field_start(raw, pos)
    return raw[:pos], raw[pos:]


def _next_field_start(raw: bytes, pos: int) -> int:
    key, pos = _varint(raw, pos)
    wire = key & 7
    if wire == _VARINT:
        return _varint(raw, pos)[1]
    if wire == _LEN:
        length, pos = _varint(raw, pos)
        return pos + length
    return pos + (8 if wire == _I64 else 4)


def _float32_array(tensor: Any) -> Any:
    import numpy as np
    import torch

    t = torch.as_tensor(tensor).detach()
    if t.dtype != torch.float32 or t.device.type != "cpu":
        t = t.to("cpu", torch.float32)
    return np.ascontiguousarray(t.numpy(), dtype="<f4")


def _layer_arrays(
    source: Any, blobs: Mapping[str, Sequence[Any]] | None
) -> tuple[Any, Callable[[Any], list[Any]]]:
    """(graph, layer -> its arrays in Caffe order) for a CaffeModule, or a Graph + `blobs`."""
    if blobs is None:

        def of_module(layer: Any) -> list[Any]:
            if layer not in source._layer_attrs:
                return []
            return [source.blob_tensor(layer, s.name) for s in layer.blob_specs]

        return source.caffe_graph, of_module
    return source, lambda layer: list(blobs.get(layer.name, ()))


def save_caffemodel(
    source: Any,
    path: str | Path,
    blobs: Mapping[str, Sequence[Any]] | None = None,
    fp16: bool = False,
) -> None:
    """Write a .caffemodel as Caffe's Net::ToProto would: net name, then every layer of the
    net (its definition with the phase set, then its blobs as shape + float data; with
    `fp16`, half-precision raw_data as OpenCV's shrinkCaffeModel and NVIDIA Caffe store it).

    `source` is a CaffeModule, or a Graph with `blobs` giving each layer's arrays by layer
    name (Caffe order). Caffe's automatically inserted Split layers are not written (they
    have no blobs and Caffe re-creates them when it loads a net).
    """
    graph, arrays_of = _layer_arrays(source, blobs)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        name = graph.net.name.encode()
        f.write(_len_field(_NET_NAME, len(name)) + name)
        for layer in graph.layers:
            head, tail = _layer_bytes(layer, graph.phase)
            parts: list[Any] = [head]
            arrays = arrays_of(layer)
            if arrays and len(arrays) != len(layer.blob_specs):
                raise CompileError(
                    [
                        Diagnostic(
                            "error",
                            f"layer '{layer.name}' has {len(layer.blob_specs)} blobs, "
                            f"given {len(arrays)}",
                            layer.span,
                        )
                    ]
                )
            for spec, array in zip(layer.blob_specs, arrays, strict=True):
                parts += _blob_parts(_float32_array(array), spec.shape, fp16)
            parts.append(tail)
            size = _nbytes(parts)
            f.write(_len_field(_NET_LAYER, size))
            for part in parts:
                f.write(part)
    tmp.replace(path)


def save_hdf5(
    source: Any, path: str | Path, blobs: Mapping[str, Sequence[Any]] | None = None
) -> None:
    """Write a .caffemodel.h5 as Caffe's Net::ToHDF5 does: group `data`, one group per layer
    (in net order), float datasets "0", "1", ... for its blobs."""
    import h5py

    graph, arrays_of = _layer_arrays(source, blobs)
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as h5:
        data = h5.create_group("data")
        written: set[str] = set()
        for layer in graph.layers:
            if layer.name in written:
                continue  # Caffe's HDF5 loader, too, finds one group per name
            written.add(layer.name)
            group = data.require_group(layer.name)  # a '/' in a name nests groups
            for j, (spec, array) in enumerate(
                zip(layer.blob_specs, arrays_of(layer), strict=False)
            ):
                group.create_dataset(str(j), data=_float32_array(array).reshape(spec.shape))
    tmp.replace(path)


def assign_blobs(module: Any, blobs: Mapping[str, Sequence[Any]]) -> None:
    """Copy arrays into layers' stored blobs: `{"conv1": [weight, bias]}` (Caffe order).

    Shapes must equal the BlobSpec shapes; every problem is reported at once.
    """
    import torch

    layers: dict[str, Any] = {}
    for layer in module._layer_attrs:
        layers.setdefault(layer.name, layer)
    diags = Diagnostics()
    plan = []
    for name, arrays in blobs.items():
        layer = layers.get(name)
        if layer is None:
            diags.error(
                f"the net has no layer named '{name}' with stored blobs",
                hint=suggestion_hint(name, layers),
            )
            continue
        if len(arrays) != len(layer.blob_specs):
            diags.error(
                f"incompatible number of blobs for layer '{name}': given {len(arrays)}, "
                f"the {layer.type} layer has {len(layer.blob_specs)}",
                layer.span,
            )
            continue
        for spec, array in zip(layer.blob_specs, arrays, strict=True):
            tensor = torch.as_tensor(array)
            if tuple(tensor.shape) != tuple(spec.shape):
                diags.error(
                    f"cannot copy blob '{spec.name}' of layer '{name}': shape mismatch. "
                    f"Source shape is {shape_str(tuple(tensor.shape))}; target shape is "
                    f"{shape_str(spec.shape)}",
                    layer.span,
                )
            else:
                plan.append((module.blob_tensor(layer, spec.name), tensor))
    diags.check()
    with torch.no_grad():
        for target, tensor in plan:
            target.copy_(tensor)
