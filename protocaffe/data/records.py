"""Reading Caffe's data sources record by record, without torch (compile reads first records).

Each reader yields records in Caffe's order and says which file (and record) a problem is in:
a bad source is a located `input_error` (exit 1), never a traceback.

- `db_records`: LMDB / LevelDB key-value pairs in key order (Caffe's cursor), values `Datum`s.
- `decode_datum`: a Datum -> CxHxW array (uint8 pixels, float_data, or an encoded image) + label.
- `read_list`: a text file of paths (HDF5Data) or `path label` lines (ImageData).
- `read_hdf5`: the datasets named after the tops from one .h5 file, as float32.
- `read_image`: an image file as Caffe's cv::imread gives it (BGR, optional resize) in CxHxW.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from protocaffe.diagnostics import Span, input_error

LMDB, LEVELDB = 1, 0  # caffe_pb2.DataParameter.DB


def db_records(
    source: str, backend: int, span: Span | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every record of the database `source`, in key order, once."""
    path = Path(source)
    if not path.exists():
        raise input_error(
            f"data source {source}: no such {'LMDB' if backend == LMDB else 'LevelDB'} "
            "database (Caffe opens `source` relative to the working directory)",
            span,
        )
    if backend == LMDB:
        yield from _lmdb_records(path, span)
    else:
        yield from _leveldb_records(path, span)


def _lmdb_records(path: Path, span: Span | None) -> Iterator[tuple[bytes, bytes]]:
    import lmdb

    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=path.is_dir())
    except lmdb.Error as err:
        raise input_error(f"{path}: cannot open the LMDB database: {err}", span) from None
    try:
        with env.begin(buffers=False) as txn:
            yield from txn.cursor()
    except lmdb.Error as err:
        raise input_error(f"{path}: the LMDB database is unreadable: {err}", span) from None
    finally:
        env.close()


def _leveldb_records(path: Path, span: Span | None) -> Iterator[tuple[bytes, bytes]]:
    try:
        import plyvel
    except ImportError:
        raise input_error(
            f"{path}: a LevelDB database (data_param.backend LEVELDB, Caffe's default) needs "
            "the plyvel package",
            span,
            hint="pip install plyvel (or protocaffe[leveldb]), or convert the data to LMDB "
            "and set backend: LMDB",
        ) from None
    try:
        db = plyvel.DB(str(path), create_if_missing=False)
    except plyvel.Error as err:
        raise input_error(f"{path}: cannot open the LevelDB database: {err}", span) from None
    try:
        yield from db.iterator()
    except plyvel.Error as err:
        raise input_error(f"{path}: the LevelDB database is unreadable: {err}", span) from None
    finally:
        db.close()


def first_record(source: str, backend: int, span: Span | None = None) -> tuple[bytes, bytes]:
    for record in db_records(source, backend, span):
        return record
    raise input_error(f"data source {source}: the database is empty", span)


def decode_datum(
    value: bytes, where: str, force_color: bool = False, force_gray: bool = False
) -> tuple[np.ndarray, int]:
    """A serialized Datum -> (CxHxW uint8 or float32 array, label). `where` names the
    record in errors ("train_lmdb record 00000012_cat.jpg")."""
    from google.protobuf.message import DecodeError

    from protocaffe.proto import caffe_pb2

    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except DecodeError:
        raise input_error(f"{where}: not a caffe.Datum (corrupt record)") from None
    if datum.encoded:
        color = True if force_color else False if force_gray else None
        return decode_image(datum.data, where, color), datum.label
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape))
    if len(datum.data):
        pixels = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        pixels = np.asarray(datum.float_data, dtype=np.float32)
    if count <= 0 or pixels.size != count:
        raise input_error(
            f"{where}: the Datum says {'x'.join(map(str, shape))} but holds {pixels.size} values"
        )
    return pixels.reshape(shape), datum.label


def decode_image(data: bytes, where: str, color: bool | None = True) -> np.ndarray:
    """Image file bytes -> CxHxW uint8 as Caffe's cv::imdecode gives them: BGR colour, or one
    grey channel; `color=None` keeps the file's own channels (grey, BGR or BGRA: Caffe's
    "native" decoding of encoded Datums). OpenCV decodes when installed (Caffe's own
    decoder), else PIL."""
    try:
        import cv2
    except ImportError:
        return _pil_decode(data, where, color)
    flags = {True: cv2.IMREAD_COLOR, False: cv2.IMREAD_GRAYSCALE, None: cv2.IMREAD_UNCHANGED}
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags[color])
    if img is None:
        raise input_error(f"{where}: cannot decode the image")
    if img.dtype != np.uint8:
        raise input_error(f"{where}: a {img.dtype} image; Caffe's transformer takes 8-bit ones")
    return _chw(img)


def _pil_decode(data: bytes, where: str, color: bool | None) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            native = {"L": "L", "1": "L", "RGBA": "RGBA", "LA": "RGBA", "P": "RGB"}
            mode = {True: "RGB", False: "L", None: native.get(im.mode, "RGB")}[color]
            img = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as err:
        raise input_error(f"{where}: cannot decode the image: {err}") from None
    if mode == "L":
        return _chw(img)
    bgr = img[:, :, [2, 1, 0, 3][: img.shape[2]]]  # RGB(A) -> BGR(A), OpenCV's order
    return _chw(bgr)


def _chw(hwc: np.ndarray) -> np.ndarray:
    return hwc[None] if hwc.ndim == 2 else np.ascontiguousarray(hwc.transpose(2, 0, 1))


def read_image(path: str, where: str, color: bool, size: tuple[int, int] | None) -> np.ndarray:
    """An image file as Caffe's ReadImageToCVMat gives it: BGR (or grey), resized bilinearly
    (cv::resize's default; PIL's bilinear without OpenCV) to `size` (height, width) when
    given; CxHxW uint8."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise input_error(f"{where}: cannot read image {path}: {err.strerror or err}") from None
    chw = decode_image(data, f"{where} ({path})", color)
    if size is None or chw.shape[1:] == size:
        return chw
    hwc = np.ascontiguousarray(chw.transpose(1, 2, 0))
    try:
        import cv2

        resized = cv2.resize(hwc, (size[1], size[0]))
    except ImportError:
        from PIL import Image

        planes = [Image.fromarray(hwc[:, :, c]) for c in range(hwc.shape[2])]
        resized = np.stack(
            [np.asarray(p.resize((size[1], size[0]), Image.BILINEAR)) for p in planes], axis=2
        )
    return _chw(resized)


def image_shape(path: str, where: str, color: bool) -> tuple[int, int, int]:
    """(C, H, W) an image file will give, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError) as err:
        raise input_error(f"{where}: cannot read image {path}: {err}") from None
    return (3 if color else 1, height, width)


def read_text(source: str, what: str, span: Span | None = None) -> str:
    try:
        return Path(source).read_text()
    except OSError as err:
        raise input_error(
            f"{what} {source}: cannot read it: {err.strerror or err} (Caffe opens `source` "
            "relative to the working directory)",
            span,
        ) from None


def read_list(source: str, span: Span | None = None) -> list[str]:
    """HDF5Data's source: whitespace-separated .h5 paths."""
    names = read_text(source, "HDF5Data source", span).split()
    if not names:
        raise input_error(f"HDF5Data source {source}: lists no .h5 files", span)
    return names


def read_labelled_list(source: str, span: Span | None = None) -> list[tuple[str, int]]:
    """ImageData's source: one `path label` per line, split at the last space."""
    items = []
    for n, line in enumerate(read_text(source, "ImageData source", span).splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        path, _, label = line.rpartition(" ")
        try:
            items.append((path, int(label)))
        except ValueError:
            raise input_error(
                f"{source}:{n}: expected `path label` (an integer label after the last "
                f"space), got {line!r}",
                span,
            ) from None
    if not items:
        raise input_error(f"ImageData source {source}: lists no images", span)
    return items


def _open_hdf5(path: str, span: Span | None) -> Any:
    import h5py

    if not Path(path).is_file():
        raise input_error(
            f"{path}: no such HDF5 file (HDF5Data opens the paths its source lists relative "
            "to the working directory)",
            span,
        )
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise input_error(f"{path}: cannot open the HDF5 file: {err}", span) from None


def _dataset(handle: Any, path: str, top: str, span: Span | None) -> Any:
    """Dataset `top` of an open file: HDF5Data reads one numeric dataset per top."""
    import h5py

    dataset = handle.get(top)
    if not isinstance(dataset, h5py.Dataset):
        found = ", ".join(sorted(handle.keys())) or "none"
        raise input_error(
            f"{path}: has no dataset '{top}' (HDF5Data reads one dataset per top, named "
            f"after it; datasets here: {found})",
            span,
        )
    if dataset.dtype.kind not in "biuf" or dataset.ndim < 1:
        raise input_error(
            f"{path}: dataset '{top}' holds {dataset.dtype} with shape {dataset.shape}; "
            "HDF5Data needs numbers with at least one axis",
            span,
        )
    return dataset


def read_hdf5(path: str, tops: list[str], span: Span | None = None) -> list[np.ndarray]:
    """The datasets named `tops` of one .h5 file as float32 arrays sharing their first axis."""
    with _open_hdf5(path, span) as handle:
        arrays = []
        for top in tops:
            try:
                arrays.append(np.asarray(_dataset(handle, path, top, span), dtype=np.float32))
            except OSError as err:
                raise input_error(f"{path}: cannot read dataset '{top}': {err}", span) from None
    rows = {a.shape[0] for a in arrays}
    if len(rows) > 1:
        counts = ", ".join(f"'{t}' {a.shape[0]}" for t, a in zip(tops, arrays, strict=True))
        raise input_error(f"{path}: the datasets have different numbers of rows ({counts})", span)
    if rows == {0}:
        raise input_error(f"{path}: the datasets have no rows", span)
    return arrays


def hdf5_row_shapes(path: str, tops: list[str], span: Span | None = None) -> list[tuple[int, ...]]:
    """Each top's dataset shape without its first axis, from the header (compile time)."""
    with _open_hdf5(path, span) as handle:
        return [tuple(_dataset(handle, path, t, span).shape[1:]) for t in tops]
