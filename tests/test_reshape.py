"""Calling a lowered net with new input shapes re-compiles it, as Caffe's Net::Reshape does."""

from __future__ import annotations

import pytest
import torch

import protocaffe
from protocaffe.diagnostics import CompileError

# A miniature FCN: padded conv, ceil-mode pool, deconv upsampling and a Crop back to the input,
# so every shape-dependent lowering (pool path, crop extents) changes with the input size.
MINI_FCN = """
name: "mini_fcn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 10 weight_filler { type: "msra" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 bias_term: false
                            weight_filler { type: "bilinear" } } }
layer { name: "score" type: "Crop" bottom: "up" bottom: "data" top: "score"
        crop_param { axis: 2 offset: 9 } }
"""


@pytest.fixture()
def net_file(tmp_path):
    path = tmp_path / "mini_fcn.prototxt"
    path.write_text(MINI_FCN)
    return path


@pytest.mark.parametrize("shape", [(1, 3, 13, 17), (3, 3, 24, 9), (1, 3, 20, 20)])
def test_new_shape_matches_a_net_compiled_for_it(net_file, shape):
    net = protocaffe.load(net_file, device="cpu", seed=3)
    fresh = protocaffe.load(net_file, device="cpu", seed=3, input_shapes={"data": shape})
    x = torch.randn(*shape)
    with torch.no_grad():
        got, want = net(x)["score"], fresh(x)["score"]
    assert tuple(got.shape) == (shape[0], 4, *shape[2:])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_batch_items_are_independent(net_file):
    net = protocaffe.load(net_file, device="cpu", seed=1)
    x = torch.randn(2, 3, 15, 11)
    with torch.no_grad():
        both = net(x)["score"]
        first = net(x[:1])["score"]
    torch.testing.assert_close(both[:1], first)


def test_variants_share_parameters_and_follow_updates(net_file):
    net = protocaffe.load(net_file, device="cpu", seed=1)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        before = net(x)["score"].clone()
        net.conv.weight.mul_(2)
        after = net(x)["score"]
    assert not torch.equal(before, after)
    assert sorted(net.state_dict()) == ["conv.bias", "conv.weight", "up.weight"]


def test_casting_drops_stale_variants(net_file):
    net = protocaffe.load(net_file, device="cpu", seed=1)
    with torch.no_grad():
        net(torch.randn(1, 3, 12, 12))
        net.to(torch.float64)
        out = net(torch.randn(1, 3, 12, 12, dtype=torch.float64))["score"]
    assert out.dtype == torch.float64


def test_too_small_input_is_a_located_error(tmp_path):
    path = tmp_path / "valid_conv.prototxt"
    path.write_text(
        'layer { name: "data" type: "Input" top: "data" '
        "input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n"
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        "convolution_param { num_output: 1 kernel_size: 5 } }\n"
    )
    net = protocaffe.load(path, device="cpu", seed=0)
    with pytest.raises(CompileError) as err:
        net(torch.randn(1, 3, 2, 2))
    assert "valid_conv.prototxt:" in str(err.value)


def test_reshaping_keeps_same_named_layers_apart(tmp_path):
    # Caffe allows two layers with one name; each keeps its own blobs after a reshape.
    path = tmp_path / "dup.prototxt"
    path.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "a" inner_product_param {'
        ' num_output: 1 weight_filler { type: "constant" value: 1 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "b" inner_product_param {'
        ' num_output: 1 weight_filler { type: "constant" value: 7 } } }\n'
    )
    net = protocaffe.load(path, device="cpu")
    with torch.no_grad():
        out = net(torch.ones(3, 2))
    assert out["a"].flatten().tolist() == [2.0] * 3
    assert out["b"].flatten().tolist() == [14.0] * 3


@pytest.mark.slow
def test_compiled_net_matches_eager_across_shapes(net_file):
    # torch.compile (with inductor freezing on the CPU) must not change what the net computes,
    # including after a reshape to another input size.
    eager = protocaffe.load(net_file, device="cpu", seed=5)
    compiled = protocaffe.load(net_file, device="cpu", seed=5, compile=True)
    with torch.no_grad():
        for shape in [(1, 3, 20, 20), (2, 3, 14, 18)]:
            x = torch.randn(*shape)
            torch.testing.assert_close(compiled(x)["score"], eager(x)["score"])


def test_compiled_net_compiles_once_more_for_every_later_size(net_file):
    """An FCN's code reads every size from its inputs: new sizes reuse the compiled module
    (one recompile with symbolic sizes), where a net whose code fixes a size (global pooling)
    compiles a variant of its own."""
    from torch._dynamo.testing import CompileCounter

    eager = protocaffe.load(net_file, device="cpu", seed=5)
    net = protocaffe.load(net_file, device="cpu", seed=5)
    counter = CompileCounter()
    torch._dynamo.reset()
    net.compile(backend=counter)
    # The first size, one graph with symbolic height and width, then one with a symbolic batch
    # too (Dynamo specialises a size of 1).
    for shape, graphs in [((1, 3, 20, 20), 1), ((1, 3, 24, 24), 2), ((1, 3, 28, 31), 2),
                          ((2, 3, 17, 22), 3), ((3, 3, 30, 19), 3)]:  # fmt: skip
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.equal(net(x)["score"], eager(x)["score"])
        assert net.reshaped([shape])._compiled_call_impl is net._compiled_call_impl
        assert counter.frame_count == graphs

    text = MINI_FCN.replace("pool: MAX kernel_size: 3 stride: 2", "pool: AVE global_pooling: true")
    pooled = net_file.with_name("global.prototxt")
    pooled.write_text(text.split('layer { name: "up"')[0])
    net = protocaffe.load(pooled, device="cpu", seed=5)
    net.compile(backend="eager")
    variant = net.reshaped([(1, 3, 16, 16)])
    assert not variant.runs_as(net)
    assert variant._compiled_call_impl is not net._compiled_call_impl
