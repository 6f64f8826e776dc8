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


# --- comments -------------------------------------------------------------------------------

COMMENTED = """\
# header: what this net is
name: "c"  # the name
layer {  # the first layer
  name: "a"
  # before type
  type: "ReLU"
  bottom: "x" top: "y"  # io
  relu_param { negative_slope: 0.1 }  # leaky
  # the last words of the layer
}  # after the layer
layer { name: "b" type: "Input" top: "x"
  input_param { shape { dim: 1 dim: 3 } }  # one shape
}
# the end
"""

COMMENTED_CANONICAL = """\
# header: what this net is
name: "c"  # the name
layer {  # the first layer
  name: "a"
  # before type
  type: "ReLU"
  bottom: "x"
  top: "y"  # io
  relu_param {
    negative_slope: 0.1
  }  # leaky
  # the last words of the layer
}  # after the layer
layer {
  name: "b"
  type: "Input"
  top: "x"
  input_param {
    shape {
      dim: 1
      dim: 3
    }
  }  # one shape
}
# the end
"""


def test_comments_are_kept_next_to_their_fields() -> None:
    from protocaffe.frontend.printer import format_parsed

    text, dropped = format_parsed(parse_text(COMMENTED, "c.prototxt"))
    assert dropped == []
    assert text == COMMENTED_CANONICAL
    again, _ = format_parsed(parse_text(text, "c.prototxt"))
    assert again == text  # stable


def test_comments_move_with_reordered_fields() -> None:
    from protocaffe.frontend.printer import format_parsed

    text = 'layer {\n  top: "t"  # out\n  # the name\n  name: "n"\n}\n'
    out, _ = format_parsed(parse_text(text))
    assert out == 'layer {\n  # the name\n  name: "n"\n  top: "t"  # out\n}\n'


def test_comment_inside_an_empty_block_is_kept() -> None:
    from protocaffe.frontend.printer import format_parsed

    out, dropped = format_parsed(parse_text('layer { name: "d" dropout_param {\n  # none\n} }'))
    assert dropped == [] and "  dropout_param {\n    # none\n  }\n" in out


def test_fmt_in_place(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.prototxt"
    path.write_text(COMMENTED)
    assert main(["fmt", "--in-place", str(path)]) == 0
    assert path.read_text() == COMMENTED_CANONICAL
    assert capsys.readouterr().out == ""
    assert main(["fmt", "--check", str(path)]) == 0


@pytest.mark.parametrize(
    "argv", [["--in-place", "-o", "x.prototxt"], ["--check", "--in-place"], ["--check", "-o", "x"]]
)
def test_fmt_output_modes_exclude_each_other(argv: list[str], tmp_path: Path) -> None:
    path = tmp_path / "c.prototxt"
    path.write_text('name: "c"\n')
    with pytest.raises(SystemExit) as info:
        main(["fmt", *argv, str(path)])
    assert info.value.code == 2


def test_fmt_reads_stdin(monkeypatch, capsys: pytest.CaptureFixture) -> None:
    import io
    import sys

    from protocaffe.frontend import loader

    loader._stdin_bytes.cache_clear()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"name:'s'  # n\n")))
    try:
        assert main(["fmt", "-"]) == 0
        assert capsys.readouterr().out == 'name: "s"  # n\n'
        assert main(["fmt", "--in-place", "-"]) == 2
    finally:
        loader._stdin_bytes.cache_clear()


SHIPPED = ["fcn8s.prototxt", "fcn16s.prototxt", "fcn32s.prototxt"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_are_canonical(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "models" / name
    assert main(["fmt", "--check", str(path)]) == 0
