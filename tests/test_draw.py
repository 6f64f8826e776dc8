"""`protocaffe draw`: DOT that any name survives, folded in-place layers, shapes on edges, Crop
alignment and warnings on their node; SVG/PNG through Graphviz where it is installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import protocaffe
from protocaffe.cli import main
from protocaffe.viz.dot import net_dot
from protocaffe.viz.model import draw_model, key_params

ROOT = Path(__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")

# Names that broke Caffe's draw_net.py (pydot): quotes, '/', '-', '(', '<', '&', braces.
NET = r"""
name: "we\"ird <net>"
layer { name: "in/put" type: "Input" top: "da-ta"
        input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv(1)\"x\"" type: "Convolution" bottom: "da-ta" top: "c&1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu{1}" type: "ReLU" bottom: "c&1" top: "c&1" }
layer { name: "pool<1>" type: "Pooling" bottom: "c&1" top: "p1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "p1" top: "up"
        convolution_param { num_output: 8 kernel_size: 4 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "c&1" top: "crop"
        crop_param { axis: 2 offset: 2 } }
"""


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "weird.prototxt"
    path.write_text(NET)
    return path


def test_model_folds_in_place_and_places_diagnostics(net: Path) -> None:
    graph = protocaffe.compile(net)
    model = draw_model(graph)
    names = [n.layer.name for n in model.nodes]
    assert names == ["in/put", 'conv(1)"x"', "pool<1>", "up", "crop"]
    conv = model.nodes[1]
    assert [la.name for la in conv.folded] == ["relu{1}"]
    assert key_params(conv.layer) == "k3 s2 p1 ×8"
    assert key_params(model.nodes[2].layer) == "MAX k2 s2"
    # The crop's written offset 2 is not the aligned one (1): the warning sits on its node.
    crop = model.nodes[-1]
    assert crop.notes == ["offset 2: MISALIGNED, aligned offset 1"]
    assert crop.severity == "warning" and not model.unplaced
    edge_labels = {e.label for e in model.edges}
    assert "c&1\n1x8x16x16" in edge_labels and "p1\n1x8x8x8" in edge_labels


def test_dot_escapes_every_name(net: Path) -> None:
    text = net_dot(protocaffe.compile(net), "LR")
    assert "rankdir=LR;" in text
    assert "conv(1)&quot;x&quot;" in text and "pool&lt;1&gt;" in text and "c&amp;1" in text
    # Node ids are synthetic; no raw name appears outside an escaped label.
    assert re.findall(r"^\s+(\w+) \[id=", text, re.M) == ["n0", "n1", "n3", "n4", "n5", "out0"]
    assert '"' not in "".join(re.findall(r"label=<(.*?)>\]", text))


@needs_dot
def test_svg_and_png_through_graphviz(net: Path, tmp_path: Path, capsys) -> None:
    svg = tmp_path / "net.svg"
    assert main(["draw", str(net), "-o", str(svg)]) == 0
    text = svg.read_text()
    assert text.count('class="node"') == 6  # five layer boxes and the output
    assert "conv(1)&quot;x&quot;" in text or 'conv(1)"x"' in text
    assert "1x8x16x16" in text and "MISALIGNED" in text
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "offset 2 misaligns" in captured.err
    png = tmp_path / "net.png"
    assert main(["draw", str(net), "-o", str(png), "--rankdir", "LR"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_dot
def test_fcn8s_crops_are_drawn_aligned(tmp_path: Path) -> None:
    out = tmp_path / "fcn.svg"
    assert main(["draw", str(ROOT / "models/fcn8s.prototxt"), "-o", str(out)]) == 0
    text = out.read_text()
    for offset in (5, 9, 31):
        assert f"offset {offset}: aligned" in text
    assert "1x21x500x500" in text


def test_missing_graphviz_says_how_to_get_it(net: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["draw", str(net), "-o", str(tmp_path / "net.svg")]) == 1
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "-o NET.dot` needs no engine" in err
    assert main(["draw", str(net), "-o", str(tmp_path / "net.dot")]) == 0  # no engine needed
    assert (tmp_path / "net.dot").read_text().startswith('digraph "we&quot;ird &lt;net&gt;"')


def test_bad_output_is_usage_error(net: Path) -> None:
    assert main(["draw", str(net), "-o", "net.jpg"]) == 2
