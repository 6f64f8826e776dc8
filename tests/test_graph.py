"""Graph building: NetState filtering, SSA values, structural errors, the shape-pass driver."""

from __future__ import annotations

import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.frontend import load_net, parse_text
from protocaffe.ir import build_graph
from protocaffe.ir.state import TRAIN
from protocaffe.testing import compile_snippet

INPUT = (
    'layer { name: "data" type: "Input" top: "data" '
    "input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n"
)


def relu(name: str, bottom: str = "data", top: str | None = None, rules: str = "") -> str:
    return (
        f'layer {{ name: "{name}" type: "ReLU" bottom: "{bottom}" top: "{top or name}" {rules} }}\n'
    )


def build(text: str, **kw):
    return build_graph(parse_text(text, "net.prototxt"), **kw)


def errors(text: str, **kw) -> list:
    with pytest.raises(CompileError) as info:
        build(text, **kw)
    return [d for d in info.value.diagnostics if d.severity == "error"]


# --- NetState filtering (Caffe's FilterNet / StateMeetsRule) ---------------------------------

RULES = INPUT + "".join(
    relu(name, rules=rules)
    for name, rules in [
        ("plain", ""),
        ("train", "include { phase: TRAIN }"),
        ("test", "include { phase: TEST }"),
        ("not_test", "exclude { phase: TEST }"),
        ("lvl_ge1", "include { min_level: 1 }"),
        ("lvl_le0", "include { max_level: 0 }"),
        ("both_ab", 'include { stage: "a" stage: "b" }'),
        ("a_or_b", 'include { stage: "a" } include { stage: "b" }'),
        ("not_a", 'include { not_stage: "a" }'),
        ("excl_a", 'exclude { stage: "a" }'),
        ("train_a", 'include { phase: TRAIN stage: "a" }'),
    ]
)


@pytest.mark.parametrize(
    ("kw", "kept"),
    [
        ({}, {"plain", "test", "lvl_le0", "not_a", "excl_a"}),
        ({"phase": "TRAIN"}, {"plain", "train", "not_test", "lvl_le0", "not_a", "excl_a"}),
        ({"level": 1}, {"plain", "test", "lvl_ge1", "not_a", "excl_a"}),
        ({"stages": ["a"]}, {"plain", "test", "lvl_le0", "a_or_b"}),
        ({"stages": ["a", "b"]}, {"plain", "test", "lvl_le0", "both_ab", "a_or_b"}),
        (
            {"stages": ["b"], "phase": TRAIN},
            {"plain", "train", "not_test", "lvl_le0", "a_or_b", "not_a", "excl_a"},
        ),
        (
            {"stages": ["a"], "phase": "train"},
            {"plain", "train", "not_test", "lvl_le0", "a_or_b", "train_a"},
        ),
    ],
)
def test_state_rules_follow_caffe(kw, kept):
    graph = build(RULES, **kw)
    assert {layer.name for layer in graph.layers} - {"data"} == kept


def test_net_state_field_gives_defaults_and_arguments_override():
    text = 'state { phase: TRAIN level: 2 stage: "a" }\n' + RULES
    names = {layer.name for layer in build(text).layers}
    assert {"train", "lvl_ge1", "train_a", "a_or_b"} <= names and "test" not in names
    # Explicit phase/level override; stages add to the declared ones (like caffe.Net(...)).
    names = {layer.name for layer in build(text, phase="TEST", level=0, stages=["b"]).layers}
    assert {"test", "lvl_le0", "both_ab"} <= names and "train" not in names


def test_include_and_exclude_together_is_an_error():
    errs = errors(INPUT + relu("r", rules="include { phase: TEST } exclude { phase: TRAIN }"))
    assert "both include and exclude" in errs[0].message
    assert errs[0].span is not None and errs[0].span.line == 2


# --- SSA values ------------------------------------------------------------------------------


def test_in_place_layers_get_their_own_values():
    g = build(INPUT + relu("r1", top="data") + relu("r2", top="data") + relu("out", "data", "out"))
    ids = [[v.id for v in layer.outputs] for layer in g.layers]
    assert ids == [["data"], ["data@r1"], ["data@r2"], ["out"]]
    r2 = g.layer("r2")
    assert r2.inputs[0] is g.layer("r1").outputs[0]
    assert g.blob("data").id == "data@r2"
    assert [v.id for v in g.outputs] == ["out"]
    assert [v.id for v in g.inputs] == ["data"]
    assert all(v.shape == (1, 3, 8, 8) for v in g.values.values())


def test_caffe_in_place_needs_the_same_position():
    # top 0 == bottom 1 is not in-place for Caffe: the blob is produced twice.
    text = (
        INPUT
        + relu("a", "data", "b")
        + ('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "b" top: "b" }\n')
    )
    (err,) = errors(text)
    assert "top 'b' is already produced by layer 'a'" in err.message
    assert "same position" in err.hint
    assert (err.span.line, err.span.col) == (3, 62)


# --- structural errors -----------------------------------------------------------------------


def test_missing_bottom_is_located_with_a_suggestion():
    (err,) = errors(INPUT + relu("r", "dta"))
    assert err.message == "ReLU 'r': bottom 'dta' is not produced by any earlier layer"
    assert err.hint == "did you mean 'data'?"
    assert (err.span.line, err.span.col) == (2, 32)


def test_bottom_produced_later_says_so():
    (err,) = errors(INPUT + relu("r", "later") + relu("later"))
    assert any("comes later in the file" in n for n in err.notes)


def test_bottom_of_an_excluded_layer_names_the_phase():
    text = INPUT + relu("t", rules="include { phase: TRAIN }") + relu("u", "t")
    (err,) = errors(text)
    assert any("'t'" in n and "phase TEST" in n for n in err.notes)


def test_unknown_types_suggest_and_name_forks():
    text = INPUT + (
        'layer { name: "c" type: "Convolutoin" bottom: "data" top: "c" }\n'
        'layer { name: "i" type: "VideoData" bottom: "data" top: "i" }\n'
    )
    first, second = errors(text)
    assert first.message == "unknown layer type 'Convolutoin' (layer 'c')"
    assert first.hint.startswith("did you mean 'Convolution'")
    assert (first.span.line, first.span.col) == (2, 19)
    assert any(n.startswith("supported types") and "Convolution" in n for n in first.notes)
    assert any("SSD fork" in n for n in second.notes)
    assert not any(n.startswith("supported types") for n in second.notes)  # listed once


def test_wrong_bottom_and_top_counts():
    text = INPUT + (
        'layer { name: "r" type: "ReLU" bottom: "data" bottom: "data" top: "r" }\n'
        'layer { name: "c" type: "Crop" bottom: "data" top: "c" }\n'
    )
    a, b = errors(text)
    assert a.message == "ReLU 'r' takes 1 bottom, but 2 are given"
    assert b.message.startswith("Crop 'c' takes 2 bottoms, but 1 is given")


def test_all_errors_are_reported_without_cascades():
    text = (
        INPUT
        + (
            relu("bad1", "nope")  # error 1
            + relu("after1", "bad1")  # unknown input: skipped silently
            + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
            "pooling_param { kernel_size: 20 } }\n"  # error 2: kernel larger than input
            + relu("after2", "p")
            + 'layer { name: "x" type: "Whatever" bottom: "data" top: "x" }\n'  # error 3
        )
    )
    errs = errors(text)
    assert len(errs) == 3
    assert [e.span.line for e in errs] == [2, 4, 6]


def test_duplicate_layer_names():
    conv = (
        'layer {{ name: "{}" type: "Convolution" bottom: "data" top: "{}" '
        "convolution_param {{ num_output: 2 kernel_size: 1 }} }}\n"
    )
    # Caffe accepts duplicate names; weights go by name to the first such layer only.
    g = build(INPUT + conv.format("c", "c1") + conv.format("c", "c2"))
    (w,) = g.diagnostics
    assert w.severity == "warning" and w.span.line == 3
    assert "layer name 'c' is used by 2 layers (lines 2, 3)" in w.message
    assert "only the first 'c' (line 2) receives .caffemodel weights" in w.hint
    assert w.notes == ["net.prototxt:2:9: the first layer named 'c'"]
    assert [lay.name for lay in g.layers].count("c") == 2
    # Without parameters nothing is lost: a plain warning.
    g = build(INPUT + relu("r", "data", "a") + relu("r", "data", "b"))
    (w,) = g.diagnostics
    assert w.severity == "warning" and "unique" in w.hint and "first" not in w.hint


def test_in_place_on_a_type_that_does_not_support_it_warns():
    text = INPUT + (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "data" '
        "convolution_param { num_output: 3 kernel_size: 1 } }\n"
    )
    (warning,) = build(text).diagnostics
    assert warning.severity == "warning" and "in place" in warning.message


# --- the shape pass --------------------------------------------------------------------------


def test_layer_errors_keep_their_field_spans():
    g = compile_snippet(
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }',
        {"a": (1, 2, 4, 4), "b": (1, 2, 4, 4)},
    )
    assert g.blob("e").shape == (1, 2, 4, 4)
    with pytest.raises(CompileError) as info:
        compile_snippet(
            '\nlayer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }',
            {"a": (1, 2, 4, 4), "b": (1, 2, 5, 4)},
        )
    (err,) = info.value.diagnostics
    assert "Eltwise 'e'" in err.message and "1x2x4x4" in err.message and "1x2x5x4" in err.message
    assert (err.span.path, err.span.line) == ("<snippet>", 2)  # spans point into the snippet


def test_blob_specs_and_macs_are_stored():
    g = compile_snippet(
        'layer { name: "c" type: "Convolution" bottom: "x" top: "c" '
        "convolution_param { num_output: 4 kernel_size: 3 } }",
        {"x": (2, 3, 5, 5)},
    )
    layer = g.layer("c")
    assert [b.shape for b in layer.blob_specs] == [(4, 3, 3, 3), (4,)]
    assert layer.macs == 2 * 4 * 3 * 3 * 3 * 3 * 3  # N * Cout * Cin * k*k * Hout*Wout
    assert g.blob("c").shape == (2, 4, 3, 3)


def test_input_overrides():
    g = build(INPUT + relu("r"), input_shapes={"data": (2, 3, 16, 16)})
    assert g.blob("r").shape == (2, 3, 16, 16)
    (err,) = errors(INPUT + relu("r"), input_shapes={"dat": (1, 1)})
    assert "'dat'" in err.message and "inputs: data" in err.message
    assert err.hint == "did you mean 'data'?"


def test_too_small_input_is_an_error_with_a_hint():
    text = INPUT + (
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
        "convolution_param { num_output: 1 kernel_size: 9 } }\n"
    )
    errs = errors(text)
    assert len(errs) == 1 and errs[0].span.line == 2


def test_legacy_net_level_inputs_become_an_input_layer(tmp_path):
    path = tmp_path / "legacy.prototxt"
    path.write_text(
        'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 10\ninput_dim: 12\n' + relu("r")
    )
    g = build_graph(load_net(path))
    assert g.layers[0].type == "Input"
    assert g.blob("r").shape == (1, 3, 10, 12)
    g = build_graph(load_net(path), input_shapes={"data": (1, 3, 4, 4)})
    assert g.blob("r").shape == (1, 3, 4, 4)


def test_compile_snippet_spans_point_into_the_snippet():
    with pytest.raises(CompileError) as info:
        compile_snippet('\n\nlayer { name: "r" type: "ReLU" bottom: "y" top: "r" }', {"x": (1,)})
    (err,) = info.value.diagnostics
    assert (err.span.path, err.span.line) == ("<snippet>", 3)
