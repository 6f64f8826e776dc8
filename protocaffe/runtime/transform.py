"""Caffe's DataTransformer on one CxHxW image: crop, mirror, mean, scale, in Caffe's order.

Used by the training feeders (`protocaffe.data`) and by `protocaffe run` (TEST phase), so both
prepare pixels the same way. Per item, as data_transformer.cpp does it:

1. `do_mirror = mirror and Rand(2)` is drawn first, in either phase (mirror is random at TEST
   too when the prototxt sets it);
2. with `crop_size`, TRAIN draws `h_off = Rand(H - crop + 1)` then `w_off = Rand(W - crop + 1)`;
   TEST takes the centre, `((H - crop) // 2, (W - crop) // 2)`;
3. each output value is `(pixel - mean) * scale`: the mean image (a mean_file, full HxW) is read
   at the pixel's uncropped position, mean values per channel (one value serves every channel);
4. mirroring flips the width axis of the output.

`Rand(n)` is Caffe's `raw32 % n` on the transformer's own mt19937; here a numpy Generator
draws in [0, n), so the draws follow Caffe's order but not its random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocaffe.diagnostics import Span, input_error

TRAIN = 0  # caffe_pb2.TRAIN


@dataclass
class Transform:
    scale: float = 1.0
    mirror: bool = False
    crop_size: int = 0
    mean_values: tuple[float, ...] | None = None
    mean_image: np.ndarray | None = None  # CxHxW (a mean_file)
    train: bool = False  # TRAIN crops at random, TEST at the centre
    span: Span | None = None  # the transform_param, for errors

    @classmethod
    def from_param(
        cls, param: Any, phase: int, span: Span | None = None, base: str | Path | None = None
    ) -> Transform:
        """From a TransformationParameter; its mean_file is read relative to the working
        directory as Caffe does, else to `base` (the prototxt's directory) when given."""
        transform = cls(
            scale=float(param.scale),
            mirror=bool(param.mirror),
            crop_size=int(param.crop_size),
            mean_values=tuple(param.mean_value) or None,
            train=phase == TRAIN,
            span=span,
        )
        if param.HasField("mean_file"):
            from protocaffe.runtime.preprocess import load_mean_file

            transform.mean_image = load_mean_file(find_file(param.mean_file, base, span))
        transform.check()
        return transform

    def check(self) -> None:
        if self.mean_image is not None and self.mean_values is not None:
            raise input_error(
                "both a mean file and mean values are given; Caffe accepts only one",
                self.span,
                hint="drop transform_param.mean_file or the mean values",
            )

    @property
    def random(self) -> bool:
        """Whether items draw random numbers (Caffe's InitRand condition)."""
        return self.mirror or (self.train and self.crop_size > 0)

    def out_hw(self, height: int, width: int) -> tuple[int, int]:
        """The transformed item's spatial size (Caffe's InferBlobShape)."""
        crop = self.crop_size
        return (crop, crop) if crop else (height, width)

    def draw(self, height: int, width: int, rng: Any) -> tuple[bool, int, int]:
        """(mirror?, h_off, w_off) for one item, drawn in Caffe's order."""
        do_mirror = bool(self.mirror and rng.integers(2))
        crop = self.crop_size
        if not crop:
            return do_mirror, 0, 0
        if self.train:
            top = int(rng.integers(height - crop + 1))
            return do_mirror, top, int(rng.integers(width - crop + 1))
        return do_mirror, (height - crop) // 2, (width - crop) // 2

    def __call__(self, chw: np.ndarray, rng: Any = None, where: str = "the image") -> np.ndarray:
        """One CxHxW item (uint8 or float, channel order already the net's) -> float32."""
        channels, height, width = chw.shape
        crop = self.crop_size
        if crop > height or crop > width:
            raise input_error(
                f"{where}: crop_size {crop} is larger than the {height}x{width} image", self.span
            )
        do_mirror, top, left = self.draw(height, width, rng)
        out = chw.astype(np.float32)
        if self.mean_image is not None:
            out = out - self._checked_mean_image(channels, height, width, where)
        elif self.mean_values is not None:
            out = out - self._channel_means(channels, where).reshape(-1, 1, 1)
        if crop:
            out = out[:, top : top + crop, left : left + crop]
        if self.scale != 1.0:
            out = out * np.float32(self.scale)
        if do_mirror:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out, dtype=np.float32)

    def _checked_mean_image(self, channels: int, height: int, width: int, where: str) -> Any:
        mean = self.mean_image
        assert mean is not None
        if mean.shape != (channels, height, width):
            raise input_error(
                f"{where} is {channels}x{height}x{width} but the mean file is "
                f"{'x'.join(map(str, mean.shape))}; Caffe subtracts it pixel by pixel before "
                "cropping, so the sizes must agree",
                self.span,
                hint="resize the images to the mean file's size, or use per-channel mean values",
            )
        return mean

    def _channel_means(self, channels: int, where: str) -> np.ndarray:
        mean = np.asarray(self.mean_values, dtype=np.float32)
        if mean.size not in (1, channels):
            raise input_error(
                f"{mean.size} mean values for {where} with {channels} channels; give one "
                "value or one per channel",
                self.span,
            )
        return np.broadcast_to(mean, (channels,))


def find_file(path: str, base: str | Path | None, span: Span | None = None) -> str:
    """A path from a prototxt: as given (Caffe resolves it from the working directory), else
    next to the prototxt (`base`)."""
    if Path(path).is_file():
        return path
    if base is not None and (Path(base) / path).is_file():
        return str(Path(base) / path)
    where = "the working directory" + (f" and {base}" if base is not None else "")
    raise input_error(f"{path}: no such file (looked in {where})", span)
