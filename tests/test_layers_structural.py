"""Concat, Slice, Split, Reshape, Flatten, Tile, Silence, Embed, Parameter, BatchReindex, Filter:
shape rules (BVLC Caffe's Reshape()), their errors, and lowered numerics vs the numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest
from _layer_oracle import check_layer, error_of, needs_source_spans, shapes_of

from protocaffe.layers import lookup


def layer(type_: str, bottoms: list[str], tops: list[str], body: str = "") -> str:
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "L" type: "{type_}" {b} {t}\n  {body}\n}}'


# (type, bottoms {name: shape}, tops, params, expected shapes by top)
SHAPES = [
    ("Concat", {"a": (2, 3, 4, 4), "b": (2, 5, 4, 4)}, ["c"], "", {"c": (2, 8, 4, 4)}),
    ("Concat", {"a": (2, 3), "b": (2, 3)}, ["c"], "concat_param { axis: 0 }", {"c": (4, 3)}),
    ("Concat", {"a": (2, 3), "b": (2, 4)}, ["c"], "concat_param { axis: -1 }", {"c": (2, 7)}),
    ("Concat", {"a": (1, 2, 3)}, ["c"], "concat_param { concat_dim: 2 }", {"c": (1, 2, 3)}),
    ("Slice", {"a": (2, 6, 3)}, ["x", "y", "z"], "", {"x": (2, 2, 3), "z": (2, 2, 3)}),
    (
        "Slice",
        {"a": (2, 6, 3)},
        ["x", "y"],
        "slice_param { axis: 1 slice_point: 4 }",
        {"x": (2, 4, 3), "y": (2, 2, 3)},
    ),
    (
        "Slice",
        {"a": (4, 6)},
        ["x", "y", "z"],
        "slice_param { slice_dim: 0 slice_point: 1 slice_point: 3 }",
        {"x": (1, 6), "y": (2, 6), "z": (1, 6)},
    ),
    ("Split", {"a": (1, 2)}, ["x", "y", "z"], "", {"x": (1, 2), "z": (1, 2)}),
    ("Flatten", {"a": (2, 3, 4, 5)}, ["f"], "", {"f": (2, 60)}),
    (
        "Flatten",
        {"a": (2, 3, 4, 5)},
        ["f"],
        "flatten_param { axis: 1 end_axis: 2 }",
        {"f": (2, 12, 5)},
    ),
    ("Flatten", {"a": (2, 3, 4)}, ["f"], "flatten_param { axis: 0 }", {"f": (24,)}),
    ("Flatten", {"a": (2, 3)}, ["f"], "flatten_param { axis: 1 end_axis: 0 }", {"f": (2, 1, 3)}),
    ("Tile", {"a": (2, 3, 4)}, ["t"], "tile_param { tiles: 3 }", {"t": (2, 9, 4)}),
    ("Tile", {"a": (2, 3, 4)}, ["t"], "tile_param { axis: -1 tiles: 2 }", {"t": (2, 3, 8)}),
    (
        "Embed",
        {"i": (4, 5)},
        ["e"],
        "embed_param { num_output: 7 input_dim: 10 }",
        {"e": (4, 5, 7)},
    ),
    ("Parameter", {}, ["p"], "parameter_param { shape { dim: 3 dim: 4 } }", {"p": (3, 4)}),
    ("BatchReindex", {"a": (5, 3, 2), "i": (7,)}, ["r"], "", {"r": (7, 3, 2)}),
    ("Filter", {"a": (5, 3), "b": (5, 2, 2), "s": (5, 1)}, ["x", "y"], "", {"y": (5, 2, 2)}),
]


@pytest.mark.parametrize(("type_", "bottoms", "tops", "body", "want"), SHAPES)
def test_shapes(type_, bottoms, tops, body, want):
    got = shapes_of(layer(type_, list(bottoms), tops, body), bottoms)
    for top, shape in want.items():
        assert got[top] == shape


def test_silence_has_no_tops():
    text = layer("Silence", ["a", "b"], [])
    assert shapes_of(text, {"a": (1, 2), "b": (3,)}) == {"a": (1, 2), "b": (3,)}


# Reshape's worked examples from the comments on ReshapeParameter in caffe.proto (input 2x8).
RESHAPE_2x8 = [
    ("reshape_param { shape { dim: 2 dim: 2 dim: 4 } }", (2, 2, 4)),
    ("reshape_param { shape { dim: 0 dim: 2 dim: 4 } }", (2, 2, 4)),
    ("reshape_param { shape { dim: 0 dim: 2 dim: -1 } }", (2, 2, 4)),
    ("reshape_param { shape { dim: 0 dim: -1 dim: 4 } }", (2, 2, 4)),
    ("reshape_param { shape { dim: 2 dim: 4 } axis: 1 }", (2, 2, 4)),
    # The comment also lists `axis: -3` here, but Caffe's code maps -3 to axis 0 for a 2-axis
    # input (num_axes + axis + 1) and fails the count check; -2 is the working spelling.
    ("reshape_param { shape { dim: 2 dim: 4 } axis: -2 }", (2, 2, 4)),
    ("reshape_param { shape { dim: 1 dim: 2 dim: 8 } }", (1, 2, 8)),
    ("reshape_param { shape { dim: 1 dim: 2 } num_axes: 1 }", (1, 2, 8)),
    ("reshape_param { shape { dim: 1 } num_axes: 0 }", (1, 2, 8)),
    ("reshape_param { shape { dim: 2 dim: 1 dim: 8 } }", (2, 1, 8)),
    ("reshape_param { shape { dim: 1 } axis: 1 num_axes: 0 }", (2, 1, 8)),
    ("reshape_param { shape { } axis: -1 }", (2, 8)),
    ("reshape_param { shape { dim: -1 } }", (16,)),
]


@pytest.mark.parametrize(("body", "want"), RESHAPE_2x8)
def test_reshape_proto_examples(body, want):
    assert shapes_of(layer("Reshape", ["a"], ["r"], body), {"a": (2, 8)})["r"] == want


def test_reshape_proto_comment_axis_minus_3_fails_as_in_caffe():
    text = layer("Reshape", ["a"], ["r"], "reshape_param { shape { dim: 2 dim: 4 } axis: -3 }")
    d = error_of(text, {"a": (2, 8)})
    assert "8 elements" in d.message and "16" in d.message


# (type, bottoms, tops, params, substrings of the message, line of the caret within the layer)
ERRORS = [
    (
        "Concat",
        {"a": (1, 3, 4, 4), "b": (1, 3, 5, 4)},
        ["c"],
        "",
        ["'b'", "1x3x5x4", "'a'", "1x3x4x4", "axis 2", "5 vs 4"],
    ),
    ("Concat", {"a": (1, 3), "b": (1, 3, 1)}, ["c"], "", ["'b'", "3 axes", "2"]),
    ("Concat", {"a": (1, 3)}, ["c"], "concat_param { axis: 2 }", ["axis 2", "2 axes"]),
    ("Concat", {"a": (1, 3)}, ["c"], "concat_param { axis: 1 concat_dim: 1 }", ["not both"]),
    ("Slice", {"a": (2, 6)}, ["x", "y", "z", "w"], "", ["4 tops", "size 6"]),
    (
        "Slice",
        {"a": (2, 6)},
        ["x", "y"],
        "slice_param { slice_point: 1 slice_point: 2 }",
        ["2 slice_point", "2 tops"],
    ),
    (
        "Slice",
        {"a": (2, 6)},
        ["x", "y", "z"],
        "slice_param { slice_point: 3 slice_point: 2 }",
        ["slice_point 2", "(3)"],
    ),
    ("Slice", {"a": (2, 6)}, ["x", "y"], "slice_param { slice_point: 6 }", ["6", "size 6"]),
    (
        "Reshape",
        {"a": (2, 8)},
        ["r"],
        "reshape_param { shape { dim: 3 dim: -1 } }",
        ["16", "divisible", "3"],
    ),
    (
        "Reshape",
        {"a": (2, 8)},
        ["r"],
        "reshape_param { shape { dim: -1 dim: -1 } }",
        ["more than one -1"],
    ),
    (
        "Reshape",
        {"a": (2, 8)},
        ["r"],
        "reshape_param { shape { dim: 3 dim: 5 } }",
        ["3x5", "15", "2x8", "16"],
    ),
    (
        "Reshape",
        {"a": (2, 8)},
        ["r"],
        "reshape_param { shape { dim: 0 dim: 0 dim: 0 } }",
        ["no axis 2"],
    ),
    ("Reshape", {"a": (2, 8)}, ["r"], "reshape_param { axis: 3 }", ["axis 3"]),
    ("Reshape", {"a": (2, 8)}, ["r"], "reshape_param { axis: 1 num_axes: 2 }", ["3", "2-axis"]),
    ("Flatten", {"a": (2, 3, 4)}, ["f"], "flatten_param { axis: 2 end_axis: 0 }", ["end_axis"]),
    ("Flatten", {"a": (2, 3)}, ["f"], "flatten_param { axis: 3 }", ["axis 3"]),
    ("Tile", {"a": (2, 3)}, ["t"], "", ["tiles must be specified"]),
    ("Tile", {"a": (2, 3)}, ["t"], "tile_param { tiles: 0 }", ["positive", "0"]),
    ("Embed", {"i": (4,)}, ["e"], "embed_param { input_dim: 3 }", ["num_output"]),
    ("BatchReindex", {"a": (5, 3), "i": (2, 2)}, ["r"], "", ["'i'", "1 axis", "2x2"]),
    ("Filter", {"a": (5, 3), "s": (4,)}, ["x"], "", ["'a'", "5x3", "'s'", "first axis"]),
    ("Filter", {"a": (5, 3), "s": (5, 2)}, ["x"], "", ["'s'", "5x2"]),
]


@pytest.mark.parametrize(("type_", "bottoms", "tops", "body", "parts"), ERRORS)
def test_errors(type_, bottoms, tops, body, parts):
    d = error_of(layer(type_, list(bottoms), tops, body), bottoms)
    assert d.message.startswith(f"{type_} 'L': ")
    for part in parts:
        assert part in d.message


def test_error_points_at_the_field():
    needs_source_spans()
    text = layer("Slice", ["a"], ["x", "y"], "slice_param { axis: 1 slice_point: 9 }")
    d = error_of(text, {"a": (2, 6)})
    line = d.span.source.line(d.span.line)
    assert "slice_point" in line[d.span.col - 1 :]


def test_concat_mismatch_points_at_the_bottom():
    needs_source_spans()
    text = layer("Concat", ["a", "b"], ["c"])
    d = error_of(text, {"a": (1, 3, 4), "b": (1, 3, 5)})
    line = d.span.source.line(d.span.line)
    assert line[d.span.col - 1 :].startswith('bottom: "b"')


def test_coord_maps():
    assert lookup("Concat").coord_identity and lookup("Split").coord_identity


def test_embed_blobs():
    from protocaffe.testing import compile_snippet

    body = "embed_param { num_output: 7 input_dim: 10 }"
    specs = compile_snippet(layer("Embed", ["i"], ["e"], body), {"i": (4,)}).layer("L").blob_specs
    assert [(s.name, s.shape) for s in specs] == [("weight", (10, 7)), ("bias", (7,))]
    no_bias = "embed_param { num_output: 7 input_dim: 10 bias_term: false }"
    graph = compile_snippet(layer("Embed", ["i"], ["e"], no_bias), {"i": (4,)})
    assert [s.name for s in graph.layer("L").blob_specs] == ["weight"]


# --- numerics: lowered vs oracle -----------------------------------------------------------

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def test_concat_numerics():
    body = "concat_param { axis: 2 }"
    check_layer(
        layer("Concat", ["a", "b"], ["c"], body), {"a": rand(2, 3, 2), "b": rand(2, 3, 4)}, "L"
    )


def test_slice_numerics():
    text = layer(
        "Slice", ["a"], ["x", "y", "z"], "slice_param { axis: -1 slice_point: 1 slice_point: 4 }"
    )
    got = check_layer(text, {"a": rand(2, 3, 6)}, "L")
    assert got["z"].shape == (2, 3, 2)


@pytest.mark.parametrize("body", [b for b, _ in RESHAPE_2x8[:3]])
def test_reshape_numerics(body):
    check_layer(layer("Reshape", ["a"], ["r"], body), {"a": rand(2, 8)}, "L")


def test_flatten_and_tile_numerics():
    check_layer(
        layer("Flatten", ["a"], ["f"], "flatten_param { axis: 1 end_axis: 2 }"),
        {"a": rand(2, 3, 4, 5)},
        "L",
    )
    got = check_layer(
        layer("Tile", ["a"], ["t"], "tile_param { axis: 1 tiles: 3 }"), {"a": rand(2, 2, 3)}, "L"
    )
    # Caffe tiles whole blocks: [x0, x1, x0, x1, x0, x1] along the axis, not [x0, x0, x0, ...]
    np.testing.assert_array_equal(got["t"][:, 2:4], got["t"][:, 0:2])


def test_embed_numerics():
    body = "embed_param { num_output: 4 input_dim: 6 }"
    index = np.array([[0, 5, 2], [1, 1, 3.7]], dtype=np.float32)  # 3.7 truncates to 3
    got = check_layer(layer("Embed", ["i"], ["e"], body), {"i": index}, "L", [rand(6, 4), rand(4)])
    assert got["e"].shape == (2, 3, 4)


def test_batch_reindex_and_filter_numerics():
    idx = np.array([4, 0, 0, 2], dtype=np.float32)
    check_layer(layer("BatchReindex", ["a", "i"], ["r"]), {"a": rand(5, 3), "i": idx}, "L")
    sel = np.array([1, 0, 1, 1, 0], dtype=np.float32)
    got = check_layer(layer("Filter", ["a", "s"], ["x"]), {"a": rand(5, 3), "s": sel}, "L")
    assert got["x"].shape == (3, 3)


def test_split_and_parameter_numerics():
    got = check_layer(layer("Split", ["a"], ["x", "y"]), {"a": rand(2, 3)}, "L")
    np.testing.assert_array_equal(got["x"], got["y"])
    text = layer("Parameter", [], ["p"], "parameter_param { shape { dim: 2 dim: 3 } }")
    check_layer(text, {}, "L", [rand(2, 3)])
