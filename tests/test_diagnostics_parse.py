"""Parser diagnostics: every bad input gets `path:line:col: error: message`, a caret and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocaffe.diagnostics import CompileError, Diagnostic
from protocaffe.frontend import parse_text, read_source
from protocaffe.proto import caffe_pb2


def errors(text: str, **kw) -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        parse_text(text, "net.prototxt", **kw)
    return info.value.diagnostics


def only_error(text: str, **kw) -> Diagnostic:
    diags = errors(text, **kw)
    assert len(diags) == 1, [d.render() for d in diags]
    return diags[0]


def at(d: Diagnostic) -> tuple[int, int]:
    return d.span.line, d.span.col


def test_rendering_has_location_source_line_caret_and_hint() -> None:
    d = only_error('layer {\n  name: "c"\n  convolution_param { kernal_size: 3 }\n}\n')
    text = d.render()
    lines = text.splitlines()
    assert (
        lines[0] == "net.prototxt:3:23: error: unknown field 'kernal_size' in ConvolutionParameter"
    )
    assert lines[1].endswith("  convolution_param { kernal_size: 3 }")
    assert lines[2].endswith(" " * 22 + "^" + "~" * 10)
    assert "did you mean 'kernel_size'" in lines[3]


def test_field_in_the_wrong_message_names_its_home() -> None:
    d = only_error('layer { type: "Convolution" kernel_size: 3 }')
    assert at(d) == (1, 29)
    assert "belongs in convolution_param" in d.hint
    d = only_error("layer { kernel_size: 3 }")
    assert "convolution_param" in d.hint and "pooling_param" in d.hint


def test_fork_only_field_names_the_fork() -> None:
    d = only_error('layer { type: "ReLU" video_data_param { } }')
    assert d.message == "unknown field 'video_data_param' in LayerParameter"
    assert "SSD fork" in d.hint and "BVLC" in d.hint


def test_fork_only_v1_enum_value() -> None:
    """A fork's V1 type name parses into fork_type (the upgrade makes it the type string);
    a name no fork defines is still an error."""
    from protocaffe.frontend import parse_text

    parsed = parse_text("layers { type: IMAGE_SEG_DATA }", "<t>")
    assert parsed.message.layers[0].fork_type == "ImageSegData"
    d = only_error("layers { type: IMAGE_SEG_DATUM }")
    assert "IMAGE_SEG_DATUM" in d.message


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ('layer { convolution_param { num_output: "64" } }', "found the string", "remove the"),
        ("layer { convolution_param { num_output: 2.5 } }", "expected an integer", "whole"),
        ("layer { convolution_param { num_output: -1 } }", "out of range for uint32", None),
        ("layer { convolution_param { axis: 3000000000 } }", "out of range for int32", None),
        ("layer { convolution_param { bias_term: yes } }", "expected true or false", None),
        ("layer { convolution_param { bias_term: TRUE } }", "expected true or false", "true"),
        ("layer { name: conv1 }", "expected a quoted string", '"conv1"'),
        ("layer { loss_weight: abc }", "expected a number", None),
        ("layer { loss_weight: 01.5 }", "octal", None),
    ],
)
def test_wrong_value_type(text: str, message: str, hint: str | None) -> None:
    d = only_error(text)
    assert message in d.message
    assert d.span.line == 1
    if hint:
        assert hint in d.hint


def test_unknown_enum_value_lists_the_valid_ones() -> None:
    d = only_error("layer { pooling_param { pool: MAXIMUM } }")
    assert "'MAXIMUM' is not a PoolMethod value (valid: MAX, AVE, STOCHASTIC)" in d.message
    assert "'MAX'" in d.hint
    d = only_error('layer { pooling_param { pool: "MAX" } }')
    assert "without quotes" in d.hint


def test_non_repeated_field_given_twice() -> None:
    d = only_error('layer {\n  name: "a"\n  name: "b"\n}')
    assert at(d) == (3, 3) and "not a repeated field" in d.message
    assert "line 2" in d.hint
    d = only_error("layer { convolution_param { } convolution_param { } }")
    assert "more than once" in d.message


def test_list_for_a_non_repeated_field() -> None:
    d = only_error("layer { convolution_param { num_output: [1, 2] } }")
    assert "not a repeated field" in d.message


def test_message_where_scalar_expected_and_vice_versa() -> None:
    d = only_error("layer { name { } }")
    assert "'name' takes a string value, not a message block" in d.message
    d = only_error("layer { convolution_param: 5 }")
    assert "'convolution_param' is a message (ConvolutionParameter)" in d.message


def test_missing_colon_before_a_scalar() -> None:
    d = only_error("layer { convolution_param { num_output 5 } }")
    assert "expected ':' after 'num_output'" in d.message
    assert "num_output: 5" in d.hint


def test_unterminated_string_points_at_the_opening_quote() -> None:
    d = only_error('layer {\n  name: "conv1\n  type: "ReLU"\n}\n')
    assert d.message == "unterminated string" and at(d) == (2, 9)


def test_unterminated_brace_points_at_the_opening_one() -> None:
    d = only_error('name: "n"\nlayer {\n  name: "a"\n  relu_param {\n}\n')
    assert "unterminated '{'" in d.message and at(d) == (2, 7)


def test_unmatched_closing_brace() -> None:
    d = only_error('layer { name: "a" }\n}\n')
    assert d.message == "unmatched '}'" and at(d) == (2, 1)


def test_missing_value() -> None:
    d = only_error('layer {\n  name:\n  type: "ReLU"\n}')
    assert d.message == "missing value for 'name' after ':'" and at(d) == (2, 7)
    d = only_error("layer { name: }")
    assert "missing value for 'name'" in d.message


def test_garbage_characters() -> None:
    d = only_error('layer { name: "a" @ }')
    assert d.message == "unexpected character '@'" and at(d) == (1, 19)
    d = only_error("layer { num_output = 3 }")
    assert "':'" in d.hint
    d = only_error("// a C comment\nname: 'x'")
    assert "'#'" in d.hint
    d = only_error("num_output: ${N}")
    assert "placeholder" in d.hint


def test_two_values_for_one_field() -> None:
    d = only_error("layer { convolution_param { kernel_size: 3 3 } }")
    assert "expected a field name" in d.message and at(d) == (1, 44)


def test_list_syntax_errors() -> None:
    d = only_error('layer { top: ["a" 1] }')
    assert d.message == "unexpected '1' in a list; expected ',' or ']'" and at(d) == (1, 19)
    d = only_error('layer { top: ["a", ] }')
    assert "after ','" in d.message and d.hint == "remove the trailing ','"
    d = only_error('layer { top: ["a"')
    assert "unterminated '['" in d.message and at(d) == (1, 14)


def test_expected_closer_matches_the_open_block() -> None:
    assert "expected a field name or '>'" in only_error('layer < name: "a" 3 >').message
    assert "or the end of the file" in only_error('name: "x" 5').message


def test_all_schema_errors_are_reported_in_one_run() -> None:
    text = (
        'layer {\n  nmae: "a"\n  convolution_param { num_output: -3 }\n}\n'
        'layer {\n  pooling_param { pool: MEAN }\n  name: "b"\n  name: "c"\n}\n'
    )
    diags = errors(text)
    assert [at(d) for d in diags] == [(2, 3), (3, 35), (6, 25), (8, 3)]
    assert all(d.severity == "error" for d in diags)


def test_unknown_top_level_field_in_solver() -> None:
    d = only_error("base_lr: 0.1\nmax_iters: 10\n", message_type=caffe_pb2.SolverParameter)
    assert "'max_iter'" in d.hint


def test_unknown_escape_is_a_warning() -> None:
    parsed = parse_text(r'layer { name: "C:\data" }')
    assert parsed.message.layer[0].name == "C:\\data"
    assert [d.severity for d in parsed.diagnostics] == ["warning"]


# --- files --------------------------------------------------------------------------------


def read_error(path: Path) -> Diagnostic:
    with pytest.raises(CompileError) as info:
        read_source(path)
    return info.value.diagnostics[0]


def test_non_utf8_file_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "latin1.prototxt"
    path.write_bytes(b'name: "n"\nlayer { name: "caf\xe9" }\n')
    d = read_error(path)
    assert "byte 0xE9 at offset 28" in d.message
    assert at(d) == (2, 19) and d.hint


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.prototxt"
    path.write_text("  \n\n")
    assert "is empty" in read_error(path).message


def test_binary_caffemodel_is_recognised(tmp_path: Path) -> None:
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="conv", type="Convolution").blobs.add().data.extend([0.5] * 64)
    path = tmp_path / "weights.bin"
    path.write_bytes(net.SerializeToString())
    d = read_error(path)
    assert "caffemodel" in d.message and "not a text prototxt" in d.message


def test_hdf5_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "w.caffemodel.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    assert "HDF5" in read_error(path).message


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_source(tmp_path / "nope.prototxt")


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.prototxt"
    path.write_bytes(b'\xef\xbb\xbfname: "n"\n')
    assert read_source(path).text == 'name: "n"\n'


# --- recovery after a syntax error: several errors in one run, no cascades ------------------


def test_syntax_errors_in_different_layers_are_all_reported() -> None:
    text = (
        'name: "n"\n'
        'layer {\n  name: "a"\n  type: @\n}\n'
        'layer {\n  name: "b"\n  top: "x" 3\n}\n'
        'layer {\n  name: "c"\n  bottom: "x"\n}\n'
    )
    diags = errors(text)
    assert [(d.message, at(d)) for d in diags] == [
        ("unexpected character '@'", (4, 9)),
        ("unexpected '3'; expected a field name or '}'", (8, 12)),
    ]


def test_syntax_error_then_a_schema_error_later() -> None:
    text = 'layer {\n  name: "a\n  type: "ReLU"\n}\nlayer {\n  nmae: "b"\n}\n'
    diags = errors(text)
    assert [(d.message, at(d)) for d in diags] == [
        ("unterminated string", (2, 9)),
        ("unknown field 'nmae' in LayerParameter", (6, 3)),
    ]
    assert diags[1].hint == "did you mean 'name'?"


def test_schema_errors_before_and_after_a_syntax_error_are_in_file_order() -> None:
    text = 'nmae: "n"\nlayer {\n  name: }\nlayer {\n  typo: 1\n}\n'
    diags = errors(text)
    assert [at(d) for d in diags] == [(1, 1), (3, 7), (5, 3)]


def test_unterminated_string_swallowing_the_rest_gives_one_error() -> None:
    # No top-level block after it to resume at: the rest of the file is not guessed at.
    text = 'layer {\n  name: "a"\n  type: "Conv\n  convolution_param {\n    pad: "1 }\n}\n'
    d = only_error(text)
    assert d.message == "unterminated string" and at(d) == (3, 9)
    # Resuming at the next layer: a clean layer adds nothing.
    d = only_error('name: "net\nlayer {\n  name: "a"\n  type: "ReLU"\n}\n')
    assert d.message == "unterminated string" and at(d) == (1, 7)


def test_unterminated_brace_then_the_next_layer_is_still_checked() -> None:
    text = 'layer {\n  name: "a"\n  param {\n    lr_mult: 1\nlayer {\n  nmae: "b"\n}\n'
    diags = errors(text)
    assert [(d.message.split(":")[0], at(d)) for d in diags] == [
        ("unterminated '{'", (3, 9)),
        ("unknown field 'nmae' in LayerParameter", (6, 3)),
    ]


def test_missing_value_before_the_next_layer() -> None:
    # `name:` takes `layer` as its value; the error says what was meant, and the layer that
    # follows is checked rather than reported as a bad value for 'name'.
    diags = errors('name:\nlayer {\n  nmae: "b"\n}\n')
    assert [(d.message, at(d)) for d in diags] == [
        ("missing value for 'name' after ':'", (1, 5)),
        ("unknown field 'nmae' in LayerParameter", (3, 3)),
    ]


def test_an_early_closing_brace_drops_its_layer_not_a_cascade() -> None:
    # The stray fields after the early '}' are not reported as unknown in NetParameter.
    text = (
        'layer {\n  name: "a"\n  param { lr_mult: 1 } }\n  type: "Conv"\n}\n'
        'layer {\n  nmae: "b"\n}\n'
    )
    diags = errors(text)
    assert [(d.message, at(d)) for d in diags] == [
        ("unmatched '}'", (5, 1)),
        ("unknown field 'nmae' in LayerParameter", (7, 3)),
    ]


def test_v0_nested_layer_is_not_a_resume_point() -> None:
    text = 'layers {\nlayer {\nname: "a"\ntype: @\n}\n}\nlayers {\nlayer {\nnmae: "b"\n}\n}\n'
    diags = errors(text)
    assert [(d.message, at(d)) for d in diags] == [
        ("unexpected character '@'", (4, 7)),
        ("unknown field 'nmae' in V0LayerParameter", (9, 1)),
    ]


def test_parse_error_followed_by_a_bad_character_is_one_error() -> None:
    d = only_error("layer { name: }\n@\n")
    assert d.message == "missing value for 'name' after ':'"


def test_indented_layer_is_not_a_resume_point() -> None:
    # Only a block opened in column 1 is taken for a top-level statement.
    d = only_error('layer {\n  name: @\n  layer {\n    nmae: "b"\n  }\n}\n')
    assert d.message == "unexpected character '@'"


def test_solver_with_a_syntax_error_given_as_a_net(tmp_path: Path) -> None:
    # Judged from the statements before the error: one error that says so, not one unknown
    # NetParameter field per solver field.
    from protocaffe.frontend import load_net

    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.01\ntrain_state {\n  stage: @\n}\n')
    with pytest.raises(CompileError) as info:
        load_net(path)
    messages = [d.message for d in info.value.diagnostics]
    assert messages == [
        "this file is a solver definition (SolverParameter), not a net",
        "unexpected character '@'",
    ]


def test_error_in_a_top_level_scalar_resumes_at_the_next_layer() -> None:
    diags = errors('nmae: "net\nlayer {\n  typo: 1\n}\n')
    assert [(d.message, at(d)) for d in diags] == [
        ("unterminated string", (1, 7)),
        ("unknown field 'typo' in LayerParameter", (3, 3)),
    ]


def test_error_in_an_unknown_block_does_not_resume_inside_it() -> None:
    # A fork's block (unknown here) could hold anything, even a column-1 'layer {'.
    d = only_error("fork_block {\n  x: @\nlayer {\n  typo: 1\n}\n}\n")
    assert d.message == "unexpected character '@'"


def test_too_many_syntax_errors_stop_with_a_note() -> None:
    text = "".join(f'layer {{\n  name: "l{i}" @\n}}\n' for i in range(60))
    diags = errors(text)
    assert (
        len(diags) == 51
        and diags[-1].severity == "note"
        and "stopped after 50" in (diags[-1].message)
    )
