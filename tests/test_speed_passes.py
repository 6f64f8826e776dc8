"""The fast CPU inference path (protocaffe/lower/passes.py): each rewrite on its own.

- a fused ReLU gives the same bits as a separate one on the same convolution path;
- each path (oneDNN channels_last, im2col + GEMM) computes Caffe's convolution: checked against
  float64 `F.conv2d` and against the layer's numpy oracle (Caffe's im2col loop);
- the rewrite keeps TRAIN nets, gradients and layout-sensitive users as they were.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _layer_oracle import oracle

from protocaffe.lower.builder import lower_graph
from protocaffe.lower.passes import conv2d_inference
from protocaffe.testing import compile_snippet

# (in channels, size, out channels, kernel, stride, pad, dilation, groups): the oneDNN path
# (3x3 VGG-like, strided, dilated, grouped) and the GEMM path (fc6-like 7x7, fc7-like 1x1).
CASES = {
    "vgg3x3": (8, 12, 16, 3, 1, 1, 1, 1),
    "strided": (6, 11, 8, 3, 2, 2, 1, 1),
    "dilated": (4, 13, 6, 3, 1, 2, 2, 1),
    "grouped": (8, 9, 8, 3, 1, 1, 1, 4),
    "fc6_gemm": (16, 7, 256, 7, 1, 0, 1, 1),
    "fc7_gemm": (256, 2, 256, 1, 1, 0, 1, 1),
    "padded_gemm": (12, 3, 512, 3, 2, 1, 1, 1),
}


def _case(name: str, batch: int = 2, seed: int = 0):
    cin, size, cout, k, stride, pad, dil, groups = CASES[name]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, size, size, generator=g)
    w = torch.randn(cout, cin // groups, k, k, generator=g) * 0.1
    b = torch.randn(cout, generator=g)
    return x, w, b, (stride, stride), (pad, pad), (dil, dil), groups


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_relu_is_bit_exact(name: str) -> None:
    x, w, b, stride, pad, dil, groups = _case(name)
    with torch.no_grad():
        fused = conv2d_inference(x, w, b, stride, pad, dil, groups, True)
        separate = conv2d_inference(x, w, b, stride, pad, dil, groups, False).relu_()
    assert torch.equal(fused, separate)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("bias", [True, False])
def test_fast_path_is_caffes_convolution(name: str, bias: bool) -> None:
    x, w, b, stride, pad, dil, groups = _case(name)
    b = b if bias else None
    with torch.no_grad():
        got = conv2d_inference(x, w, b, stride, pad, dil, groups, True)
        want = F.relu(
            F.conv2d(
                x.double(), w.double(), None if b is None else b.double(), stride, pad, dil, groups
            )
        )
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("name", ["fc6_gemm", "vgg3x3"])
def test_fast_path_matches_the_numpy_oracle(name: str) -> None:
    """Against the Convolution layer's reference(): Caffe's im2col + GEMM loop in numpy."""
    cin, size, cout, k, stride, pad, dil, groups = CASES[name]
    text = (
        'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { '
        f"num_output: {cout} kernel_size: {k} stride: {stride} pad: {pad} dilation: {dil} "
        f"group: {groups} }} }}"
    )
    graph = compile_snippet(text, {"x": (1, cin, size, size)})
    layer = graph.layers[-1]
    x, w, b, *_ = _case(name, batch=1)
    module = lower_graph(graph)
    with torch.no_grad():
        module.blob_tensor(layer, "weight").copy_(w)
        module.blob_tensor(layer, "bias").copy_(b)
        got = module(x)["c"].numpy()
    (want,) = oracle(text, {"x": x.numpy()}, "c", [w.numpy(), b.numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_bfloat16_path_is_close_to_float32() -> None:
    x, w, b, stride, pad, dil, groups = _case("vgg3x3")
    with torch.no_grad():
        want = conv2d_inference(x, w, b, stride, pad, dil, groups, True)
        got = conv2d_inference(
            x.bfloat16(), w.bfloat16(), b.bfloat16(), stride, pad, dil, groups, True
        )
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


NET = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "relu2" }
layer { name: "pool" type: "Pooling" bottom: "relu2" top: "pool"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "norm" type: "LRN" bottom: "pool" top: "norm" lrn_param { local_size: 3 } }
layer { name: "sum" type: "Eltwise" bottom: "pool" bottom: "norm" top: "sum" }
layer { name: "fc" type: "InnerProduct" bottom: "sum" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "flat" type: "Flatten" bottom: "sum" top: "flat" }
"""


def _modules(phase: str = "TEST"):
    graph = compile_snippet(NET, {"data": (2, 3, 10, 10)}, phase=phase)
    plain = lower_graph(graph, seed=0, fast_cpu=False, outputs=["conv2"])
    fast = lower_graph(graph, seed=0, outputs=["conv2"])
    fast.load_state_dict(plain.state_dict())
    with torch.no_grad():
        for p in [*plain.parameters(), *fast.parameters()]:
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return plain, fast


def _targets(module) -> list:
    return [n.target for n in module.graph.nodes if n.op == "call_function"]


def test_pass_fuses_sole_user_relus_and_keeps_observed_tops() -> None:
    plain, fast = _modules()
    assert _targets(plain).count(F.conv2d) == 2
    assert _targets(fast).count(conv2d_inference) == 2 and F.conv2d not in _targets(fast)
    # conv1's ReLU is fused (in place, sole user); conv2 is also returned, so relu2 stays.
    fused = [n.args[-1] for n in fast.graph.nodes if n.target is conv2d_inference]
    assert fused == [True, False] and _targets(fast).count(F.relu) == 1
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = plain(x), fast(x)
    assert set(want) == set(got) == {"fc", "flat", "conv2"}
    # Only protocaffe's own helper (the LRN stand-in) gets an NCHW copy; PyTorch ops take any.
    (copy,) = fast.graph.find_nodes(op="call_method", target="contiguous")
    assert [u.meta["caffe_layer"] for u in copy.users] == ["norm"]
    assert [n.meta["caffe_fused"] for n in fast.graph.nodes if "caffe_fused" in n.meta] == ["relu1"]
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_train_nets_stay_plain_and_test_nets_have_gradients() -> None:
    _, fast = _modules(phase="TRAIN")
    assert conv2d_inference not in _targets(fast)
    _, fast = _modules()
    x = torch.randn(2, 3, 10, 10, requires_grad=True)
    with_grad = fast(x)
    with_grad["fc"].sum().backward()  # a TEST net called with autograd on has gradients ...
    assert x.grad is not None and fast.conv1.weight.grad is not None
    with torch.no_grad():
        without = fast(x)
    for key, value in without.items():  # ... and the very same outputs
        assert torch.equal(value, with_grad[key].detach()), key


def test_gemm_path_has_gradients() -> None:
    x, w, b, stride, pad, dil, groups = _case("fc6_gemm", batch=1)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    xf, wf = x.clone().requires_grad_(), w.clone().requires_grad_()
    conv2d_inference(xf, wf, b, stride, pad, dil, groups, True).sum().backward()
    F.relu(F.conv2d(x64, w64, b.double(), stride, pad, dil, groups)).sum().backward()
    torch.testing.assert_close(xf.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(wf.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)


def test_compiler_tracing_keeps_the_fast_convolution_as_one_op() -> None:
    """torch.compile captures each fast convolution as the opaque `protocaffe::conv2d_cpu`
    (no graph break, no F.conv2d left) and computes the same values."""
    import torch._dynamo

    _, fast = _modules()
    graphs = []

    def capture(gm, _inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fast.forward, backend=capture, fullgraph=True)  # no graph break
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        want = fast(x)
        got = compiled({"data": x})
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.protocaffe.conv2d_cpu) == 2
    assert F.conv2d not in targets
    for key in want:
        assert torch.equal(got[key], want[key])


def test_export_traces_portable_convolutions() -> None:
    """torch.export (and so ONNX) sees aten convolutions, not protocaffe's own op."""
    _, fast = _modules()
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        program = torch.export.export(fast, ({"data": x},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.conv2d.default" in targets or "aten.convolution.default" in targets
    assert not any("protocaffe" in t for t in targets)
