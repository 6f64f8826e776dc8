"""QA: runtime behaviour checked against BVLC Caffe's C++ (independent transcriptions, not the
layer oracles, which share code with the lowerings)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from protocaffe.proto import caffe_pb2  # noqa: E402
from protocaffe.testing import compile_snippet, run_snippet  # noqa: E402

FLT_MAX = float(np.finfo(np.float32).max)


# --- Pooling: PoolingLayer::Reshape + Forward_cpu, written out from pooling_layer.cpp ----------


def caffe_pool(x, pool, kh, kw, sh, sw, ph, pw, ceil=True):
    """A line-by-line transcription of BVLC PoolingLayer (MAX/AVE, NCHW float32)."""
    n, c, height, width = x.shape
    rnd = math.ceil if ceil else math.floor
    pooled_h = int(rnd((height + 2 * ph - kh) / sh)) + 1
    pooled_w = int(rnd((width + 2 * pw - kw) / sw)) + 1
    if ph or pw:  # `if (pad_h_ || pad_w_)`: both axes, whichever is padded
        if (pooled_h - 1) * sh >= height + ph:
            pooled_h -= 1
        if (pooled_w - 1) * sw >= width + pw:
            pooled_w -= 1
    top = np.zeros((n, c, pooled_h, pooled_w), np.float32)
    for i, j, a, b in itertools.product(range(n), range(c), range(pooled_h), range(pooled_w)):
        hs, ws = a * sh - ph, b * sw - pw
        if pool == "MAX":
            he, we = min(hs + kh, height), min(ws + kw, width)
            best = -FLT_MAX
            for h in range(max(hs, 0), he):
                for w in range(max(ws, 0), we):
                    if x[i, j, h, w] > best:
                        best = x[i, j, h, w]
            top[i, j, a, b] = best
        else:
            he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
            size = (he - hs) * (we - ws)
            acc = np.float32(0)
            for h in range(max(hs, 0), min(he, height)):
                for w in range(max(ws, 0), min(we, width)):
                    acc += x[i, j, h, w]
            with np.errstate(invalid="ignore", divide="ignore"):
                top[i, j, a, b] = acc / np.float32(size)  # 0/0 = NaN as in Caffe
    return top


def pool_layer(pool, kh, kw, sh, sw, ph, pw):
    return (
        'layer { name: "l" type: "Pooling" bottom: "data" top: "y" pooling_param { '
        f"pool: {pool} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
        f"pad_h: {ph} pad_w: {pw} }} }}"
    )


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_clip_rule_applies_to_both_axes_when_either_is_padded(pool):
    # W: ceil((3 - 1) / 3) + 1 = 2, and Caffe clips it to 1 because pad_h > 0, although
    # pad_w == 0 (the second window would start past the image).
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 3)).astype(np.float32)
    text = pool_layer(pool, 2, 1, 1, 3, 1, 0)
    want = caffe_pool(x, pool, 2, 1, 1, 3, 1, 0)
    assert want.shape == (1, 2, 5, 1)
    assert compile_snippet(text, {"data": x.shape}).values["y"].shape == want.shape
    got = run_snippet(text, {"data": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pooling_matches_transcription_on_a_sweep():
    rng = np.random.default_rng(1)
    for pool, h, w, kh, kw, sh, sw in itertools.product(
        ["MAX", "AVE"], [3, 5], [4, 7], [1, 2, 3], [2, 3], [1, 2, 3], [2, 4]
    ):
        for ph, pw in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            if ph >= kh or pw >= kw:
                continue
            x = rng.standard_normal((1, 2, h, w)).astype(np.float32)
            want = caffe_pool(x, pool, kh, kw, sh, sw, ph, pw)
            text = pool_layer(pool, kh, kw, sh, sw, ph, pw)
            with np.errstate(invalid="ignore"):
                got = run_snippet(text, {"data": x})["y"]
            assert got.shape == want.shape, (pool, h, w, kh, kw, sh, sw, ph, pw)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- Weights files ----------------------------------------------------------------------------


def _write_model(path: Path, layers: list[caffe_pb2.LayerParameter]) -> None:
    net = caffe_pb2.NetParameter(name="n")
    net.layer.extend(layers)
    path.write_bytes(net.SerializeToString())


PRELU_NET = """
name: "n"
layer { name: "input" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }
layer { name: "p" type: "PReLU" bottom: "data" top: "y" prelu_param { channel_shared: true } }
"""


def test_prelu_channel_shared_loads_caffes_0_axis_blob(tmp_path: Path) -> None:
    """PReLULayer makes the shared slope Blob(vector<int>(0)); Blob::ToProto then writes no
    shape at all, and ShapeEquals accepts it only for a 0-axis target."""
    from protocaffe.runtime.api import load

    proto = tmp_path / "net.prototxt"
    proto.write_text(PRELU_NET)
    layer = caffe_pb2.LayerParameter(name="p", type="PReLU")
    layer.blobs.add().data.append(0.3)  # no shape, no num/channels/...: Caffe's own output
    _write_model(tmp_path / "w.caffemodel", [layer])
    module = load(proto, tmp_path / "w.caffemodel", device="cpu")
    x = torch.tensor([-1.0, 2.0, -3.0, 4.0] * 3).reshape(1, 3, 2, 2)
    np.testing.assert_allclose(
        module(x)["y"].detach().numpy(), torch.where(x > 0, x, 0.3 * x).numpy()
    )
    # An old 4-D legacy blob 1x1x1x1 matches too (legacy shapes pad with leading 1s).
    layer.blobs[0].num = layer.blobs[0].channels = layer.blobs[0].height = 1
    layer.blobs[0].width = 1
    _write_model(tmp_path / "w4.caffemodel", [layer])
    load(proto, tmp_path / "w4.caffemodel", device="cpu")


IP_NET = """
name: "n"
layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "y"
  inner_product_param { num_output: 2 } }
"""


def test_double_data_wins_over_data_like_blob_from_proto(tmp_path: Path) -> None:
    from protocaffe.runtime.api import load

    proto = tmp_path / "net.prototxt"
    proto.write_text(IP_NET)
    layer = caffe_pb2.LayerParameter(name="fc", type="InnerProduct")
    w = layer.blobs.add()
    w.shape.dim.extend([2, 3])
    w.data.extend([9.0] * 6)  # ignored: Blob::FromProto reads double_data when present
    w.double_data.extend([1, 2, 3, 4, 5, 6])
    b = layer.blobs.add()
    b.num, b.channels, b.height, b.width = 1, 1, 1, 2  # legacy 1x1x1xN bias
    b.double_data.extend([0.5, -0.5])
    _write_model(tmp_path / "w.caffemodel", [layer])
    module = load(proto, tmp_path / "w.caffemodel", device="cpu")
    y = module(torch.tensor([[1.0, 1.0, 1.0]]))["y"].detach().numpy()
    np.testing.assert_allclose(y, [[6.5, 14.5]])


def test_legacy_ip_weight_1x1xNxK_and_v1_layers(tmp_path: Path) -> None:
    """A V1 `layers` caffemodel (blobs in V1LayerParameter field 6) with legacy 4-D shapes."""
    from protocaffe.runtime.api import load

    proto = tmp_path / "net.prototxt"
    proto.write_text(IP_NET)
    net = caffe_pb2.NetParameter(name="n")
    v1 = net.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    w = v1.blobs.add(num=1, channels=1, height=2, width=3)
    w.data.extend([1, 2, 3, 4, 5, 6])
    b = v1.blobs.add(num=1, channels=1, height=1, width=2)
    b.data.extend([0.5, -0.5])
    (tmp_path / "w.caffemodel").write_bytes(net.SerializeToString())
    module = load(proto, tmp_path / "w.caffemodel", device="cpu")
    y = module(torch.tensor([[1.0, 1.0, 1.0]]))["y"].detach().numpy()
    np.testing.assert_allclose(y, [[6.5, 14.5]])


# --- `protocaffe run` preprocessing: DataTransformer at TEST ----------------------------------


def test_transform_centre_crop_mean_image_then_scale():
    from protocaffe.runtime.preprocess import Preprocess

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (3, 7, 6)).astype(np.float32)
    mean = rng.uniform(0, 255, (3, 7, 6)).astype(np.float32)
    prep = Preprocess(mean_image=mean, crop_size=4, scale=0.5)
    got = prep.transform(img)
    # h_off = (7 - 4) / 2 = 1, w_off = (6 - 4) / 2 = 1; mean indexed at the uncropped pixel.
    want = (img[:, 1:5, 1:5] - mean[:, 1:5, 1:5]) * 0.5
    np.testing.assert_allclose(got, want)
    prep = Preprocess(mean=(1.0, 2.0, 3.0), crop_size=3)
    want = img[:, 2:5, 1:4] - np.float32([1, 2, 3]).reshape(3, 1, 1)
    np.testing.assert_allclose(prep.transform(img), want)


def test_binaryproto_mean_file(tmp_path: Path):
    from protocaffe.runtime.preprocess import load_mean_file

    mean = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "m.binaryproto").write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(tmp_path / "m.binaryproto"), mean[0])
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 2, 3, 4])
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "n.binaryproto").write_bytes(blob.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(tmp_path / "n.binaryproto"), mean[0])


CROP_NET = """
name: "n"
layer { name: "data" type: "Input" top: "data"
  transform_param { crop_size: 4 mean_file: "MEAN" scale: 2 }
  input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "y"
  convolution_param { num_output: 2 kernel_size: 1
    weight_filler { type: "constant" value: 1 } } }
"""


def test_run_uses_transform_mean_file_and_crop(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    from protocaffe.cli import main

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    mean = rng.uniform(0, 255, (3, 6, 8)).astype(np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=3, height=6, width=8)
    blob.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(blob.SerializeToString())
    proto = tmp_path / "net.prototxt"
    proto.write_text(CROP_NET.replace("MEAN", "mean.binaryproto"))
    argv = ["run", str(proto), "--input", str(tmp_path / "x.png"), "--device", "cpu"]
    argv += ["--save-blobs", "data", "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    saved = np.load(tmp_path / "out" / "x_blobs.npz")["data"]
    bgr = rgb[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)
    want = ((bgr - mean)[:, 1:5, 2:6] * 2)[None]  # h_off (6-4)/2 = 1, w_off (8-4)/2 = 2
    np.testing.assert_allclose(saved, want, rtol=1e-6)
    # --mean FILE overrides it the same way.
    proto.write_text(CROP_NET.replace('mean_file: "MEAN"', ""))
    (tmp_path / "out" / "x_blobs.npz").unlink()
    assert main([*argv, "--mean", str(tmp_path / "mean.binaryproto")]) == 0
    saved = np.load(tmp_path / "out" / "x_blobs.npz")["data"]
    np.testing.assert_allclose(saved, want, rtol=1e-6)
