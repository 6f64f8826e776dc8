"""The prototxt parser: text format syntax, schema-driven values, source map, corpus compat."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from _corpus import CORPUS
from google.protobuf import text_format

from protocaffe.diagnostics import CompileError
from protocaffe.frontend import load_net, load_solver, parse_text
from protocaffe.proto import caffe_pb2, dialects, schema

CORPUS_FILES = (
    sorted(p for p in CORPUS.glob("*/*") if p.suffix not in (".md", ".tsv"))
    if CORPUS.is_dir()
    else []
)


def reference(text: str, cls=caffe_pb2.NetParameter):
    return text_format.Merge(text, cls())


# Each snippet must give exactly what google.protobuf.text_format gives.
SAME_AS_TEXT_FORMAT = [
    'name: "x" layer { name: "a" type: "ReLU" bottom: "b" top: "b" }',
    'layer: { name: "a" }',  # colon before a message
    "layer < name: 'a' >",  # angle brackets, single quotes
    'name: "a"layer{name:"b"type:"C"}',  # no whitespace between tokens
    'layer { name: "a", type: "B"; bottom: "c" }',  # optional separators
    'layer { bottom: ["a", "b"] top: [] }',  # scalar lists, empty list
    'layer [{ name: "a" }, { name: "b" }]',  # a list of messages
    'layers: [{ name: "a" }]',
    "input_dim: 1 input_dim: 0x10 input_dim: 017 input_dim: -5 input_dim: +3",
    'name: "a" "b" \'c\'',  # adjacent strings concatenate
    r'name: "tab\there \"q\" \'s\' back\\slash \101\x42 nl\n"',
    r'name: "C:\data\cafe"',  # an unknown escape is kept as written
    "layer { loss_weight: 1 loss_weight: -2.5 loss_weight: 1e-3 loss_weight: .5 }",
    "layer { loss_weight: 1.5f loss_weight: 2F loss_weight: inf loss_weight: -inf }",
    "layer { loss_weight: infinity loss_weight: -Infinity loss_weight: 3E+2 }",
    "force_backward: true debug_info: t",
    "force_backward: True debug_info: 0",
    "force_backward: 1 debug_info: False",
    "layer { phase: TEST include { phase: TRAIN } exclude { phase: 1 } }",
    "layer { pooling_param { pool: AVE } }",
    "# only a comment\nname: 'x' # trailing\n#another",
    "layer { propagate_down: [true, false, 1] }",
    'layer { param { name: "w" share_mode: PERMISSIVE } }',
    "",
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # text_format on unknown escapes
@pytest.mark.parametrize("text", SAME_AS_TEXT_FORMAT)
def test_matches_text_format(text: str) -> None:
    assert parse_text(text).message == reference(text)


def test_nan_value() -> None:
    msg = parse_text("layer { loss_weight: nan loss_weight: NaNf }").message
    assert all(math.isnan(x) for x in msg.layer[0].loss_weight)


def test_int_ranges() -> None:
    net = parse_text("layer { convolution_param { num_output: 4294967295 axis: -2147483648 } }")
    conv = net.message.layer[0].convolution_param
    assert conv.num_output == 2**32 - 1 and conv.axis == -(2**31)
    solver = parse_text("random_seed: -9223372036854775808 base_lr: 0.1", message_type="solver")
    assert solver.message.random_seed == -(2**63)


def test_repeated_order_kept_across_forms() -> None:
    msg = parse_text('layer { bottom: "a" bottom: ["b", "c"] bottom: "d" }').message
    assert list(msg.layer[0].bottom) == ["a", "b", "c", "d"]


def test_bytes_field() -> None:
    datum = parse_text(r'data: "\001\377ab" label: 3', message_type=caffe_pb2.Datum).message
    assert datum.data == b"\x01\xffab" and datum.label == 3


def test_solver_detected_from_field_names() -> None:
    parsed = parse_text('net: "train.prototxt" base_lr: 0.01 lr_policy: "step" max_iter: 10')
    assert isinstance(parsed.message, caffe_pb2.SolverParameter)
    assert parsed.message.base_lr == pytest.approx(0.01)
    assert isinstance(parse_text('name: "n" layer { }').message, caffe_pb2.NetParameter)


def test_message_type_can_be_forced() -> None:
    parsed = parse_text("debug_info: true", message_type="solver")
    assert isinstance(parsed.message, caffe_pb2.SolverParameter)
    parsed = parse_text("shape { dim: 2 }", message_type=caffe_pb2.InputParameter)
    assert list(parsed.message.shape[0].dim) == [2]


SOURCE = """name: "n"
layer {
  name: "conv"
  type: "Convolution"
  bottom: "data"
  convolution_param { kernel_size: 3 kernel_size: [5, 7] }
}
layer { name: "relu" }
"""


def test_source_map_paths_and_spans() -> None:
    sm = parse_text(SOURCE, "net.prototxt").source_map
    layer = sm.span(("layer", 0))
    assert (layer.line, layer.col, layer.end_line, layer.end_col) == (2, 1, 7, 2)
    name = sm.span(("layer", 0, "name"))
    assert (name.line, name.col, name.end_col) == (3, 3, 15)
    assert str(name) == "net.prototxt:3:3"
    k0 = sm.span(("layer", 0, "convolution_param", "kernel_size", 0))
    assert (k0.line, k0.col, k0.end_col) == (6, 23, 37)
    k2 = sm.span(("layer", 0, "convolution_param", "kernel_size", 2))
    assert (k2.line, k2.col, k2.end_col) == (6, 55, 56)  # a list item: just the value
    assert sm.name_span(("layer", 0, "convolution_param", "kernel_size", 2)).col == 38
    assert sm.span(("layer", 1)).line == 8
    assert sm.name_span(("layer", 1)).end_col == 6
    # A path with no span of its own falls back to its nearest ancestor.
    assert sm.span(("layer", 1, "relu_param", "negative_slope")) == sm.span(("layer", 1))


def test_load_net_upgrades_legacy_v1(tmp_path: Path) -> None:
    path = tmp_path / "v1.prototxt"
    path.write_text(
        'name: "old"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        'layers { name: "relu" type: RELU bottom: "data" top: "data" }\n'
    )
    parsed = load_net(path)
    net = parsed.message
    assert not net.layers and not net.input
    assert [layer.type for layer in net.layer] == ["Input", "ReLU"]
    assert any(d.severity == "note" for d in parsed.diagnostics)
    assert parsed.source_map.span(("layer", 1)).line == 7


def test_load_net_accepts_text_and_leaves_modern_nets_alone() -> None:
    parsed = load_net('name: "n"\nlayer { name: "a" type: "ReLU" bottom: "x" top: "x" }\n')
    assert parsed.message.layer[0].type == "ReLU" and not parsed.diagnostics


def test_load_solver(tmp_path: Path) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "a.prototxt"\nbase_lr: 0.1\nsolver_type: ADAM\n')
    parsed = load_solver(path)
    assert parsed.message.type == "Adam" and not parsed.message.HasField("solver_type")


@pytest.mark.skipif(not CORPUS_FILES, reason=f"shared corpus not found at {CORPUS}")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_agrees_with_text_format(path: Path) -> None:
    """Accept what text_format accepts (an equal message), reject what it rejects."""
    text = path.read_text(encoding="utf-8")
    try:
        ours = parse_text(text, str(path)).message
    except CompileError as err:
        ours = err
    expected = None
    for cls in (caffe_pb2.NetParameter, caffe_pb2.SolverParameter):
        try:
            expected = reference(text, cls)
        except text_format.ParseError:
            continue
        if isinstance(ours, CompileError) or type(ours) is cls:
            break
    if expected is None and not isinstance(ours, CompileError):
        # Accepted only as a fork dialect: text_format's culprit is a declared fork field or
        # a fork's V1 layer type.
        with pytest.raises(text_format.ParseError) as info:
            reference(text, type(ours))
        field = re.search(r'type "caffe\.(\w+)" has no field named "(\w+)"', str(info.value))
        enum = re.search(r"has no value named (\w+)", str(info.value))
        named = field and dialects.construct_name(field[1], field[2])
        assert (named and named in schema.fork_constructs(ours)) or (
            enum and dialects.origin_of_v1_type(enum[1])
        ), str(info.value)
    elif expected is None:
        assert ours.diagnostics[0].span is not None
    else:
        assert not isinstance(ours, CompileError), str(ours)
        assert ours == expected


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"shared corpus not found at {CORPUS}")
def test_parse_speed_within_3x_of_text_format() -> None:
    import importlib.util

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_parse.py"
    spec = importlib.util.spec_from_file_location("bench_parse", bench)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ours, theirs = module.measure(module.DEFAULT, repeat=5)
    assert ours <= 3 * theirs, f"parse_text {ours * 1e3:.1f} ms vs text_format {theirs * 1e3:.1f}"
