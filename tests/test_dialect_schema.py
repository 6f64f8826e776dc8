"""Fork dialects' schema: declared messages parse by name, BVLC text is unchanged, binary
files with fork fields at clashing numbers still load, and the dialect is chosen from evidence."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from _wire import len_field, varint, wire_key
from google.protobuf import text_format

from protocaffe.diagnostics import CompileError
from protocaffe.frontend import parse_text
from protocaffe.frontend.printer import format_message
from protocaffe.layers.base import has_field
from protocaffe.proto import caffe_pb2, dialects, schema
from protocaffe.proto.schema import Enum, Field, declare_message, extend
from protocaffe.runtime.caffemodel import read_index

# Declared once per test session, under names no fork uses.
SchemaTestParameter = declare_message(
    "SchemaTestParameter",
    Enum("Mode", SLOW=0, FAST=1),
    Field("height", 1, "int32"),
    Field("mode", 2, "Mode", default="FAST"),
    Field("sizes", 3, "float", repeated=True),
    Field("filler", 4, "FillerParameter"),
    Field("scale", 1, "float", default=2.5),  # a second fork's field 1: renumbered
    param="schema_test_param",
    numbers={"testfork": 143},  # BVLC's input_param number: taken
)
FreeParameter = declare_message(
    "SchemaFreeParameter", Field("k", 1, "uint32"), param="schema_free_param", numbers={"t": 777}
)
extend("PoolingParameter", Field("schema_flag", 13, "bool", default=True))

NET = """
name: "forky"
layer {
  name: "a" type: "Forky" top: "a"
  schema_test_param { height: 3 mode: SLOW sizes: 1.5 sizes: [2, 3] filler { type: "xavier" } }
  pooling_param { schema_flag: false pool: AVE }
}
"""


def test_fork_fields_parse_by_name_and_read_like_bvlc_fields() -> None:
    layer = parse_text(NET).message.layer[0]
    p = layer.schema_test_param
    assert isinstance(p, SchemaTestParameter)
    assert (p.height, p.mode, list(p.sizes), p.filler.type) == (3, 0, [1.5, 2, 3], "xavier")
    assert p.scale == 2.5 and SchemaTestParameter().mode == SchemaTestParameter.FAST
    assert layer.pooling_param.schema_flag is False
    assert layer.pooling_param.pool == caffe_pb2.PoolingParameter.AVE
    assert has_field(layer, "schema_test_param") and has_field(layer.pooling_param, "schema_flag")
    assert not has_field(caffe_pb2.PoolingParameter(), "schema_flag")
    assert caffe_pb2.PoolingParameter().schema_flag is True  # the declared default


def test_formatting_writes_fork_fields_by_name_and_reparses() -> None:
    msg = parse_text(NET).message
    text = format_message(msg)
    assert "schema_test_param {" in text and "schema_flag: false" in text
    assert parse_text(text).message == msg


def test_bad_values_in_fork_fields_are_located_errors() -> None:
    with pytest.raises(CompileError) as info:
        parse_text('layer { name: "a" schema_test_param { mode: MEDIUM height: 1.5 } }')
    messages = [d.message for d in info.value.diagnostics]
    assert any("'MEDIUM' is not a Mode value (valid: SLOW, FAST)" in m for m in messages)
    assert any("expected an integer (int32), found '1.5'" in m for m in messages)
    assert all(d.span is not None and d.span.line == 1 for d in info.value.diagnostics)


def test_field_numbers_keep_the_forks_where_free() -> None:
    fields = schema.fields_by_name(caffe_pb2.LayerParameter.DESCRIPTOR)
    assert fields["schema_free_param"].number == 777
    taken = fields["schema_test_param"].number
    assert taken >= 500_000_000  # 143 is BVLC's input_param
    inner = SchemaTestParameter.DESCRIPTOR.fields_by_name
    assert inner["height"].number == 1 and inner["scale"].number == 1000
    # The V1 layer message carries the same fields (DeepLab v1 writes them in `layers {}`).
    assert "schema_test_param" in schema.fields_by_name(caffe_pb2.V1LayerParameter.DESCRIPTOR)


def test_redeclaring_a_message_is_refused() -> None:
    with pytest.raises(ValueError, match="already declared"):
        declare_message("SchemaTestParameter", Field("x", 1, "int32"))
    with pytest.raises(ValueError, match="already declared"):
        declare_message("ConvolutionParameter", Field("x", 1, "int32"))


def test_bvlc_text_parses_exactly_as_text_format() -> None:
    text = """
    name: "bvlc" input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c"
      convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
    layer { name: "p" type: "Pooling" bottom: "c" top: "p"
      pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR } }
    """
    ours = parse_text(text).message
    reference = text_format.Parse(text, caffe_pb2.NetParameter())
    assert ours.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True
    )


def test_unknown_fork_params_and_types_name_their_fork() -> None:
    with pytest.raises(CompileError) as info:
        parse_text('layer { name: "a" box_annotator_ohem_param { } bogus_param { } }')
    first, second = info.value.diagnostics
    assert "unknown field 'box_annotator_ohem_param'" in first.message
    assert "R-FCN fork" in (first.hint or "")
    assert "unknown field 'bogus_param'" in second.message
    assert dialects.origin_of_type("MultiBoxLoss") == "the SSD fork (weiliu89/caffe, branch ssd)"
    assert dialects.origin_of_v1_type("INTERP") == (
        "Interp",
        "the DeepLab v1 fork (DeepLab-Context)",
    )


# --- binary files: fork fields at numbers that clash with BVLC's -----------------------------


def test_caffemodel_with_fork_fields_at_clashing_numbers_loads(tmp_path: Path) -> None:
    # PSPNet's interp_param is 143 (BVLC: input_param), OpenCV's detection_output_param is
    # 147 (BVLC: swish_param), SegNet's upsample_param is 137 (BVLC: embed_param); each
    # payload is a fork message that is not a valid BVLC message of that number.
    interp = wire_key(3, 0) + varint(8)  # zoom_factor: 8 (InputParameter has no field 3 varint)
    detection = (
        wire_key(1, 0) + varint(21) + wire_key(4, 2) + varint(5) + b"\x0d" + struct.pack("<f", 0.45)
    )
    upsample = wire_key(1, 5) + struct.pack("<f", 2.0)  # a fixed32 where EmbedParameter has none
    values = struct.pack("<4f", 1, 2, 3, 4)
    blob = len_field(7, len_field(1, varint(2) + varint(2))) + len_field(5, values)
    layer = (
        len_field(1, b"interp")
        + len_field(2, b"Interp")
        + len_field(143, interp)
        + len_field(147, detection)
        + len_field(137, upsample)
        + len_field(7, blob)
    )
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(len_field(1, b"net") + len_field(100, layer))
    index = read_index(path)
    (record,) = index.layers
    assert (record.name, record.type) == ("interp", "Interp")
    (b,) = record.blobs
    assert b.shape == (2, 2) and b.size == 4


# --- choosing the dialect -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constructs", "expected"),
    [
        ({"Convolution", "ReLU"}, None),
        ({"PriorBox", "Permute", "DetectionOutput", "prior_box_param"}, "opencv"),
        ({"PriorBox", "prior_box_param", "PriorBoxParameter.min_size*"}, "ssd"),
        ({"PriorBox", "MultiBoxLoss"}, "ssd"),
        ({"BN", "bn_param", "BNParameter.bn_mode"}, "segnet"),
        ({"BN", "bn_param", "BNParameter.slope_filler", "Interp"}, "pspnet"),
        ({"Interp", "interp_param"}, "deeplab"),
        ({"BatchNorm", "BatchNormParameter.scale_bias"}, "nvidia"),
    ],
)
def test_dialect_from_evidence(constructs: set[str], expected: str | None) -> None:
    assert dialects.choose(constructs).name == expected


def test_given_dialect_wins() -> None:
    choice = dialects.choose({"BNParameter.bn_mode"}, given="pspnet")
    assert (choice.name, choice.reason) == ("pspnet", "chosen with --dialect")


def test_every_selectable_dialect_is_in_the_catalogue() -> None:
    names = {d.name for d in dialects.DIALECTS}
    assert set(dialects.SELECTABLE) <= names
    assert {d.semantics for d in dialects.DIALECTS} - {None} <= set(dialects.SELECTABLE)


def test_every_unknown_construct_is_listed_at_once() -> None:
    text = (
        'layer { name: "a" type: "VideoData" video_data_param { device_id: 0 } }\n'
        'layer { name: "b" type: "BoxAnnotatorOHEM" }\n'
        'layer { name: "c" type: "Convolutoin" }\n'
    )
    with pytest.raises(CompileError) as info:
        parse_text(text, "net.prototxt")
    found = [
        (d.span.line, d.message, d.notes[0] if d.notes else d.hint) for d in info.value.diagnostics
    ]
    assert [(line, message) for line, message, _ in found] == [
        (1, "unknown layer type 'VideoData' (layer 'a')"),
        (1, "unknown field 'video_data_param' in LayerParameter"),
        (2, "unknown layer type 'BoxAnnotatorOHEM' (layer 'b')"),
        (3, "unknown layer type 'Convolutoin' (layer 'c')"),
    ]
    assert "SSD fork" in found[0][2] and "SSD fork" in found[1][2] and "R-FCN fork" in found[2][2]
    assert "did you mean 'Convolution'" in found[3][2]


def test_dialect_from_a_parsed_net() -> None:
    """Several min_size values in one PriorBox (SSD's repeated field) choose the SSD fork;
    a declared field (ceil_mode, declared for OpenCV) counts for its dialect."""
    net = parse_text(
        'layer { name: "p" type: "PriorBox" prior_box_param { min_size: 10 min_size: 20 } }'
    ).message
    choice = schema.choose_dialect(net)
    assert choice.name == "ssd" and "several min_size values" in choice.reason
    net = parse_text(
        'layer { name: "p" type: "PriorBox" prior_box_param { min_size: 10 } }\n'
        'layer { name: "q" type: "Pooling" pooling_param { ceil_mode: false } }'
    ).message
    assert schema.choose_dialect(net).name == "opencv"
    assert schema.choose_dialect(parse_text('layer { type: "ReLU" }').message).name is None
