"""QA: bad inputs a user really hands the front end, and the messages they get (no tracebacks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocaffe.cli import main
from protocaffe.diagnostics import CompileError, Diagnostic, SourceFile, Span, render
from protocaffe.frontend import load_net, load_solver, parse_text
from protocaffe.ir import build_graph

SOLVER = 'net: "nets/train_val.prototxt"\nbase_lr: 0.01\nmax_iter: 100\nlr_policy: "fixed"\n'


def errors_of(fn, *args) -> list[Diagnostic]:
    with pytest.raises(CompileError) as info:
        fn(*args)
    return [d for d in info.value.diagnostics if d.severity == "error"]


# --- files that cannot be read ----------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_net, load_solver])
def test_missing_file_is_a_compile_error_not_an_os_error(loader, tmp_path: Path) -> None:
    # run/bench/convert reach the file through load_net: it must not escape as FileNotFoundError.
    (d,) = errors_of(loader, str(tmp_path / "nope.prototxt"))
    assert d.message.startswith("cannot read") and "No such file" in d.message


def test_directory_is_a_compile_error(tmp_path: Path) -> None:
    (d,) = errors_of(load_net, tmp_path)
    assert d.message == f"the prototxt '{tmp_path}' is a directory, not a file"


@pytest.mark.parametrize("name", ["nets/my:net.prototxt", "C:/caffe/{a}.prototxt"])
def test_missing_path_with_colon_or_brace_is_not_taken_for_text(name: str) -> None:
    (d,) = errors_of(load_net, name)
    assert d.message == f"cannot read '{name}': No such file or directory"


def test_one_line_text_is_still_text() -> None:
    parsed = load_net('layer { name: "a" type: "ReLU" bottom: "x" top: "x" }')
    assert parsed.message.layer[0].name == "a"


def test_cli_never_reads_its_argument_as_text(tmp_path: Path, capsys) -> None:
    assert main(["compile", "name:x"]) == 1
    assert "cannot read 'name:x'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "encoding,kind", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")]
)
def test_utf16_and_utf32_files_are_named(tmp_path: Path, encoding: str, kind: str) -> None:
    path = tmp_path / "wide.prototxt"
    path.write_bytes('name: "n"\nlayer { name: "a" type: "ReLU" }\n'.encode(encoding))
    (d,) = errors_of(load_net, path)
    assert f"is {kind} text" in d.message and "UTF-8" in (d.hint or "")


# --- a solver where a net belongs -------------------------------------------------------------


def test_solver_given_as_net_is_one_error_naming_the_net(tmp_path: Path) -> None:
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER)
    (d,) = errors_of(load_net, path)
    assert "solver definition" in d.message and d.span is not None and d.span.line == 1
    assert "nets/train_val.prototxt" in (d.hint or "")


def test_solver_with_inline_net_param_points_at_it() -> None:
    text = 'base_lr: 0.1\nmax_iter: 10\nnet_param {\n  name: "n"\n}\n'
    (d,) = errors_of(load_net, text)
    assert "solver definition" in d.message and "inline net_param (line 3)" in (d.hint or "")


def test_net_with_a_typo_is_not_called_a_solver() -> None:
    errors = errors_of(load_net, 'name: "n"\nlayer { nmae: "a" }\nbase_lr: 1\n')
    assert all("solver" not in d.message for d in errors)


# --- unknown-field hints ----------------------------------------------------------------------


def hint_of(text: str) -> str | None:
    (d,) = errors_of(parse_text, text)
    return d.hint


def test_nested_layer_block_gets_the_v0_hint_not_python_param() -> None:
    hint = hint_of('layer { layer { name: "a" } }')
    assert hint is not None and "python_param" not in hint and "V0" in hint


def test_scalar_layer_field_still_belongs_in_python_param() -> None:
    hint = hint_of('layer { type: "Python" layer: "MyLayer" }')
    assert hint == "'layer' belongs in python_param: write 'python_param { layer: ... }'"


def test_block_field_hint_is_written_as_a_block() -> None:
    hint = hint_of('layer { type: "Convolution" weight_filler { type: "xavier" } }')
    assert hint is not None and "convolution_param { weight_filler { ... } }" in hint


def test_block_is_not_sent_to_a_scalar_home() -> None:
    # pooling_param.pool is an enum: a block named 'pool' does not belong there.
    assert "pooling_param" not in (hint_of('layer { type: "Pooling" pool { } }') or "")


# --- rendering --------------------------------------------------------------------------------


def test_long_source_lines_are_quoted_around_the_caret() -> None:
    line = 'layer { name: "a" } ' * 200 + "layer { nme: 1 }" + ' layer { name: "a" }' * 200
    col = line.index("nme") + 1
    source = SourceFile("x.prototxt", line)
    text = render(Diagnostic("error", "unknown field", Span(source, 1, col, 1, col + 3)))
    quoted, caret = text.splitlines()[1:3]
    assert len(quoted) < 200 and quoted.count("...") == 2
    start = caret.index("^")
    assert quoted[start : start + 3] == "nme" and caret[start:] == "^~~"


def test_short_lines_are_quoted_whole() -> None:
    source = SourceFile("x.prototxt", 'layer { nme: "a" }')
    text = render(Diagnostic("error", "unknown field", Span(source, 1, 9, 1, 12)))
    assert '    1 | layer { nme: "a" }' in text and "..." not in text


# --- nets with nothing in them ----------------------------------------------------------------


def test_net_without_layers_compiles_with_a_warning() -> None:
    graph = build_graph(load_net('name: "empty"\n# nothing yet\n'))
    (d,) = graph.diagnostics
    assert d.severity == "warning" and "defines no layers" in d.message


def test_net_whose_layers_are_all_excluded_warns() -> None:
    text = (
        'layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } '
        "include { phase: TRAIN } }\n"
    )
    (d,) = build_graph(load_net(text)).diagnostics
    assert d.severity == "warning" and "no layer is part of the net in phase TEST" in d.message
    assert not [x for x in build_graph(load_net(text), phase="TRAIN").diagnostics]


def test_empty_net_cli_exits_0(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.prototxt"
    path.write_text("# only a comment\n")
    assert main(["compile", str(path)]) == 0
    assert "warning:" in capsys.readouterr().err


# --- --explain --------------------------------------------------------------------------------

TWO_LOSSES = (
    'layer { name: "in" type: "Input" top: "x" top: "y" '
    "input_param { shape { dim: 2 dim: 3 } } }\n"
    'layer { name: "loss" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l2_error" }\n'
    'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "y" top: "ce" }\n'
)


def test_explain_covers_every_layer_with_the_name(tmp_path: Path, capsys) -> None:
    path = tmp_path / "n.prototxt"
    path.write_text(TWO_LOSSES)
    assert main(["compile", str(path), "--explain", "loss"]) == 0
    out = capsys.readouterr().out
    assert "layer 'loss' (EuclideanLoss)" in out and "layer 'loss' (SigmoidCrossEntropyLoss)" in out


def test_explain_unknown_name_suggests_blobs_too(tmp_path: Path, capsys) -> None:
    path = tmp_path / "n.prototxt"
    path.write_text(TWO_LOSSES)
    assert main(["compile", str(path), "--explain", "l2_eror"]) == 2
    assert "did you mean 'l2_error'?" in capsys.readouterr().err
