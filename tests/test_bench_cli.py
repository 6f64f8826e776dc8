"""`protocaffe bench`: per-layer and total forward timing, like `caffe time`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from protocaffe.cli import main

NET = """
name: "tiny"
layer { name: "input" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.prototxt"
    path.write_text(NET)
    return path


def bench_json(capsys, *argv: str) -> dict:
    assert main(["bench", *argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report(net: Path, capsys) -> None:
    result = bench_json(capsys, str(net), "--iterations", "3", "--warmup", "1")
    assert result["inputs"] == {"data": [1, 3, 16, 16]}
    assert result["iterations"] == 3 and result["device"] == "cpu"
    assert [t["name"] for t in result["layers"]] == [
        "input",
        "conv1",
        "relu1",
        "pool1",
        "fc",
        "prob",
    ]
    layers = {t["name"]: t for t in result["layers"]}
    assert layers["pool1"]["top_shapes"] == [[1, 8, 7, 7]]
    for name in ("conv1", "pool1", "fc", "prob"):
        assert 0 < layers[name]["min_ms"] <= layers[name]["median_ms"]
    assert layers["relu1"]["median_ms"] == 0  # fused into conv1 (protocaffe/lower/passes.py)
    assert 0 < result["forward_ms"]["min"] <= result["forward_ms"]["median"]
    # The activation peak is below the sum of all blobs (freed after their last use).
    assert 0 < result["peak_activation_bytes"] <= result["blob_bytes"]


def test_input_override_reshapes(tmp_path: Path, capsys) -> None:
    path = tmp_path / "fcn.prototxt"
    path.write_text(NET.split('layer { name: "fc"')[0])  # fully convolutional part only
    result = bench_json(capsys, str(path), "--input", "data=2,3,30,20", "--iterations", "1")
    assert result["inputs"] == {"data": [2, 3, 30, 20]}
    assert result["layers"][-1]["top_shapes"] == [[2, 8, 14, 9]]


def test_table_lists_layers_with_shares(net: Path, capsys) -> None:
    assert main(["bench", str(net), "--iterations", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("conv1", "pool1", "prob"))]
    assert [r[0] for r in rows] == ["conv1", "pool1", "prob"]
    assert rows[0][1:3] == ["Convolution", "1x8x14x14"]
    shares = [float(ln.split()[-1]) for ln in out.splitlines()[2:8]]
    assert sum(shares) == pytest.approx(100, abs=0.5)
    assert "forward: median" in out and "over 2 runs (1 warm-up) on cpu float32" in out
    assert "charged to no layer" in out


@pytest.mark.parametrize(
    "argv", [["--iterations", "0"], ["--input", "data=1,x"], ["--warmup", "-1"]]
)
def test_bad_flags_exit_2(net: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["bench", str(net), *argv]))
    assert exc.value.code == 2


def test_bad_input_name_is_located(net: Path, capsys) -> None:
    assert main(["bench", str(net), "--input", "dta=1,3,8,8", "--device", "cpu"]) == 1
    assert "dta" in capsys.readouterr().err
