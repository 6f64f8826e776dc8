"""Weights stored other ways: BlobProto raw_data (fp16 as OpenCV's shrinkCaffeModel and NVIDIA
Caffe write it, float, double), Caffe's HDF5 snapshots (.caffemodel.h5), `convert` writing
both, and blobs that cannot be read saying what they hold."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from _wire import len_field, varint, wire_key

import protocaffe
from protocaffe.cli import main
from protocaffe.diagnostics import CompileError
from protocaffe.runtime.caffemodel import read_index, save_caffemodel, save_hdf5

NET = """name: "tiny"
input: "data" input_shape { dim: 1 dim: 3 dim: 6 dim: 6 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 10 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "block/fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param { num_output: 4
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }
"""
FLOAT16, FLOAT, DOUBLE, INT = 2, 1, 0, 3


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return path


def blobs_of(module) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [
            module.blob_tensor(layer, s.name).detach().numpy().copy() for s in layer.blob_specs
        ]
        for layer in module._layer_attrs
    }


def raw_blob(values: np.ndarray, raw_type: int | None, dtype: str) -> bytes:
    """A BlobProto with shape and raw_data (NVIDIA Caffe's fields 10 and 12)."""
    dims = b"".join(varint(d) for d in values.shape)
    body = len_field(7, len_field(1, dims))
    if raw_type is not None:
        body += wire_key(10, 0) + varint(raw_type)
    return body + len_field(12, values.astype(dtype).tobytes())


def weights_file(path: Path, layers: dict[str, list[bytes]]) -> Path:
    net = len_field(1, b"tiny")
    for name, blobs in layers.items():
        net += len_field(
            100, len_field(1, name.encode()) + b"".join(len_field(7, b) for b in blobs)
        )
    path.write_bytes(net)
    return path


@pytest.mark.parametrize(("raw_type", "dtype"), [(FLOAT16, "<f2"), (FLOAT, "<f4"), (DOUBLE, "<f8")])
def test_raw_data_blobs_load(net: Path, tmp_path: Path, raw_type: int, dtype: str) -> None:
    ref = blobs_of(protocaffe.load(net, device="cpu", seed=1))
    path = weights_file(
        tmp_path / "raw.caffemodel",
        {name: [raw_blob(a, raw_type, dtype) for a in arrays] for name, arrays in ref.items()},
    )
    loaded = blobs_of(protocaffe.load(net, path, device="cpu"))
    for name, arrays in ref.items():
        for got, want in zip(loaded[name], arrays, strict=True):
            np.testing.assert_array_equal(got, want.astype(dtype).astype(np.float32))


def test_fp16_caffemodel_written_by_convert_is_half_the_size_and_read_by_opencv(
    net: Path, tmp_path: Path
) -> None:
    full, half = tmp_path / "full.caffemodel", tmp_path / "half.caffemodel"
    module = protocaffe.load(net, device="cpu", seed=2)
    save_caffemodel(module, full)
    assert main(["convert", str(net), "-w", str(full), "-o", str(half), "--fp16"]) == 0
    record = next(r for r in read_index(half).layers if r.name == "conv")
    assert record.blobs[0].describe() == "raw_data of 540 bytes, fp16, shape 10x3x3x3"
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    ours = protocaffe.load(net, half, device="cpu")({"data": torch.from_numpy(x)})["fc"]
    expected = blobs_of(module)
    got = blobs_of(protocaffe.load(net, half, device="cpu"))
    np.testing.assert_array_equal(got["conv"][0], expected["conv"][0].astype("<f2").astype("<f4"))
    cv2 = pytest.importorskip("cv2")
    cvnet = cv2.dnn.readNetFromCaffe(str(net), str(half))
    cvnet.setInput(x, "data")
    np.testing.assert_allclose(
        ours.detach().numpy(), cvnet.forward("block/fc"), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (
            raw_blob(np.zeros((10, 3, 3, 3)), INT, "<i2"),
            "(raw_data of 540 bytes, int, shape 10x3x3x3): raw_data_type int is not a "
            "floating-point type",
        ),
        (
            raw_blob(np.zeros((10, 3, 3, 3)), None, "<f2"),
            "(raw_data of 540 bytes, no raw_data_type, shape 10x3x3x3): raw_data needs a "
            "raw_data_type",
        ),
        (
            raw_blob(np.zeros((10, 3, 3, 3)), FLOAT, "<f4").replace(
                len_field(12, np.zeros(270, "<f4").tobytes()),
                len_field(12, np.zeros(271, "<f2").tobytes()),
            ),
            "(raw_data of 542 bytes, float, shape 10x3x3x3): 542 bytes is not a whole number "
            "of float values",
        ),
        (
            raw_blob(np.zeros((10, 3, 3, 3)), FLOAT16, "<f2").replace(  # 2 bytes short
                len_field(12, np.zeros(270, "<f2").tobytes()),
                len_field(12, np.zeros(269, "<f2").tobytes()),
            ),
            "holds 269 values (raw_data of 538 bytes, fp16, shape 10x3x3x3) for shape 10x3x3x3",
        ),
    ],
)
def test_unreadable_blobs_say_what_they_hold(
    net: Path, tmp_path: Path, blob: bytes, message: str
) -> None:
    bias = raw_blob(np.zeros(10), FLOAT, "<f4")
    path = weights_file(tmp_path / "bad.caffemodel", {"conv": [blob, bias]})
    with pytest.raises(CompileError) as info:
        protocaffe.load(net, path, device="cpu", allow_missing=True)
    assert any(message in d.message for d in info.value.diagnostics), info.value.diagnostics


# --- HDF5 snapshots ----------------------------------------------------------------------


def test_hdf5_snapshot_in_caffes_layout_loads(net: Path, tmp_path: Path) -> None:
    """A file laid out as Caffe's Net::ToHDF5 writes it, built with h5py directly; the
    layer name with '/' nests groups, and a compressed dataset is read through h5py."""
    h5py = pytest.importorskip("h5py")
    ref = blobs_of(protocaffe.load(net, device="cpu", seed=3))
    path = tmp_path / "snap.caffemodel.h5"
    with h5py.File(path, "w") as h5:
        data = h5.create_group("data")
        data.create_group("data")  # the input layer: no blobs
        for name, arrays in ref.items():
            group = data.create_group(name)
            for j, a in enumerate(arrays):
                group.create_dataset(str(j), data=a, compression="gzip" if j else None)
    loaded = blobs_of(protocaffe.load(net, path, device="cpu"))
    for name, arrays in ref.items():
        for got, want in zip(loaded[name], arrays, strict=True):
            np.testing.assert_array_equal(got, want)


def test_convert_writes_hdf5_that_loads_back(net: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    weights = tmp_path / "w.caffemodel"
    module = protocaffe.load(net, device="cpu", seed=4)
    save_caffemodel(module, weights)
    out = tmp_path / "w.caffemodel.h5"
    assert main(["convert", str(net), "-w", str(weights), "-o", str(out)]) == 0
    with h5py.File(out) as h5:
        assert list(h5["data"]["conv"]) == ["0", "1"]
        assert h5["data/block/fc/0"].shape == (4, 160)
    back = blobs_of(protocaffe.load(net, out, device="cpu"))
    for name, arrays in blobs_of(module).items():
        for got, want in zip(back[name], arrays, strict=True):
            np.testing.assert_array_equal(got, want)
    again = tmp_path / "again.caffemodel.h5"
    save_hdf5(module, again)
    assert read_index(again).layers[0].blobs[0].storage == "HDF5 dataset"


def test_hdf5_errors(net: Path, tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("weights", data=np.zeros(3))
    with pytest.raises(CompileError, match="without Caffe's 'data' group"):
        read_index(path)
    with h5py.File(path, "w") as h5:
        h5.create_group("data/conv").create_dataset("0", data=np.zeros(3, np.int32))
    with pytest.raises(CompileError, match="holds int32 values, shape 3"):
        read_index(path)
    assert main(["convert", str(net), "-o", str(tmp_path / "x.pt"), "--fp16"]) == 2


def test_float_data_is_still_read_first_when_no_raw_data(tmp_path: Path) -> None:
    values = struct.pack("<3f", 1, 2, 3)
    blob = len_field(7, len_field(1, varint(3))) + len_field(5, values)
    record = read_index(weights_file(tmp_path / "f.caffemodel", {"x": [blob]})).layers[0]
    assert record.blobs[0].describe() == "3 float values, shape 3"
