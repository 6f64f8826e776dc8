"""ONNX and torch.export: the exported programs compute what protocaffe computes.

protocaffe's own output is the reference here (its layers are checked against numpy oracles
of Caffe's loops elsewhere); the nets below are chosen so that the layers whose Caffe semantics
differ from PyTorch's defaults (ceil pooling with the clip rule, AVE's divisor, Crop offsets,
LRN in both regions, BatchNorm's scale factor) have to survive the export. The whole corpus
sweep is `slow`; the default suite keeps a representative few.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _corpus import CORPUS

import protocaffe
from protocaffe.cli import main
from protocaffe.diagnostics import CompileError
from protocaffe.export.onnx import check_onnx, layer_ops, save_onnx
from protocaffe.export.program import export_program

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # of the output's scale

SEMANTICS = """
name: "caffe_semantics"
layer { name: "in" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 13 dim: 13 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "ceil_clip" type: "Pooling" bottom: "conv" top: "p1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "ave" type: "Pooling" bottom: "conv" top: "p2"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "lrn_across" type: "LRN" bottom: "p1" top: "l1"
        lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "lrn_within" type: "LRN" bottom: "p2" top: "l2"
        lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "up" type: "Deconvolution" bottom: "l2" top: "up"
        convolution_param { num_output: 6 kernel_size: 4 stride: 2
                            weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "l1" top: "crop"
        crop_param { axis: 2 offset: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "crop" bottom: "l1" top: "out" }
layer { name: "ave_edge" type: "Pooling" bottom: "l1" top: "edge"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
"""


def randomise(module, seed: int = 0) -> None:
    """Seeded random blobs scaled by fan-in (deploy nets' fillers are often all zero, which
    would make any comparison pass): weights N(0, 1/fan_in), biases and means N(0, 0.1),
    variances in [0.5, 1.5], BatchNorm scale factors 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if not t.is_floating_point():
                continue
            if leaf == "variance":
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif leaf == "scale_factor":
                t.fill_(1.0)
            elif t.dim() >= 2:
                fan_in = max(t[0].numel(), 1)
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in**0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)


def _onnx_checks(module, tmp_path: Path, dynamic: set[str], other: list) -> list:
    exported = export_program(module, dynamic)
    path = str(tmp_path / "net.onnx")
    model = save_onnx(exported, path)
    checks = check_onnx(path, exported, [list(exported.module.input_shapes), *other])
    return exported, model, checks


@pytest.fixture
def semantics_net(tmp_path: Path) -> Path:
    path = tmp_path / "semantics.prototxt"
    path.write_text(SEMANTICS)
    return path


# The same net with a ceil-mode pooling whose rounding up never drops a window (no clip rule
# in play at any size), so that height and width can stay dynamic.
NO_CLIP = SEMANTICS.replace("kernel_size: 2 stride: 2 pad: 1", "kernel_size: 3 stride: 2")


@pytest.fixture
def dynamic_net(tmp_path: Path) -> Path:
    path = tmp_path / "dynamic.prototxt"
    path.write_text(NO_CLIP)
    return path


def _set_batch_norm_statistics(module) -> None:
    bn = module.layer_module("bn")
    with torch.no_grad():
        bn.mean.copy_(torch.linspace(-1, 1, 6) * 2.5)
        bn.variance.copy_(torch.linspace(0.5, 2, 6) * 2.5)
        bn.scale_factor.fill_(2.5)  # the stored statistics are blob / 2.5


def test_caffe_semantics_survive_onnx(semantics_net: Path, tmp_path: Path) -> None:
    module = protocaffe.load(semantics_net, device="cpu", seed=3)
    _set_batch_norm_statistics(module)
    # The clip rule (11 -> 6, not 7) holds for this size only: height and width stay fixed.
    exported, model, checks = _onnx_checks(module, tmp_path, {"batch"}, [[(3, 4, 13, 13)]])
    assert model.opset_import[0].version >= 17
    assert exported.dynamic == {"data": [0]}
    assert [c.shapes for c in checks] == [[(2, 4, 13, 13)], [(3, 4, 13, 13)]]
    for c in checks:
        assert not c.all_zero and c.max_error <= TOLERANCE, c
    # Both outputs: "edge" averages a last window that overhangs the unpadded input, where
    # Caffe divides by the part inside (6 -> 3 windows, the last over 2 pixels).
    assert exported.output_names == ["out", "edge"]
    ops = layer_ops(model, exported)
    assert ops["ceil_clip"] == ["MaxPool"] and "Slice" in ops["crop"]
    # The exporter's optimiser may fuse the TEST-time BatchNorm into the convolution.
    assert "Conv" in ops["conv"] + ops["bn"]
    with pytest.raises(CompileError, match="Pooling layer 'ceil_clip' rounds its output size up"):
        export_program(module, {"batch", "hw"}, strict_hw=True)


@pytest.mark.slow  # the report test below covers dynamic sizes in the fast suite
def test_dynamic_height_and_width(dynamic_net: Path, tmp_path: Path) -> None:
    module = protocaffe.load(dynamic_net, device="cpu", seed=3)
    _set_batch_norm_statistics(module)
    exported, _, checks = _onnx_checks(
        module, tmp_path, {"batch", "hw"}, [[(3, 4, 17, 21)], [(1, 4, 24, 16)]]
    )
    assert exported.dynamic == {"data": [0, 2, 3]}
    for c in checks:
        assert not c.all_zero and c.max_error <= TOLERANCE, c


def test_fold_bn_export_matches(semantics_net: Path, tmp_path: Path) -> None:
    module = protocaffe.load(semantics_net, device="cpu", seed=3)
    _set_batch_norm_statistics(module)
    folded = protocaffe.load(semantics_net, device="cpu", seed=3, fold_bn=True)
    assert folded.folded_layers == ["bn"]
    exported, model, checks = _onnx_checks(folded, tmp_path, {"batch"}, [])
    assert "bn" not in layer_ops(model, exported)
    assert checks[0].max_error <= TOLERANCE


@pytest.mark.slow  # VGG-sized weights: about a minute on a busy 2-core machine
def test_fcn8s_dynamic_hw_crop_is_shape_derived(tmp_path: Path) -> None:
    module = protocaffe.load(
        ROOT / "models/fcn8s.prototxt", device="cpu", input_shapes={"data": (1, 3, 64, 80)}
    )
    randomise(module)
    exported, model, checks = _onnx_checks(module, tmp_path, {"batch", "hw"}, [[(3, 3, 71, 87)]])
    assert exported.dynamic == {"data": [0, 2, 3]}
    for c in checks:  # the traced size, and another batch, height and width
        assert not c.all_zero and c.max_error <= TOLERANCE, c
    assert "Slice" in layer_ops(model, exported)["score"]
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert [d.HasField("dim_param") for d in dims] == [True, False, True, True]


def test_export_command_report(dynamic_net: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "net.onnx"
    argv = ["export", str(dynamic_net), "--dynamic", "hw", "--onnx", str(out), "--report"]
    assert main([*argv, "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "inputs data: Nx4xHxW" in text
    assert "onnxruntime 2x4x13x13: max error" in text and "onnxruntime 3x4x20x20" in text
    assert re.search(r"^crop +Crop +.*Slice", text, re.M)
    assert re.search(r"^ave +Pooling +AveragePool$", text, re.M)


def test_dynamic_hw_names_the_pinning_layer(tmp_path: Path, capsys) -> None:
    net = CORPUS / "BVLC__caffe/models__bvlc_alexnet__deploy.prototxt"
    if not net.is_file():
        pytest.skip(f"corpus not found at {CORPUS}")
    code = main(["export", str(net), "--dynamic", "hw", "--onnx", str(tmp_path / "a.onnx")])
    assert code == 1
    err = capsys.readouterr().err
    assert "InnerProduct layer 'fc6' has blobs whose shape follows the input size" in err
    assert ":192:3:" in err and not (tmp_path / "a.onnx").exists()


@pytest.mark.slow  # a second Python that imports torch
def test_torch_export_runs_without_protocaffe(semantics_net: Path, tmp_path: Path) -> None:
    out = tmp_path / "net.pt2"
    assert main(["export", str(semantics_net), "--torch-export", str(out), "--seed", "3"]) == 0
    x = torch.randn(3, 4, 13, 13)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys; sys.modules['protocaffe'] = None\n"  # any import of it would fail
        "import torch\n"
        f"p = torch.export.load({str(out)!r})\n"
        f"ys = p.module()(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        f"torch.save(list(ys), {str(tmp_path / 'y.pt')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env)
    module = protocaffe.load(semantics_net, device="cpu", seed=3)
    wants = module(x)
    gots = torch.load(tmp_path / "y.pt")  # the outputs in the module's output order
    assert len(gots) == len(module.output_names)
    for name, got in zip(module.output_names, gots, strict=True):
        want = wants[name]
        assert (got - want).abs().max().item() <= TOLERANCE * want.abs().max().item(), name


def test_export_usage_errors(semantics_net: Path, tmp_path: Path) -> None:
    assert main(["export", str(semantics_net), "--onnx", str(tmp_path / "x.pt2")]) == 2
    assert main(["export", str(semantics_net), "--torch-export", "x.pt2", "--report"]) == 2


# --- the sweep ------------------------------------------------------------------------------


def _sweep_nets() -> list[tuple[str, Path, dict]]:
    # The shipped FCN train/val nets read their size from the first image: give one.
    fcn_data = {"data": (1, 3, 64, 64), "label": (1, 1, 64, 64)}
    nets = [
        (
            f"models/{p.name}",
            p,
            fcn_data if p.stem.startswith("fcn") and "trainval" in p.stem else {},
        )
        for p in sorted((ROOT / "models").glob("*.prototxt"))
    ]
    if CORPUS.is_dir():
        from test_corpus_compile import BVLC, inputs_for

        nets += [(f, CORPUS / f, inputs_for(f)) for f in BVLC]
    return nets


def _stages(name: str) -> list[str]:
    from test_corpus_compile import STAGES

    return list(STAGES.get(Path(name).stem, ()))


def _small_batch(shapes: dict, graph_inputs) -> dict:
    """The net's input shapes with the batch (first axis, labels included) cut to 2: a sweep
    over a hundred nets on a shared CPU."""
    out = {v.blob: tuple(v.shape) for v in graph_inputs if v.shape}
    out.update(shapes)
    return {k: (min(s[0], 2), *s[1:]) if s else s for k, s in out.items()}


def _skip(name: str, reason: str) -> None:
    print(f"SWEEP {name}: skipped: {reason}")  # with -s, a running tally of the sweep
    pytest.skip(reason)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "path", "shapes"), _sweep_nets(), ids=lambda v: str(v)[:70])
def test_sweep_onnx_matches(name: str, path: Path, shapes: dict, tmp_path: Path) -> None:
    if path.name.endswith("solver.prototxt"):
        _skip(name, "a solver, not a net")
    try:
        stages = _stages(name) if CORPUS.is_dir() else []
        graph = protocaffe.compile(path, input_shapes=shapes, stages=stages)
        module = protocaffe.load(
            path,
            device="cpu",
            seed=0,
            stages=stages,
            input_shapes=_small_batch(shapes, graph.inputs),
        )
    except CompileError as err:
        first = next(d for d in err.diagnostics if d.severity == "error")
        _skip(name, f"does not load: {first.message[:120]}")
    randomise(module)
    if not module.input_names:
        _skip(name, "no inputs (data comes from a data source)")
    try:
        exported = export_program(module, {"batch"})
        model_path = str(tmp_path / "net.onnx")
        save_onnx(exported, model_path)
    except Exception as err:  # the reason is the exporter's
        _skip(name, f"cannot export: {type(err).__name__}: {str(err).splitlines()[0][:160]}")
    try:
        checks = check_onnx(model_path, exported, [list(exported.module.input_shapes)])
    except Exception as err:  # onnxruntime refusing the model is a finding, not a crash
        _skip(name, f"onnxruntime cannot run it: {str(err).splitlines()[0][-160:]}")
    finally:  # up to 1 GB per net, and pytest keeps three runs' tmp_path: ~75 GB of files
        Path(model_path).unlink(missing_ok=True)
    print(f"SWEEP {name}: max error {checks[0].max_error:.3g} ({checks[0].worst_output})")
    if checks[0].all_zero:  # e.g. only Accuracy outputs, 0 for random weights and labels
        _skip(name, "every output is zero with random weights: the comparison says nothing")
    assert checks[0].max_error <= TOLERANCE, (name, checks)
