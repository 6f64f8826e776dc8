"""Shape rules, blobs, MACs, coordinate maps and errors of the spatial layers.

Expected values are worked out by hand from Caffe's Reshape formulas; the arithmetic is in each
case's id. Conv: (H + 2p - (d(k-1)+1)) // s + 1. Deconv: s(H-1) + d(k-1)+1 - 2p. Pooling:
ceil((H + 2p - k) / s) + 1, minus 1 when p > 0 and (out-1)*s >= H + p.
"""

from __future__ import annotations

import math

import pytest
from _corpus import CORPUS

from protocaffe.diagnostics import CompileError
from protocaffe.layers.base import IDENTITY, Affine, ShapeContext
from protocaffe.testing import compile_snippet


def layer_text(kind: str, param: str, body: str, bottoms=("x",), tops=("y",)) -> str:
    b = " ".join(f'bottom: "{n}"' for n in bottoms)
    t = " ".join(f'top: "{n}"' for n in tops)
    return f'layer {{ name: "l" type: "{kind}" {b} {t} {param} {{ {body} }} }}'


def top_shape(kind, param, body, inputs, top="y"):
    graph = compile_snippet(layer_text(kind, param, body, bottoms=tuple(inputs)), inputs)
    return graph.blob(top).shape


def conv(body: str, shape, kind="Convolution"):
    return top_shape(kind, "convolution_param", body, {"x": shape})


def pool(body: str, shape):
    return top_shape("Pooling", "pooling_param", body, {"x": shape})


# --------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize(
    ("body", "shape", "want"),
    [
        ("num_output: 8 kernel_size: 3 pad: 1 stride: 2", (1, 4, 9, 9), (1, 8, 5, 5)),
        ("num_output: 64 kernel_size: 7 pad: 3 stride: 2", (2, 3, 224, 224), (2, 64, 112, 112)),
        ("num_output: 64 kernel_size: 3 pad: 100", (1, 3, 500, 500), (1, 64, 698, 698)),
        ("num_output: 2 kernel_size: 3 dilation: 2", (1, 1, 10, 10), (1, 2, 6, 6)),
        (
            "num_output: 2 kernel_h: 3 kernel_w: 1 pad_h: 1 stride_h: 1 stride_w: 2",
            (1, 1, 8, 9),
            (1, 2, 8, 5),
        ),
        (
            "num_output: 2 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 pad: 1 pad: 0",
            (1, 1, 8, 9),
            (1, 2, 8, 5),
        ),
        (
            "num_output: 4 kernel_size: 3 kernel_size: 2 kernel_size: 2 stride: 2 pad: 1",
            (1, 2, 5, 6, 4),
            (1, 4, 3, 4, 3),
        ),
        ("num_output: 5 kernel_size: 3 dilation: 2 stride: 2", (3, 2, 11), (3, 5, 4)),
        ("num_output: 3 kernel_size: 3 pad: 1 axis: 2", (2, 5, 4, 6, 6), (2, 5, 3, 6, 6)),
        ("num_output: 3 kernel_size: 2 axis: -3", (4, 7, 7), (3, 6, 6)),
    ],
    ids=[
        "k3p1s2 on 9: (9+2-3)//2+1=5",
        "k7p3s2 on 224: (224+6-7)//2+1=112",
        "FCN conv1_1 k3p100 on 500: 500+200-3+1=698",
        "k3 d2 on 10: keff 5, (10-5)+1=6",
        "kernel_h3/w1 pad_h1 stride_w2 on 8x9: 8, (9-1)//2+1=5",
        "repeated per-axis kernel/stride/pad on 8x9: 8, 5",
        "3-D k(3,2,2) s2 p1 on 5x6x4: 3, 4, 3",
        "1-D k3 d2 s2 on 11: keff 5, (11-5)//2+1=4",
        "axis 2 on 2x5x4x6x6: batch 2x5, 3x6x6",
        "axis -3 (=0) on 4x7x7: 3x6x6",
    ],
)
def test_convolution_shape(body, shape, want):
    assert conv(body, shape) == want


@pytest.mark.parametrize(
    ("body", "shape", "want"),
    [
        ("num_output: 21 kernel_size: 4 stride: 2 bias_term: false", (1, 21, 16, 16), 34),
        ("num_output: 21 kernel_size: 16 stride: 8 bias_term: false", (1, 21, 70, 70), 568),
        ("num_output: 21 kernel_size: 64 stride: 32 bias_term: false", (1, 21, 16, 16), 544),
        ("num_output: 2 kernel_size: 3 dilation: 2", (1, 1, 5, 5), 9),
        ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (1, 1, 5, 5), 10),
    ],
    ids=[
        "FCN upscore2 k4s2 on 16: 2*15+4=34",
        "FCN upscore8 k16s8 on 70: 8*69+16=568",
        "FCN-32s upscore k64s32 on 16: 32*15+64=544",
        "k3 d2 on 5: 4+5=9",
        "k4s2p1 on 5: 2*4+4-2=10",
    ],
)
def test_deconvolution_shape(body, shape, want):
    assert conv(body, shape, "Deconvolution")[2:] == (want, want)


@pytest.mark.parametrize(
    ("body", "shape", "want"),
    [
        ("pool: MAX kernel_size: 3 stride: 2", (10, 64, 112, 112), (56, 56)),
        ("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 1, 112, 112), (55, 55)),
        ("pool: MAX kernel_size: 2 stride: 2", (1, 64, 698, 698), (349, 349)),
        ("pool: MAX kernel_size: 2 stride: 2", (1, 128, 349, 349), (175, 175)),
        ("pool: AVE kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5), (3, 3)),
        ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 1, 4, 4), (3, 3)),
        ("pool: MAX kernel_size: 1 stride: 3", (1, 1, 3, 3), (2, 2)),
        ("pool: AVE kernel_size: 3 stride: 2 pad: 2", (1, 1, 6, 6), (4, 4)),
        ("pool: AVE global_pooling: true", (2, 3, 7, 5), (1, 1)),
        (
            "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0",
            (1, 1, 9, 7),
            (5, 3),
        ),
        ("pool: MAX kernel_size: 3 stride: 2", (1, 1, 2, 2), (1, 1)),
    ],
    ids=[
        "googlenet pool1 k3s2 on 112: ceil(109/2)+1=56",
        "FLOOR k3s2 on 112: 109//2+1=55",
        "FCN pool1 k2s2 on 698: 696/2+1=349",
        "FCN pool2 k2s2 on 349: ceil(347/2)+1=175",
        "clip: k2s2p1 on 5: ceil(5/2)+1=4, 3*2>=5+1 so 3",
        "no clip: k3s2p1 on 4: ceil(3/2)+1=3, 2*2<4+1",
        "pad0 s>k: k1s3 on 3: ceil(2/3)+1=2, no clip without pad",
        "pad > k/2: k3s2p2 on 6: ceil(7/2)+1=5, 4*2>=6+2 so 4",
        "global on 7x5: 1x1",
        "kernel_h/w etc on 9x7: ceil(8/2)+1=5, ceil(5/3)+1=3",
        "k3s2 on 2: ceil(-1/2)+1=1 (Caffe pools the clipped window)",
    ],
)
def test_pooling_shape(body, shape, want):
    assert pool(body, shape) == (*shape[:2], *want)


@pytest.mark.parametrize(
    ("body", "data", "like", "want"),
    [
        ("axis: 2 offset: 19", (1, 21, 544, 544), (1, 3, 500, 500), (1, 21, 500, 500)),
        ("axis: -2 offset: 1", (1, 3, 8, 9), (5, 5, 4, 4), (1, 3, 4, 4)),
        ("axis: 1 offset: 0 offset: 2 offset: 3", (2, 3, 8, 9), (9, 1, 6, 5), (2, 1, 6, 5)),
        ("axis: 3", (2, 3, 8, 9), (1, 1, 1, 4), (2, 3, 8, 4)),
        ("", (2, 3, 8, 9), (1, 1, 6, 6), (2, 3, 6, 6)),
    ],
    ids=[
        "FCN-32s score: axis 2 offset 19, 544 -> 500",
        "negative axis -2 = 2",
        "per-axis offsets from axis 1 (channels too)",
        "axis 3 crops only W",
        "defaults: axis 2, offset 0",
    ],
)
def test_crop_shape(body, data, like, want):
    assert top_shape("Crop", "crop_param", body, {"x": data, "r": like}) == want


@pytest.mark.parametrize(
    ("body", "shape", "want", "weight"),
    [
        ("num_output: 10", (2, 3, 4, 5), (2, 10), (10, 60)),
        ("num_output: 10 axis: 2", (2, 3, 4, 5), (2, 3, 10), (10, 20)),
        ("num_output: 10 axis: -1 transpose: true", (2, 3, 4, 5), (2, 3, 4, 10), (5, 10)),
    ],
    ids=["axis 1: K=3*4*5=60", "axis 2: K=4*5=20", "axis -1 transposed: K=5, weight KxN"],
)
def test_inner_product_shape_and_blobs(body, shape, want, weight):
    graph = compile_snippet(layer_text("InnerProduct", "inner_product_param", body), {"x": shape})
    assert graph.blob("y").shape == want
    specs = graph.layer("l").blob_specs
    assert [(b.name, b.shape) for b in specs] == [("weight", weight), ("bias", (10,))]
    assert graph.layer("l").macs == 2 * 3 * 4 * 5 * 10


def test_lrn_spp_im2col_shapes():
    lrn = layer_text("LRN", "lrn_param", "local_size: 3 norm_region: WITHIN_CHANNEL")
    assert compile_snippet(lrn, {"x": (2, 3, 7, 5)}).blob("y").shape == (2, 3, 7, 5)
    # SPP pyramid 3 on 13x10: level 0 -> 1x1; level 1 (2 bins): k (7,5), pad (1,0):
    # H ceil(8/7)+1=3, clipped (2*7>=13+1) to 2; W 2. level 2 (4 bins): k (4,3), pad (2,1):
    # H ceil(13/4)+1=5, clipped to 4; W ceil(9/3)+1=4. 3 channels * (1+4+16) = 63.
    spp = layer_text("SPP", "spp_param", "pyramid_height: 3")
    assert compile_snippet(spp, {"x": (2, 3, 13, 10)}).blob("y").shape == (2, 63)
    spp1 = layer_text("SPP", "spp_param", "pyramid_height: 1")
    assert compile_snippet(spp1, {"x": (2, 3, 13, 10)}).blob("y").shape == (2, 3, 1, 1)
    # Im2col k(3,2) d2 -> keff (5,3); H (7+2-5)//2+1=3, W (8-3)+1=6; channels 3*3*2=18.
    im2col = layer_text(
        "Im2col",
        "convolution_param",
        "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 dilation: 2",
    )
    assert compile_snippet(im2col, {"x": (2, 3, 7, 8)}).blob("y").shape == (2, 18, 3, 6)


# --------------------------------------------------------------------------------------------
# Blobs and MACs


def test_convolution_blobs_and_macs():
    body = "num_output: 8 kernel_size: 3 pad: 1 stride: 2 group: 2"
    graph = compile_snippet(
        layer_text("Convolution", "convolution_param", body), {"x": (3, 4, 9, 9)}
    )
    layer = graph.layer("l")
    assert [(b.name, b.shape) for b in layer.blob_specs] == [
        ("weight", (8, 2, 3, 3)),
        ("bias", (8,)),
    ]
    # filler defaults to Caffe's FillerParameter default: constant 0.
    assert layer.blob_specs[0].filler.type == "constant"
    # top 5x5: 25 positions * N 3 * 8 outputs * (4/2) inputs * 9 taps
    assert layer.macs == 25 * 3 * 8 * 2 * 9


def test_deconvolution_blobs_and_macs():
    body = (
        "num_output: 6 kernel_size: 4 stride: 2 group: 2 bias_term: false "
        'weight_filler { type: "bilinear" }'
    )
    graph = compile_snippet(
        layer_text("Deconvolution", "convolution_param", body), {"x": (1, 4, 5, 5)}
    )
    layer = graph.layer("l")
    assert [(b.name, b.shape) for b in layer.blob_specs] == [("weight", (4, 3, 4, 4))]
    assert layer.blob_specs[0].filler.type == "bilinear"
    # N 1 * C_in 4 * (6/2) * 16 taps * 25 input positions
    assert layer.macs == 4 * 3 * 16 * 25


# --------------------------------------------------------------------------------------------
# Coordinate maps


def layer_map(graph, layer) -> Affine | None:
    ctx = ShapeContext(layer, [v.shape for v in layer.inputs], graph.span_of, graph.phase)
    return layer.spec.coord_map(ctx)


def map_to_input(graph, value) -> Affine:
    """Compose coord maps from `value` back to the net input along bottom[0]."""
    total = IDENTITY
    while value.producer is not None and not value.producer.spec.is_input:
        step = layer_map(graph, value.producer)
        assert step is not None, value.producer.name
        total = total.then(step)
        value = value.producer.inputs[0]
    return total


@pytest.mark.parametrize(
    ("kind", "param", "body", "want"),
    [
        ("Convolution", "convolution_param", "num_output: 1 kernel_size: 3 pad: 1", Affine(1, 0)),
        (
            "Convolution",
            "convolution_param",
            "num_output: 1 kernel_size: 3 pad: 100",
            Affine(1, -99),
        ),
        (
            "Convolution",
            "convolution_param",
            "num_output: 1 kernel_size: 3 dilation: 2 stride: 2",
            Affine(2, 2),
        ),
        ("Pooling", "pooling_param", "kernel_size: 2 stride: 2", Affine(2, 0.5)),
        (
            "Deconvolution",
            "convolution_param",
            "num_output: 1 kernel_size: 4 stride: 2",
            Affine(0.5, -0.75),
        ),
        ("LRN", "lrn_param", "local_size: 3", Affine(1, 0)),
    ],
    ids=[
        "conv k3p1: s1, (3-1)/2-1=0",
        "conv k3p100: (3-1)/2-100=-99",
        "conv k3 d2 s2: keff 5, (5-1)/2=2",
        "pool k2s2: (2-1)/2=0.5",
        "deconv k4s2: 1/2, (0-(4-1)/2)/2=-0.75",
        "LRN identity",
    ],
)
def test_coord_maps(kind, param, body, want):
    graph = compile_snippet(layer_text(kind, param, body), {"x": (1, 1, 20, 20)})
    assert layer_map(graph, graph.layer("l")) == want


def test_inner_product_has_no_coord_map():
    graph = compile_snippet(
        layer_text("InnerProduct", "inner_product_param", "num_output: 2"), {"x": (1, 1, 4, 4)}
    )
    assert layer_map(graph, graph.layer("l")) is None


FCN8S = CORPUS / "shelhamer__fcn.berkeleyvision.org" / "voc-fcn8s__deploy.prototxt"


@pytest.mark.skipif(not FCN8S.exists(), reason=f"corpus file absent: {FCN8S}")
def test_fcn8s_crop_offsets_macs_and_params():
    graph = compile_snippet(FCN8S.read_text(), {})
    offsets = {}
    for layer in graph.layers:
        if layer.type == "Crop":
            data, like = (map_to_input(graph, v) for v in layer.inputs)
            assert data.scale == like.scale
            offsets[layer.name] = (like.shift - data.shift) / data.scale
            assert offsets[layer.name] == layer.proto.crop_param.offset[0]
    assert sorted(offsets.values()) == [5, 9, 31]
    assert graph.blob("upscore8").shape == (1, 21, 568, 568)
    assert graph.blob("score").shape == (1, 21, 500, 500)
    params = sum(math.prod(b.shape) for layer in graph.layers for b in layer.blob_specs)
    assert params == 134_489_759
    gmacs = sum(layer.macs for layer in graph.layers) / 1e9
    assert gmacs == pytest.approx(181.5, abs=0.1)


def explain(text: str, inputs) -> list[str]:
    graph = compile_snippet(text, inputs)
    layer = graph.layer("l")
    ctx = ShapeContext(layer, [v.shape for v in layer.inputs], graph.span_of, graph.phase)
    return layer.spec.explain(ctx)


def test_explain_formulas():
    text = layer_text("Pooling", "pooling_param", "kernel_size: 2 stride: 2 pad: 1")
    assert explain(text, {"x": (1, 1, 5, 6)}) == [
        "height: ceil((5 + 2*1 - 2) / 2) + 1 = 4, clipped to 3: "
        "the last window would start in the padding",
        "width: ceil((6 + 2*1 - 2) / 2) + 1 = 4",
    ]
    body = "num_output: 1 kernel_size: 3 stride: 2 dilation: 2"
    assert explain(layer_text("Convolution", "convolution_param", body), {"x": (1, 1, 9)}) == [
        "spatial axis 0: (9 + 2*0 - (2*(3-1)+1)) // 2 + 1 = 3"
    ]
    body = "num_output: 1 kernel_size: 4 stride: 2 pad: 1"
    assert explain(layer_text("Deconvolution", "convolution_param", body), {"x": (1, 1, 5, 7)}) == [
        "height: 2*(5 - 1) + 4 - 2*1 = 10",
        "width: 2*(7 - 1) + 4 - 2*1 = 14",
    ]


# --------------------------------------------------------------------------------------------
# Errors: message names blobs and numbers; the span points at the offending field's line.


def error_of(text: str, inputs) -> tuple[str, int | None]:
    with pytest.raises(CompileError) as info:
        compile_snippet(text, inputs)
    diag = next(d for d in info.value.diagnostics if d.severity == "error")
    return diag.message, diag.span.line if diag.span else None


def multiline(kind: str, param: str, lines: list[str], bottoms=("x",), tops=("y",)) -> str:
    """The layer with one param field per line; the first field is on line 3."""
    b = " ".join(f'bottom: "{n}"' for n in bottoms)
    t = " ".join(f'top: "{n}"' for n in tops)
    return "\n".join([f'layer {{ name: "l" type: "{kind}" {b} {t}', f"  {param} {{", *lines, "} }"])


@pytest.mark.parametrize(
    ("kind", "param", "lines", "shape", "needles", "line"),
    [
        (
            "Convolution",
            "convolution_param",
            ["num_output: 2", "kernel_size: 7", "pad: 1"],
            (1, 1, 3, 3),
            ["kernel 7 (dilated 7) is larger than the padded input 5 (input 3 + 2*1 pad)", "'x'"],
            4,
        ),
        (
            "Convolution",
            "convolution_param",
            ["num_output: 2", "kernel_size: 3", "kernel_h: 3", "kernel_w: 3"],
            (1, 1, 5, 5),
            ["either kernel_size or kernel_h/kernel_w"],
            5,
        ),
        (
            "Convolution",
            "convolution_param",
            ["num_output: 2", "kernel_h: 3", "kernel_w: 3"],
            (1, 1, 5, 5, 5),
            ["kernel_h/kernel_w can only be used with 2 spatial axes", "has 3"],
            4,
        ),
        (
            "Convolution",
            "convolution_param",
            ["num_output: 4", "kernel_size: 1", "group: 3"],
            (1, 4, 5, 5),
            ["group 3 does not divide the 4 input channels", "'x'"],
            5,
        ),
        (
            "Convolution",
            "convolution_param",
            ["num_output: 5", "kernel_size: 1", "group: 2"],
            (1, 4, 5, 5),
            ["group 2 does not divide num_output 5"],
            5,
        ),
        (
            "Convolution",
            "convolution_param",
            ["kernel_size: 1"],
            (1, 4, 5, 5),
            ["num_output is required"],
            None,
        ),
        (
            "Convolution",
            "convolution_param",
            ["num_output: 1", "kernel_size: 1", "kernel_size: 2", "kernel_size: 3"],
            (1, 4, 5, 5),
            ["kernel_size is given 3 times for 2 spatial axes"],
            None,
        ),
        (
            "Convolution",
            "convolution_param",
            ["num_output: 1", "kernel_size: 1", "stride_h: 2"],
            (1, 4, 5, 5),
            ["stride_h and stride_w go together; stride_w is missing"],
            5,
        ),
        (
            "Deconvolution",
            "convolution_param",
            ["num_output: 1", "kernel_size: 1", "pad: 1"],
            (1, 4, 1, 1),
            ["output size -1", "1*(1-1) + 1 - 2*1"],
            5,
        ),
        (
            "Pooling",
            "pooling_param",
            ["kernel_size: 3", "kernel_h: 3", "kernel_w: 3"],
            (1, 1, 5, 5),
            ["either kernel_size or kernel_h/kernel_w"],
            4,
        ),
        (
            "Pooling",
            "pooling_param",
            ["kernel_size: 3", "pad: 3"],
            (1, 1, 5, 5),
            ["pad 3 must be smaller than the kernel 3"],
            4,
        ),
        (
            "Pooling",
            "pooling_param",
            ["pool: STOCHASTIC", "kernel_size: 3", "pad: 1"],
            (1, 1, 5, 5),
            ["padding is implemented only for MAX and AVE pooling, not STOCHASTIC"],
            5,
        ),
        (
            "Pooling",
            "pooling_param",
            ["global_pooling: true", "kernel_size: 3"],
            (1, 1, 5, 5),
            ["global_pooling takes the whole input"],
            4,
        ),
        (
            "Pooling",
            "pooling_param",
            ["kernel_size: 2", "pad_h: 1"],
            (1, 1, 5, 5),
            ["pad_h and pad_w go together"],
            4,
        ),
        (
            "Pooling",
            "pooling_param",
            ["kernel_size: 6", "stride: 1"],
            (1, 1, 5, 5),
            ["kernel 6 is larger than the padded input 5 (input 5 + 2*0 pad)", "'x'"],
            3,
        ),
        (
            "Pooling",
            "pooling_param",
            ["kernel_size: 2"],
            (1, 1, 5),
            ["input must have 4 axes", "1x1x5"],
            None,
        ),
        (
            "LRN",
            "lrn_param",
            ["local_size: 4"],
            (1, 3, 5, 5),
            ["local_size must be a positive odd number, got 4"],
            3,
        ),
        (
            "InnerProduct",
            "inner_product_param",
            ["num_output: 3", "axis: 4"],
            (1, 3, 5, 5),
            ["axis 4 is out of range", "4 axes"],
            4,
        ),
        (
            "SPP",
            "spp_param",
            ["pyramid_height: 2"],
            (1, 3, 1, 1),
            ["level 1 (2 bins) needs pad (1, 1) >= kernel (1, 1)"],
            3,
        ),
    ],
    ids=[
        "conv kernel larger than padded input",
        "conv kernel_size and kernel_h",
        "conv kernel_h on 3-D",
        "conv group vs channels",
        "conv group vs num_output",
        "conv num_output missing",
        "conv kernel_size count",
        "conv stride_h without stride_w",
        "deconv non-positive output",
        "pool kernel_size and kernel_h",
        "pool pad >= kernel",
        "pool pad with STOCHASTIC",
        "global pooling with kernel",
        "pool pad_h without pad_w",
        "pool kernel larger than input",
        "pool not 4-D",
        "LRN even size",
        "IP axis out of range",
        "SPP too many levels for 1x1",
    ],
)
def test_errors(kind, param, lines, shape, needles, line):
    message, at = error_of(multiline(kind, param, lines), {"x": shape})
    assert message.startswith(f"{kind} 'l': ")
    for needle in needles:
        assert needle in message
    if line is not None:
        assert at == line


def test_pool_mask_top_only_for_max():
    text = multiline("Pooling", "pooling_param", ["pool: AVE", "kernel_size: 2"], tops=("y", "m"))
    message, _ = error_of(text, {"x": (1, 1, 4, 4)})
    assert "only MAX pooling has a second (mask) top, not AVE" in message


def test_crop_out_of_range_names_blobs_and_offset_field():
    text = multiline("Crop", "crop_param", ["axis: 2", "offset: 3"], bottoms=("x", "r"))
    message, line = error_of(text, {"x": (1, 3, 8, 8), "r": (1, 3, 6, 6)})
    assert "crop of axis 2 is out of range: offset 3 + size 6" in message
    assert "'r', 1x3x6x6) = 9 exceeds 8 (from 'x', 1x3x8x8)" in message
    assert line == 4


def test_crop_offset_count_mismatch():
    text = multiline(
        "Crop", "crop_param", ["axis: 1", "offset: 1", "offset: 2"], bottoms=("x", "r")
    )
    message, _ = error_of(text, {"x": (1, 3, 8, 8), "r": (1, 1, 6, 6)})
    assert "2 offsets given for 3 cropped axes" in message
