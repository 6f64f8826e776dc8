"""Input and data layers: shapes from params, --input overrides, and the located errors that
say which --input to pass when Caffe would learn a shape from the data at run time."""

from __future__ import annotations

import numpy as np
import pytest
from _layer_oracle import needs_source_spans

from protocaffe.diagnostics import CompileError
from protocaffe.frontend import parse_text
from protocaffe.ir.build import build_graph
from protocaffe.layers import lookup


def compile_net(text: str, overrides: dict | None = None):
    return build_graph(parse_text(text, "<net>"), phase="TEST", input_shapes=overrides or {})


def shapes(text: str, overrides: dict | None = None) -> dict:
    return {v.blob: v.shape for v in compile_net(text, overrides).values.values()}


def error(text: str, overrides: dict | None = None):
    with pytest.raises(CompileError) as info:
        compile_net(text, overrides)
    return next(d for d in info.value.diagnostics if d.severity == "error")


CASES = [
    (
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: '
        "1 dim: 3 dim: 8 dim: 8 } } }",
        {"data": (1, 3, 8, 8)},
    ),
    (
        'layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape '
        "{ dim: 2 dim: 3 } } }",
        {"a": (2, 3), "b": (2, 3)},
    ),
    (
        'layer { name: "in" type: "Input" top: "a" top: "b" '
        "input_param { shape { dim: 2 dim: 3 } shape { dim: 5 } } }",
        {"a": (2, 3), "b": (5,)},
    ),
    (
        'layer { name: "d" type: "ImageData" top: "data" top: "label" '
        'image_data_param { source: "l.txt" batch_size: 4 new_height: 32 new_width: 40 } }',
        {"data": (4, 3, 32, 40), "label": (4,)},
    ),
    (
        'layer { name: "d" type: "ImageData" top: "data" top: "label" '
        "transform_param { crop_size: 20 } "
        'image_data_param { source: "l.txt" is_color: false } }',
        {"data": (1, 1, 20, 20), "label": (1,)},
    ),
    (
        'layer { name: "d" type: "MemoryData" top: "data" top: "label" '
        "memory_data_param { batch_size: 2 channels: 1 height: 5 width: 6 } }",
        {"data": (2, 1, 5, 6), "label": (2,)},
    ),
    (
        'layer { name: "d" type: "DummyData" top: "a" top: "b" '
        "dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } } }",
        {"a": (2, 3), "b": (4,)},
    ),
    (
        'layer { name: "d" type: "DummyData" top: "a" top: "b" '
        "dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 } }",
        {"a": (2, 3, 4, 5), "b": (2, 1, 4, 5)},
    ),
]


@pytest.mark.parametrize(("text", "want"), CASES)
def test_shapes(text, want):
    got = shapes(text)
    for name, shape in want.items():
        assert got[name] == shape


def test_overrides_win_even_with_other_rank():
    text = CASES[0][0]
    assert shapes(text, {"data": (2, 3, 4)})["data"] == (2, 3, 4)


def test_data_layer_label_is_batch_and_data_needs_override():
    text = (
        'layer { name: "mnist" type: "Data" top: "data" top: "label" '
        "transform_param { crop_size: 24 } "
        'data_param { source: "db" batch_size: 64 backend: LMDB } }'
    )
    d = error(text)
    assert "--shape data=64,C,24,24" in d.message and "label" not in d.message.split("pass")[1]
    got = shapes(text, {"data": (64, 1, 24, 24)})
    assert got["data"] == (64, 1, 24, 24) and got["label"] == (64,)


def test_window_and_hdf5_data_need_overrides():
    text = (
        'layer { name: "w" type: "WindowData" top: "data" top: "label" '
        "transform_param { crop_size: 227 } "
        'window_data_param { source: "w.txt" batch_size: 128 } }'
    )
    assert "--shape data=128,C,227,227" in error(text).message
    text = (
        'layer { name: "h" type: "HDF5Data" top: "data" top: "label" hdf5_data_param '
        '{ source: "f" batch_size: 10 } }'
    )
    d = error(text)
    assert "--shape data=10,..." in d.message and "--shape label=10,..." in d.message
    got = shapes(text, {"data": (10, 4), "label": (10,)})
    assert got == {"data": (10, 4), "label": (10,)}


def test_python_layer_error_lists_each_top():
    text = (
        'layer { name: "data" type: "Python" top: "data" top: "label" '
        'python_param { module: "voc_layers" layer: "VOCSegDataLayer" param_str: "{}" } }'
    )
    d = error(text)
    assert d.message == (
        "Python 'data': output shapes of voc_layers.VOCSegDataLayer are set at run time; "
        "pass --shape data=N,C,H,W --shape label=N,C,H,W"
    )
    got = shapes(text, {"data": (1, 3, 500, 500), "label": (1, 1, 500, 500)})
    assert got["label"] == (1, 1, 500, 500)


def test_python_layer_error_points_at_python_param():
    needs_source_spans()
    text = (
        'layer { name: "data" type: "Python" top: "data"\n'
        '  python_param { module: "voc_layers" layer: "VOCSegDataLayer" } }'
    )
    d = error(text)
    assert d.span.line == 2


@pytest.mark.parametrize(
    ("text", "part"),
    [
        (
            'layer { name: "in" type: "Input" top: "a" top: "b" top: "c" '
            "input_param { shape { dim: 1 } shape { dim: 2 } } }",
            "2 shapes for 3 tops",
        ),
        ('layer { name: "in" type: "Input" top: "a" }', "--shape a=N,C,H,W"),
        (
            'layer { name: "d" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "l" new_height: 3 } }',
            "set together",
        ),
        (
            'layer { name: "d" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "l" batch_size: 8 } }',
            "--shape data=8,3,H,W",
        ),
        (
            'layer { name: "d" type: "MemoryData" top: "data" top: "label" '
            "memory_data_param { batch_size: 2 } }",
            "channels must be positive",
        ),
        (
            'layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c" '
            "dummy_data_param { shape { dim: 1 } shape { dim: 2 } } }",
            "2 shapes for 3 tops",
        ),
        (
            'layer { name: "d" type: "DummyData" top: "a" dummy_data_param { '
            "shape { dim: 1 } num: 2 } }",
            "not both",
        ),
    ],
)
def test_errors(text, part):
    assert part in error(text).message


def test_input_flags():
    for name in ("Input", "Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "Python"):
        assert lookup(name).is_input, name
    assert not lookup("DummyData").is_input and not lookup("HDF5Output").is_input


def test_dummy_data_lowering():
    text = (
        'layer { name: "d" type: "DummyData" top: "c" top: "g" dummy_data_param { '
        "shape { dim: 2 dim: 3 } shape { dim: 1000 } "
        'data_filler { type: "constant" value: 1.5 } data_filler { type: "gaussian" std: 2 } } }'
    )
    from protocaffe.testing import run_snippet

    out = run_snippet(text, {}, outputs=["c", "g"])
    np.testing.assert_array_equal(out["c"], np.full((2, 3), 1.5, np.float32))
    assert out["g"].shape == (1000,) and 1.7 < out["g"].std() < 2.3
