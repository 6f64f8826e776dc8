"""`protocaffe diff`: every common blob compared with a reference (.npz from pycaffe's
net.blobs, or OpenCV's importer), in execution order, with the first divergence located."""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


def protocaffe(*args: str, cwd: Path) -> Done:
    """The CLI in this process (a subprocess per case would re-import torch each time)."""
    from protocaffe.cli import main

    here = Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(here)
    return Done(code, out.getvalue(), err.getvalue())


@pytest.fixture
def ref(tmp_path: Path) -> Path:
    """The net's blobs as pycaffe would save them, computed by the numpy oracles with the
    seed-0 filler weights written to a .caffemodel (an independent forward of each layer)."""
    import protocaffe
    from protocaffe.ir.build import shape_context
    from protocaffe.runtime.caffemodel import save_caffemodel

    (tmp_path / "net.prototxt").write_text(NET)
    module = protocaffe.load(tmp_path / "net.prototxt", seed=0, device="cpu")
    save_caffemodel(module, tmp_path / "w.caffemodel")
    graph = module.caffe_graph
    blobs = {"data": np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)}
    for layer in graph.layers[1:]:
        weights = [module.blob_tensor(layer, s.name).detach().numpy() for s in layer.blob_specs]
        ins = [blobs[b] for b in layer.bottoms]
        for top, value in zip(
            layer.tops, layer.spec.reference(shape_context(graph, layer), ins, weights), strict=True
        ):
            blobs[top] = value
    np.savez(tmp_path / "ref.npz", **blobs)
    return tmp_path


def test_matching_reference(ref: Path) -> None:
    done = protocaffe("diff", "net.prototxt", "-w", "w.caffemodel", "--against", "ref.npz", cwd=ref)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["blob", "shape", "max", "abs", "rel", "status"]
    assert [line.split()[0] for line in lines[1:6]] == ["data", "conv1", "pool1", "ip", "prob"]
    assert all(line.split()[-1] == "ok" for line in lines[1:6])
    assert "5 of 5 common blobs match ref.npz" in done.stdout


def test_first_divergence_is_located(ref: Path) -> None:
    with np.load(ref / "ref.npz") as data:
        blobs = dict(data)
    blobs["pool1"] = blobs["pool1"] + 0.1  # every blob after pool1 also differs
    blobs["ip"] = blobs["ip"] + 1.0
    np.savez(ref / "bad.npz", **blobs)
    done = protocaffe(
        "diff",
        "net.prototxt",
        "-w",
        "w.caffemodel",
        "--against",
        "bad.npz",
        "--save",
        "ours.npz",
        cwd=ref,
    )
    assert done.returncode == 1
    assert "3 of 5 common blobs match" in done.stdout
    err = done.stderr + done.stdout
    assert "first divergence: blob 'pool1' differs (max abs 0.1), written by Pooling 'pool1'" in err
    assert "net.prototxt:7:" in err  # the pool1 layer's line
    with np.load(ref / "ours.npz") as saved:
        assert set(saved.files) == {"data", "conv1", "pool1", "ip", "prob"}


def test_in_place_chain_is_compared_after_its_last_writer(ref: Path) -> None:
    with np.load(ref / "ref.npz") as data:
        blobs = dict(data)
    blobs["conv1"] = np.minimum(blobs["conv1"], 0) - 1  # wrong only if read after relu1
    np.savez(ref / "bad.npz", **blobs)
    done = protocaffe("diff", "net.prototxt", "-w", "w.caffemodel", "--against", "bad.npz", cwd=ref)
    assert "written by Convolution 'conv1'" in done.stderr + done.stdout
    assert "then rewritten in place by ReLU 'relu1'" in done.stderr + done.stdout


def test_against_opencv_on_filler_weights(ref: Path) -> None:
    pytest.importorskip("cv2")
    np.save(ref / "x.npy", np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32))
    done = protocaffe("diff", "net.prototxt", "--against", "opencv", "--input", "x.npy", cwd=ref)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 of 5 common blobs match OpenCV" in done.stdout


def test_missing_input_and_foreign_reference_are_user_errors(ref: Path) -> None:
    np.savez(ref / "other.npz", something=np.zeros(3, np.float32))
    done = protocaffe("diff", "net.prototxt", "--against", "other.npz", cwd=ref)
    assert done.returncode == 1
    assert "the reference has no input blob 'data'; pass --input" in done.stdout + done.stderr
