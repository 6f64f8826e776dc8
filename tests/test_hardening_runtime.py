"""Runtime hardening: memory guards, reduced precision on CPU, input-shape errors from the API,
the bounded variant cache, state_dict round trips, bombs, and the CLI frictions of issue 11."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import protocaffe
from protocaffe.cli import main
from protocaffe.runtime import guards

LRN_NET = """name: "lrn"
input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
"""
PROB = 'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'


def write(tmp_path: Path, text: str, name: str = "net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def absurd(kind: str) -> str:
    """The issue's nets: well-formed, but no machine can run them."""
    head = 'name: "absurd"\ninput: "data"\n'
    if kind == "num_output":
        return (
            head + "input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }\n"
            'layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"\n'
            "  inner_product_param { num_output: 100000000 } }\n"
        )
    if kind == "pad":
        return (
            head + "input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }\n"
            'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
            "  convolution_param { num_output: 8 kernel_size: 3 pad: 100000000 } }\n"
        )
    dims = {"batch": (100000000, 3, 224, 224), "overflow": (1, 10**8, 10**8, 10**8)}[kind]
    shape = " ".join(f"dim: {d}" for d in dims)
    return (
        head
        + f"input_shape {{ {shape} }}\n"
        + ('layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }\n')
    )


# --- resource guards -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["num_output", "pad", "batch", "overflow"])
@pytest.mark.parametrize("command", ["bench", "convert", "run", "load"])
def test_absurd_plans_are_refused_before_allocating(tmp_path, capsys, kind, command):
    net = write(tmp_path, absurd(kind))
    if command == "load":
        with pytest.raises(guards.ResourceError) as err:
            protocaffe.load(net, device="cpu")
        text = str(err.value)
    else:
        argv = {
            "bench": ["bench", str(net), "--device", "cpu"],
            "convert": ["convert", str(net), "-o", str(tmp_path / "x.pt")],
            "run": ["run", str(net), "--input", str(tmp_path), "--device", "cpu"],
        }[command]
        np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
        assert main(argv) == 1
        text = capsys.readouterr().err
        assert "Traceback" not in text and "internal error" not in text
    assert "this net needs" in text and ("available" in text or "address" in text)
    assert "net.prototxt:" in text  # located at the layer that needs most


def test_refusal_names_the_numbers_and_the_override(tmp_path, monkeypatch):
    net = write(tmp_path, LRN_NET)
    monkeypatch.setattr(guards, "_host_available", lambda: 1000)  # a 1000-byte machine
    with pytest.raises(guards.ResourceError) as err:
        protocaffe.load(net, device="cpu")
    message = err.value.diagnostics[0]
    plan = guards.plan_of(protocaffe.compile(net), "float32")
    assert guards.nbytes(plan.total) in message.message and "1000 B available" in message.message
    assert "--force" in message.hint and "allow_oversize=True" in message.hint
    module = protocaffe.load(net, device="cpu", allow_oversize=True, seed=0)
    assert module(torch.randn(1, 3, 12, 12))["fc"].shape == (1, 5)


def test_plan_counts_parameters_and_activations_at_the_dtype(tmp_path):
    graph = protocaffe.compile(write(tmp_path, LRN_NET))
    # conv1 4x3x3x3 + 4, fc 5x400 + 5; blobs data 432, conv1 400, norm1 400, fc 5 values
    params, acts = 4 * 27 + 4 + 5 * 400 + 5, 432 + 400 + 400 + 5
    assert guards.plan_of(graph, "float32").total == 4 * (params + acts)
    assert guards.plan_of(graph, "bfloat16").total == 2 * (params + acts)


def test_a_call_whose_activations_do_not_fit_is_refused(tmp_path, monkeypatch):
    text = LRN_NET.split('layer { name: "fc"')[0]  # fully convolutional
    module = protocaffe.load(write(tmp_path, text), device="cpu", seed=0)
    monkeypatch.setattr(guards, "_host_available", lambda: 10**6)
    with pytest.raises(guards.ResourceError, match="activations"):
        module(torch.zeros(1, 3, 300, 300))


def test_compile_warns_when_the_plan_exceeds_this_machine(tmp_path, capsys):
    assert main(["compile", str(write(tmp_path, absurd("num_output")))]) == 0
    err = capsys.readouterr().err
    assert "warning: this net needs" in err and "this machine has" in err


# --- reduced precision on CPU, input casting --------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_lrn_runs_in_reduced_precision_on_cpu(tmp_path, dtype):
    net = write(tmp_path, LRN_NET)
    ref = protocaffe.load(net, device="cpu", seed=1)
    low = protocaffe.load(net, device="cpu", seed=1, dtype=dtype)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        want = ref(x)["fc"]
        got = low(x)["fc"]  # a float32 tensor into a reduced-precision module: cast
    assert got.dtype == getattr(torch, dtype)
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cli_reduced_precision_with_lrn(tmp_path, capsys, dtype):
    net = write(tmp_path, LRN_NET)
    assert main(["bench", str(net), "--device", "cpu", "--dtype", dtype, "--iterations", "1"]) == 0
    np.save(tmp_path / "x.npy", np.ones((1, 3, 12, 12), np.float32))
    argv = ["run", str(net), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o")]
    assert main([*argv, "--device", "cpu", "--dtype", dtype]) == 0
    assert "top-5" in capsys.readouterr().out


# --- input shapes the net cannot take ---------------------------------------------------------


def test_new_size_an_inner_product_cannot_take_raises_ours(tmp_path):
    module = protocaffe.load(write(tmp_path, LRN_NET), device="cpu", seed=0)
    with pytest.raises(protocaffe.InputShapeError) as err:
        module(torch.zeros(1, 3, 14, 14))
    assert isinstance(err.value, ValueError) and isinstance(err.value, protocaffe.CompileError)
    text = str(err.value)
    assert "InnerProduct 'fc'" in text and "5x576" in text and "5x400" in text
    assert "net.prototxt:7:" in text and "^" in text  # rendered, located
    assert "mat1" not in text


def test_size_too_small_for_the_net_raises_ours(tmp_path):
    text = LRN_NET.split('layer { name: "fc"')[0]
    module = protocaffe.load(write(tmp_path, text), device="cpu", seed=0)
    with pytest.raises(protocaffe.InputShapeError, match="does not take input data 1x3x2x2"):
        module(torch.zeros(1, 3, 2, 2))


def test_variant_cache_is_a_bounded_lru(tmp_path):
    text = LRN_NET.split('layer { name: "fc"')[0]
    module = protocaffe.load(write(tmp_path, text), device="cpu", seed=0, max_variants=2)
    for size in (13, 14, 15, 13, 16):
        module(torch.zeros(1, 3, size, size))
    kept = [key[0][2] for key in module._variants]
    assert kept == [13, 16]  # 13 was used again after 14 and 15, so 14 and 15 went first
    module.max_variants = 0
    module(torch.zeros(1, 3, 17, 17))
    assert not module._variants


# --- weights files ----------------------------------------------------------------------------


@pytest.mark.parametrize("middle", ["g.safetensors", "g.pt"])
def test_convert_back_to_caffemodel_is_byte_identical(tmp_path, capsys, middle):
    net = str(write(tmp_path, LRN_NET))
    first, back = str(tmp_path / "a.caffemodel"), str(tmp_path / "b.caffemodel")
    assert main(["convert", net, "-o", first, "--seed", "3"]) == 0
    assert main(["convert", net, "-w", first, "-o", str(tmp_path / middle)]) == 0
    assert main(["convert", net, "-w", str(tmp_path / middle), "-o", back]) == 0
    assert Path(first).read_bytes() == Path(back).read_bytes()
    err = capsys.readouterr().err
    assert "UserWarning" not in err and err.count("no --weights") == 1


def test_convert_without_weights_warns_and_is_reproducible(tmp_path, capsys):
    net = str(write(tmp_path, LRN_NET))
    for name in ("a.caffemodel", "b.caffemodel"):
        assert main(["convert", net, "-o", str(tmp_path / name)]) == 0
    assert (tmp_path / "a.caffemodel").read_bytes() == (tmp_path / "b.caffemodel").read_bytes()
    assert "warning: no --weights: writing Caffe fillers (seed 0)" in capsys.readouterr().err


def test_state_file_mismatches_are_located_errors(tmp_path, capsys):
    net = str(write(tmp_path, LRN_NET))
    other = write(tmp_path, LRN_NET.replace("num_output: 5", "num_output: 6"), "other.prototxt")
    assert main(["convert", str(other), "-o", str(tmp_path / "o.safetensors")]) == 0
    out = str(tmp_path / "x.pt")
    assert main(["convert", net, "-w", str(tmp_path / "o.safetensors"), "-o", out]) == 1
    err = capsys.readouterr().err
    assert "cannot copy 'fc.weight'" in err and "6x400" in err and "net.prototxt:7:" in err


def test_pickles_with_code_are_not_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').close()",))

    torch.save({"conv1.weight": Evil()}, tmp_path / "evil.pt")
    net = str(write(tmp_path, LRN_NET))
    assert main(["convert", net, "-w", str(tmp_path / "evil.pt"), "-o", "x.pt"]) == 1
    assert "not a readable torch state_dict" in capsys.readouterr().err
    assert not Path("pwned").exists()


@pytest.mark.slow
def test_caffemodel_over_2_gib_streams_with_memory_near_the_parameters(tmp_path):
    # 2.2 GiB of InnerProduct weights, beyond protobuf's 2 GiB message limit. A subprocess so
    # that its peak RSS measures only this.
    net = write(
        tmp_path,
        'name: "big"\ninput: "data" input_shape { dim: 1 dim: 1000 }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        "  inner_product_param { num_output: 590000 bias_term: false } }\n",
    )
    script = textwrap.dedent(
        f"""
        import resource, torch, protocaffe
        from protocaffe.runtime.caffemodel import load_caffemodel, save_caffemodel
        m = protocaffe.load({str(net)!r}, device="cpu")
        w = m.fc.weight
        with torch.no_grad():
            w[0, :3] = torch.tensor([1.0, 2.0, 3.0]); w[-1, -1] = 7.0
        save_caffemodel(m, {str(tmp_path / "big.caffemodel")!r})
        with torch.no_grad():
            w.zero_()
        load_caffemodel(m, {str(tmp_path / "big.caffemodel")!r})
        ok = w[0, :3].tolist() == [1.0, 2.0, 3.0] and w[-1, -1].item() == 7.0
        print(ok, w.numel() * 4, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert (tmp_path / "big.caffemodel").stat().st_size > 2**31
    assert out[0] == "True"
    params, peak = int(out[1]), int(out[2])
    assert peak < params + 800 * 2**20  # the parameters, torch itself, no second copy


# --- frictions ---------------------------------------------------------------------------------


def test_bomb_images_and_huge_resize_are_clear_errors(tmp_path, capsys, monkeypatch):
    from PIL import Image

    net = str(write(tmp_path, LRN_NET.split('layer { name: "fc"')[0]))
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x40 is then a "bomb"
    argv = ["run", net, "--input", str(tmp_path / "big.png"), "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "o")]) == 1
    assert "big.png: refused: Image size" in capsys.readouterr().err
    monkeypatch.undo()
    assert main([*argv, "--resize", "100000,100000"]) == 2
    assert "--resize 100000,100000 asks for 10000000000 pixels" in capsys.readouterr().err


def test_classifier_run_writes_topk_files(tmp_path, capsys):
    net = str(write(tmp_path, LRN_NET + PROB))
    np.save(tmp_path / "x.npy", np.ones((2, 3, 12, 12), np.float32))
    out = tmp_path / "out"
    argv = ["run", net, "--input", str(tmp_path / "x.npy"), "--output", str(out), "--top-k", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    top = json.loads((out / "topk.json").read_text())
    assert [(t["item"], len(t["top"])) for t in top] == [(0, 2), (1, 2)]
    rows = (out / "topk.csv").read_text().splitlines()
    assert rows[0] == "input,blob,item,rank,class,label,score" and len(rows) == 5
    assert f"wrote results for 1 input(s) to {out}/" in capsys.readouterr().err


def test_run_and_bench_take_shape_and_hints_name_it(tmp_path, capsys):
    text = LRN_NET.replace(
        'input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }',
        'layer { name: "data" type: "Data" top: "data" data_param { batch_size: 2 } }',
    ).split('layer { name: "fc"')[0]
    net = str(write(tmp_path, text))
    np.save(tmp_path / "x.npy", np.ones((2, 3, 9, 9), np.float32))
    run = ["run", net, "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "o")]
    assert main([*run, "--device", "cpu"]) == 1
    assert "pass --shape data=2,C,H,W" in capsys.readouterr().err
    assert main([*run, "--device", "cpu", "--shape", "data=2,3,9,9"]) == 0
    assert "2x4x7x7 -> x.npy" in capsys.readouterr().out
    bench = ["bench", net, "--device", "cpu", "--iterations", "1", "--json"]
    assert main([*bench, "--shape", "data=2,3,9,9"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == {"data": [2, 3, 9, 9]}


def test_bench_default_is_quick_and_labels_the_replay_overhead(tmp_path, capsys):
    from protocaffe.runtime import timing

    assert main(["bench", str(write(tmp_path, LRN_NET)), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 1 <= result["iterations"] <= timing.AUTO_MAX_RUNS and result["warmup"] == 1
    assert result["layer_replay_overhead_ms"] >= 0
    assert timing.enough([timing.AUTO_BUDGET_S], None) and not timing.enough([0.001], None)
    assert timing.enough([0.1] * 3, 3) and not timing.enough([9.0], 2)


def test_emitted_module_with_sigmoid_cross_entropy_and_a_bare_tensor(tmp_path):
    net = write(
        tmp_path,
        'name: "sce"\ninput: "data" input_shape { dim: 2 dim: 5 }\n'
        'input: "label" input_shape { dim: 2 dim: 5 }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        '  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }\n'
        'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "fc" bottom: "label"'
        ' top: "loss" }\n',
    )
    assert main(["compile", str(net), "--emit-python", str(tmp_path / "sce.py")]) == 0
    single = write(tmp_path, LRN_NET, "single.prototxt")
    assert main(["compile", str(single), "--emit-python", str(tmp_path / "single.py")]) == 0
    sys.path.insert(0, str(tmp_path))
    try:
        import sce
        import single as single_module
    finally:
        sys.path.remove(str(tmp_path))
    ref = protocaffe.load(net, device="cpu", seed=0)
    emitted = sce.Sce()
    emitted.load_state_dict(ref.state_dict())
    x = {"data": torch.randn(2, 5), "label": torch.rand(2, 5).round()}
    torch.testing.assert_close(emitted(x)["loss"], ref(x)["loss"])
    lrn = protocaffe.load(single, device="cpu", seed=0)
    emitted = single_module.Lrn()
    emitted.load_state_dict(lrn.state_dict())
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(emitted(x)["fc"], lrn(x)["fc"])


@pytest.mark.parametrize(
    ("pool", "stride", "pad"), [("MAX", 2**31, 1), ("MAX", 2**31 - 1, 0), ("AVE", 2**31 - 1, 0)]
)
def test_pooling_with_a_stride_past_the_input_matches_caffe(tmp_path, pool, stride, pad):
    # Found by the fuzz suite: PyTorch's 32-bit window arithmetic overflowed.
    from protocaffe.ir.build import shape_context

    text = (
        'name: "s"\ninput: "data" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }\n'
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
        f"  pooling_param {{ pool: {pool} kernel_size: 2 stride: {stride} pad: {pad} }} }}\n"
    )
    module = protocaffe.load(write(tmp_path, text), device="cpu")
    x = torch.randn(1, 2, 4, 4)
    layer = module.caffe_graph.layer("pool")
    ctx = shape_context(module.caffe_graph, layer)
    want = layer.spec.reference(ctx, [x.numpy().astype(np.float64)], [])[0]
    np.testing.assert_allclose(module(x)["pool"].numpy(), want, rtol=1e-6)


BIG_GEOMETRY = """name: "big"
input: "data" input_shape { dim: 1 dim: 2 dim: 8 dim: 13 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 2 kernel_size: 3 bias_term: false %s
    weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("geometry", ["stride: 2147483647", "pad: 2147483647 dilation: 2147483647"])
def test_convolution_geometry_near_2_31_computes_instead_of_crashing(tmp_path, dtype, geometry):
    """PyTorch's and oneDNN's 32-bit indexing crashed the process (not raised) on these (fuzz).

    Caffe's answer is known in closed form: a stride past the input leaves only window 0; a pad
    equal to the dilation leaves only the kernel's centre tap inside the input."""
    module = protocaffe.load(write(tmp_path, BIG_GEOMETRY % geometry), device="cpu", dtype=dtype)
    x = torch.rand(1, 2, 8, 13)
    with torch.no_grad():
        out = module(x)["conv"].float()
    w = module.state_dict()["conv.weight"].float()
    xq = x.to(getattr(torch, dtype)).float()
    if geometry.startswith("stride"):
        expected = (xq[:, :, :3, :3] * w[:, None]).sum((2, 3, 4)).reshape(1, 2, 1, 1)
    else:
        expected = torch.einsum("nchw,oc->nohw", xq, w[:, :, 1, 1])
    tol = 1e-5 if dtype == "float32" else 3e-2
    torch.testing.assert_close(out, expected.relu(), atol=tol, rtol=tol)
