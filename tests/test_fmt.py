"""Canonical printer and `protocaffe fmt`: parse -> print -> parse is the identity."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from _corpus import CORPUS

from protocaffe.cli import main
from protocaffe.frontend import format_message, parse_text
from protocaffe.frontend.printer import format_float32, quote
from protocaffe.proto import caffe_pb2


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0001, "0.0001"),
        (1e-10, "1e-10"),
        (0.1, "0.1"),
        (1.0, "1"),
        (-2.5, "-2.5"),
        (0.999, "0.999"),
        (1e-08, "1e-08"),
        (123456.0, "123456"),
        (0.0, "0"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
    ],
)
def test_float32_shortest_round_trip(value: float, text: str) -> None:
    stored = f32(value)  # what a float field holds, e.g. 9.99999974738e-05 for 0.0001
    assert format_float32(stored) == text
    assert f32(float(text)) == stored


def test_float32_round_trips_awkward_values() -> None:
    for x in (1 / 3, 3.4028234663852886e38, 1.17549435e-38, 16777217.0, 2**-149, 0.3):
        stored = f32(x)
        assert f32(float(format_float32(stored))) == stored


def test_layer_fields_in_reading_order() -> None:
    text = (
        'layer { convolution_param { num_output: 8 } top: "c" include { phase: TEST } '
        'bottom: "d" type: "Convolution" name: "c" }'
    )
    assert format_message(parse_text(text).message) == (
        "layer {\n"
        '  name: "c"\n'
        '  type: "Convolution"\n'
        '  bottom: "d"\n'
        '  top: "c"\n'
        "  include {\n"
        "    phase: TEST\n"
        "  }\n"
        "  convolution_param {\n"
        "    num_output: 8\n"
        "  }\n"
        "}\n"
    )


def test_v1_layers_also_start_with_name_and_type() -> None:
    text = 'layers { top: "t" bottom: "b" type: RELU name: "r" }'
    out = format_message(parse_text(text).message)
    assert out.splitlines()[1:5] == ['  name: "r"', "  type: RELU", '  bottom: "b"', '  top: "t"']


def test_net_inputs_come_first() -> None:
    out = format_message(parse_text('input_dim: 1 layer { name: "a" } input: "data"').message)
    assert out.splitlines()[:2] == ['input: "data"', "input_dim: 1"]


def test_strings_are_escaped_and_read_back() -> None:
    value = "a\"b\\c\nd\te'f\x01 é"
    assert quote(value) == '"a\\"b\\\\c\\nd\\te\'f\\001 é"'
    net = caffe_pb2.NetParameter(name=value)
    assert parse_text(format_message(net)).message.name == value
    datum = caffe_pb2.Datum(data=bytes(range(256)))
    assert parse_text(format_message(datum), message_type=caffe_pb2.Datum).message == datum


def test_empty_message_and_bool_and_enum() -> None:
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="d", type="Dropout")
    layer.dropout_param.SetInParent()
    layer.pooling_param.pool = caffe_pb2.PoolingParameter.AVE
    layer.convolution_param.bias_term = False
    out = format_message(net)
    assert "  dropout_param {}\n" in out and "pool: AVE" in out and "bias_term: false" in out
    assert parse_text(out).message == net


CORPUS_FILES = sorted(CORPUS.glob("*/*")) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS_FILES, reason=f"shared corpus not found at {CORPUS}")
def test_corpus_print_parse_identity() -> None:
    from protocaffe.diagnostics import CompileError

    checked = 0
    for path in CORPUS_FILES:
        if path.suffix in (".md", ".tsv"):
            continue
        try:
            parsed = parse_text(path.read_text(encoding="utf-8"), str(path))
        except CompileError:
            continue  # fork-only or broken files: test_parser checks they are rejected
        text = format_message(parsed.message)
        again = parse_text(text, "printed", type(parsed.message))
        assert again.message == parsed.message, path
        assert format_message(again.message) == text, path  # printing is stable
        checked += 1
    assert checked >= 90


# --- the command ----------------------------------------------------------------------------


def test_fmt_prints_canonical_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "net.prototxt"
    path.write_text("name:'n' layer{name:'a' type:'ReLU'}  # note\n")
    assert main(["fmt", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == 'name: "n"\nlayer {\n  name: "a"\n  type: "ReLU"\n}  # note\n'
    assert captured.err == ""


def test_fmt_check_and_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    messy = tmp_path / "messy.prototxt"
    messy.write_text("base_lr:0.01 net:'x.prototxt'\n")
    assert main(["fmt", "--check", str(messy)]) == 1
    tidy = tmp_path / "tidy.prototxt"
    assert main(["fmt", str(messy), "-o", str(tidy)]) == 0
    assert tidy.read_text() == 'net: "x.prototxt"\nbase_lr: 0.01\n'  # detected as a solver
    assert main(["fmt", "--check", str(tidy)]) == 0
    assert capsys.readouterr().out == ""


def test_fmt_reports_errors_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { nmae: 'a' }\n")
    assert main(["fmt", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:9: error: unknown field 'nmae'" in err and "did you mean 'name'" in err
    # A file that cannot be read is a bad input (exit 1), as in `compile` and `upgrade`.
    assert main(["fmt", str(tmp_path / "missing.prototxt")]) == 1
    assert "cannot read" in capsys.readouterr().err
