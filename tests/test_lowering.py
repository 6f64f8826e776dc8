"""Lowering a Graph to a torch.fx GraphModule: naming, calling, sharing, errors, memory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from protocaffe.diagnostics import CompileError
from protocaffe.layers.base import REGISTRY, LayerDef
from protocaffe.lower.builder import lower_graph, sanitize
from protocaffe.testing import compile_snippet, run_snippet

CONV_RELU = """
layer { name: "conv1/3x3" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "bn" }
"""


def lowered(text=CONV_RELU, shapes=None, **kw):
    return lower_graph(compile_snippet(text, shapes or {"data": (1, 3, 8, 8)}), **kw)


def test_code_is_readable_python():
    m = lowered()
    code = m.code
    assert "def forward(self, blobs):" in code
    assert "data = blobs['data']" in code
    assert "self.conv1_3x3.weight" in code
    assert "return {'bn': bn}" in code
    compile(code, "<fx>", "exec")  # printable and valid Python


def test_parameter_names_and_caffe_names():
    m = lowered()
    assert m.caffe_names == {"conv1/3x3": "conv1_3x3", "bn": "bn"}
    params = dict(m.named_parameters())
    assert set(params) == {"conv1_3x3.weight", "conv1_3x3.bias"}
    assert params["conv1_3x3.weight"].shape == (4, 3, 3, 3)
    assert torch.all(params["conv1_3x3.bias"] == 0.1)
    # BatchNorm's statistics are buffers, not parameters
    buffers = dict(m.named_buffers())
    assert {"bn.mean", "bn.variance"} <= set(buffers) or len(buffers) == 3
    assert all(k.startswith("bn.") for k in buffers)
    assert m.layer_module("conv1/3x3") is m.conv1_3x3


@pytest.mark.parametrize(
    ("name", "ident"),
    [
        ("inception_3a/1x1", "inception_3a_1x1"),
        ("1st", "_1st"),
        ("class", "class_"),
        ("res2a_branch2a", "res2a_branch2a"),
        ("conv-1.x", "conv_1_x"),
    ],
)
def test_sanitize(name, ident):
    assert sanitize(name) == ident
    assert ident.isidentifier()


def test_names_colliding_with_module_attributes():
    text = """
    layer { name: "forward" type: "Convolution" bottom: "data" top: "a"
      convolution_param { num_output: 2 kernel_size: 1 } }
    layer { name: "forward/" type: "Convolution" bottom: "a" top: "b"
      convolution_param { num_output: 2 kernel_size: 1 } }
    """
    m = lowered(text, {"data": (1, 2, 3, 3)})
    assert m.caffe_names == {"forward": "forward_1", "forward/": "forward_2"}
    assert m(torch.zeros(1, 2, 3, 3))["b"].shape == (1, 2, 3, 3)


def test_call_conventions():
    m = lowered()
    x = torch.randn(1, 3, 8, 8)
    a = m(x)["bn"]
    assert torch.equal(a, m({"data": x})["bn"])
    assert torch.equal(a, m(data=x)["bn"])
    assert torch.equal(a, m(x.numpy())["bn"])  # numpy is accepted too
    with pytest.raises(TypeError, match="missing input blob"):
        m({"image": x})


def test_multi_input_requires_dict():
    text = 'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }'
    m = lowered(text, {"a": (2, 3), "b": (2, 3)})
    assert m.input_names == ["a", "b"]
    out = m(a=torch.ones(2, 3), b=torch.ones(2, 3))
    assert torch.equal(out["s"], torch.full((2, 3), 2.0))
    with pytest.raises(TypeError, match="pass a dict"):
        m(torch.ones(2, 3))


def test_phase_sets_training_mode():
    assert not lowered().training
    train = lower_graph(compile_snippet(CONV_RELU, {"data": (1, 3, 8, 8)}, phase="TRAIN"))
    assert train.training


def test_extra_outputs_and_in_place_safety():
    # conv1 is redefined in place by relu1; asking for the pre-ReLU value must keep it intact.
    m = lowered(seed=0)
    x = torch.randn(1, 3, 8, 8)
    both = m.with_outputs(["conv1@relu1", "conv1"])
    assert set(both.output_names) == {"bn", "conv1@relu1", "conv1"}
    out = both(x)
    assert torch.equal(out["conv1"], out["conv1@relu1"])  # a plain name means the last definition
    pre = lowered(seed=0, outputs=["conv1"])  # same seed, same weights
    assert (pre(x)["conv1"] >= 0).all()
    raw = run_snippet(CONV_RELU, {"data": x.numpy()}, outputs=["conv1@conv1/3x3"], seed=0)
    assert (raw["conv1@conv1/3x3"] < 0).any(), "the pre-ReLU blob was overwritten in place"
    np.testing.assert_allclose(
        np.maximum(raw["conv1@conv1/3x3"], 0), out["conv1"].detach(), rtol=1e-6
    )
    # the parameters are shared with the original module
    assert both.conv1_3x3.weight is m.conv1_3x3.weight


def test_in_place_not_used_when_blob_is_consumed_later():
    text = """
    layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }
    layer { name: "act" type: "ReLU" bottom: "x" top: "y" }
    layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "y" top: "s" }
    """
    x = np.array([[-1.0, 2.0]], np.float32)
    out = run_snippet(text, {"data": x, "x": x})
    np.testing.assert_array_equal(out["s"], [[-1.0, 4.0]])  # x itself stayed negative
    np.testing.assert_array_equal(out["r"], [[0.0, 2.0]])
    assert x[0, 0] == -1.0  # inputs are never modified


def test_can_modify_input_rules():
    seen = {}

    class Probe(LayerDef):
        type = "ReLU"

        def lower(self, ctx):
            seen[ctx.layer.name] = ctx.can_modify_input(0)
            return [ctx.call(torch.relu, ctx.inputs[0])]

    text = """
    layer { name: "a" type: "ReLU" bottom: "data" top: "a" }
    layer { name: "b" type: "ReLU" bottom: "a" top: "b" }
    layer { name: "c" type: "ReLU" bottom: "a" top: "c" }
    layer { name: "d" type: "ReLU" bottom: "b" top: "d" }
    layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "d" top: "s" }
    """
    graph = compile_snippet(text, {"data": (2,)})
    real = REGISTRY["ReLU"]
    for layer in graph.layers:
        if layer.type == "ReLU":
            layer.spec = Probe()
    try:
        lower_graph(graph)
    finally:
        assert REGISTRY["ReLU"] is real
    # a: input blob; b: 'a' still read by c; c: last reader of 'a'; d: sole reader of 'b'
    assert seen == {"a": False, "b": False, "c": True, "d": True}


def test_param_sharing_siamese():
    text = """
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa"
      param { name: "w" } param { name: "b" }
      inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb"
      param { name: "w" } param { name: "b" }
      inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
    """
    m = lowered(text, {"a": (2, 5), "b": (2, 5)}, seed=0)
    assert m.ip_a.weight is m.ip_b.weight and m.ip_a.bias is m.ip_b.bias
    assert len(list(m.parameters())) == 2
    x = torch.randn(2, 5)
    out = m(a=x, b=x)
    assert torch.equal(out["fa"], out["fb"])
    with torch.no_grad():
        m.ip_a.weight.add_(1)
    out = m(a=x, b=x)
    assert torch.equal(out["fa"], out["fb"])


def test_param_sharing_count_mismatch_is_an_error():
    text = """
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa"
      param { name: "w" } inner_product_param { num_output: 3 } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "a" top: "fb"
      param { name: "w" } inner_product_param { num_output: 4 } }
    """
    with pytest.raises(CompileError) as err:
        lowered(text, {"a": (2, 5)})
    msg = str(err.value)
    assert "cannot share param 'w' owned by layer 'ip_a' with layer 'ip_b'" in msg
    assert "3x5" in msg and "4x5" in msg


def test_param_sharing_same_count_other_shape():
    # Caffe's permissive sharing: equal counts share storage even when shapes differ.
    text = """
    layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa"
      param { name: "w" } inner_product_param { num_output: 6 bias_term: false
        weight_filler { type: "gaussian" } } }
    layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb"
      param { name: "w" } inner_product_param { num_output: 4 bias_term: false } }
    """
    m = lowered(text, {"a": (1, 4), "b": (1, 6)}, seed=0)
    w = m.ip_a.weight  # 6x4
    b = torch.randn(1, 6)
    with torch.no_grad():
        got = m(a=torch.zeros(1, 4), b=b)["fb"]
        torch.testing.assert_close(got, b @ w.reshape(4, 6).T)


def test_unsupported_layers_are_listed_at_once(monkeypatch):
    monkeypatch.setattr(type(REGISTRY["ReLU"]), "lower", LayerDef.lower)
    text = """
    layer { name: "r1" type: "ReLU" bottom: "data" top: "a" }
    layer { name: "r2" type: "ReLU" bottom: "a" top: "b" }
    """
    with pytest.raises(CompileError) as err:
        lowered(text, {"data": (2, 2)})
    errors = [d for d in err.value.diagnostics if d.severity == "error"]
    assert [d.message for d in errors] == [
        "layer 'r1' of type 'ReLU' has no PyTorch lowering",
        "layer 'r2' of type 'ReLU' has no PyTorch lowering",
    ]
    assert errors[0].span is not None and errors[0].span.line == 2


def test_loss_layers_lower_in_train_phase():
    text = """
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
    """
    score = np.zeros((2, 4), np.float32)
    out = run_snippet(text, {"score": score, "label": np.array([0, 3])}, phase="TRAIN")
    np.testing.assert_allclose(out["loss"], np.log(4), rtol=1e-6)


def test_device_dtype_seed():
    a = lowered(seed=7, dtype=torch.float64)
    b = lowered(seed=7, dtype=torch.float64)
    assert a.conv1_3x3.weight.dtype == torch.float64
    assert torch.equal(a.conv1_3x3.weight, b.conv1_3x3.weight)
    assert not torch.equal(a.conv1_3x3.weight, lowered(seed=8).conv1_3x3.weight.double())
    m = lowered(device="meta", init=False)
    assert m.conv1_3x3.weight.device.type == "meta"


def test_unknown_extra_output():
    with pytest.raises(CompileError, match="no blob named 'conv2'"):
        lowered(outputs=["conv2"])


def test_intermediates_are_freed():
    """Peak memory of a chain of 8 x 64 MB blobs stays far below their sum."""
    script = textwrap.dedent(
        """
        import resource, torch
        from protocaffe.testing import compile_snippet
        from protocaffe.lower.builder import lower_graph
        layers = "".join(
            f'layer {{ name: "p{i}" type: "Power" bottom: "b{i}" top: "b{i + 1}" '
            f'power_param {{ scale: 1.5 shift: 0.5 }} }}\\n' for i in range(8)
        )
        shape = (1, 16, 1024, 1024)  # 64 MiB of float32
        m = lower_graph(compile_snippet(layers, {"b0": shape}))
        x = torch.ones(shape)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            m(x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    total_mib = 8 * 64  # every top blob kept alive would need this much
    assert growth_mib < 3 * 64, f"forward grew RSS by {growth_mib:.0f} MiB of {total_mib}"
