"""Python data layers through the pycaffe shim: only when allowed, in Caffe's call order
(setup, reshape at setup; then reshape + forward per batch), errors located in user code."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from protocaffe.data import make_feeder
from protocaffe.data.pylayer import PythonLayers
from protocaffe.diagnostics import CompileError
from protocaffe.frontend import parse_text
from protocaffe.ir.build import build_graph

# In the style of FCN's voc_layers.py: param_str eval'd, tops reshaped to each item's size.
USER_LAYER = """
import caffe
import numpy as np


class SegDataLayer(caffe.Layer):
    def setup(self, bottom, top):
        params = eval(self.param_str)
        self.n, self.idx = params["n"], 0
        self.calls = []
        if len(top) != 2:
            raise Exception("Need to define two tops: data and label.")

    def reshape(self, bottom, top):
        self.calls.append("reshape")
        self.data = np.full((3, 4 + self.idx, 5), self.idx, dtype=np.float32)
        self.label = np.full((1, 4 + self.idx, 5), 10 + self.idx)
        top[0].reshape(1, *self.data.shape)
        top[1].reshape(1, *self.label.shape)

    def forward(self, bottom, top):
        self.calls.append("forward")
        if self.phase == caffe.TEST and self.idx == 2:
            raise ValueError("no third image at TEST")
        top[0].data[...] = self.data
        top[1].data[...] = self.label
        self.idx = (self.idx + 1) % self.n
"""

NET = """
layer { name: "data" type: "Python" top: "data" top: "label"
  python_param { module: "seg_layers" layer: "SegDataLayer" param_str: "{'n': 3}" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
"""


@pytest.fixture
def layer_dir(tmp_path):
    (tmp_path / "seg_layers.py").write_text(textwrap.dedent(USER_LAYER))
    yield tmp_path
    sys.modules.pop("seg_layers", None)


def test_python_layers_run_only_when_allowed(layer_dir):
    parsed = parse_text(NET, "<net>")
    graph = build_graph(parsed, "TRAIN", input_shapes={"data": (1, 3, 4, 5), "label": (1, 1, 4, 5)})
    with pytest.raises(CompileError) as info:
        make_feeder(graph)
    diag = info.value.diagnostics[0]
    assert "seg_layers.SegDataLayer" in diag.message and "--python-layers" in diag.hint
    assert "seg_layers" not in sys.modules  # nothing was imported


def test_setup_shapes_then_reshape_and_forward_per_batch(layer_dir):
    parsed = parse_text(NET, "<net>")
    layers = PythonLayers.load(parsed.message, "TRAIN", path=[str(layer_dir)])
    assert "caffe" not in sys.modules or sys.modules["caffe"].__name__ != "protocaffe.pycaffe"
    assert layers.shapes == {"data": (1, 3, 4, 5), "label": (1, 1, 4, 5)}
    graph = build_graph(parsed, "TRAIN", input_shapes=layers.shapes)
    assert graph.blob("score").shape == (1, 2, 4, 5)
    feeder = make_feeder(graph, python_layers=layers)
    batches = [next(feeder) for _ in range(4)]
    # Items vary in size (reshape runs before every forward) and wrap after n = 3.
    assert [tuple(b["data"].shape) for b in batches] == [
        (1, 3, 4, 5),
        (1, 3, 5, 5),
        (1, 3, 6, 5),
        (1, 3, 4, 5),
    ]
    assert [float(b["label"].flatten()[0]) for b in batches] == [10, 11, 12, 10]
    np.testing.assert_array_equal(batches[1]["data"].numpy(), np.ones((1, 3, 5, 5)))
    calls = layers.layers["data"].instance.calls
    assert calls[:3] == ["reshape", "reshape", "forward"]  # SetUp's reshape, then Forward's


def test_user_exception_names_the_layer_and_line(layer_dir):
    parsed = parse_text(NET, "<net>")
    layers = PythonLayers.load(parsed.message, "TEST", path=[str(layer_dir)])
    feeder = make_feeder(
        build_graph(parsed, "TEST", input_shapes=layers.shapes), python_layers=layers
    )
    next(feeder), next(feeder)
    with pytest.raises(CompileError) as info:
        next(feeder)
    message = info.value.diagnostics[0].message
    assert "Python layer 'data' (seg_layers.SegDataLayer): forward raised ValueError" in message
    assert "seg_layers.py:" in message


def test_missing_module_says_which_flag(tmp_path):
    parsed = parse_text(NET, "<net>")
    with pytest.raises(CompileError) as info:
        PythonLayers.load(parsed.message, "TRAIN", path=[str(tmp_path)])
    diag = info.value.diagnostics[0]
    assert "cannot import module seg_layers" in diag.message and "--python-layers" in diag.hint


def test_fcn_val_net_with_a_voc_style_layer(tmp_path, monkeypatch):
    """FCN's own val.prototxt (Python data layer voc_layers.VOCSegDataLayer, param_str with
    a relative voc_dir): shapes come from the layer, the rest of the net follows them."""
    from _corpus import CORPUS

    net = CORPUS / "shelhamer__fcn.berkeleyvision.org" / "voc-fcn32s__val.prototxt"
    if not net.exists():
        pytest.skip(f"corpus file {net} is absent")
    voc = tmp_path / "data" / "pascal" / "VOC2011"
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "seg11valid.txt").write_text("a\nb\n")
    sizes = {"a": (40, 50), "b": (37, 45)}
    layer_dir = tmp_path / "layers"
    layer_dir.mkdir()
    # A stand-in with the names and param_str keys FCN's module has; images are made here.
    (layer_dir / "voc_layers.py").write_text(
        textwrap.dedent(
            f"""
            import caffe
            import numpy as np

            SIZES = {sizes!r}

            class VOCSegDataLayer(caffe.Layer):
                def setup(self, bottom, top):
                    params = eval(self.param_str)
                    split = f"{{params['voc_dir']}}/ImageSets/Segmentation/{{params['split']}}.txt"
                    self.ids = open(split).read().split()
                    self.mean = np.array(params["mean"])
                    self.idx = 0

                def reshape(self, bottom, top):
                    h, w = SIZES[self.ids[self.idx]]
                    self.data = np.zeros((3, h, w), np.float32) - self.mean[:, None, None]
                    self.label = np.full((1, h, w), 255, np.uint8)
                    top[0].reshape(1, *self.data.shape)
                    top[1].reshape(1, *self.label.shape)

                def forward(self, bottom, top):
                    top[0].data[...] = self.data
                    top[1].data[...] = self.label
                    self.idx = (self.idx + 1) % len(self.ids)
            """
        )
    )
    (tmp_path / "voc-fcn32s").mkdir()
    monkeypatch.chdir(tmp_path / "voc-fcn32s")  # voc_dir is '../data/pascal/VOC2011'
    try:
        from protocaffe.frontend import load_net

        parsed = load_net(str(net))
        layers = PythonLayers.load(parsed.message, "TEST", path=[str(layer_dir)])
        graph = build_graph(parsed, "TEST", input_shapes=layers.shapes)
        assert graph.blob("score").shape == (1, 21, 40, 50)
        with make_feeder(graph, python_layers=layers) as feeder:
            shapes = [tuple(next(feeder)["label"].shape) for _ in range(3)]
        assert shapes == [(1, 1, 40, 50), (1, 1, 37, 45), (1, 1, 40, 50)]
        np.testing.assert_allclose(
            layers.layers["data"].instance.mean, [104.00699, 116.66877, 122.67892]
        )
    finally:
        sys.modules.pop("voc_layers", None)


# pycaffe's own example style (examples/pycaffe/layers/pyloss.py): a loss with its backward,
# and a layer with a learnable-free forward/backward in between.
COMPUTE_LAYERS = """
import caffe
import numpy as np


class Double(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 2 * top[0].diff


class HalfSquaredError(caffe.Layer):
    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.0

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if propagate_down[i]:
                sign = 1 if i == 0 else -1
                bottom[i].diff[...] = sign * self.diff / bottom[i].num * top[0].diff
"""

COMPUTE_NET = """
layer { name: "double" type: "Python" bottom: "x" top: "y"
  python_param { module: "compute_layers" layer: "Double" } }
layer { name: "loss" type: "Python" bottom: "y" bottom: "t" top: "loss"
  python_param { module: "compute_layers" layer: "HalfSquaredError" } }
"""


def test_python_layers_with_bottoms_run_forward_and_backward(tmp_path):
    import torch

    from protocaffe.lower.builder import lower_graph
    from protocaffe.testing import compile_snippet

    (tmp_path / "compute_layers.py").write_text(COMPUTE_LAYERS)
    parsed = parse_text(COMPUTE_NET, "<net>")
    layers = PythonLayers.load(parsed.message, "TRAIN", path=[str(tmp_path)])
    try:
        graph = compile_snippet(COMPUTE_NET, {"x": (2, 3), "t": (2, 3)}, phase="TRAIN")
        assert graph.blob("y").shape == (2, 3) and graph.blob("loss").shape == (1,)
        module = lower_graph(graph)
        rng = np.random.default_rng(0)
        x = torch.tensor(rng.standard_normal((2, 3)), dtype=torch.float32, requires_grad=True)
        t = torch.tensor(rng.standard_normal((2, 3)), dtype=torch.float32)
        loss = module({"x": x, "t": t})["loss"]
        want = ((2 * x.detach() - t) ** 2).sum() / 2 / 2
        torch.testing.assert_close(loss[0], want)
        (3 * loss).sum().backward()  # loss_weight 3 arrives as the top's diff
        torch.testing.assert_close(x.grad, 3 * 2 * (2 * x.detach() - t) / 2)
    finally:
        layers.unload()
        sys.modules.pop("compute_layers", None)
    # Unloaded: the same net no longer runs user code.
    with pytest.raises(CompileError, match="--shape y="):
        compile_snippet(COMPUTE_NET, {"x": (2, 3), "t": (2, 3)}, phase="TRAIN")
