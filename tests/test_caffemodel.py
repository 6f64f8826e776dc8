"""Binary .caffemodel reading and writing (caffe.NetParameter on the wire)."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from protocaffe.diagnostics import CompileError
from protocaffe.lower.builder import lower_graph
from protocaffe.proto import caffe_pb2
from protocaffe.runtime.caffemodel import (
    assign_blobs,
    load_caffemodel,
    read_index,
    save_caffemodel,
)
from protocaffe.testing import compile_snippet

NET = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "uniform" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""
SHAPES = {"data": (1, 2, 5, 5)}


def graph():
    return compile_snippet(NET, SHAPES)


def module(seed):
    return lower_graph(graph(), seed=seed)


def caffe_written(g, arrays) -> bytes:
    """What Caffe's Net::ToProto + SerializeToString produce for net `g` and blobs `arrays`."""
    net = caffe_pb2.NetParameter(name=g.net.name)
    for layer in g.layers:
        lp = net.layer.add()
        lp.CopyFrom(layer.proto)
        if not lp.HasField("phase"):
            lp.phase = g.phase
        for a in arrays.get(layer.name, []):
            blob = lp.blobs.add()
            blob.shape.dim.extend(a.shape)
            blob.data.extend(a.ravel().tolist())
    return net.SerializeToString()


def test_round_trip_is_byte_identical(tmp_path):
    a, b = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"
    save_caffemodel(module(seed=1), a)
    m = module(seed=2)
    report = load_caffemodel(m, a)
    assert report.loaded == ["conv1", "ip"] and not report.missing and not report.unused
    save_caffemodel(m, b)
    assert a.read_bytes() == b.read_bytes()
    torch.testing.assert_close(m.ip.weight, module(seed=1).ip.weight, rtol=0, atol=0)


def test_writer_matches_protobuf_serialization_of_caffe_layout(tmp_path):
    g = graph()
    rng = np.random.default_rng(0)
    arrays = {
        "conv1": [rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)],
        "ip": [rng.standard_normal((3, 36)), rng.standard_normal(3)],
    }
    arrays = {k: [a.astype(np.float32) for a in v] for k, v in arrays.items()}
    original = caffe_written(g, arrays)
    src = tmp_path / "caffe.caffemodel"
    src.write_bytes(original)
    m = lower_graph(g, seed=5)
    load_caffemodel(m, src)
    np.testing.assert_array_equal(m.conv1.weight.detach().numpy(), arrays["conv1"][0])
    np.testing.assert_array_equal(m.ip.bias.detach().numpy(), arrays["ip"][1])
    out = tmp_path / "out.caffemodel"
    save_caffemodel(m, out)
    assert out.read_bytes() == original
    # the graph + arrays form writes the same file
    save_caffemodel(g, tmp_path / "g.caffemodel", blobs=arrays)
    assert (tmp_path / "g.caffemodel").read_bytes() == original


def test_index_reads_names_types_shapes_without_data(tmp_path):
    path = tmp_path / "a.caffemodel"
    save_caffemodel(module(seed=0), path)
    index = read_index(path)
    assert [(r.name, r.type, len(r.blobs)) for r in index.layers] == [
        ("data", "Input", 0),
        ("conv1", "Convolution", 2),
        ("relu1", "ReLU", 0),
        ("ip", "InnerProduct", 2),
    ]
    assert index.layers[1].blobs[0].shape == (4, 2, 3, 3)
    assert index.layers[3].blobs[0].size == 3 * 36


def v1_file(path, weight_dims, blobs_as_double=False):
    """A V1 (`layers`) net whose InnerProduct blobs use the legacy num/channels/height/width."""
    net = caffe_pb2.NetParameter(name="legacy")
    layer = net.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    w = np.arange(np.prod(weight_dims), dtype=np.float32) / 10
    for dims, values in ((weight_dims, w), ((1, 1, 1, 3), np.array([1, 2, 3], np.float32))):
        blob = layer.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
        (blob.double_data if blobs_as_double else blob.data).extend(values.tolist())
    path.write_bytes(net.SerializeToString())
    return w


IP = """layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 3 } }"""


@pytest.mark.parametrize("double", [False, True])
def test_v1_legacy_shapes_and_double_data(tmp_path, double):
    path = tmp_path / "v1.caffemodel"
    w = v1_file(path, (1, 1, 3, 5), blobs_as_double=double)
    assert read_index(path).legacy_layers
    m = lower_graph(compile_snippet(IP, {"x": (2, 5)}))
    load_caffemodel(m, path)
    np.testing.assert_array_equal(m.ip.weight.detach().numpy(), w.reshape(3, 5))
    np.testing.assert_array_equal(m.ip.bias.detach().numpy(), [1, 2, 3])


def test_legacy_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    path = tmp_path / "v1.caffemodel"
    v1_file(path, (1, 1, 5, 3))
    m = lower_graph(compile_snippet(IP, {"x": (2, 5)}))
    before = m.ip.weight.detach().clone()
    with pytest.raises(CompileError) as err:
        load_caffemodel(m, path)
    (d,) = err.value.diagnostics
    assert "cannot copy param 0 (weight) weights from layer 'ip'; shape mismatch" in d.message
    assert "Source param shape is 1x1x5x3; target param shape is 3x5" in d.message
    assert d.span is not None and d.span.path == "<snippet>"
    assert torch.equal(m.ip.weight, before)  # nothing copied on error


def test_shape_mismatch_v2(tmp_path):
    path = tmp_path / "a.caffemodel"
    save_caffemodel(module(seed=0), path)
    other = NET.replace("num_output: 4", "num_output: 8")
    m = lower_graph(compile_snippet(other, SHAPES))
    with pytest.raises(CompileError) as err:
        load_caffemodel(m, path)
    text = str(err.value)
    assert "Source param shape is 4x2x3x3; target param shape is 8x2x3x3" in text
    assert "Source param shape is 3x36; target param shape is 3x72" in text


def test_missing_and_unused_layers(tmp_path):
    path = tmp_path / "a.caffemodel"
    save_caffemodel(module(seed=0), path)
    renamed = NET.replace('name: "ip"', 'name: "fc"')
    m = lower_graph(compile_snippet(renamed, SHAPES), seed=3)
    with pytest.raises(CompileError) as err:
        load_caffemodel(m, path)
    messages = [d.message for d in err.value.diagnostics]
    assert any("InnerProduct 'fc' has no weights in" in msg and "3x36" in msg for msg in messages)
    unused = [d for d in err.value.diagnostics if "not in this net" in d.message]
    assert len(unused) == 1 and unused[0].severity == "warning"  # Caffe ignores them too
    assert (
        "weights for 1 layer(s) not in this net, ignored as Caffe does: 'ip'" in unused[0].message
    )
    fc_before = m.fc.weight.detach().clone()
    report = load_caffemodel(m, path, allow_missing=True)
    assert report.missing == ["fc"] and report.unused == ["ip"] and report.loaded == ["conv1"]
    assert {d.severity for d in report.diagnostics} == {"warning"}
    assert torch.equal(m.fc.weight, fc_before)
    torch.testing.assert_close(m.conv1.weight, module(seed=0).conv1.weight, rtol=0, atol=0)


def test_blob_count_mismatch(tmp_path):
    path = tmp_path / "a.caffemodel"
    save_caffemodel(module(seed=0), path)
    m = lower_graph(
        compile_snippet(NET.replace("num_output: 3", "num_output: 3 bias_term: false"), SHAPES)
    )
    with pytest.raises(CompileError, match="incompatible number of blobs for layer 'ip'"):
        load_caffemodel(m, path)


DUPLICATES = """
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y1"
  inner_product_param { num_output: 3 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y2"
  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 7 } } }
"""


def ip_file(path, *weights):
    """A .caffemodel with one InnerProduct layer named 'ip' per weight matrix (3x5, bias 0)."""
    net = caffe_pb2.NetParameter(name="dup")
    for w in weights:
        layer = net.layer.add(name="ip", type="InnerProduct")
        for a in (w, np.zeros(3, np.float32)):
            blob = layer.blobs.add()
            blob.shape.dim.extend(a.shape)
            blob.data.extend(a.ravel().tolist())
    path.write_bytes(net.SerializeToString())


def test_duplicate_net_layer_names_first_one_gets_the_weights(tmp_path):
    # Caffe's CopyTrainedLayersFrom searches layer_names_ from the front: only the first net
    # layer named 'ip' receives the weights; the second keeps its filler values, silently.
    path = tmp_path / "a.caffemodel"
    w = np.arange(15, dtype=np.float32).reshape(3, 5)
    ip_file(path, w)
    g = compile_snippet(DUPLICATES, {"x": (2, 5)})
    m = lower_graph(g, init=False)  # as protocaffe.load does before loading weights
    report = load_caffemodel(m, path)
    assert report.loaded == ["ip"] and not report.missing and not report.unused
    first, second = (m.blob_tensor(layer, "weight") for layer in g.layers if layer.name == "ip")
    np.testing.assert_array_equal(first.detach().numpy(), w)
    assert torch.all(second == 7)
    (warning,) = report.diagnostics
    assert warning.severity == "warning" and warning.span.line == 4
    assert "'ip' keeps its filler values" in warning.message and "(line 2)" in warning.message


def test_duplicate_file_layer_names_last_one_wins(tmp_path):
    # Each file layer is copied into the same net layer, so the last one's values remain.
    path = tmp_path / "a.caffemodel"
    w1, w2 = np.ones((3, 5), np.float32), np.full((3, 5), 2, np.float32)
    ip_file(path, w1, w2)
    m = lower_graph(compile_snippet(IP, {"x": (2, 5)}))
    report = load_caffemodel(m, path)
    np.testing.assert_array_equal(m.ip.weight.detach().numpy(), w2)
    assert [
        "has 2 layers named 'ip'; the last one's weights are used" in d.message
        for d in report.diagnostics
    ] == [True]


def test_duplicate_name_first_layer_without_blobs_is_an_error(tmp_path):
    # Caffe would copy the weights into the ReLU and stop: incompatible number of blobs.
    path = tmp_path / "a.caffemodel"
    ip_file(path, np.ones((3, 5), np.float32))
    text = 'layer { name: "ip" type: "ReLU" bottom: "x" top: "r" }\n' + IP
    m = lower_graph(compile_snippet(text, {"x": (2, 5)}))
    with pytest.raises(CompileError) as err:
        load_caffemodel(m, path)
    (d,) = err.value.diagnostics
    assert "incompatible number of blobs for layer 'ip'" in d.message and d.span.line == 1
    assert "first net layer with the name" in d.hint


def test_unpacked_float_data(tmp_path):
    # Old writers emitted `data` unpacked (one tag per float); the reader accepts both.
    def key(field, wire):
        return bytes([field << 3 | wire])

    dims = b"".join(bytes([d]) for d in (3,))
    shape = key(1, 2) + bytes([len(dims)]) + dims
    blob = b"".join(key(5, 5) + struct.pack("<f", v) for v in (1.5, -2.0, 3.25))
    blob += key(7, 2) + bytes([len(shape)]) + shape
    bias = b"".join(key(5, 5) + struct.pack("<f", v) for v in (0.0, 0.0, 0.0))
    bias += key(7, 2) + bytes([len(shape)]) + shape
    w = np.ones((3, 1), np.float32)
    wb = key(5, 2) + bytes([12]) + w.tobytes()
    wshape = key(1, 2) + bytes([2, 3, 1])
    wb += key(7, 2) + bytes([len(wshape)]) + wshape
    layer = key(1, 2) + bytes([2]) + b"ip"
    layer += key(7, 2) + bytes([len(wb)]) + wb + key(7, 2) + bytes([len(bias)]) + bias
    data = b"\xa2\x06" + bytes([len(layer)]) + layer
    path = tmp_path / "unpacked.caffemodel"
    path.write_bytes(data)
    m = lower_graph(compile_snippet(IP, {"x": (2, 1)}))
    load_caffemodel(m, path)
    np.testing.assert_array_equal(m.ip.bias.detach().numpy(), [0, 0, 0])
    # and the same numbers written packed by protobuf parse identically
    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    assert list(net.layer[0].blobs[1].data) == [0, 0, 0]
    blob_index = read_index(path).layers[0].blobs
    assert blob_index[1].size == 3 and len(blob_index[1].segments) == 3


@pytest.mark.parametrize(
    "content", [b"", b"name: 'not binary'\nlayer {\n", b"\x0a\xff\xff\xff\xff\x0f"]
)
def test_not_a_caffemodel(tmp_path, content):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CompileError):
        load_caffemodel(module(seed=0), path)


def test_missing_file(tmp_path):
    with pytest.raises(CompileError, match="cannot read weights file"):
        read_index(tmp_path / "nope.caffemodel")


def test_load_into_other_dtypes(tmp_path):
    path = tmp_path / "a.caffemodel"
    ref = module(seed=1)
    save_caffemodel(ref, path)
    for dtype in (torch.float64, torch.float16):
        m = lower_graph(graph(), dtype=dtype, init=False)
        load_caffemodel(m, path)
        torch.testing.assert_close(m.conv1.weight, ref.conv1.weight.to(dtype))


def test_assign_blobs_checks_shapes():
    m = module(seed=0)
    with pytest.raises(CompileError) as err:
        assign_blobs(m, {"ip": [np.zeros((3, 35)), np.zeros(3)], "fc9": []})
    text = str(err.value)
    assert "Source shape is 3x35; target shape is 3x36" in text
    assert "no layer named 'fc9'" in text


@pytest.mark.slow
def test_large_file_peak_memory(tmp_path):
    """Loading a ~512 MB caffemodel costs about the parameters themselves, not twice that."""
    path = tmp_path / "big.caffemodel"
    net = "".join(
        f'layer {{ name: "{n}" type: "InnerProduct" bottom: "{b}" top: "{n}" '
        f"inner_product_param {{ num_output: {k} bias_term: false }} }}\n"
        for n, b, k in (("a", "x", 8192), ("b", "a", 4096), ("c", "b", 8192), ("d", "c", 4096))
    )
    prelude = textwrap.dedent(
        f"""
        import resource, sys, time, torch
        from protocaffe.testing import compile_snippet
        from protocaffe.lower.builder import lower_graph
        from protocaffe.runtime.caffemodel import load_caffemodel, save_caffemodel
        g = compile_snippet({net!r}, {{"x": (1, 4096)}})
        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        """
    )
    write = prelude + f"save_caffemodel(lower_graph(g, init=False), {str(path)!r})\n"
    subprocess.run([sys.executable, "-c", write], check=True)
    size_mib = path.stat().st_size / 2**20
    assert size_mib > 500
    read = prelude + textwrap.dedent(
        f"""
        m = lower_graph(g, init=False)
        base = rss()
        t = time.perf_counter()
        load_caffemodel(m, {str(path)!r})
        print(base, rss(), time.perf_counter() - t)
        """
    )
    out = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, check=True)
    base, peak, seconds = map(float, out.stdout.split())
    print(f"file {size_mib:.0f} MiB: RSS {base:.0f} -> {peak:.0f} MiB in {seconds:.2f} s")
    assert peak - base < size_mib * 1.15


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4, "an HDF5 file that cannot be opened"),
        (b'name: "net"\nlayer { name: "a" type: "ReLU" }\n', "text prototxt"),
    ],
)
def test_unreadable_weights_say_what_they_are(tmp_path, content, hint):
    path = tmp_path / "w.caffemodel"
    path.write_bytes(content)
    with pytest.raises(CompileError) as err:
        read_index(path)
    assert hint in str(err.value)
