"""The Caffe forks protocaffe knows: per fork, one entry with its layer types, its
LayerParameter `*_param` fields with their numbers, the fields it adds to BVLC messages and its
V1 `type:` enum names. Facts from each fork's caffe.proto (sources in
/work/shared/research/dialects.md, section 2).

This table says what each construct is and where it comes from; the messages themselves are
declared by the layer files that implement them (`schema.declare_message(param=...)` takes the
numbers from here). A construct listed here that no layer declares stays an error, reported
with the fork it comes from. Nothing here imports protobuf.

`--dialect` picks among the SELECTABLE forks where two of them give one name two meanings
(BN, Upsample, PriorBox defaults, DetectionOutput's output); without it, `choose` weighs the
file's own evidence (see README, "Fork dialects").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

__all__ = [
    "DIALECTS",
    "SELECTABLE",
    "Choice",
    "Dialect",
    "choose",
    "origin_of_field",
    "origin_of_type",
    "origin_of_v1_type",
]


_NONE: Mapping = MappingProxyType({})


class Dialect(NamedTuple):
    name: str
    origin: str  # for messages: "the SSD fork (weiliu89/caffe, branch ssd)"
    params: Mapping[str, int] = _NONE  # LayerParameter field -> number
    types: tuple[str, ...] = ()
    fields: Mapping[str, tuple[str, ...]] = _NONE  # message -> fork fields
    v1_types: Mapping[str, str] = _NONE  # V1 enum name -> layer type
    # The selectable dialect whose meaning applies to shared names (ENet reads as SegNet).
    semantics: str | None = None


_SSD_PARAMS = {
    "annotated_data_param": 200,
    "multibox_loss_param": 201,
    "permute_param": 202,
    "prior_box_param": 203,
    "detection_output_param": 204,
    "detection_evaluate_param": 205,
    "norm_param": 206,
    "video_data_param": 207,
}
_SSD_TYPES = ("Normalize", "Permute", "PriorBox", "DetectionOutput")
_DEEPLAB_PARAMS = {
    "interp_param": 143,
    "seg_accuracy_param": 144,
    "mat_write_param": 145,
    "dense_crf_param": 146,
    "domain_transform_param": 147,
    "adaptive_bias_channel_param": 148,
    "bias_channel_param": 149,
    "unique_label_param": 150,
    "mat_read_param": 151,
}
_DEEPLAB_TYPES = ("Interp", "SegAccuracy", "MatWrite", "MatRead", "DenseCRF", "ImageSegData")

DIALECTS: tuple[Dialect, ...] = (
    Dialect(
        "ssd",
        "the SSD fork (weiliu89/caffe, branch ssd)",
        _SSD_PARAMS,
        (*_SSD_TYPES, "AnnotatedData", "MultiBoxLoss", "DetectionEvaluate", "VideoData"),
        {
            "TransformationParameter": (
                "resize_param",
                "noise_param",
                "distort_param",
                "expand_param",
                "emit_constraint",
            ),
            "SolverParameter": ("eval_type", "ap_version", "show_per_class_result"),
        },
        semantics="ssd",
    ),
    Dialect(
        "opencv",
        "OpenCV's Caffe importer (opencv-caffe.proto)",
        {
            "detection_output_param": 147,
            "permute_param": 148,
            "norm_param": 149,
            "prior_box_param": 150,
            "proposal_param": 201,
            "psroi_pooling_param": 10002,
            "roi_pooling_param": 8266711,
        },
        (*_SSD_TYPES, "Proposal", "PSROIPooling", "ROIPooling", "ReLU6", "ShuffleChannel"),
        {
            "PoolingParameter": ("ceil_mode",),
            "DropoutParameter": ("scale_train",),
            "BatchNormParameter": ("scale_bias",),
            "BlobProto": ("raw_data_type", "raw_data"),
        },
        semantics="opencv",
    ),
    Dialect(
        "nvidia",
        "NVIDIA Caffe 0.17",
        {**_SSD_PARAMS, "trt_param": 152, "detectnet_groundtruth_param": 6801},
        (*_SSD_TYPES, "DetectNetTransformation"),
        {
            "BatchNormParameter": ("scale_bias", "scale_filler", "bias_filler"),
            "LayerParameter": ("forward_type", "backward_type", "forward_math", "backward_math"),
            "BlobProto": ("raw_data_type", "raw_diff_type", "raw_data", "raw_diff"),
        },
        semantics="nvidia",
    ),
    Dialect(
        "deeplab",
        "the DeepLab v2 fork (deeplab-public-ver2)",
        _DEEPLAB_PARAMS,
        _DEEPLAB_TYPES,
        semantics="deeplab",
    ),
    Dialect(
        "pspnet",
        "the PSPNet fork (hszhao/PSPNet)",
        {**_DEEPLAB_PARAMS, "bn_param": 152},
        (*_DEEPLAB_TYPES, "BN"),
        semantics="pspnet",
    ),
    Dialect(
        "deeplab-v1",
        "the DeepLab v1 fork (DeepLab-Context)",
        {
            "seg_accuracy_param": 42,
            "interp_param": 43,
            "softmaxloss_param": 44,
            "padding_param": 45,
            "mat_write_param": 46,
        },
        (*_DEEPLAB_TYPES, "Padding"),
        {
            "ConvolutionParameter": ("hole", "hole_h", "hole_w"),
            "V1LayerParameter": ("strict_dim",),
            "ImageDataParameter": ("has_label",),
        },
        {
            "IMAGE_SEG_DATA": "ImageSegData",
            "SEG_ACCURACY": "SegAccuracy",
            "INTERP": "Interp",
            "PADDING": "Padding",
            "MAT_WRITE": "MatWrite",
            "UNIQUE_LABEL": "UniqueLabel",
        },
        semantics="deeplab",
    ),
    Dialect(
        "segnet",
        "the SegNet fork (alexgkendall/caffe-segnet)",
        {"bn_param": 45, "upsample_param": 137, "dense_image_data_param": 138},
        ("BN", "Upsample", "DenseImageData"),
        {
            "DropoutParameter": ("sample_weights_test",),
            "LossParameter": ("weight_by_label_freqs", "class_weighting"),
        },
        semantics="segnet",
    ),
    Dialect(
        "enet",
        "the ENet fork (TimoSaemann/caffe-enet)",
        {"bn_param": 45, "dense_image_data_param": 46, "upsample_param": 147},
        ("BN", "Upsample", "DenseImageData"),
        semantics="segnet",
    ),
    Dialect(
        "frcnn",
        "the Fast/Faster R-CNN fork (rbgirshick/caffe-fast-rcnn)",
        {"roi_pooling_param": 8266711, "smooth_l1_loss_param": 8266712},
        ("ROIPooling", "SmoothL1Loss"),
        {"DropoutParameter": ("scale_train",)},
    ),
    Dialect(
        "pvanet",
        "the PVANet fork (sanghoon/caffe, C++ Proposal layer)",
        {"roi_pooling_param": 8266711, "smooth_l1_loss_param": 8266712, "proposal_param": 8266713},
        ("ROIPooling", "SmoothL1Loss", "Proposal"),
    ),
    Dialect(
        "rfcn",
        "the R-FCN fork (daijifeng001/caffe-rfcn)",
        {"box_annotator_ohem_param": 10000, "psroi_pooling_param": 10001},
        ("PSROIPooling", "BoxAnnotatorOHEM"),
    ),
    Dialect(
        "yolo",
        "the MobileNet-YOLO fork (eric612/MobileNet-YOLO)",
        {
            **{k: v for k, v in _SSD_PARAMS.items() if k != "video_data_param"},
            "reorg_param": 149,
            "upsample_param": 150,
            "relu6_param": 211,
            "yolo_v2_loss_param": 600,
            "yolo_v3_loss_param": 601,
            "region_param": 602,
        },
        ("Reorg", "Upsample", "ReLU6", "Yolov3DetectionOutput", "Region"),
    ),
    Dialect(
        "mobilenet",
        "MobileNet Caffe forks (depthwise convolution layers)",
        types=("DepthwiseConvolution", "ConvolutionDepthwise", "ReLU6"),
    ),
    Dialect(
        "shufflenet",
        "ShuffleNet Caffe forks (farmingyard/ShuffleNet)",
        {"shuffle_channel_param": 164},
        ("ShuffleChannel",),
    ),
    Dialect("senet", "the SENet fork (hujie-frank/SENet)", types=("Axpy",)),
    Dialect("hed", "the HED fork (s9xie/hed)", types=("ImageLabelmapData",)),
    Dialect(
        "colorization",
        "the colorization Caffe fork (richzhang/colorization)",
        {"image_data_modify_param": 0},
        ("ImageDataModify", "SoftmaxCrossEntropyLoss"),
    ),
    Dialect(
        "fcn-future",
        "the FCN-era 'future' Caffe branch (auto-offset Crop; BVLC has Crop only in the V2 "
        'format: type: "Crop")',
        v1_types={"CROP": "Crop"},
    ),
)

SELECTABLE = ("ssd", "opencv", "deeplab", "segnet", "pspnet", "nvidia")
_BY_NAME = {d.name: d for d in DIALECTS}


def dialect(name: str) -> Dialect:
    return _BY_NAME[name]


def param_numbers(param: str) -> dict[str, int]:
    """Dialect name -> the number of LayerParameter field `param` there (catalogue order)."""
    return {d.name: d.params[param] for d in DIALECTS if d.params.get(param)}


def _origins(found: Iterable[Dialect]) -> str | None:
    """The most likely origin (catalogue order), and how many other forks share the name."""
    names = list(dict.fromkeys(d.origin for d in found))
    if len(names) <= 1:
        return names[0] if names else None
    more = len(names) - 1
    return f"{names[0]} (and {more} other fork{'s' if more > 1 else ''})"


def origin_of_type(type_name: str) -> str | None:
    """Where layer type `type_name` comes from (None: no fork known to define it)."""
    return _origins(d for d in DIALECTS if type_name in d.types)


def origin_of_field(message: str, name: str) -> str | None:
    """Where fork field `message.name` comes from (None: no fork known to define it)."""
    if message in ("LayerParameter", "V1LayerParameter"):
        hits = [d for d in DIALECTS if name in d.params]
        if hits:
            return _origins(hits)
    return _origins(d for d in DIALECTS if name in d.fields.get(message, ()))


def origin_of_v1_type(enum_name: str) -> tuple[str, str] | None:
    """(layer type, origin) of a fork's V1 `type:` enum name."""
    for d in DIALECTS:
        if enum_name in d.v1_types:
            return d.v1_types[enum_name], d.origin
    return None


# --- choosing a dialect from a file's evidence ----------------------------------------------


# Names that only one of two forks sharing a construct writes: (dialect, field or type).
def construct_name(message: str, field: str) -> str:
    """How a fork field is named as evidence: LayerParameter's by their own name
    (`prior_box_param`), others qualified (`PoolingParameter.ceil_mode`)."""
    return field if message in ("LayerParameter", "V1LayerParameter") else f"{message}.{field}"


_TELLTALES = {
    # BN: SegNet's bn_param vs PSPNet's.
    "BNParameter.bn_mode": "segnet",
    "BNParameter.scale_filler": "segnet",
    "BNParameter.shift_filler": "segnet",
    "BNParameter.slope_filler": "pspnet",
    "BNParameter.momentum": "pspnet",
    "BNParameter.frozen": "pspnet",
    # SSD-only constructs (OpenCV does not define them).
    "AnnotatedData": "ssd",
    "MultiBoxLoss": "ssd",
    "DetectionEvaluate": "ssd",
    "annotated_data_param": "ssd",
    "multibox_loss_param": "ssd",
    "PriorBoxParameter.min_size*": "ssd",  # several min_size values in one PriorBox
    # OpenCV-only fields.
    "DetectionOutputParameter.normalized_bbox": "opencv",
    "DetectionOutputParameter.clip": "opencv",
    "PoolingParameter.ceil_mode": "opencv",
    # NVIDIA Caffe
    "BatchNormParameter.scale_bias": "nvidia",
    "forward_type": "nvidia",
    "forward_math": "nvidia",
}
_SHOWN = {"PriorBoxParameter.min_size*": "several min_size values in one PriorBox"}
# On a tie the earlier one wins: OpenCV over SSD (its PriorBox defaults and DetectionOutput
# layout are what published SSD models are run and checked with); DeepLab over PSPNet (they
# share Interp; only PSPNet has BN).
_PREFERENCE = ("opencv", "ssd", "deeplab", "pspnet", "nvidia", "segnet")


class Choice(NamedTuple):
    """The dialect a net is read in, and why."""

    name: str | None  # None: the file uses no fork construct whose meaning depends on it
    reason: str


def choose(
    constructs: Iterable[str],
    given: str | None = None,
    declared: Mapping[str, Iterable[str]] | None = None,
) -> Choice:
    """Pick the dialect for a file from `constructs` (its layer types and fork fields as
    `construct_name`s, see schema.fork_constructs). `given` (--dialect) wins. Otherwise each
    selectable dialect scores the constructs this table or a declaration (`declared`:
    construct -> dialect names) gives it, and a telltale (a name only one of them writes)
    counts ten; ties go by _PREFERENCE."""
    if given is not None:
        return Choice(given, "chosen with --dialect")
    names = set(constructs)
    evidence: dict[str, set[str]] = {}
    for d in DIALECTS:
        if d.semantics is not None:
            own = {n for n in names if n in d.types or n in d.params}
            own |= {construct_name(m, f) for m, fs in d.fields.items() for f in fs} & names
            evidence.setdefault(d.semantics, set()).update(own)
    for name in names:
        for d in (declared or {}).get(name, ()):
            semantics = _BY_NAME[d].semantics if d in _BY_NAME else None
            if semantics is not None:
                evidence[semantics].add(name)
    scores = {k: len(v) for k, v in evidence.items()}
    for name in names & _TELLTALES.keys():
        scores[_TELLTALES[name]] += 10
        evidence[_TELLTALES[name]].add(name)
    if not any(scores.values()):
        return Choice(None, "no fork construct")
    best = max(_PREFERENCE, key=lambda n: (scores.get(n, 0), -_PREFERENCE.index(n)))
    found = sorted(evidence[best])
    # Types and telltales say enough; *_param and other fields repeat them.
    named = [n for n in found if n in _TELLTALES or ("_param" not in n and "." not in n)]
    named = named or found
    shown = ", ".join(_SHOWN.get(n, n) for n in named)
    return Choice(best, f"from the file's evidence: {shown}")
