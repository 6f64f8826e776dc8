"""Input preparation for `protocaffe run`: images / .npy files -> Caffe input blobs.

Caffe's own convention (and the FCN reference's infer.py): pixel values stay in 0..255, the
channel order is BGR, a per-channel mean is subtracted, then an optional `scale` multiplies.
The net's `transform_param` supplies defaults; command-line flags override them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocaffe.diagnostics import CompileError, input_error

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's RGB -> L conversion
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass
class Preprocess:
    mean: tuple[float, ...] | None = None  # per channel, in the net's channel order
    scale: float = 1.0
    bgr: bool = True  # Caffe nets trained from OpenCV/PIL->BGR pipelines expect BGR
    resize: tuple[int, int] | None = None  # (height, width)
    grey: bool = False  # one-channel nets: feed the luma (PIL's "L" weights) of the image
    mean_image: np.ndarray | None = None  # CxHxW mean (a mean_file / .binaryproto)
    crop_size: int = 0  # transform_param.crop_size: Caffe's TEST-phase centre crop

    @classmethod
    def from_transform(cls, transform, **overrides) -> Preprocess:
        """Defaults from a TransformationParameter (mean_value, scale, crop_size); flags win.

        transform_param.mean_file is not read here (it is a path): see `load_mean_file`."""
        prep = cls()
        if transform is not None:
            if len(transform.mean_value):
                prep.mean = tuple(float(v) for v in transform.mean_value)
            if transform.HasField("scale"):
                prep.scale = float(transform.scale)
            prep.crop_size = int(transform.crop_size)
        for key, value in overrides.items():
            if value is not None:
                setattr(prep, key, value)
        return prep

    def image_to_blob(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 (or HxW) uint8/float RGB image -> 1xCxHxW float32 blob.

        DataTransformer::Transform at TEST: centre crop to crop_size (offsets
        (H - crop)/2, (W - crop)/2), then per pixel (x - mean) * scale, where the mean is
        the mean image at the pixel's uncropped position, or the channel's mean_value."""
        img = rgb.astype(np.float32)
        if self.grey and img.ndim == 3:
            img = img @ np.asarray(LUMA, dtype=np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        if self.bgr and img.shape[2] == 3:
            img = img[:, :, ::-1]
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        return self.transform(chw)[None]

    def crop_image(self, image: np.ndarray) -> np.ndarray:
        """The HxW(x3) image region the blob shows (for overlays): the centre crop, if any."""
        crop = self.crop_size
        if not crop or crop > image.shape[0] or crop > image.shape[1]:
            return image
        top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
        return image[top : top + crop, left : left + crop]

    def transform(self, chw: np.ndarray) -> np.ndarray:
        """Caffe's TEST-phase DataTransformer (`runtime.transform`) on one CxHxW float image
        (channel order done): mean, centre crop, scale; `run` never mirrors."""
        from protocaffe.runtime.transform import Transform

        step = Transform(
            scale=self.scale,
            crop_size=self.crop_size,
            mean_values=self.mean,
            mean_image=self.mean_image,
        )
        try:
            step.check()
            return step(chw)
        except CompileError as err:
            err.diagnostics[0].hint = (
                "pass --resize H,W (the mean file's size, at least crop_size) or "
                "per-channel --mean B,G,R"
            )
            raise


def for_input(
    value: Any,
    net_path: str | Path,
    *,
    mean: tuple[float, ...] | None = None,
    mean_file: str | None = None,
    scale: float | None = None,
    bgr: bool | None = None,
    resize: tuple[int, int] | None = None,
) -> Preprocess:
    """How to prepare images for graph input `value`: its data layer's transform_param
    (mean_value or mean_file, found from the working directory or next to the prototxt
    `net_path`; scale; crop_size), overridden by what is given (`mean_file` replaces any mean).
    """
    from protocaffe.runtime.transform import find_file

    layer = value.producer
    proto = layer.proto if layer is not None else None
    transform = proto.transform_param if proto and proto.HasField("transform_param") else None
    prep = Preprocess.from_transform(transform, mean=mean, scale=scale, bgr=bgr, resize=resize)
    if mean_file is not None:
        prep.mean, prep.mean_image = None, load_mean_file(mean_file)
    elif mean is None and transform is not None and transform.HasField("mean_file"):
        span = layer.span if layer is not None else None
        if len(transform.mean_value):
            raise input_error(
                "transform_param sets both mean_file and mean_value; Caffe accepts only one", span
            )
        try:
            path = find_file(transform.mean_file, Path(net_path).parent, span)
        except CompileError as err:
            err.diagnostics[0].hint = "pass --mean FILE.binaryproto or --mean B,G,R"
            raise
        prep.mean_image = load_mean_file(path)
    prep.grey = len(value.shape) == 4 and value.shape[1] == 1
    return prep


def load_mean_file(path: str | Path) -> np.ndarray:
    """A mean image as a CxHxW float32 array: a Caffe .binaryproto (BlobProto, as
    compute_image_mean writes it) or a .npy (CxHxW, or 1xCxHxW)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise input_error(f"{path}: cannot read mean .npy: {err}") from None
    else:
        from google.protobuf.message import DecodeError

        from protocaffe.proto import caffe_pb2

        blob = caffe_pb2.BlobProto()
        try:
            blob.ParseFromString(path.read_bytes())
        except OSError as err:
            raise input_error(f"cannot read mean file {path}: {err.strerror or err}") from None
        except DecodeError:
            raise input_error(f"{path}: not a binaryproto mean file (caffe.BlobProto)") from None
        if len(blob.shape.dim):
            shape = tuple(blob.shape.dim)
        else:
            shape = (blob.num, blob.channels, blob.height, blob.width)
        values = blob.double_data if len(blob.double_data) else blob.data
        arr = np.asarray(values, dtype=np.float32)
        if arr.size != int(np.prod(shape)) or arr.size == 0:
            raise input_error(
                f"{path}: the mean blob holds {arr.size} values for shape "
                f"{'x'.join(map(str, shape))}"
            )
        arr = arr.reshape(shape)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise input_error(f"{path}: expected a CxHxW mean image, got shape {arr.shape}")
    return arr.astype(np.float32)


def load_image(path: Path, resize: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as an HxWx3 RGB uint8 array (grey images are expanded)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Between PIL's pixel limit and twice it PIL only warns (a stray line); beyond, it
            # raises DecompressionBombError, reported below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            im = im.convert("RGB")
            if resize is not None:
                im = im.resize((resize[1], resize[0]), Image.BILINEAR)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as err:
        raise input_error(f"{path}: cannot read image: {err}") from None
    except Image.DecompressionBombError as err:
        raise input_error(
            f"{path}: refused: {err}",
            hint="an image this large is either hostile or needs downscaling before `run`",
        ) from None


def load_npy(path: Path) -> np.ndarray:
    """A .npy array as an NxCxHxW (or any-rank) float32 blob; CxHxW gains a batch axis."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise input_error(f"{path}: cannot read .npy array: {err}") from None
    if arr.dtype.kind not in "biuf":
        raise input_error(f"{path}: holds {arr.dtype} values; expected real numbers")
    if arr.ndim == 3:
        arr = arr[None]
    return arr.astype(np.float32, copy=False)


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files named on the command line; directories contribute their images/.npy, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        try:
            if path.is_dir():
                found.extend(
                    p
                    for p in sorted(path.iterdir())
                    if p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() == ".npy"
                )
            elif path.exists():
                found.append(path)
            else:
                raise input_error(f"{raw}: no such file or directory")
        except OSError as err:  # a name too long, a folder we may not list
            raise input_error(f"{raw}: {(err.strerror or str(err)).lower()}") from None
    if not found:
        raise input_error("no input images or .npy files found", hint="pass --input IMG|DIR|NPY")
    return found


@dataclass
class Sample:
    path: Path
    blob: np.ndarray  # NxCxHxW float32
    image: np.ndarray | None  # the RGB image (for overlays), None for .npy input


def iter_samples(paths: Sequence[Path], prep: Preprocess) -> Iterator[Sample]:
    for path in paths:
        if path.suffix.lower() == ".npy":
            yield Sample(path, load_npy(path), None)
        else:
            rgb = load_image(path, prep.resize)
            yield Sample(path, prep.image_to_blob(rgb), prep.crop_image(rgb))


def probe_shape(path: Path, prep: Preprocess) -> tuple[int, ...] | None:
    """The blob shape (bar the batch axis) `path` will give, from its header only; None when
    the header cannot be read (loading it later reports why)."""
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(arr.shape[1:] if arr.ndim != 3 else arr.shape)
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
    except Exception:  # any unreadable file is reported when it is loaded
        return None
    h, w = prep.resize or (height, width)
    if prep.crop_size:
        h, w = min(h, prep.crop_size), min(w, prep.crop_size)
    return (1 if prep.grey else 3, h, w)


def group_by_shape(paths: Sequence[Path], prep: Preprocess) -> list[Path]:
    """`paths` reordered so that inputs of one blob shape are adjacent (first-seen order)."""
    groups: dict[tuple[int, ...] | None, list[Path]] = {}
    for path in paths:
        groups.setdefault(probe_shape(path, prep), []).append(path)
    return [p for group in groups.values() for p in group]


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise input_error(f"{what}: expected comma-separated numbers, got {text!r}") from None
