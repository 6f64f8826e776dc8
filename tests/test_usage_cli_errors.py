"""A new user's mistakes on `run`, `bench` and `convert`: a clear message and exit 1 or 2, never
a traceback; plus outputs that stay readable (labels files, batched .npy classifiers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from protocaffe.cli import main  # noqa: E402

GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'

# A 5-class classifier whose global 4x4 pooling needs inputs of at least 6x6.
CLASSIFIER = f"""
name: "cls"
layer {{ name: "input" type: "Input" top: "data"
  input_param {{ shape {{ dim: 1 dim: 3 dim: 6 dim: 6 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 5 kernel_size: 3 {GAUSS} }} }}
layer {{ name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
  pooling_param {{ pool: AVE kernel_size: 4 }} }}
layer {{ name: "prob" type: "Softmax" bottom: "pool" top: "prob" }}
"""


def cli(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def net(tmp_path: Path) -> Path:
    proto = tmp_path / "net.prototxt"
    proto.write_text(CLASSIFIER)
    return proto


def test_cuda_requested_without_cuda_is_usage_error(net: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    np.save(tmp_path / "x.npy", np.zeros((3, 6, 6), np.float32))
    run = ("run", net, "--input", tmp_path / "x.npy", "--output", tmp_path / "o")
    for argv in (run, ("bench", net, "--iterations", "1")):
        assert cli(*argv, "--device", "cuda") == 2
        err = capsys.readouterr().err
        assert "--device cuda:" in err and "use 'cpu' or 'auto'" in err
        assert "Traceback" not in err
    from protocaffe.runtime.api import load

    with pytest.raises(ValueError, match="'cuda' is not available"):
        load(net, device="cuda")


@pytest.mark.parametrize("suffix", [".pt", ".caffemodel", ".safetensors"])
def test_convert_to_missing_directory_exits_1(net: Path, tmp_path: Path, capsys, suffix: str):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    out = tmp_path / "no" / "such" / f"w{suffix}"
    assert cli("convert", net, "-o", out) == 1
    err = capsys.readouterr().err
    assert f"cannot write -o {out}: the directory '{out.parent}' does not exist" in err
    assert "Traceback" not in err


def test_run_output_that_is_a_file_exits_1(net: Path, tmp_path: Path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((3, 6, 6), np.float32))
    (tmp_path / "taken").write_text("")
    argv = ("run", net, "--input", tmp_path / "x.npy", "--device", "cpu")
    assert cli(*argv, "--output", tmp_path / "taken") == 1
    err = capsys.readouterr().err
    assert "--output" in err and "cannot create the directory" in err and "Traceback" not in err


def test_complex_npy_is_rejected(net: Path, tmp_path: Path, capsys):
    np.save(tmp_path / "c.npy", np.zeros((3, 6, 6), np.complex64))
    argv = ("run", net, "--input", tmp_path / "c.npy", "--output", tmp_path / "o")
    assert cli(*argv, "--device", "cpu") == 1
    assert "c.npy: holds complex64 values" in capsys.readouterr().err


def test_latin1_labels_batched_npy_and_label_count(net: Path, tmp_path: Path, capsys):
    (tmp_path / "labels.txt").write_bytes(b"caf\xe9\nna\xefve\n")  # Latin-1, 2 of 5 names
    np.save(tmp_path / "b.npy", np.random.default_rng(0).random((2, 3, 6, 6), np.float32))
    argv = ("run", net, "--input", tmp_path / "b.npy", "--labels", tmp_path / "labels.txt")
    assert cli(*argv, "--output", tmp_path / "o", "--device", "cpu", "--top-k", "5") == 0
    out, err = capsys.readouterr()
    # one top-k per item of the NxC output, not an .npy dump
    assert "b.npy: [0] top-5: " in out and "; [1] top-5: " in out
    assert "café" in out and "naïve" in out
    assert "--labels has 2 names but 'prob' scores 5 classes" in err


def test_too_small_input_suggests_resize(net: Path, tmp_path: Path, capsys):
    rgb = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "small.png")
    argv = ("run", net, "-w", tmp_path / "none.caffemodel", "--input", tmp_path / "small.png")
    assert cli(*argv, "--output", tmp_path / "o") == 1  # -w is --weights, as in convert
    assert "--weights" in capsys.readouterr().err
    argv = ("run", net, "--input", tmp_path / "small.png", "--output", tmp_path / "o")
    assert cli(*argv, "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert "Pooling 'pool'" in err and "net.prototxt:" in err
    assert "small.png: the net does not take input data 1x3x4x4" in err
    assert "pass --resize 6,6" in err and "Traceback" not in err
    assert cli(*argv, "--device", "cpu", "--resize", "6,6") == 0


def test_internal_errors_are_one_line_not_a_traceback(monkeypatch, capsys):
    from protocaffe import cli
    from protocaffe.commands import fmt

    def broken(args):
        raise RuntimeError("boom")

    real_add = fmt.add_parser

    def add_broken(sub):
        real_add(sub)
        sub.choices["fmt"].set_defaults(func=broken)

    monkeypatch.setattr(fmt, "add_parser", add_broken)
    monkeypatch.delenv("PROTOCAFFE_TRACEBACK", raising=False)
    assert cli.main(["fmt", "x.prototxt"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "Traceback" not in err
    monkeypatch.setenv("PROTOCAFFE_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["fmt", "x.prototxt"])


@pytest.mark.parametrize("argv", [["train", ""], ["train", "--solver", ""]])
def test_an_empty_solver_path_is_an_input_error(argv, capsys):
    """Found by the fuzz suite: '' was taken for "no solver given" and crashed."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "internal error" not in err and "error:" in err
