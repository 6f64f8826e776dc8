"""SegNet/ENet, PSPNet and YOLO-fork layers sharing names: BN (two variants told apart by the
file's evidence, else --dialect), Upsample (SegNet max-unpooling vs YOLO nearest), and SegNet's
DenseImageData reader. Values against numpy oracles of the forks' Forward_cpu loops, and
against formulas written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocaffe.testing import compile_snippet, run_snippet
from tests._layer_oracle import check_layer, error_of, needs_source_spans, oracle, shapes_of

RNG = np.random.default_rng(11)
X = RNG.normal(size=(2, 4, 6, 8)).astype(np.float32)
C = (1, 4, 1, 1)
SCALE, SHIFT = RNG.normal(size=C).astype(np.float32), RNG.normal(size=C).astype(np.float32)
MEAN = RNG.normal(size=C).astype(np.float32)
VAR = (np.abs(RNG.normal(size=C)) + 0.2).astype(np.float32)


def bn(extra: str, tops: int = 1) -> str:
    names = " ".join(f'top: "{t}"' for t in ("y", "mean", "var")[:tops])
    return f'layer {{ name: "bn" type: "BN" bottom: "x" {names} {extra} }}'


def test_segnet_inference_is_scale_and_shift() -> None:
    y = check_layer(bn("bn_param { bn_mode: INFERENCE }"), {"x": X}, "bn", [SCALE, SHIFT])["y"]
    np.testing.assert_allclose(y, SCALE * X + SHIFT, rtol=1e-6, atol=1e-6)


def test_segnet_learn_normalises_by_the_batch_at_any_phase() -> None:
    got = check_layer(bn("bn_param { bn_mode: LEARN }", tops=3), {"x": X}, "bn", [SCALE, SHIFT])
    mean = X.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    var = (X.astype(np.float64) ** 2).mean(axis=(0, 2, 3), keepdims=True) - mean**2
    want = SCALE * (X - mean) / np.sqrt(var + 1e-9) + SHIFT
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["mean"], mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["var"], var, rtol=1e-6, atol=1e-7)


def test_pspnet_bn_uses_its_running_statistics_at_test() -> None:
    text = bn("bn_param { slope_filler { type: 'constant' value: 1 } eps: 1e-4 }")
    y = check_layer(text, {"x": X}, "bn", [SCALE, SHIFT, MEAN, VAR])["y"]
    np.testing.assert_allclose(y, SCALE * (X - MEAN) / np.sqrt(VAR + 1e-4) + SHIFT, rtol=1e-5)


def test_pspnet_bn_at_train_uses_the_batch_and_moves_the_averages() -> None:
    from protocaffe.ir.build import shape_context

    text = bn("param {} param {} param {} param {} bn_param { momentum: 0.75 }")
    mean = X.astype(np.float64).mean(axis=(0, 2, 3)).reshape(C)
    var = X.astype(np.float64).var(axis=(0, 2, 3)).reshape(C)
    got = run_snippet(
        text, {"x": X}, blobs={"bn": [SCALE, SHIFT, MEAN, VAR]}, phase="TRAIN", dtype=torch.float64
    )
    np.testing.assert_allclose(
        got["y"], SCALE * (X - mean) / np.sqrt(var + 1e-5) + SHIFT, rtol=1e-5
    )
    # The oracle's in-place update of the running blobs: (1 - momentum) * batch + momentum * old.
    graph = compile_snippet(text, {"x": X.shape}, phase="TRAIN")
    layer, blobs = graph.layer("bn"), [SCALE, SHIFT, MEAN.copy(), VAR.copy()]
    layer.spec.reference(shape_context(graph, layer), [X], blobs)
    np.testing.assert_allclose(blobs[2], 0.25 * mean + 0.75 * MEAN, rtol=1e-5)
    np.testing.assert_allclose(blobs[3], 0.25 * var + 0.75 * VAR, rtol=1e-5)


@pytest.mark.parametrize(
    "extra, blobs",
    [
        ("bn_param { bn_mode: INFERENCE }", ["scale", "shift"]),
        ("bn_param { shift_filler { type: 'constant' } }", ["scale", "shift"]),
        ("param { lr_mult: 1 } param { lr_mult: 1 }", ["scale", "shift"]),
        ("bn_param { frozen: true }", ["slope", "bias", "mean", "variance"]),
        ("param {} param {} param {} param {}", ["slope", "bias", "mean", "variance"]),
    ],
)
def test_the_layers_own_fields_decide_the_variant(extra: str, blobs: list[str]) -> None:
    graph = compile_snippet(bn(extra), {"x": X.shape})
    assert [b.name for b in graph.layer("bn").blob_specs] == blobs


def test_without_evidence_the_dialect_decides() -> None:
    from protocaffe.frontend import parse_text
    from protocaffe.ir.build import build_graph

    text = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
        + bn("")
    )
    for dialect, first in (("pspnet", "slope"), ("segnet", "scale")):
        graph = build_graph(parse_text(text, "<t>"), dialect=dialect)
        assert graph.layer("bn").blob_specs[0].name == first
    needs_source_spans()
    with pytest.raises(Exception) as info:
        build_graph(parse_text(text, "<t>"), dialect="ssd")
    assert "nothing in this layer says which" in str(info.value)
    assert "--dialect segnet or --dialect pspnet" in str(info.value)


def test_evidence_against_the_dialect_is_a_warning() -> None:
    from protocaffe.frontend import parse_text
    from protocaffe.ir.build import build_graph

    text = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
        + bn("bn_param { bn_mode: INFERENCE }")
    )
    graph = build_graph(parse_text(text, "<t>"), dialect="pspnet")
    assert graph.layer("bn").blob_specs[0].name == "scale"
    assert any("read as segnet's BN" in d.message for d in graph.diagnostics)


def test_only_segnet_learn_has_statistics_tops() -> None:
    err = error_of(bn("bn_param { bn_mode: INFERENCE }", tops=2), {"x": X.shape})
    assert "only SegNet's BN in bn_mode LEARN" in err.message


# --- Upsample ------------------------------------------------------------------------------

POOL = (
    'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "p" top: "mask" '
    "pooling_param {{ pool: MAX kernel_size: {k} stride: {s} }} }}"
)


def unpool(params: str) -> str:
    return (
        'layer { name: "up" type: "Upsample" bottom: "p" bottom: "mask" top: "u" '
        f"upsample_param {{ {params} }} }}"
    )


def test_segnet_upsample_puts_each_max_back_where_it_came_from() -> None:
    text = POOL.format(k=2, s=2) + "\n" + unpool("scale: 2")
    got = run_snippet(text, {"x": X}, outputs=["p", "mask", "u"], dtype=torch.float64)
    # Every 2x2 window keeps its max at its own position and zeros elsewhere.
    windows = X.reshape(2, 4, 3, 2, 4, 2)
    is_max = windows == windows.max(axis=(3, 5), keepdims=True)
    np.testing.assert_allclose(got["u"], np.where(is_max, windows, 0).reshape(X.shape))
    want = oracle(unpool("scale: 2"), {"p": got["p"], "mask": got["mask"]}, "up")[0]
    np.testing.assert_allclose(got["u"], want)


def test_overlapping_windows_let_the_later_element_win() -> None:
    # kernel 3 stride 2: neighbouring windows share a maximum; Caffe's loop writes in order.
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 5
    p = np.full((1, 1, 2, 2), 5, np.float32)
    mask = np.full((1, 1, 2, 2), 12, np.float32)
    p[0, 0, 1, 1] = 7
    got = check_layer(unpool("upsample_h: 5 upsample_w: 5"), {"p": p, "mask": mask}, "up")["u"]
    assert got[0, 0, 2, 2] == 7 and np.count_nonzero(got) == 1


@pytest.mark.parametrize(
    "params, size",
    [
        ("scale: 2", (6, 8)),
        ("upsample_h: 5 upsample_w: 7", (5, 7)),
        ("scale_h: 2 scale_w: 3", (6, 12)),
        ("scale: 2 pad_out_h: true", (5, 8)),
        ("", (6, 8)),  # SegNet's scale defaults to 2
    ],
)
def test_segnet_output_sizes(params: str, size: tuple[int, int]) -> None:
    shapes = shapes_of(unpool(params), {"p": (1, 2, 3, 4), "mask": (1, 2, 3, 4)})
    assert shapes["u"] == (1, 2, *size)


def test_a_size_other_than_the_pooling_input_is_a_warning() -> None:
    text = POOL.format(k=2, s=2) + "\n" + unpool("upsample_h: 7 upsample_w: 8")
    graph = compile_snippet(text, {"x": X.shape})
    warning = next(d for d in graph.diagnostics if d.severity == "warning")
    assert "differs from the 6x8 input of Pooling 'pool'" in warning.message
    assert "upsample_h: 6" in warning.hint


def test_segnet_upsample_errors() -> None:
    needs_source_spans()
    err = error_of(unpool("scale: 3 pad_out_h: true"), {"p": (1, 2, 3, 4), "mask": (1, 2, 3, 4)})
    assert "pad_out_h needs a scale of 2" in err.message
    err = error_of(unpool("scale: 2"), {"p": (1, 2, 3, 4), "mask": (1, 2, 3, 5)})
    assert "must have the shape of" in err.message


def test_yolo_upsample_is_nearest_neighbour() -> None:
    text = 'layer { name: "up" type: "Upsample" bottom: "x" top: "u" upsample_param { scale: 2 } }'
    got = check_layer(text, {"x": X}, "up")["u"]
    np.testing.assert_array_equal(got, X.repeat(2, axis=2).repeat(2, axis=3))
    default = text.replace(" upsample_param { scale: 2 }", "")
    assert shapes_of(default, {"x": X.shape})["u"] == X.shape  # the YOLO forks' default is 1


# --- DenseImageData -------------------------------------------------------------------------


def dense(params: str, transform: str = "") -> str:
    return (
        f'layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" {transform} '
        f'dense_image_data_param {{ source: "list.txt" batch_size: 2 {params} }} }}'
    )


@pytest.mark.parametrize(
    "params, transform, hw",
    [
        ("new_height: 360 new_width: 480", "", (360, 480)),
        ("crop_height: 100 crop_width: 200", "", (100, 200)),
        ("new_height: 360 new_width: 480", "transform_param { crop_size: 224 }", (224, 224)),
    ],
)
def test_dense_image_data_shapes(params: str, transform: str, hw: tuple[int, int]) -> None:
    shapes = shapes_of(dense(params, transform), {})
    assert shapes["data"] == (2, 3, *hw) and shapes["label"] == (2, 1, *hw)


def test_dense_image_data_without_a_size_asks_for_shapes() -> None:
    err = error_of(dense(""), {})
    assert "--shape data=2,3,H,W --shape label=2,1,H,W" in err.message


def test_a_one_bottom_upsample_in_a_segnet_file_says_it_is_yolos() -> None:
    text = 'layer { name: "up" type: "Upsample" bottom: "x" top: "u" upsample_param { scale: 2 } }'
    graph = compile_snippet(text, {"x": X.shape})
    notes = [d.message for d in graph.diagnostics if d.severity == "note"]
    assert any("read as the YOLO forks' nearest-neighbour Upsample" in n for n in notes)


def test_weights_with_the_other_variants_blob_count_say_which_dialect(tmp_path) -> None:
    import protocaffe
    from protocaffe.diagnostics import CompileError
    from protocaffe.runtime.caffemodel import save_caffemodel

    net = tmp_path / "bn.prototxt"
    net.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }\n'
        + bn("")
    )
    save_caffemodel(protocaffe.load(net, dialect="segnet", device="cpu"), tmp_path / "w.caffemodel")
    with pytest.raises(CompileError) as info:
        protocaffe.load(net, tmp_path / "w.caffemodel", device="cpu")  # read as PSPNet's
    error = next(d for d in info.value.diagnostics if d.severity == "error")
    assert "has 2, the net's BN layer has 4" in error.message
    assert error.hint == "2 blobs are segnet's BN: pass --dialect segnet"
