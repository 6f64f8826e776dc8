"""Caffe schema: generated code is fresh, real files parse as with BVLC Caffe, wire facts hold."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from _corpus import CORPUS
from google.protobuf import text_format

from protocaffe.proto import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "protos"
GENERATED = REPO / "protocaffe" / "proto"
MANIFEST = CORPUS / "MANIFEST.tsv"


# --- (a) the committed generated code matches protos/caffe.proto -------------------------------


@pytest.mark.parametrize("name", ["caffe_pb2.py", "caffe_pb2.pyi"])
def test_generated_code_is_fresh(name: str, tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    argv = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        str(PROTO_DIR / "caffe.proto"),
    ]
    assert protoc.main(argv) == 0, "protoc failed on protos/caffe.proto"
    fresh = (tmp_path / name).read_text(encoding="utf-8")
    committed = (GENERATED / name).read_text(encoding="utf-8")
    assert committed == fresh, (
        f"protocaffe/proto/{name} is stale or hand-edited: run `make proto` and commit the result"
    )


# --- (b) real files: accepted or rejected exactly as by BVLC caffe.proto ------------------------

# Manifest notes record protoc's verdict against BVLC caffe.proto, e.g.
# `BVLC caffe.proto: ok` or `BVLC caffe.proto: FAIL: input:7:26: Message type ... named "x".`
_VERDICT = re.compile(
    r"BVLC caffe\.proto: (?:(?P<ok>ok)|FAIL: input:(?P<line>\d+):\d+: (?P<msg>.*?))(?:; |$)"
)
# The offending name in protoc's message: `no field named "x"` or `enumeration value of "X"`.
_CULPRIT = re.compile(r'(?:named|value of) "([^"]+)"')


def _manifest_rows() -> list[dict[str, str]]:
    if not MANIFEST.is_file():
        return []
    with MANIFEST.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


_ROWS = _manifest_rows()
_CORPUS_PARAMS = [pytest.param(row, id=row["file"]) for row in _ROWS] or [
    pytest.param(None, marks=pytest.mark.skip(reason=f"corpus not found at {CORPUS}"))
]


@pytest.mark.parametrize("row", _CORPUS_PARAMS)
def test_corpus_file_parses_like_bvlc(row: dict[str, str]) -> None:
    verdict = _VERDICT.search(row["notes"])
    if verdict is None:
        pytest.skip("manifest has no BVLC caffe.proto verdict for this file")
    message = caffe_pb2.SolverParameter() if row["format"] == "solver" else caffe_pb2.NetParameter()
    text = (CORPUS / row["file"]).read_text(encoding="utf-8")
    if verdict["ok"]:
        text_format.Merge(text, message)
        return
    with pytest.raises(text_format.ParseError) as info:
        text_format.Merge(text, message)
    culprit = _CULPRIT.search(verdict["msg"])
    assert culprit is not None, f"unrecognised protoc message: {verdict['msg']}"
    assert culprit[1] in str(info.value)
    # protoc reports a bad enum value at the token after it, so allow one line of slack.
    assert int(verdict["line"]) - info.value.GetLine() in (0, 1), str(info.value)


def test_corpus_covers_both_verdicts() -> None:
    if not _ROWS:
        pytest.skip(f"corpus not found at {CORPUS}")
    verdicts = [_VERDICT.search(row["notes"]) for row in _ROWS]
    assert sum(1 for v in verdicts if v and v["ok"]) >= 50
    assert sum(1 for v in verdicts if v and not v["ok"]) >= 10


# --- (c) wire facts ----------------------------------------------------------------------------

# Field numbers from BVLC caffe.proto that files in the wild depend on.
FIELD_NUMBERS = {
    ("BlobShape", "dim"): 1,
    ("BlobProto", "shape"): 7,
    ("BlobProto", "data"): 5,
    ("BlobProto", "double_data"): 8,
    ("BlobProto", "num"): 1,
    ("NetParameter", "layer"): 100,
    ("NetParameter", "layers"): 2,
    ("NetParameter", "input"): 3,
    ("NetParameter", "input_shape"): 8,
    ("NetParameter", "input_dim"): 4,
    ("NetParameter", "state"): 6,
    ("SolverParameter", "net"): 24,
    ("SolverParameter", "solver_type"): 30,
    ("SolverParameter", "snapshot_format"): 37,
    ("SolverParameter", "type"): 40,
    ("SolverParameter", "layer_wise_reduce"): 41,
    ("SolverParameter", "weights"): 42,
    ("LayerParameter", "phase"): 10,
    ("LayerParameter", "propagate_down"): 11,
    ("LayerParameter", "include"): 8,
    ("LayerParameter", "exclude"): 9,
    ("LayerParameter", "transform_param"): 100,
    ("LayerParameter", "loss_param"): 101,
    ("PoolingParameter", "round_mode"): 13,
    ("PoolingParameter", "global_pooling"): 12,
    ("ConvolutionParameter", "dilation"): 18,
    ("ConvolutionParameter", "stride"): 6,
    ("ConvolutionParameter", "group"): 5,
    ("LossParameter", "normalization"): 3,
    ("LossParameter", "normalize"): 2,
    ("V1LayerParameter", "param"): 1001,
    ("V1LayerParameter", "blobs_lr"): 7,
    ("V1LayerParameter", "weight_decay"): 8,
    ("V1LayerParameter", "layer"): 1,
    ("V0LayerParameter", "hdf5_output_param"): 1001,
    ("V0LayerParameter", "det_crop_mode"): 59,
    ("V0LayerParameter", "new_num"): 60,
}

# Every type-specific field of LayerParameter.
LAYER_PARAM_NUMBERS = {
    "accuracy_param": 102, "argmax_param": 103, "batch_norm_param": 139, "bias_param": 141,
    "clip_param": 148, "concat_param": 104, "contrastive_loss_param": 105,
    "convolution_param": 106, "crop_param": 144, "data_param": 107, "dropout_param": 108,
    "dummy_data_param": 109, "eltwise_param": 110, "elu_param": 140, "embed_param": 137,
    "exp_param": 111, "flatten_param": 135, "hdf5_data_param": 112, "hdf5_output_param": 113,
    "hinge_loss_param": 114, "image_data_param": 115, "infogain_loss_param": 116,
    "inner_product_param": 117, "input_param": 143, "log_param": 134, "lrn_param": 118,
    "memory_data_param": 119, "mvn_param": 120, "parameter_param": 145, "pooling_param": 121,
    "power_param": 122, "prelu_param": 131, "python_param": 130, "recurrent_param": 146,
    "reduction_param": 136, "relu_param": 123, "reshape_param": 133, "scale_param": 142,
    "sigmoid_param": 124, "softmax_param": 125, "spp_param": 132, "slice_param": 126,
    "swish_param": 147, "tanh_param": 127, "threshold_param": 128, "tile_param": 138,
    "window_data_param": 129,
}  # fmt: skip

# The complete V1 layer type enum.
V1_LAYER_TYPES = {
    "NONE": 0, "ABSVAL": 35, "ACCURACY": 1, "ARGMAX": 30, "BNLL": 2, "CONCAT": 3,
    "CONTRASTIVE_LOSS": 37, "CONVOLUTION": 4, "DATA": 5, "DECONVOLUTION": 39, "DROPOUT": 6,
    "DUMMY_DATA": 32, "EUCLIDEAN_LOSS": 7, "ELTWISE": 25, "EXP": 38, "FLATTEN": 8,
    "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "HINGE_LOSS": 28, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MEMORY_DATA": 29,
    "MULTINOMIAL_LOGISTIC_LOSS": 16, "MVN": 34, "POOLING": 17, "POWER": 26, "RELU": 18,
    "SIGMOID": 19, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "SILENCE": 36, "SOFTMAX": 20,
    "SOFTMAX_LOSS": 21, "SPLIT": 22, "SLICE": 33, "TANH": 23, "WINDOW_DATA": 24, "THRESHOLD": 31,
}  # fmt: skip


def _number(message: str, field: str) -> int:
    return getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number


@pytest.mark.parametrize(("message", "field"), sorted(FIELD_NUMBERS))
def test_field_number(message: str, field: str) -> None:
    assert _number(message, field) == FIELD_NUMBERS[(message, field)]


def test_layer_parameter_type_specific_fields() -> None:
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    ours = {name: f.number for name, f in fields.items() if name.endswith("_param")}
    ours.pop("transform_param")
    ours.pop("loss_param")
    assert ours == LAYER_PARAM_NUMBERS


def test_v1_layer_type_enum() -> None:
    enum = caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR
    assert {v.name: v.number for v in enum.values} == V1_LAYER_TYPES


def test_enums_and_defaults() -> None:
    assert caffe_pb2.TRAIN == 0 and caffe_pb2.TEST == 1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    pooling = caffe_pb2.PoolingParameter()
    assert pooling.round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.PoolingParameter.FLOOR == 1
    assert pooling.stride == 1 and pooling.pool == caffe_pb2.PoolingParameter.MAX
    assert caffe_pb2.ConvolutionParameter().bias_term is True
    assert caffe_pb2.ConvolutionParameter().group == 1
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.CropParameter().axis == 2
    assert caffe_pb2.FillerParameter().type == "constant"
    solver = caffe_pb2.SolverParameter()
    assert solver.solver_mode == caffe_pb2.SolverParameter.GPU
    assert solver.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert solver.type == "SGD" and solver.random_seed == -1
    assert solver.delta == pytest.approx(1e-8)
    assert caffe_pb2.SolverParameter.ADAM == 5
    assert caffe_pb2.HingeLossParameter.L1 == 1
    assert caffe_pb2.ReductionParameter().operation == caffe_pb2.ReductionParameter.SUM == 1


def test_serialized_bytes() -> None:
    # NetParameter.layer (100, length-delimited) -> tag 802 = a2 06; convolution_param (106) ->
    # d2 06; num_output (1, varint) = 08.
    net = caffe_pb2.NetParameter()
    net.layer.add().convolution_param.num_output = 3
    assert net.SerializeToString() == bytes.fromhex("a2 06 05 d2 06 02 08 03")
    # BlobShape.dim is packed: tag 0a, length, varints.
    assert caffe_pb2.BlobShape(dim=[1, 300]).SerializeToString() == bytes.fromhex("0a 03 01 ac 02")
    # A V1 layer of type DECONVOLUTION: layers (2) -> 12; type (5) -> 28 27.
    legacy = caffe_pb2.NetParameter()
    legacy.layers.add().type = caffe_pb2.V1LayerParameter.DECONVOLUTION
    assert legacy.SerializeToString() == bytes.fromhex("12 02 28 27")


def test_legacy_text_round_trip() -> None:
    text = 'layers { name: "up" type: DECONVOLUTION blobs_lr: 1 blobs_lr: 2 }\ninput_dim: 1\n'
    net = text_format.Parse(text, caffe_pb2.NetParameter())
    assert net.layers[0].type == 39
    assert list(net.layers[0].blobs_lr) == [1.0, 2.0]
    again = text_format.Parse(text_format.MessageToString(net), caffe_pb2.NetParameter())
    assert again == net
