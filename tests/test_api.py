"""protocaffe.load / compile, emit_python and `protocaffe convert`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch
from _corpus import CORPUS

import protocaffe
from protocaffe.cli import main
from protocaffe.diagnostics import CompileError
from protocaffe.lower.emit import emit_python

DEPLOY = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" }
layer { name: "fc/out" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def deploy(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text(DEPLOY)
    return path


def test_import_is_light():
    code = "import sys, protocaffe; protocaffe.compile; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_runs_and_is_in_eval_mode(deploy):
    net = protocaffe.load(deploy, device="cpu", seed=0)
    assert isinstance(net, torch.nn.Module) and not net.training
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        prob = net(x)["prob"]
    assert prob.shape == (1, 5)
    torch.testing.assert_close(prob.sum(), torch.tensor(1.0))
    # TEST-phase Dropout is the identity: the output is deterministic
    with torch.no_grad():
        assert torch.equal(prob, net(x)["prob"])
    assert net.caffe_names["fc/out"] == "fc_out"


def test_load_with_weights_reproduces_outputs(deploy, tmp_path):
    ref = protocaffe.load(deploy, device="cpu", seed=1)
    weights = tmp_path / "w.caffemodel"
    protocaffe.save_caffemodel(ref, weights)
    net = protocaffe.load(deploy, weights, device="cpu")
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(net(x)["prob"], ref(x)["prob"])
    assert net.weights_report.loaded == ["bn1", "conv1", "fc/out", "scale1"]


def test_load_options(deploy):
    net = protocaffe.load(deploy, device="auto", dtype="float64", seed=0, outputs=["pool1"])
    assert net.conv1.weight.dtype == torch.float64
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert net.conv1.weight.device.type == expected
    assert set(net.output_names) == {"prob", "pool1"}
    small = protocaffe.load(deploy, device="cpu", input_shapes={"data": (2, 3, 8, 8)}, seed=0)
    assert small(torch.zeros(2, 3, 8, 8))["prob"].shape == (2, 5)
    cl = protocaffe.load(deploy, device="cpu", channels_last=True, seed=0)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="unknown dtype"):
        protocaffe.load(deploy, dtype="int3")


def test_load_allow_missing(deploy, tmp_path):
    weights = tmp_path / "w.caffemodel"
    protocaffe.save_caffemodel(protocaffe.load(deploy, device="cpu", seed=1), weights)
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(DEPLOY.replace('"fc/out"', '"fc_new"'))
    with pytest.raises(CompileError, match="'fc_new' has no weights"):
        protocaffe.load(renamed, weights, device="cpu")
    with pytest.warns(UserWarning) as caught:
        net = protocaffe.load(renamed, weights, device="cpu", allow_missing=True, seed=0)
    messages = [str(w.message) for w in caught]
    assert any("'fc_new' has no weights" in m for m in messages)
    assert any("ignored as Caffe does: 'fc/out'" in m for m in messages)
    assert net.weights_report.missing == ["fc_new"]
    assert torch.isfinite(net.fc_new.weight).all() and net.fc_new.weight.abs().sum() > 0


def test_compile_returns_graph(deploy):
    graph = protocaffe.compile(deploy)
    assert graph.blob("prob").shape == (1, 5)


def test_emit_python_round_trip(deploy, tmp_path):
    net = protocaffe.load(deploy, device="cpu", seed=3)
    out = tmp_path / "tiny_net.py"
    text = emit_python(net.caffe_graph, out)
    assert "class Tiny(torch.nn.Module):" in text
    spec = importlib.util.spec_from_file_location("tiny_net", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    standalone = mod.Tiny()
    standalone.load_state_dict(net.state_dict())
    standalone.eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(standalone({"data": x})["prob"], net(x)["prob"])


def test_convert_formats(deploy, tmp_path, capsys):
    weights = tmp_path / "w.caffemodel"
    ref = protocaffe.load(deploy, device="cpu", seed=2)
    protocaffe.save_caffemodel(ref, weights)
    pt = tmp_path / "w.pt"
    assert main(["convert", str(deploy), "-w", str(weights), "-o", str(pt)]) == 0
    state = torch.load(pt)
    assert torch.equal(state["fc_out.weight"], ref.fc_out.weight.detach())
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    st = tmp_path / "w.safetensors"
    assert main(["convert", str(deploy), "-w", str(weights), "-o", str(st)]) == 0
    assert torch.equal(load_file(st)["conv1.weight"], ref.conv1.weight.detach())
    again = tmp_path / "again.caffemodel"
    assert main(["convert", str(deploy), "-w", str(weights), "-o", str(again)]) == 0
    assert again.read_bytes() == weights.read_bytes()


def test_convert_errors(deploy, tmp_path, capsys):
    assert main(["convert", str(deploy), "-o", str(tmp_path / "w.onnx")]) == 2
    assert "cannot tell the output format" in capsys.readouterr().err
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"layer {}")
    assert main(["convert", str(deploy), "-w", str(bad), "-o", str(tmp_path / "x.pt")]) == 1
    assert "not a binary caffemodel" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rel", "shape", "out"),
    [
        ("forresti__SqueezeNet/SqueezeNet_v1.0__deploy.prototxt", (1, 3, 227, 227), "prob"),
        (
            "KaimingHe__deep-residual-networks/prototxt__ResNet-50-deploy.prototxt",
            (1, 3, 224, 224),
            "prob",
        ),
    ],
)
def test_corpus_nets_run(rel, shape, out):
    path = CORPUS / rel
    if not path.exists():
        pytest.skip(f"corpus file {rel} not found")
    net = protocaffe.load(path, device="cpu", seed=0, input_shapes={"data": shape})
    with torch.no_grad():
        prob = net(torch.randn(shape))[out]
    assert prob.shape[:2] == (1, 1000)
    np.testing.assert_allclose(prob.reshape(-1).sum().item(), 1.0, rtol=1e-4)


def test_googlenet_names_are_sanitised():
    path = CORPUS / "BVLC__caffe/models__bvlc_googlenet__deploy.prototxt"
    if not path.exists():
        pytest.skip("corpus GoogLeNet not found")
    from protocaffe.lower.builder import lower_graph

    net = lower_graph(protocaffe.compile(path), device="meta", init=False)
    assert net.caffe_names["inception_3a/1x1"] == "inception_3a_1x1"
    assert net.layer_module("inception_3a/1x1").weight.shape == (64, 192, 1, 1)
    assert "inception_3a_1x1 = protocaffe_lower_passes_conv2d_inference(pool2_3x3_s2," in net.code
