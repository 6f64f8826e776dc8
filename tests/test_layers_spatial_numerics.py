"""Numerics of the spatial layers: the PyTorch lowering (through run_snippet) against each
layer's numpy oracle (`LayerDef.reference`, a transcription of Caffe's CPU forward loops).

Pooling is swept exhaustively (H 3-11, W = H+1, k 1-4, s 1-4, p 0-2 with p < k, MAX and AVE);
Convolution and Deconvolution over seeded random configurations with groups, dilation and
asymmetric _h/_w geometry. Cases the lowering deliberately does not match are listed in
EXCLUDED with their reason.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from protocaffe.diagnostics import CompileError
from protocaffe.layers.base import ShapeContext
from protocaffe.testing import compile_snippet, run_snippet

FLT_MAX = float(np.finfo(np.float32).max)

# Configurations where protocaffe differs from Caffe on purpose, with the reason (tinygrad style).
EXCLUDED: dict[str, str] = {
    "pool k > H + 2p with ceil((H+2p-k)/s) + 1 == 0": (
        "Caffe's Reshape gives a 0-sized top and goes on; protocaffe rejects the layer with a "
        "'kernel larger than the padded input' error instead"
    ),
    "MAX pooling over NaN or -inf inputs": (
        "Caffe's strict '>' skips NaN and never goes below -FLT_MAX; torch's max_pool2d "
        "propagates NaN and returns -inf for an all -inf window (not swept)"
    ),
    "STOCHASTIC pooling at TRAIN": (
        "samples at random (Caffe's GPU kernel); checked by property, not against an oracle"
    ),
}


def oracle(text: str, inputs: dict[str, np.ndarray], blobs=None, phase="TEST") -> list:
    """Run the snippet's last layer's `reference` on the same inputs and blobs."""
    graph = compile_snippet(text, {k: v.shape for k, v in inputs.items()}, phase=phase)
    layer = graph.layers[-1]
    ctx = ShapeContext(layer, [v.shape for v in layer.inputs], graph.span_of, graph.phase)
    values = [inputs[v.blob] for v in layer.inputs]
    return layer.spec.reference(ctx, values, list((blobs or {}).get(layer.name, [])))


def compare(text, inputs, blobs=None, tops=("y",), rtol=1e-5, atol=1e-5, phase="TEST"):
    """Assert lowering == oracle for every top; return the largest absolute difference."""
    got = run_snippet(text, inputs, blobs, phase=phase)
    want = oracle(text, inputs, blobs, phase=phase)
    worst = 0.0
    for name, w in zip(tops, want, strict=True):
        g = got[name]
        assert g.shape == w.shape, f"{name}: lowered {g.shape} vs oracle {w.shape}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=text)
        finite = np.isfinite(w)
        if finite.any():
            worst = max(worst, float(np.abs(g[finite].astype(np.float64) - w[finite]).max()))
    return worst


def pool_text(method: str, k: int, s: int, p: int, extra: str = "", tops=("y",)) -> str:
    top = " ".join(f'top: "{t}"' for t in tops)
    return (
        f'layer {{ name: "pool" type: "Pooling" bottom: "x" {top} pooling_param {{ '
        f"pool: {method} kernel_size: {k} stride: {s} pad: {p} {extra} }} }}"
    )


# --------------------------------------------------------------------------------------------
# Pooling


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_pooling_sweep_matches_caffe_loop(method, k):
    rng = np.random.default_rng(k)
    checked, rejected, worst = 0, 0, 0.0
    for h, s, p in itertools.product(range(3, 12), range(1, 5), range(0, 3)):
        if p >= k:
            continue  # Caffe CHECKs pad < kernel (covered by the shape tests)
        text = pool_text(method, k, s, p)
        x = rng.standard_normal((2, 3, h, h + 1)).astype(np.float32)
        if -(-(h + 2 * p - k) // s) + 1 <= 0:
            with pytest.raises(CompileError, match="larger than the padded input"):
                compile_snippet(text, {"x": x.shape})
            rejected += 1  # see EXCLUDED
            continue
        worst = max(worst, compare(text, {"x": x}))
        checked += 1
    assert checked >= 36 and rejected <= 2
    assert worst < 1e-5


def test_pooling_window_outside_image_pad0_stride_gt_kernel():
    # H=3, k=1, s=3: ceil((3-1)/3)+1 = 2 outputs; the 2nd window starts at 3 (outside) and,
    # with pad 0, Caffe does not clip it. MAX leaves -FLT_MAX; AVE divides 0 by
    # pool_size = (min(3+1, 3+0) - 3) * ... = 0, which is NaN.
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    got = run_snippet(pool_text("MAX", 1, 3, 0), {"x": x})["y"]
    assert got.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(got[0, 0], [[0, -FLT_MAX], [-FLT_MAX, -FLT_MAX]])
    got = run_snippet(pool_text("AVE", 1, 3, 0), {"x": x})["y"]
    assert got[0, 0, 0, 0] == 0 and np.isnan(got[0, 0, 1:, :]).all()
    assert np.isnan(got[0, 0, 0, 1])


def test_pooling_pad_larger_than_half_kernel():
    # k=3, p=2 is legal in Caffe (pad < kernel) but rejected by torch's fused kernels.
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 5)).astype(np.float32)
    for method in ("MAX", "AVE"):
        assert compare(pool_text(method, 3, 2, 2), {"x": x}) < 1e-6


def test_pooling_floor_rounding_and_rectangular():
    x = np.random.default_rng(1).standard_normal((2, 2, 9, 7)).astype(np.float32)
    for method in ("MAX", "AVE"):
        text = (
            'layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { '
            f"pool: {method} kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 "
            "round_mode: FLOOR } }"
        )
        assert compare(text, {"x": x}) < 1e-6


def test_global_pooling():
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 4)).astype(np.float32)
    for method in ("MAX", "AVE"):
        text = (
            f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" '
            f"pooling_param {{ pool: {method} global_pooling: true }} }}"
        )
        got = run_snippet(text, {"x": x})["y"]
        want = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
        np.testing.assert_allclose(got[:, :, 0, 0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("k", "s", "p"), [(2, 2, 0), (3, 2, 1), (3, 2, 2), (1, 3, 0)])
def test_max_pooling_mask_top(k, s, p):
    # The second top holds the argmax's flat index h*W+w in the input plane (-1 if none).
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 6)).astype(np.float32)
    compare(pool_text("MAX", k, s, p, tops=("y", "mask")), {"x": x}, tops=("y", "mask"))


@pytest.mark.parametrize(("k", "s"), [(2, 2), (3, 2), (2, 3)])
def test_stochastic_pooling_test_phase(k, s):
    # Caffe's test-time stochastic pooling: sum(x^2) / sum(x) over the (clipped) window.
    x = np.random.default_rng(4).random((2, 3, 7, 8)).astype(np.float32)
    x[0, 0, :3, :3] = 0  # an all-zero window gives 0
    assert compare(pool_text("STOCHASTIC", k, s, 0), {"x": x}) < 1e-6


def test_stochastic_pooling_train_samples_window_members():
    x = np.random.default_rng(5).random((2, 2, 6, 6)).astype(np.float32) + 0.1
    got = run_snippet(pool_text("STOCHASTIC", 2, 2, 0), {"x": x}, phase="TRAIN")["y"]
    windows = x.reshape(2, 2, 3, 2, 3, 2).transpose(0, 1, 2, 4, 3, 5).reshape(2, 2, 3, 3, 4)
    assert (got[..., None] == windows).any(-1).all()


# --------------------------------------------------------------------------------------------
# Convolution / Deconvolution


def conv_case(rng: np.random.Generator, deconv: bool):
    """A random 2-D convolution configuration: (text, inputs, blobs)."""
    group = int(rng.choice([1, 2, 3]))
    cin, cout = group * int(rng.integers(1, 4)), group * int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = (int(v) for v in rng.integers(0, 3, size=2))
    dil = int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(4, 10, size=2))
    if not deconv:
        h, w = max(h, dil * (kh - 1) + 1), max(w, dil * (kw - 1) + 1)
    bias = bool(rng.integers(0, 2))
    if rng.integers(0, 2):
        geometry = (
            f"kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
            f"pad_h: {ph} pad_w: {pw} dilation: {dil}"
        )
    else:
        geometry = (
            f"kernel_size: {kh} kernel_size: {kw} stride: {sh} stride: {sw} "
            f"pad: {ph} pad: {pw} dilation: {dil} dilation: {dil}"
        )
    kind = "Deconvolution" if deconv else "Convolution"
    text = (
        f'layer {{ name: "conv" type: "{kind}" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: {cout} group: {group} bias_term: {str(bias).lower()} {geometry} }} }}"
    )
    x = rng.standard_normal((2, cin, h, w)).astype(np.float32)
    shape = (cin, cout // group) if deconv else (cout, cin // group)
    weight = rng.standard_normal((*shape, kh, kw)).astype(np.float32)
    blobs = [weight] + ([rng.standard_normal(cout).astype(np.float32)] if bias else [])
    return text, {"x": x}, {"conv": blobs}


@pytest.mark.parametrize("deconv", [False, True], ids=["conv", "deconv"])
def test_convolution_random_configs(deconv):
    rng = np.random.default_rng(10 + deconv)
    worst = 0.0
    for _ in range(40):
        text, inputs, blobs = conv_case(rng, deconv)
        worst = max(worst, compare(text, inputs, blobs, rtol=1e-4, atol=1e-4))
    assert worst < 1e-4


@pytest.mark.parametrize("deconv", [False, True], ids=["conv", "deconv"])
@pytest.mark.parametrize(
    ("shape", "geometry"),
    [
        ((2, 4, 11), "kernel_size: 3 stride: 2 pad: 1 dilation: 2"),  # 1-D
        ((1, 2, 5, 6, 4), "kernel_size: 3 kernel_size: 2 kernel_size: 2 stride: 2 pad: 1"),  # 3-D
    ],
    ids=["1d", "3d"],
)
def test_convolution_nd(deconv, shape, geometry):
    rng = np.random.default_rng(20)
    kind = "Deconvolution" if deconv else "Convolution"
    text = (
        f'layer {{ name: "conv" type: "{kind}" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: 4 group: 2 {geometry} }} }}"
    )
    graph = compile_snippet(text, {"x": shape})
    specs = graph.layer("conv").blob_specs
    blobs = {"conv": [rng.standard_normal(b.shape).astype(np.float32) for b in specs]}
    x = rng.standard_normal(shape).astype(np.float32)
    assert compare(text, {"x": x}, blobs, rtol=1e-4, atol=1e-4) < 1e-4


def test_convolution_channel_axis_2_and_shared_weights():
    # axis 2: axes 0-1 are batch; two bottom/top pairs share one weight.
    rng = np.random.default_rng(21)
    text = (
        'layer { name: "conv" type: "Convolution" bottom: "x" bottom: "z" top: "y" top: "t" '
        "convolution_param { num_output: 3 kernel_size: 3 pad: 1 axis: 2 } }"
    )
    x, z = (rng.standard_normal((2, 2, 4, 5, 5)).astype(np.float32) for _ in range(2))
    blobs = {"conv": [rng.standard_normal((3, 4, 3, 3)).astype(np.float32), np.ones(3, "f")]}
    compare(text, {"x": x, "z": z}, blobs, tops=("y", "t"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("f", [2, 3, 4])
def test_bilinear_deconvolution_upsamples_like_interpolation(f):
    # FCN's upscore recipe: group = C, k = 2f - f%2, s = f, p = ceil((f-1)/2), bilinear filler.
    # In the interior it equals bilinear interpolation (align_corners=False); on the border
    # band the deconvolution sees zero padding.
    torch = pytest.importorskip("torch")
    k, p, c = 2 * f - f % 2, math.ceil((f - 1) / 2), 2
    text = (
        f'layer {{ name: "up" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: {c} group: {c} kernel_size: {k} stride: {f} pad: {p} bias_term: false "
        'weight_filler { type: "bilinear" } } }'
    )
    i, j = np.meshgrid(np.arange(9), np.arange(8), indexing="ij")
    x = np.stack([np.sin(0.4 * i) + np.cos(0.3 * j), 0.1 * i * j]).astype(np.float32)[None]
    got = run_snippet(text, {"x": x})["y"]
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x), scale_factor=f, mode="bilinear", align_corners=False
    ).numpy()
    assert got.shape == want.shape == (1, c, 9 * f, 8 * f)
    inner = (slice(None), slice(None), slice(f, -f), slice(f, -f))
    np.testing.assert_allclose(got[inner], want[inner], atol=1e-5)


# --------------------------------------------------------------------------------------------
# Crop, LRN, InnerProduct, SPP, Im2col


@pytest.mark.parametrize(
    ("axis", "offset", "like"),
    [
        (2, "offset: 2", (1, 1, 4, 3)),
        (-3, "offset: 1 offset: 0 offset: 2", (1, 2, 5, 3)),
        (1, "", (1, 2, 2, 2)),
    ],
)
def test_crop(axis, offset, like):
    x = np.random.default_rng(30).standard_normal((2, 3, 7, 6)).astype(np.float32)
    text = (
        f'layer {{ name: "crop" type: "Crop" bottom: "x" bottom: "r" top: "y" '
        f"crop_param {{ axis: {axis} {offset} }} }}"
    )
    inputs = {"x": x, "r": np.zeros(like, np.float32)}
    assert compare(text, inputs) == 0.0


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(region, size):
    x = np.random.default_rng(31).standard_normal((2, 7, 6, 5)).astype(np.float32) * 3
    text = (
        f'layer {{ name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param {{ '
        f"local_size: {size} alpha: 0.3 beta: 0.75 k: 2 norm_region: {region} }} }}"
    )
    assert compare(text, {"x": x}, rtol=2e-6, atol=2e-6) < 2e-6


@pytest.mark.parametrize(("axis", "transpose"), [(1, False), (1, True), (2, False), (-1, True)])
def test_inner_product(axis, transpose):
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    text = (
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ '
        f"num_output: 6 axis: {axis} transpose: {str(transpose).lower()} }} }}"
    )
    k = math.prod(x.shape[axis:])
    weight = rng.standard_normal((k, 6) if transpose else (6, k)).astype(np.float32)
    blobs = {"ip": [weight, rng.standard_normal(6).astype(np.float32)]}
    assert compare(text, {"x": x}, blobs, rtol=1e-5, atol=1e-4) < 1e-4


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("height", [1, 3])
def test_spp(method, height):
    x = np.random.default_rng(33).standard_normal((2, 3, 13, 10)).astype(np.float32)
    text = (
        f'layer {{ name: "spp" type: "SPP" bottom: "x" top: "y" spp_param {{ '
        f"pyramid_height: {height} pool: {method} }} }}"
    )
    assert compare(text, {"x": x}) < 1e-5


def test_im2col():
    x = np.random.default_rng(34).standard_normal((2, 3, 7, 8)).astype(np.float32)
    text = (
        'layer { name: "cols" type: "Im2col" bottom: "x" top: "y" convolution_param { '
        "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 dilation: 2 } }"
    )
    assert compare(text, {"x": x}) == 0.0
