"""Compile-time checks of the fillers and parameters that Caffe CHECKs at net set-up.

Each rule is Caffe's: filler.hpp's fillers and the math_functions.cpp rng calls they make
(caffe_rng_gaussian: CHECK_GT(sigma, 0); caffe_rng_uniform: CHECK_LE(a, b);
caffe_rng_bernoulli: 0 <= p <= 1 with p = sparse / num_outputs; every filler but gaussian:
CHECK_EQ(sparse, -1); BilinearFiller: 4 axes, square; GetFiller: a known type). Each case
checks the error is reported by `compile` (before anything is allocated), located at the
field at fault, and that the value on the allowed side of Caffe's boundary compiles.
"""

from __future__ import annotations

import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.lower.fillers import FillerError, fill, filler_problem
from protocaffe.proto import caffe_pb2
from protocaffe.testing import compile_snippet

INPUT = {"data": (2, 4, 8, 8)}


def conv(filler: str, layer_type: str = "Convolution", kernel: str = "kernel_size: 3") -> str:
    return (
        f'layer {{ name: "x" type: "{layer_type}" bottom: "data" top: "y"\n'
        f"  convolution_param {{ num_output: 4 {kernel}\n"
        f"    weight_filler {{ {filler} }} }} }}\n"
    )


def ip(filler: str) -> str:
    return (
        'layer { name: "x" type: "InnerProduct" bottom: "data" top: "y"\n'
        f"  inner_product_param {{ num_output: 4 weight_filler {{ {filler} }} }} }}\n"
    )


def error_of(text: str):
    with pytest.raises(CompileError) as info:
        compile_snippet(text, INPUT)
    errors = [d for d in info.value.diagnostics if d.severity == "error"]
    assert len(errors) == 1, [d.message for d in errors]
    return errors[0]


def located_text(d) -> str:
    line = d.span.source.line(d.span.line)
    return line[d.span.col - 1 : d.span.end_col - 1]


# (snippet, words in the message, what the caret underlines, the boundary value that passes)
CASES = {
    "gaussian std < 0": (
        conv('type: "gaussian" std: -1'),
        "std must be positive",
        "std: -1",
        conv('type: "gaussian" std: 1e-30'),
    ),
    "gaussian std == 0 (CHECK_GT)": (
        conv('type: "gaussian" std: 0'),
        "got 0",
        "std: 0",
        conv('type: "gaussian" std: 0.01'),
    ),
    "gaussian std NaN": (conv('type: "gaussian" std: nan'), "got nan", "std: nan", None),
    "uniform min > max": (
        conv('type: "uniform" min: 0.5 max: -0.5'),
        "min 0.5 is greater than max -0.5",
        "min: 0.5",
        conv('type: "uniform" min: 0.5 max: 0.5'),  # CHECK_LE: equal is allowed
    ),
    "sparse on constant": (
        conv('type: "constant" value: 1 sparse: 2'),
        "sparsity is not supported by the constant filler",
        "sparse: 2",
        conv('type: "constant" value: 1 sparse: -1'),
    ),
    "sparse on xavier": (
        ip('type: "xavier" sparse: 1'),
        "not supported by the xavier filler",
        "sparse: 1",
        None,
    ),
    "sparse on msra": (ip('type: "msra" sparse: 1'), "msra filler", "sparse: 1", None),
    "sparse on positive_unitball": (
        ip('type: "positive_unitball" sparse: 0'),
        "positive_unitball filler",
        "sparse: 0",
        ip('type: "positive_unitball"'),
    ),
    "sparse on uniform": (ip('type: "uniform" sparse: 3'), "uniform filler", "sparse: 3", None),
    "sparse on bilinear": (
        conv('type: "bilinear" sparse: 1', "Deconvolution"),
        "bilinear filler",
        "sparse: 1",
        conv('type: "bilinear"', "Deconvolution"),
    ),
    "gaussian sparse < -1": (
        conv('type: "gaussian" sparse: -2'),
        "sparse must be -1",
        "sparse: -2",
        conv('type: "gaussian" sparse: 0'),
    ),
    "gaussian sparse > outputs (bernoulli p > 1)": (
        conv('type: "gaussian" sparse: 5'),  # num_outputs = weight.shape[0] = 4
        "sparse 5 exceeds the blob's 4 outputs",
        "sparse: 5",
        conv('type: "gaussian" sparse: 4'),  # p = 1 is allowed
    ),
    "unknown filler type": (
        conv('type: "gausian"'),
        "unknown filler type 'gausian'",
        'type: "gausian"',
        None,
    ),
    "bilinear on a 2-D blob": (
        ip('type: "bilinear"'),
        "needs a 4-D blob, got 2 axes",
        'type: "bilinear"',
        None,
    ),
    "bilinear non-square": (
        conv('type: "bilinear"', "Deconvolution", "kernel_h: 3 kernel_w: 4"),
        "square kernel, got 3x4",
        'type: "bilinear"',
        conv('type: "bilinear"', "Deconvolution", "kernel_h: 4 kernel_w: 4"),
    ),
    "bias filler": (
        'layer { name: "x" type: "Convolution" bottom: "data" top: "y"\n'
        "  convolution_param { num_output: 4 kernel_size: 1\n"
        '    bias_filler { type: "gaussian" std: -3 } } }\n',
        "filler of 'bias'",
        "std: -3",
        None,
    ),
    "PReLU filler": (
        'layer { name: "x" type: "PReLU" bottom: "data" top: "y"\n'
        '  prelu_param { filler { type: "uniform" min: 2 max: 1 } } }\n',
        "min 2 is greater than max 1",
        "min: 2",
        None,
    ),
    "Scale bias filler": (
        'layer { name: "x" type: "Scale" bottom: "data" top: "y"\n'
        '  scale_param { bias_term: true bias_filler { type: "gaussian" std: -1 } } }\n',
        "filler of 'bias'",
        "std: -1",
        None,
    ),
    "DummyData data_filler": (
        'layer { name: "x" type: "DummyData" top: "y"\n'
        "  dummy_data_param { shape { dim: 2 dim: 3 }\n"
        '    data_filler { type: "gaussian" std: -1 } } }\n',
        "data_filler of top 0",
        "std: -1",
        'layer { name: "x" type: "DummyData" top: "y"\n'
        '  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" } } }\n',
    ),
    "BatchNorm eps < 0": (
        'layer { name: "x" type: "BatchNorm" bottom: "data" top: "y"\n'
        "  batch_norm_param { eps: -1 } }\n",
        "eps must not be negative",
        "eps: -1",
        'layer { name: "x" type: "BatchNorm" bottom: "data" top: "y"\n'
        "  batch_norm_param { eps: 0 } }\n",
    ),
    # Net::AppendParam: CHECK_LE(param_size, num_param_blobs) "Too many params specified".
    "param specs beyond the blobs": (
        'layer { name: "x" type: "Convolution" bottom: "data" top: "y"\n'
        "  param { lr_mult: 1 } param { lr_mult: 2 }\n"
        "  convolution_param { num_output: 2 kernel_size: 1 bias_term: false } }\n",
        "2 param specs for 1 blob",
        "param { lr_mult: 2 }",
        'layer { name: "x" type: "Convolution" bottom: "data" top: "y"\n'
        "  param { lr_mult: 1 } param { lr_mult: 2 }\n"
        "  convolution_param { num_output: 2 kernel_size: 1 } }\n",
    ),
    # Layer::SetLossWeights: CHECK_EQ(top.size(), num_loss_weights) when any is given.
    "loss_weight count": (
        'layer { name: "x" type: "ReLU" bottom: "data" top: "y" loss_weight: 1 loss_weight: 0 }\n',
        "2 loss_weight values for 1 top",
        "loss_weight: 1",
        'layer { name: "x" type: "ReLU" bottom: "data" top: "y" loss_weight: 1 }\n',
    ),
    # Net::Init: propagate_down given 0 or bottom_size times.
    "propagate_down count": (
        'layer { name: "x" type: "ReLU" bottom: "data" top: "y"\n'
        "  propagate_down: true propagate_down: false }\n",
        "2 propagate_down values for 1 bottom",
        "propagate_down: true",
        'layer { name: "x" type: "ReLU" bottom: "data" top: "y" propagate_down: false }\n',
    ),
    # Already checked by the layers; kept here so every CHECK of the list has its test.
    "kernel_size 0": (
        conv('type: "constant"', kernel="kernel_size: 0"),
        "kernel_size (height) must be positive",
        "kernel_size: 0",
        None,
    ),
    "stride 0": (
        conv('type: "constant"', kernel="kernel_size: 3 stride: 0"),
        "stride (height) must be positive",
        "stride: 0",
        None,
    ),
    "group does not divide channels": (
        conv('type: "constant"', kernel="kernel_size: 3 group: 3"),
        "group 3 does not divide the 4 input channels",
        "group: 3",
        conv('type: "constant"', kernel="kernel_size: 3 group: 2"),
    ),
    "dropout_ratio > 1": (
        'layer { name: "x" type: "Dropout" bottom: "data" top: "y"\n'
        "  dropout_param { dropout_ratio: 1.5 } }\n",
        "dropout_ratio must be in [0, 1)",
        "dropout_ratio: 1.5",
        None,
    ),
    "LRN local_size even": (
        'layer { name: "x" type: "LRN" bottom: "data" top: "y" lrn_param { local_size: 4 } }\n',
        "local_size must be a positive odd number",
        "local_size: 4",
        'layer { name: "x" type: "LRN" bottom: "data" top: "y" lrn_param { local_size: 3 } }\n',
    ),
}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_caffe_check_is_a_located_compile_error(case: str) -> None:
    bad, words, underlined, passing = CASES[case]
    d = error_of(bad)
    assert words in d.message
    assert located_text(d) == underlined
    if passing is not None:
        compile_snippet(passing, INPUT)


def F(**kw) -> caffe_pb2.FillerParameter:
    return caffe_pb2.FillerParameter(**kw)


@pytest.mark.parametrize(
    ("filler", "shape"),
    [
        (F(type="gaussian", std=-1), (4, 3)),
        (F(type="uniform", min=1, max=0), (4, 3)),
        (F(type="gaussian", sparse=5), (4, 3)),
        (F(type="xavier", sparse=2), (4, 3)),
        (F(type="bilinear"), (4, 4, 3, 2)),
    ],
)
def test_fill_refuses_exactly_what_compile_reports(filler, shape) -> None:
    # One rule serves both: the runtime fill and the compile-time check.
    message, _ = filler_problem(filler, shape)
    with pytest.raises(FillerError, match="^" + message.split("(")[0][:20]):
        fill(filler, shape)


def test_default_fillers_pass() -> None:
    for kind in ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra"):
        assert filler_problem(F(type=kind), (4, 3, 3, 3)) is None, kind
    assert filler_problem(None, (4,)) is None
