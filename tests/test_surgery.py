"""`protocaffe surgery`: fully-conv checked numerically, interp against FCN's and Caffe's
bilinear formulas, transplant's copied/coerced/partial/skipped rule, located errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import protocaffe
from protocaffe.cli import main
from protocaffe.runtime.caffemodel import save_caffemodel

# A classifier on 12x12 windows: conv, pool (stride 2 overall), two InnerProducts.
CLASSIFIER = """name: "cls"
layer { name: "in" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool1" top: "fc6"
  inner_product_param { num_output: 8
    weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
  inner_product_param { num_output: 5
    weight_filler { type: "gaussian" std: 0.2 } bias_filler { type: "uniform" min: -1 max: 1 } } }
"""

# The same net made fully convolutional: fc6 is a 5x5 convolution over pool1, fc7 a 1x1.
FULL_CONV = """name: "full-conv"
layer { name: "in" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6-conv" type: "Convolution" bottom: "pool1" top: "fc6"
  convolution_param { num_output: 8 kernel_size: KERNEL } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7-conv" type: "Convolution" bottom: "fc6" top: "fc7"
  convolution_param { num_output: 5 kernel_size: 1 } }
"""


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _line(text: str, layer: str) -> int:
    return text[: text.index(f'name: "{layer}"')].count("\n") + 1


def _classifier(tmp_path: Path, fc6_extra: str = "") -> tuple[str, str]:
    text = CLASSIFIER.replace("num_output: 8\n", f"num_output: 8 {fc6_extra}\n")
    net = _write(tmp_path, "cls.prototxt", text)
    weights = str(tmp_path / "cls.caffemodel")
    save_caffemodel(protocaffe.load(net, device="cpu", seed=3), weights)
    return net, weights


@pytest.mark.parametrize("transpose", [False, True])
def test_fully_conv_scores_each_window_like_the_classifier(tmp_path, capsys, transpose):
    # transpose: true stores fc6's weights K x N; the convolution still gets N x C x k x k.
    net, weights = _classifier(tmp_path, "transpose: true" if transpose else "")
    dst = _write(tmp_path, "fc.prototxt", FULL_CONV.replace("KERNEL", "5"))
    out = str(tmp_path / "fc.caffemodel")
    argv = ["surgery", "fully-conv", net, weights, dst, "-o", out]
    assert main([*argv, "--map", "fc6=fc6-conv", "--map", "fc7=fc7-conv"]) == 0
    table = capsys.readouterr().out
    assert "fc6 -> fc6-conv" in table and "-> 8x4x5x5 8" in table
    assert "conv1" in table and "copied" in table

    classifier = protocaffe.load(net, weights, device="cpu")
    full = protocaffe.load(dst, out, device="cpu")
    x = torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        dense = full(x)["fc7"][0]  # 5 classes x 5 x 5 positions
        assert dense.shape == (5, 5, 5)
        for i in range(5):
            for j in range(5):
                # Output (i, j) sees the 12x12 window at stride 2 (the pooling's).
                window = x[:, :, 2 * i : 2 * i + 12, 2 * j : 2 * j + 12]
                expected = classifier(window)["fc7"][0]
                torch.testing.assert_close(dense[:, i, j], expected, rtol=1e-5, atol=1e-5)


def test_fully_conv_mismatch_names_both_shapes_and_both_lines(tmp_path, capsys):
    net, weights = _classifier(tmp_path)
    dst = _write(tmp_path, "fc.prototxt", FULL_CONV.replace("KERNEL", "4"))
    argv = ["surgery", "fully-conv", net, weights, dst, "-o", str(tmp_path / "o.caffemodel")]
    assert main([*argv, "--map", "fc6=fc6-conv", "--map", "fc7=fc7-conv"]) == 1
    err = capsys.readouterr().err
    assert "blob 0 is 8x100 (800 values) in InnerProduct 'fc6'" in err
    assert "but 8x4x4x4 (512 values) in Convolution 'fc6-conv'" in err
    # Both definitions, located.
    assert f"{dst}:{_line(FULL_CONV, 'fc6-conv')}:" in err
    assert f"{net}:{_line(CLASSIFIER, 'fc6')}:" in err
    assert not (tmp_path / "o.caffemodel").exists()


def test_fully_conv_map_to_unknown_layer_is_an_error(tmp_path, capsys):
    net, weights = _classifier(tmp_path)
    dst = _write(tmp_path, "fc.prototxt", FULL_CONV.replace("KERNEL", "5"))
    argv = ["surgery", "fully-conv", net, weights, dst, "-o", str(tmp_path / "o.caffemodel")]
    assert main([*argv, "--map", "fc6=fc6_conv"]) == 1
    assert "no layer 'fc6_conv'" in capsys.readouterr().err


UPSAMPLE = """name: "up"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "upscore" type: "Deconvolution" bottom: "data" top: "up"
  param { lr_mult: 0 } convolution_param { num_output: 3 bias_term: false KERNEL stride: 2 } }
layer { name: "other_up" type: "Deconvolution" bottom: "data" top: "up2"
  convolution_param { num_output: 3 bias_term: false kernel_size: 4 stride: 2 } }
"""


def _fcn_filter(size: int) -> np.ndarray:
    """FCN's surgery.upsample_filt, from its published formula."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("variant", ["fcn", "filler"])
def test_interp_writes_bilinear_kernels(tmp_path, capsys, variant):
    net = _write(tmp_path, "up.prototxt", UPSAMPLE.replace("KERNEL", "kernel_size: 4"))
    out = str(tmp_path / "up.caffemodel")
    assert (
        main(["surgery", "interp", net, "-o", out, "--layers", "ups*", "--variant", variant]) == 0
    )
    table = capsys.readouterr().out
    assert "upscore" in table and "other_up" not in table
    module = protocaffe.load(net, out, device="cpu")
    w = module.upscore.weight.detach().numpy()
    kernel = _fcn_filter(4)
    row = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(kernel, np.outer(row, row))
    for i in range(3):
        for j in range(3):
            expected = kernel if (variant == "filler" or i == j) else np.zeros((4, 4))
            np.testing.assert_allclose(w[i, j], expected, rtol=1e-6)
    if variant == "fcn":
        # Bilinear upsampling keeps a constant image constant away from the border.
        x = torch.full((1, 3, 5, 5), 7.0)
        with torch.no_grad():
            y = module(x)["up"]
        torch.testing.assert_close(y[0, :, 2:-2, 2:-2], torch.full_like(y[0, :, 2:-2, 2:-2], 7.0))


def test_interp_odd_kernel_matches_fcn_filter():
    from protocaffe.lower.fillers import bilinear_kernel

    for size in (3, 5, 7, 16, 64):
        np.testing.assert_allclose(bilinear_kernel(size), _fcn_filter(size), rtol=1e-12)


def test_interp_refuses_a_non_square_kernel_with_its_line(tmp_path, capsys):
    net = _write(tmp_path, "up.prototxt", UPSAMPLE.replace("KERNEL", "kernel_h: 4 kernel_w: 2"))
    assert main(["surgery", "interp", net, "-o", str(tmp_path / "o.caffemodel")]) == 1
    err = capsys.readouterr().err
    assert f"{net}:4:" in err and "square kernel, this one is 4x2" in err


def test_interp_refuses_in_out_channel_mismatch(tmp_path, capsys):
    text = UPSAMPLE.replace("KERNEL", "kernel_size: 4").replace(
        "num_output: 3 bias", "num_output: 2 bias", 1
    )
    net = _write(tmp_path, "up.prototxt", text)
    assert main(["surgery", "interp", net, "-o", str(tmp_path / "o.caffemodel")]) == 1
    err = capsys.readouterr().err
    assert "3 input and 2 output channels" in err and f"{net}:4:" in err


def test_interp_glob_matching_nothing_lists_the_deconvolutions(tmp_path, capsys):
    net = _write(tmp_path, "up.prototxt", UPSAMPLE.replace("KERNEL", "kernel_size: 4"))
    assert main(["surgery", "interp", net, "-o", str(tmp_path / "o"), "--layers", "score*"]) == 1
    assert "the net's: upscore, other_up" in capsys.readouterr().err


SOURCE = """name: "src"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" } } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" }
    bias_filler { type: "gaussian" } } }
layer { name: "extra" type: "Convolution" bottom: "score" top: "extra"
  convolution_param { num_output: 1 kernel_size: 1 weight_filler { type: "gaussian" } } }
"""

TARGET = """name: "dst"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "fc" type: "Convolution" bottom: "conv" top: "fc"
  convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "score" type: "Convolution" bottom: "conv" top: "score"
  convolution_param { num_output: 5 kernel_size: 1 weight_filler { type: "constant" value: 9 }
    bias_filler { type: "constant" value: 9 } } }
layer { name: "new" type: "Convolution" bottom: "score" top: "new"
  convolution_param { num_output: 1 kernel_size: 1 } }
"""


def test_transplant_copies_coerces_and_copies_the_overlap(tmp_path, capsys):
    src_net = _write(tmp_path, "src.prototxt", SOURCE)
    src_weights = str(tmp_path / "src.caffemodel")
    source = protocaffe.load(src_net, device="cpu", seed=1)
    save_caffemodel(source, src_weights)
    dst = _write(tmp_path, "dst.prototxt", TARGET)
    out = str(tmp_path / "dst.caffemodel")
    assert main(["surgery", "transplant", src_weights, dst, "-o", out]) == 0
    rows = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {
        "conv": "copied",
        "fc": "coerced",
        "score": "partial",
        "new": "skipped",
        "extra": "dropped",
    }
    moved = protocaffe.load(dst, out, device="cpu")
    src = {k: v.detach() for k, v in source.state_dict().items()}
    got = {k: v.detach() for k, v in moved.state_dict().items()}
    torch.testing.assert_close(got["conv.weight"], src["conv.weight"])
    torch.testing.assert_close(got["fc.weight"], src["fc.weight"].reshape(6, 2, 3, 3))
    torch.testing.assert_close(got["score.weight"][:3], src["score.weight"])
    assert (got["score.weight"][3:] == 9).all() and (got["score.bias"][3:] == 9).all()
    torch.testing.assert_close(got["score.bias"][:3], src["score.bias"])


def test_interp_warns_when_the_kernel_does_not_match_the_stride(tmp_path, capsys):
    net = _write(tmp_path, "up.prototxt", UPSAMPLE.replace("KERNEL", "kernel_size: 5"))
    assert main(["surgery", "interp", net, "-o", str(tmp_path / "o"), "--layers", "upscore"]) == 0
    err = capsys.readouterr().err
    assert "kernel 5 interpolates at a factor of 3 but the stride is 2" in err
    assert "needs kernel 4" in err and f"{net}:4:" in err
