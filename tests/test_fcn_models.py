"""Our FCN deploy nets compile to the shapes, crops and parameter counts of the FCN paper's nets.

Golden numbers: Caffe's shape rules worked by hand for a 500x500 input (pool2 175 needs ceil-mode
pooling; upscore8 568 cropped at 31 gives 500) and the FCN release's crop offsets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocaffe.diagnostics import CompileError, render
from protocaffe.frontend import load_net, parse_text
from protocaffe.ir import build_graph
from protocaffe.layers.base import count

MODELS = Path(__file__).resolve().parents[1] / "models"


def compile_model(name: str, **kw):
    return build_graph(load_net(MODELS / f"{name}.prototxt"), **kw)


def spatial(graph, blob: str) -> int:
    shape = graph.blob(blob).shape
    assert shape[2] == shape[3]
    return shape[2]


def test_fcn8s_shapes_at_500():
    g = compile_model("fcn8s")
    sizes = {
        b: spatial(g, b)
        for b in ("pool1", "pool2", "pool3", "pool4", "pool5", "upscore_pool4", "upscore8")
    }
    assert sizes == {
        "pool1": 349,
        "pool2": 175,
        "pool3": 88,
        "pool4": 44,
        "pool5": 22,
        "upscore_pool4": 70,
        "upscore8": 568,
    }
    assert g.blob("fc6").shape == (1, 4096, 16, 16)
    assert g.blob("score_fr").shape == (1, 21, 16, 16)
    assert g.blob("upscore2").shape == (1, 21, 34, 34)
    assert g.blob("score").shape == (1, 21, 500, 500)
    assert [v.blob for v in g.outputs] == ["score"]


def test_fcn8s_parameters_and_macs():
    g = compile_model("fcn8s")
    params = sum(count(b.shape) for layer in g.layers for b in layer.blob_specs if b.learnable)
    assert params == 134_489_759
    assert [
        sum(count(b.shape) for b in g.layer(n).blob_specs)
        for n in ("upscore2", "upscore_pool4", "upscore8")
    ] == [7056, 7056, 112896]
    assert sum(layer.macs for layer in g.layers) / 1e9 == pytest.approx(181.5, abs=0.05)


@pytest.mark.parametrize(
    ("name", "offsets"),
    [
        ("fcn8s", {"score_pool4c": 5, "score_pool3c": 9, "score": 31}),
        ("fcn16s", {"score_pool4c": 5, "score": 27}),
        ("fcn32s", {"score": 19}),
    ],
)
@pytest.mark.parametrize("hw", [(500, 500), (375, 500), (1, 1), (227, 341)])
def test_crop_offsets_are_aligned_for_any_size(name, offsets, hw):
    g = compile_model(name, input_shapes={"data": (1, 3, *hw)})
    assert {c.layer.name: (c.status, c.aligned) for c in g.coords.crops} == {
        k: ("aligned", v) for k, v in offsets.items()
    }
    assert g.blob("score").shape == (1, 21, *hw)
    assert g.diagnostics == []


def test_broken_offset_warns_with_the_aligned_value():
    text = (MODELS / "fcn8s.prototxt").read_text().replace("offset: 9\n", "offset: 10\n")
    g = build_graph(parse_text(text, "fcn8s.prototxt"))
    (w,) = g.diagnostics
    assert w.severity == "warning"
    assert (
        w.message == "Crop 'score_pool3c': offset 10 misaligns 'score_pool3' with 'upscore_pool4'; "
        "the aligned offset is 9"
    )
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "offset: 10" in t)
    assert (w.span.line, w.span.col) == (line, text.splitlines()[line - 1].index("offset") + 1)


def test_eltwise_shape_mismatch_is_rendered_at_the_layer():
    # Cropping only W (axis 3) leaves score_pool4c 44 high: the Eltwise that sums it fails.
    text = (MODELS / "fcn8s.prototxt").read_text()
    text = text.replace("axis: 2\n    offset: 5\n", "axis: 3\n    offset: 5\n")
    with pytest.raises(CompileError) as info:
        build_graph(parse_text(text, "fcn8s.prototxt"))
    (err,) = [d for d in info.value.diagnostics if d.severity == "error"]
    out = render(err)
    assert out.startswith("fcn8s.prototxt:")
    assert (
        "error: Eltwise 'fuse_pool4': bottom shapes differ: "
        "upscore2 1x21x34x34 vs score_pool4c 1x21x44x34" in out
    )
    assert "Crop" in err.hint
    lines = text.splitlines()
    layer = next(i for i, t in enumerate(lines) if t == '  name: "fuse_pool4"')
    # At the mismatched bottom of that layer.
    assert lines[err.span.line - 1] == '  bottom: "score_pool4c"' and err.span.line > layer + 1
