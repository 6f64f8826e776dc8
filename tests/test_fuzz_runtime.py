"""Fuzzing the runtime: absurd but well-formed shapes through load/forward/convert, and random,
truncated and corrupted weights files (.caffemodel, .safetensors, .pt) through the loaders.

See tests/_fuzz.py for how a case is judged and how many run (PROTOCAFFE_FUZZ=slow: more).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from _fuzz import STATS, api, cli, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

import protocaffe
from protocaffe.diagnostics import CompileError

# Sizes a hostile or mistaken file might hold: zero, signed/unsigned limits, huge.
ABSURD = [0, -1, 2**31 - 1, 2**31, 2**32, 10**8, 2**63 - 1]
# Every net is sensible but for at most two fields, so that most cases get past the parser.
SENSIBLE = [(1, 2), (1, 3), (4, 8, 13), (4, 8, 13)]  # input dims
SENSIBLE += [(2, 4), (1, 2, 3), (0, 1), (1, 2), (1, 2), (1,)]  # conv: n, k, pad, stride, dil, group
SENSIBLE += [(1, 2, 3), (1, 2), (0, 1), (3, 10)]  # pool kernel, stride, pad; fc outputs


def _net(values: list[int]) -> str:
    dims, (n, k, p, s, d, g), pool, fc = values[:4], values[4:10], values[10:13], values[13]
    shape = " ".join(f"dim: {v}" for v in dims)
    return f"""name: "fuzz"
input: "data" input_shape {{ {shape} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: {n} kernel_size: {k} pad: {p} stride: {s} dilation: {d}
    group: {g} weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "norm" type: "LRN" bottom: "conv" top: "norm" lrn_param {{ local_size: 3 }} }}
layer {{ name: "pool" type: "Pooling" bottom: "norm" top: "pool"
  pooling_param {{ pool: MAX kernel_size: {pool[0]} stride: {pool[1]} pad: {pool[2]} }} }}
layer {{ name: "up" type: "Deconvolution" bottom: "pool" top: "up"
  convolution_param {{ num_output: 2 kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "up" top: "fc"
  inner_product_param {{ num_output: {fc} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "fc" top: "prob" }}
"""


@st.composite
def nets(draw: st.DrawFn) -> str:
    values = [draw(st.sampled_from(choices)) for choices in SENSIBLE]
    for _ in range(draw(st.integers(0, 2))):
        values[draw(st.integers(0, len(values) - 1))] = draw(st.sampled_from(ABSURD))
    return _net(values)


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as path:
        yield Path(path)


@fuzz_settings(60)
@given(text=nets(), dtype=st.sampled_from(["float32", "bfloat16"]), grow=st.integers(0, 3))
def test_absurd_shapes_load_run_or_refuse(workdir, text, dtype, grow):
    path = workdir / "net.prototxt"
    path.write_text(text)
    module = api(lambda: protocaffe.load(path, device="cpu", dtype=dtype, seed=0), "shapes")
    if isinstance(module, CompileError):
        return
    shape = tuple(d + grow for d in module.input_shapes[0])  # another size: re-planned
    with torch.no_grad():
        api(lambda: module(torch.rand(module.input_shapes[0])), "shapes")
        api(lambda: module(torch.rand(shape)) if sum(shape) < 10**4 else None, "shapes")


@fuzz_settings(25)
@given(text=nets(), command=st.sampled_from(["bench", "convert", "compile"]))
def test_absurd_shapes_through_the_cli(workdir, text, command):
    path = workdir / "cli.prototxt"
    path.write_text(text)
    argv = {
        "bench": ["bench", str(path), "--device", "cpu", "--iterations", "1", "--warmup", "0"],
        "convert": ["convert", str(path), "-o", str(workdir / "x.safetensors")],
        "compile": ["compile", str(path), "--json"],
    }[command]
    cli(argv, "shapes-cli")


TINY = """name: "tiny"
input: "data" input_shape { dim: 1 dim: 2 dim: 5 dim: 5 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
"""


@pytest.fixture(scope="module")
def weights(workdir):
    """The tiny net and its weights in every format protocaffe reads."""
    net = workdir / "tiny.prototxt"
    net.write_text(TINY)
    files = {}
    for suffix in (".caffemodel", ".safetensors", ".pt"):
        out = workdir / f"tiny{suffix}"
        assert cli(["convert", str(net), "-o", str(out)], "setup").code == 0
        files[suffix] = out.read_bytes()
    return net, files


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]], cut: int | None) -> bytes:
    out = bytearray(data)
    for where, drop, insert in edits:
        at = where % (len(out) + 1)
        out[at : at + drop] = insert
    return bytes(out[: cut % (len(out) + 1)] if cut is not None else out)


edits = st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 8), st.binary(max_size=12)), max_size=4
)


@fuzz_settings(120)
@given(
    suffix=st.sampled_from([".caffemodel", ".safetensors", ".pt"]),
    edits=edits,
    cut=st.none() | st.integers(0, 10**6),
    allow_missing=st.booleans(),
)
def test_corrupted_weights_load_or_fail_located(
    weights, workdir, suffix, edits, cut, allow_missing
):
    net, files = weights
    path = workdir / f"bad{suffix}"
    path.write_bytes(_mutate(files[suffix], edits, cut))
    api(
        lambda: protocaffe.load(net, path, device="cpu", allow_missing=allow_missing, seed=0),
        "weights",
    )


@fuzz_settings(60)
@given(data=st.binary(max_size=300) | st.binary(min_size=1, max_size=40).map(lambda b: b * 50))
def test_random_bytes_as_weights(weights, workdir, data):
    net, _ = weights
    path = workdir / "random.caffemodel"
    path.write_bytes(data)
    api(lambda: protocaffe.load(net, path, device="cpu"), "weights")


@fuzz_settings(20)
@given(cut=st.integers(0, 10**6), suffix=st.sampled_from([".caffemodel", ".safetensors"]))
def test_truncated_weights_through_convert(weights, workdir, cut, suffix):
    net, files = weights
    path = workdir / f"cut{suffix}"
    path.write_bytes(_mutate(files[suffix], [], cut))
    cli(["convert", str(net), "-w", str(path), "-o", str(workdir / "o.pt")], "weights-cli")


def test_runtime_fuzz_counted(capsys):
    with capsys.disabled():
        print(f"\n{STATS.summary()}")
    assert STATS.cases > 0 and STATS.internal_errors == 0, STATS.failures
