"""Fork fields that only matter for training or data augmentation: parsed, then reported.

A fork file carries fields that change nothing protocaffe computes (SSD's augmentation policy in
TransformationParameter, SegNet's class weighting of the loss, DeepLab v1's data-layer flags).
They are declared here so that the file parses as it does in its fork, and every one a net
sets becomes a located note in `compile`: accepted, never silently.
"""

from __future__ import annotations

from typing import Any

from protocaffe.layers.base import ShapeContext
from protocaffe.proto.schema import Enum, Field, declare_message, extend

_SSD = ("ssd", "nvidia", "yolo")

declare_message(
    "ResizeParameter",
    Enum("Resize_mode", WARP=1, FIT_SMALL_SIZE=2, FIT_LARGE_SIZE_AND_PAD=3),
    Enum("Pad_mode", CONSTANT=1, MIRRORED=2, REPEAT_NEAREST=3),
    Enum("Interp_mode", LINEAR=1, AREA=2, NEAREST=3, CUBIC=4, LANCZOS4=5),
    Field("prob", 1, "float", default=1),
    Field("resize_mode", 2, "Resize_mode", default="WARP"),
    Field("height", 3, "uint32", default=0),
    Field("width", 4, "uint32", default=0),
    Field("height_scale", 8, "uint32", default=0),
    Field("width_scale", 9, "uint32", default=0),
    Field("pad_mode", 5, "Pad_mode", default="CONSTANT"),
    Field("pad_value", 6, "float", repeated=True),
    Field("interp_mode", 7, "Interp_mode", repeated=True),
    dialects=_SSD,
)
declare_message(
    "SaltPepperParameter",
    Field("fraction", 1, "float", default=0),
    Field("value", 2, "float", repeated=True),
    dialects=_SSD,
)
declare_message(
    "NoiseParameter",
    Field("prob", 1, "float", default=0),
    Field("hist_eq", 2, "bool", default=False),
    Field("inverse", 3, "bool", default=False),
    Field("decolorize", 4, "bool", default=False),
    Field("gauss_blur", 5, "bool", default=False),
    Field("jpeg", 6, "float", default=-1),
    Field("posterize", 7, "bool", default=False),
    Field("erode", 8, "bool", default=False),
    Field("saltpepper", 9, "bool", default=False),
    Field("saltpepper_param", 10, "SaltPepperParameter"),
    Field("clahe", 11, "bool", default=False),
    Field("convert_to_hsv", 12, "bool", default=False),
    Field("convert_to_lab", 13, "bool", default=False),
    dialects=_SSD,
)
declare_message(
    "DistortionParameter",
    *(
        Field(name, number, "float", default=0.0)
        for number, name in enumerate(
            (
                "brightness_prob",
                "brightness_delta",
                "contrast_prob",
                "contrast_lower",
                "contrast_upper",
                "hue_prob",
                "hue_delta",
                "saturation_prob",
                "saturation_lower",
                "saturation_upper",
                "random_order_prob",
            ),
            start=1,
        )
    ),
    dialects=_SSD,
)
declare_message(
    "ExpansionParameter",
    Field("prob", 1, "float", default=1),
    Field("max_expand_ratio", 2, "float", default=1.0),
    dialects=_SSD,
)
declare_message(
    "EmitConstraint",
    Enum("EmitType", CENTER=0, MIN_OVERLAP=1),
    Field("emit_type", 1, "EmitType", default="CENTER"),
    Field("emit_overlap", 2, "float"),
    dialects=_SSD,
)
extend(
    "TransformationParameter",
    Field("crop_h", 11, "uint32", default=0),
    Field("crop_w", 12, "uint32", default=0),
    Field("resize_param", 8, "ResizeParameter"),
    Field("noise_param", 9, "NoiseParameter"),
    Field("distort_param", 13, "DistortionParameter"),
    Field("expand_param", 14, "ExpansionParameter"),
    Field("emit_constraint", 10, "EmitConstraint"),
    dialects=_SSD,
)
extend(
    "LossParameter",
    Field("weight_by_label_freqs", 3, "bool", default=False),
    Field("class_weighting", 4, "float", repeated=True),
    dialects=("segnet",),
)
extend("ImageDataParameter", Field("has_label", 13, "bool", default=True), dialects=("deeplab-v1",))

# (message, field) -> what it is; each one a net sets is a note.
_AUGMENTATION = "SSD's training-time data augmentation; protocaffe's data comes from --shape/run"
IGNORED = {
    ("TransformationParameter", "resize_param"): (
        "SSD's training-time resizing; only AnnotatedData's data shape reads its height/width"
    ),
    ("TransformationParameter", "noise_param"): _AUGMENTATION,
    ("TransformationParameter", "distort_param"): _AUGMENTATION,
    ("TransformationParameter", "expand_param"): _AUGMENTATION,
    ("TransformationParameter", "emit_constraint"): _AUGMENTATION,
    ("TransformationParameter", "crop_h"): "SSD's rectangular data-layer crop",
    ("TransformationParameter", "crop_w"): "SSD's rectangular data-layer crop",
    ("LossParameter", "weight_by_label_freqs"): "SegNet's class weighting of the training loss",
    ("LossParameter", "class_weighting"): "SegNet's class weighting of the training loss",
    ("ImageDataParameter", "has_label"): "DeepLab v1's data-layer flag",
    ("LayerParameter", "strict_dim"): "DeepLab v1's check on its own convolution code",
}


def note_ignored(ctx: ShapeContext) -> None:
    """A located note for each ignored fork field the layer sets (once per field name)."""
    seen: set[str] = set()
    todo: list[tuple[Any, tuple[str | int, ...]]] = [(ctx.layer.proto, ())]
    while todo:
        msg, path = todo.pop()
        for fd, value in msg.ListFields():
            where = (*path, fd.name)
            why = IGNORED.get((msg.DESCRIPTOR.name, fd.name))
            if why is not None and fd.name not in seen:
                seen.add(fd.name)
                ctx.note(f"{fd.name} ({why}) is accepted and ignored", *where)
            elif fd.message_type is not None and not fd.is_repeated:
                todo.append((value, where))
