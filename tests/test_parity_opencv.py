"""Numerical parity with an independent Caffe implementation: OpenCV's dnn Caffe importer.

Each case is a small net (one Input blob `data`, then layers), given seeded random weights by
protocaffe's fillers and written to a .caffemodel by our own saver. The same prototxt and
weights go through `cv2.dnn.readNetFromCaffe` and through `protocaffe.load`; the outputs must
agree to 1e-4 of the output's scale (its largest magnitude).

Where OpenCV itself departs from Caffe, the case is listed in OPENCV_DEVIATES with the reason
and checked against our numpy oracle of Caffe's C++ forward (`LayerDef.reference`) instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")
if not hasattr(cv2.dnn, "readNetFromCaffe"):  # OpenCV 5 dropped its Caffe importer
    pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4  # of max |output|

G = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.3 }'


def conv(name: str, bottom: str, params: str, kind: str = "Convolution") -> str:
    return (
        f'layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{name}" '
        f"convolution_param {{ {params} {G} }} }}"
    )


def layer(name: str, kind: str, bottoms: str | list[str], extra: str = "") -> str:
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    bots = " ".join(f'bottom: "{b}"' for b in bottoms)
    return f'layer {{ name: "{name}" type: "{kind}" {bots} top: "{name}" {extra} }}'


def pool(name: str, params: str, bottom: str = "data") -> str:
    return layer(name, "Pooling", bottom, f"pooling_param {{ {params} }}")


# name -> (input shape, layers; the last layer's top is compared; layer name == top name).
CASES: dict[str, tuple[tuple[int, ...], str]] = {
    "conv": ((2, 3, 9, 9), conv("out", "data", "num_output: 5 kernel_size: 3 pad: 1")),
    "conv_stride_rect": (
        (1, 3, 11, 9),
        conv(
            "out",
            "data",
            "num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0",
        ),
    ),
    "conv_pad_h_only": (
        (1, 3, 11, 9),
        conv("out", "data", "num_output: 4 kernel_size: 3 stride: 2 pad_h: 1"),
    ),
    "conv_group": ((1, 4, 8, 8), conv("out", "data", "num_output: 6 kernel_size: 3 group: 2")),
    "conv_depthwise": ((1, 4, 8, 8), conv("out", "data", "num_output: 4 kernel_size: 3 group: 4")),
    "conv_dilation": (
        (1, 3, 12, 12),
        conv("out", "data", "num_output: 4 kernel_size: 3 dilation: 2 pad: 2"),
    ),
    "conv_no_bias": (
        (1, 3, 7, 7),
        conv("out", "data", "num_output: 4 kernel_size: 1 bias_term: false"),
    ),
    "deconv": (
        (1, 3, 5, 5),
        conv("out", "data", "num_output: 4 kernel_size: 4 stride: 2", "Deconvolution"),
    ),
    "deconv_pad_group": (
        (1, 4, 6, 6),
        conv(
            "out", "data", "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", "Deconvolution"
        ),
    ),
    "pool_max_ceil": ((1, 2, 8, 8), pool("out", "pool: MAX kernel_size: 3 stride: 2")),
    "pool_max_ceil_odd": ((1, 2, 7, 9), pool("out", "pool: MAX kernel_size: 2 stride: 2")),
    "pool_max_pad": ((1, 2, 7, 7), pool("out", "pool: MAX kernel_size: 3 stride: 2 pad: 1")),
    "pool_ave_pad": ((1, 2, 7, 7), pool("out", "pool: AVE kernel_size: 3 stride: 2 pad: 1")),
    "pool_ave_ceil": ((1, 2, 8, 8), pool("out", "pool: AVE kernel_size: 3 stride: 2")),
    "pool_global_ave": ((2, 3, 5, 6), pool("out", "pool: AVE global_pooling: true")),
    "pool_global_max": ((2, 3, 5, 6), pool("out", "pool: MAX global_pooling: true")),
    "pool_stride_gt_kernel": ((1, 2, 7, 7), pool("out", "pool: MAX kernel_size: 1 stride: 3")),
    # pad 0 and ceil: Caffe keeps a last window lying wholly outside the image (-FLT_MAX).
    "pool_window_outside": ((1, 2, 8, 8), pool("out", "pool: MAX kernel_size: 1 stride: 3")),
    "pool_ave_window_outside": ((1, 2, 8, 8), pool("out", "pool: AVE kernel_size: 2 stride: 4")),
    "pool_pad_gt_half_kernel": (
        (1, 2, 6, 6),
        pool("out", "pool: MAX kernel_size: 3 stride: 1 pad: 2"),
    ),
    "inner_product": (
        (2, 3, 4, 4),
        layer("out", "InnerProduct", "data", f"inner_product_param {{ num_output: 7 {G} }}"),
    ),
    "inner_product_axis2": (
        (2, 3, 4, 4),
        layer(
            "out", "InnerProduct", "data", f"inner_product_param {{ num_output: 5 axis: 2 {G} }}"
        ),
    ),
    "relu": ((1, 3, 5, 5), layer("out", "ReLU", "data")),
    "leaky_relu": (
        (1, 3, 5, 5),
        layer("out", "ReLU", "data", "relu_param { negative_slope: 0.2 }"),
    ),
    "prelu": (
        (1, 3, 5, 5),
        layer("out", "PReLU", "data", 'prelu_param { filler { type: "gaussian" std: 0.5 } }'),
    ),
    "prelu_shared": (
        (1, 3, 5, 5),
        layer(
            "out",
            "PReLU",
            "data",
            'prelu_param { channel_shared: true filler { type: "constant" value: 0.3 } }',
        ),
    ),
    "elu": ((1, 3, 5, 5), layer("out", "ELU", "data", "elu_param { alpha: 0.7 }")),
    "sigmoid": ((1, 3, 5, 5), layer("out", "Sigmoid", "data")),
    "tanh": ((1, 3, 5, 5), layer("out", "TanH", "data")),
    "absval": ((1, 3, 5, 5), layer("out", "AbsVal", "data")),
    "bnll": ((1, 3, 5, 5), layer("out", "BNLL", "data")),
    "power": (
        (1, 3, 5, 5),
        layer("out", "Power", "data", "power_param { power: 2 scale: 0.5 shift: 1.5 }"),
    ),
    "exp": (
        (1, 3, 5, 5),
        layer("out", "Exp", "data", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"),
    ),
    "log": (
        (1, 3, 5, 5),
        layer("a", "AbsVal", "data")
        + layer("out", "Log", "a", "log_param { base: 10 scale: 2 shift: 0.5 }"),
    ),
    "swish": ((1, 3, 5, 5), layer("out", "Swish", "data")),
    "lrn_across": (
        (1, 7, 5, 5),
        layer("out", "LRN", "data", "lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }"),
    ),
    "lrn_within": (
        (1, 3, 6, 6),
        layer(
            "out",
            "LRN",
            "data",
            "lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.5 beta: 0.75 }",
        ),
    ),
    "batchnorm_scale": (
        (2, 4, 5, 5),
        layer("bn", "BatchNorm", "data", "batch_norm_param { use_global_stats: true eps: 0.001 }")
        + layer(
            "out",
            "Scale",
            "bn",
            'scale_param { bias_term: true filler { type: "gaussian" std: 1 } '
            'bias_filler { type: "gaussian" std: 1 } }',
        ),
    ),
    "scale_two_bottoms": (
        (1, 3, 4, 4),
        conv("s", "data", "num_output: 3 kernel_size: 1")
        + layer("out", "Scale", ["data", "s"], "scale_param { axis: 0 }"),
    ),
    "eltwise_sum_coeff": (
        (1, 3, 5, 5),
        conv("a", "data", "num_output: 3 kernel_size: 1")
        + layer(
            "out", "Eltwise", ["data", "a"], "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }"
        ),
    ),
    "eltwise_prod": (
        (1, 3, 5, 5),
        conv("a", "data", "num_output: 3 kernel_size: 1")
        + layer("out", "Eltwise", ["data", "a"], "eltwise_param { operation: PROD }"),
    ),
    "eltwise_max": (
        (1, 3, 5, 5),
        conv("a", "data", "num_output: 3 kernel_size: 1")
        + layer("out", "Eltwise", ["data", "a", "data"], "eltwise_param { operation: MAX }"),
    ),
    "concat_slice_split": (
        (1, 5, 4, 4),
        'layer { name: "sl" type: "Slice" bottom: "data" top: "s0" top: "s1" top: "s2" '
        "slice_param { axis: 1 slice_point: 1 slice_point: 3 } }"
        + layer("r", "ReLU", "s1")
        + layer("out", "Concat", ["s2", "r", "s0", "s1"], "concat_param { axis: 1 }"),
    ),
    "flatten_reshape": (
        (2, 3, 4, 4),
        layer("f", "Flatten", "data")
        + layer("out", "Reshape", "f", "reshape_param { shape { dim: 0 dim: 6 dim: -1 } }"),
    ),
    "softmax": ((2, 5, 3, 3), layer("out", "Softmax", "data")),
    "softmax_axis2": ((2, 3, 4, 3), layer("out", "Softmax", "data", "softmax_param { axis: 2 }")),
    "crop": (
        (1, 3, 9, 9),
        conv("small", "data", "num_output: 3 kernel_size: 4")
        + layer("out", "Crop", ["data", "small"], "crop_param { axis: 2 offset: 2 offset: 1 }"),
    ),
    "dropout": (
        (1, 3, 5, 5),
        layer("out", "Dropout", "data", "dropout_param { dropout_ratio: 0.3 }"),
    ),
    "mvn": ((2, 3, 5, 5), layer("out", "MVN", "data")),
    "mvn_across_no_var": (
        (2, 3, 5, 5),
        layer(
            "out", "MVN", "data", "mvn_param { across_channels: true normalize_variance: false }"
        ),
    ),
    # QA additions: more parameter combinations OpenCV's importer understands.
    "pool_ave_pad_w_only": (
        (1, 2, 7, 8),
        pool("out", "pool: AVE kernel_h: 3 kernel_w: 3 stride_h: 2 stride_w: 2 pad_h: 0 pad_w: 1"),
    ),
    "pool_pad_h_only_clip": (
        (1, 2, 4, 3),
        pool("out", "pool: MAX kernel_h: 2 kernel_w: 1 stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 0"),
    ),
    "conv_1x1_stride2": (
        (1, 3, 7, 7),
        conv("out", "data", "num_output: 4 kernel_size: 1 stride: 2"),
    ),
    "deconv_dilation": (
        (1, 2, 5, 5),
        conv("out", "data", "num_output: 3 kernel_size: 3 stride: 2 dilation: 2", "Deconvolution"),
    ),
    "inner_product_transpose": (
        (2, 3, 2, 2),
        layer(
            "out",
            "InnerProduct",
            "data",
            f"inner_product_param {{ num_output: 5 transpose: true {G} }}",
        ),
    ),
    "scale_axis_num_axes": (
        (2, 3, 4, 5),
        layer(
            "out",
            "Scale",
            "data",
            'scale_param { axis: 1 num_axes: 2 bias_term: true filler { type: "gaussian" '
            'std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }',
        ),
    ),
    "scale_scalar": (
        (2, 3, 4, 5),
        layer("out", "Scale", "data", 'scale_param { num_axes: 0 filler { type: "gaussian" } }'),
    ),
    "power_full": (
        (1, 3, 5, 5),
        layer("out", "Power", "data", "power_param { power: 2 scale: 0.5 shift: 3 }"),
    ),
    "exp_base": (
        (1, 3, 5, 5),
        layer("out", "Exp", "data", "exp_param { base: 2 scale: 0.5 shift: 0.1 }"),
    ),
    "elu_default": ((1, 3, 5, 5), layer("out", "ELU", "data")),
    "eltwise_sum_3_coeff": (
        (1, 3, 4, 4),
        layer("a", "ReLU", "data")
        + layer("b", "TanH", "data")
        + layer(
            "out",
            "Eltwise",
            ["data", "a", "b"],
            "eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }",
        ),
    ),
    "softmax_axis_neg": ((2, 3, 4), layer("out", "Softmax", "data", "softmax_param { axis: -1 }")),
    "concat_axis2": (
        (1, 2, 3, 4),
        layer("a", "TanH", "data")
        + layer("out", "Concat", ["data", "a"], "concat_param { axis: 2 }"),
    ),
    "slice_points": (
        (1, 6, 3, 3),
        'layer { name: "s" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3" '
        "slice_param { axis: 1 slice_point: 1 slice_point: 4 } }" + layer("out", "TanH", "s2"),
    ),
    "reshape_infer": (
        (2, 3, 4, 4),
        layer("out", "Reshape", "data", "reshape_param { shape { dim: 0 dim: -1 dim: 8 } }"),
    ),
    "flatten_axis2": ((2, 3, 4, 4), layer("out", "Flatten", "data", "flatten_param { axis: 2 }")),
    "lrn_within_size3": (
        (1, 3, 6, 6),
        layer(
            "out",
            "LRN",
            "data",
            "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
        ),
    ),
    "lrn_across_k1": (
        (1, 7, 4, 4),
        layer("out", "LRN", "data", "lrn_param { local_size: 5 alpha: 0.3 beta: 0.6 k: 1 }"),
    ),
    "batchnorm_eps": (
        (2, 3, 4, 4),
        layer("out", "BatchNorm", "data", "batch_norm_param { eps: 0.01 }"),
    ),
    "mvn_across": (
        (2, 3, 5, 5),
        layer("out", "MVN", "data", "mvn_param { across_channels: true }"),
    ),
}

# Cases where OpenCV 4.14 departs from Caffe: (reason, the layer our oracle checks instead).
OPENCV_DEVIATES: dict[str, tuple[str, str]] = {
    "conv_pad_h_only": (
        "Caffe reads pad_h with pad_w defaulting to 0; OpenCV ignores pad_h without pad_w",
        "out",
    ),
    "pool_window_outside": (
        "a MAX window wholly outside the image: Caffe outputs -FLT_MAX, OpenCV 0",
        "out",
    ),
    "log": ("OpenCV's Log layer ignores log_param (base, scale, shift): it is ln(x)", "out"),
    "lrn_across": ("OpenCV's LRN ignores lrn_param.k and always adds 1", "out"),
    "pool_pad_h_only_clip": (
        "Caffe clips the last window on both axes when either pad is non-zero "
        "(`if (pad_h_ || pad_w_)`); OpenCV only on a padded axis",
        "out",
    ),
    "deconv_dilation": (
        "OpenCV's deconvolution ignores dilation; Caffe's output is s*(H-1) + d*(k-1)+1 - 2p",
        "out",
    ),
    "inner_product_transpose": (
        "OpenCV ignores inner_product_param.transpose (reads the KxN weight as NxK)",
        "out",
    ),
}


def fcn8s_text(widths: tuple[int, int, int, int, int] | None = None) -> str:
    """models/fcn8s.prototxt, optionally with narrower layers (conv blocks 1-5 and fc6/fc7)."""
    text = (REPO / "models" / "fcn8s.prototxt").read_text()
    if widths is None:
        return text
    import re

    table = {
        "64": widths[0],
        "128": widths[1],
        "256": widths[2],
        "512": widths[3],
        "4096": widths[4],
    }
    return re.sub(
        r"num_output: (64|128|256|512|4096)\b", lambda m: f"num_output: {table[m[1]]}", text
    )


def with_input(shape: tuple[int, ...], body: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (
        'name: "case"\nlayer { name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ {dims} }} }} }}\n{body}\n"
    )


def set_statistics(module) -> None:
    """BatchNorm stores mean, variance and a scale factor; give them meaningful values."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer, _ in module._layer_attrs.items():
            if layer.type == "BatchNorm":
                c = layer.blob_specs[0].shape[0]
                factor = 2.0
                mean = torch.randn(c, generator=gen) * factor
                var = (torch.rand(c, generator=gen) + 0.5) * factor
                for spec, value in zip(
                    layer.blob_specs, (mean, var, torch.tensor([factor])), strict=True
                ):
                    module.blob_tensor(layer, spec.name).copy_(value)


def write_net(tmp_path: Path, text: str, seed: int = 0) -> tuple[Path, Path]:
    """The prototxt plus a .caffemodel of seeded filler values written by our saver."""
    from protocaffe.runtime.api import load
    from protocaffe.runtime.caffemodel import save_caffemodel

    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    module = load(proto, device="cpu", seed=seed)
    set_statistics(module)
    weights = tmp_path / "net.caffemodel"
    save_caffemodel(module, weights)
    return proto, weights


def run_both(
    proto: Path, weights: Path, x: np.ndarray, output: str
) -> tuple[np.ndarray, np.ndarray]:
    from protocaffe.runtime.api import load

    module = load(proto, weights, device="cpu")
    with torch.no_grad():
        ours = module({"data": torch.from_numpy(x)})[output].numpy()
    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(x, "data")
    theirs = net.forward(output)
    return ours, np.asarray(theirs).reshape(ours.shape) if theirs.size == ours.size else theirs


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, f"shape: protocaffe {ours.shape}, OpenCV {theirs.shape}"
    # Caffe's AVE pooling of a window wholly outside the image is 0/0: both must say NaN.
    nan = np.isnan(theirs)
    assert (np.isnan(ours) == nan).all(), "NaNs at different positions"
    ours, theirs = ours[~nan], theirs[~nan]
    scale = max(float(np.abs(theirs).max()), 1e-6)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= RTOL * scale, f"max |diff| {diff:.3g} > {RTOL:g} * output scale {scale:.3g}"


@pytest.mark.parametrize("case", sorted(set(CASES) - set(OPENCV_DEVIATES)))
def test_matches_opencv(case: str, tmp_path: Path) -> None:
    shape, body = CASES[case]
    proto, weights = write_net(tmp_path, with_input(shape, body))
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    assert_close(*run_both(proto, weights, x, "out"))


@pytest.mark.parametrize("case", sorted(OPENCV_DEVIATES))
def test_opencv_deviation_checked_by_oracle(case: str) -> None:
    """OpenCV is not Caffe here: compare the lowering with our numpy Caffe oracle instead."""
    from protocaffe.ir.build import shape_context
    from protocaffe.lower import lower_graph
    from protocaffe.testing import compile_snippet

    shape, body = CASES[case]
    _, layer_name = OPENCV_DEVIATES[case]
    x = np.random.default_rng(7).standard_normal(shape)
    graph = compile_snippet(body, {"data": shape})
    target = graph.layer(layer_name)
    module = lower_graph(graph, dtype=torch.float64, seed=0).with_outputs(target.bottoms)
    blobs = [module.blob_tensor(target, s.name).detach().numpy() for s in target.blob_specs]
    with torch.no_grad():
        got = {k: v.numpy() for k, v in module({"data": torch.from_numpy(x)}).items()}
    bottoms = [got[b] for b in target.bottoms]
    (want,) = target.spec.reference(shape_context(graph, target), bottoms, blobs)
    np.testing.assert_allclose(got[target.tops[0]], want, rtol=1e-5, atol=1e-6)


def test_fcn8s_reduced_matches_opencv(tmp_path: Path) -> None:
    """FCN-8s's whole graph (pad 100, ceil pooling, deconvs, crops, fusions), 1/16 the width."""
    text = fcn8s_text((4, 8, 16, 32, 64))
    text = text.replace("dim: 500 dim: 500", "dim: 100 dim: 120")
    text = with_gaussian_fillers(text)
    proto, weights = write_net(tmp_path, text)
    x = np.random.default_rng(7).standard_normal((1, 3, 100, 120)).astype(np.float32) * 50
    ours, theirs = run_both(proto, weights, x, "score")
    assert ours.shape == (1, 21, 100, 120)
    assert np.abs(ours).max() > 0
    assert_close(ours, theirs)


@pytest.mark.slow
def test_fcn8s_full_500_matches_opencv(tmp_path: Path) -> None:
    text = with_gaussian_fillers(fcn8s_text(), std=0.01)
    proto, weights = write_net(tmp_path, text)
    x = np.random.default_rng(7).standard_normal((1, 3, 500, 500)).astype(np.float32) * 50
    ours, theirs = run_both(proto, weights, x, "score")
    assert ours.shape == (1, 21, 500, 500)
    assert_close(ours, theirs)


def with_gaussian_fillers(text: str, std: float = 0.1) -> str:
    """Give every Convolution random weights and biases (the deconvs keep their bilinear)."""
    import re

    gauss = f'{{ type: "gaussian" std: {std} }}'
    fill = f"weight_filler {gauss} bias_filler {gauss}"
    return re.sub(
        r'(type: "Convolution"[^{]*convolution_param \{)', lambda m: f"{m[1]} {fill}", text
    )
