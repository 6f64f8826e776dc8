"""Layers pasted without whitespace (the FCN blog's snippets): a value run into the next field
name is split where a field name caffe.proto knows begins, with a located warning, and the
file then compiles to the shapes Caffe's formulas give; `fmt` writes the fixed file."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocaffe.cli import main
from protocaffe.diagnostics import CompileError
from protocaffe.frontend import load_net, parse_text, textformat
from protocaffe.ir.build import build_graph

DECONV = """name: "pasted"
layer { name: "in" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 21 dim: 16 dim: 16 } } }
layer {
  name: "upscore" type: "Deconvolution" bottom: "data" top: "upscore"
  convolution_param {num_output: 21bias_term: falsekernel_size: 4stride: 2}
}
"""

CROP = """name: "pasted"
layer { name: "a" type: "Input" top: "a"
  input_param { shape { dim: 20 dim: 50 dim: 512 dim: 512 } } }
layer { name: "b" type: "Input" top: "b"
  input_param { shape { dim: 20 dim: 10 dim: 256 dim: 256 } } }
layer {
  name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "c"
  crop_param {axis: 1offset: 25offset: 128offset: 128}
}
"""


def warnings_of(text: str) -> list:
    return [d for d in parse_text(text, "net.prototxt").diagnostics if d.severity == "warning"]


def test_deconvolution_snippet_compiles_to_caffes_shape() -> None:
    graph = build_graph(load_net(DECONV))
    (layer,) = [x for x in graph.layers if x.name == "upscore"]
    # Caffe's deconv: out = stride * (in - 1) + kernel - 2 * pad = 2 * 15 + 4 = 34.
    assert layer.outputs[0].shape == (1, 21, 34, 34)
    p = layer.proto.convolution_param
    assert (p.num_output, p.bias_term, list(p.kernel_size), list(p.stride)) == (21, False, [4], [2])


def test_crop_snippet_compiles_to_caffes_shape() -> None:
    graph = build_graph(load_net(CROP))
    (layer,) = [x for x in graph.layers if x.name == "crop"]
    assert list(layer.proto.crop_param.offset) == [25, 128, 128]
    assert layer.proto.crop_param.axis == 1
    # Crop keeps axes before `axis` and takes the reference's size from `axis` on.
    assert layer.outputs[0].shape == (20, 10, 256, 256)


@pytest.mark.parametrize(
    ("text", "fused", "column", "shown"),
    [
        (DECONV, "21bias_term", 34, "21 bias_term"),
        (DECONV, "falsekernel_size", 47, "false kernel_size"),
        (DECONV, "4stride", 65, "4 stride"),
        (CROP, "1offset", 21, "1 offset"),
        (CROP, "128offset", 40, "128 offset"),
    ],
)
def test_each_split_is_a_located_warning(text: str, fused: str, column: int, shown: str) -> None:
    found = [d for d in warnings_of(text) if f"'{fused}'" in d.message]
    assert len(found) == 1
    (d,) = found
    assert f"read as '{shown}'" in d.message
    assert (d.span.col, d.span.end_col - d.span.col) == (column, len(fused))
    assert d.span.source.line(d.span.line)[column - 1 :].startswith(fused)


def test_only_the_first_warning_carries_the_fmt_hint() -> None:
    found = warnings_of(DECONV)
    assert len(found) == 3
    assert "protocaffe fmt --in-place" in found[0].hint
    assert all(d.hint is None for d in found[1:])


def test_fmt_writes_the_fixed_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "pasted.prototxt"
    path.write_text(DECONV)
    assert main(["fmt", "--in-place", str(path)]) == 0
    assert "runs a value into the next field name" in capsys.readouterr().err
    fixed = path.read_text()
    assert "    num_output: 21\n    bias_term: false\n    kernel_size: 4\n    stride: 2\n" in fixed
    assert parse_text(fixed).diagnostics == []
    assert main(["fmt", "--check", str(path)]) == 0


def test_bool_run_into_a_block() -> None:
    text = (
        'layer { name: "c" type: "Convolution" convolution_param { num_output: 2 '
        'bias_term: trueweight_filler { type: "xavier" } } }'
    )
    parsed = parse_text(text)
    p = parsed.message.layer[0].convolution_param
    assert p.bias_term and p.weight_filler.type == "xavier"
    assert "read as 'true weight_filler'" in parsed.diagnostics[0].message


def test_enum_value_run_into_a_field() -> None:
    text = 'layer { name: "p" pooling_param { pool: MAXkernel_size: 3stride: 2 } }'
    parsed = parse_text(text)
    p = parsed.message.layer[0].pooling_param
    assert (p.pool, p.kernel_size, p.stride) == (0, 3, 2)  # MAX
    assert "read as 'MAX kernel_size'" in parsed.diagnostics[0].message
    # No enum value and field name of caffe.proto join up two ways.
    joined = [
        e + f for e in textformat._known_enum_values() for f in textformat._known_field_names()
    ]
    assert len(joined) == len(set(joined))


def test_float_run_into_a_field() -> None:
    parsed = parse_text(
        'layer { name: "d" dropout_param { dropout_ratio: 0.5e-1scale_train: false } }'
    )
    p = parsed.message.layer[0].dropout_param
    assert p.dropout_ratio == pytest.approx(0.05) and p.scale_train is False


def test_unknown_name_after_a_value_is_split_and_reported() -> None:
    with pytest.raises(CompileError) as info:
        parse_text("layer { convolution_param { num_output: 4strde: 2 } }", "n.prototxt")
    messages = [(d.severity, d.message, d.hint) for d in info.value.diagnostics]
    assert messages[0][:2] == (
        "warning",
        "'4strde' runs a value into the next field name; read as '4 strde'",
    )
    assert messages[1][0] == "error" and "unknown field 'strde'" in messages[1][1]
    assert "stride" in messages[1][2]


def test_an_ambiguous_split_is_an_error_showing_each_way(monkeypatch) -> None:
    # No two caffe.proto field names make a split ambiguous today (checked below); a schema
    # with both 'foo' and 'oo' would: '1foo' is 1 + foo or 1f (a float) + oo.
    names = textformat._known_field_names()
    assert not [
        (a, b)
        for a in names
        for b in names
        if a != b and a.endswith(b) and textformat._is_value("1" + a[: -len(b)])
    ]
    monkeypatch.setattr(textformat, "_known_field_names", lambda: names | {"foo", "oo"})
    with pytest.raises(CompileError) as info:
        parse_text("name: 1foo: 2")
    d = info.value.diagnostics[0]
    assert d.severity == "error" and "splits more than one way: '1 foo' or '1f oo'" in d.message
    assert (d.span.line, d.span.col, d.span.end_col) == (1, 7, 11)


@pytest.mark.parametrize(
    "text",
    [
        'layer { name: "a" type: "ReLU" }',  # names and strings are not values
        "input_dim: 1 input_dim: 3",
        'layer { name: "a" include { phase: TEST } }',  # an enum name is not a bool
        'layer { name: "true_layer" }',
    ],
)
def test_well_formed_text_is_left_alone(text: str) -> None:
    assert parse_text(text).diagnostics == []


def test_no_split_without_a_following_field() -> None:
    # `4stride` followed by '}' is a bad value, not a pasted pair.
    with pytest.raises(CompileError) as info:
        parse_text("layer { convolution_param { kernel_size: 4stride } }")
    assert "expected an integer (uint32), found '4stride'" in info.value.diagnostics[0].message
