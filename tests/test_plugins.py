"""User layers: `@protocaffe.layer("Type")` in the user's own module, loaded only with
`--plugin` / `plugins=[...]`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import protocaffe
from protocaffe.diagnostics import CompileError
from protocaffe.layers.base import REGISTRY
from protocaffe.plugins import load_plugins

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = """
import torch
import protocaffe
from protocaffe.proto.schema import Field, declare_message

declare_message("ShiftedReLUParameter", Field("shift", 1, "float", default=0.0),
                param="shifted_relu_param")


@protocaffe.layer("ShiftedReLU")
class ShiftedReLU:
    param_field = "shifted_relu_param"

    def shapes(self, ctx):
        return [ctx.bottoms[0]]

    def lower(self, ctx):
        y = ctx.call(torch.relu, ctx.inputs[0])
        return [ctx.call(torch.add, y, ctx.param.shift)]
"""

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 } } }
layer { name: "act" type: "ShiftedReLU" bottom: "data" top: "act"
        shifted_relu_param { shift: 0.5 } }
"""


@pytest.fixture
def plugin(tmp_path: Path):
    """A plugin file in tmp_path; whatever it registers is removed afterwards (the README
    layer table test checks the registry)."""
    (tmp_path / "shifted.py").write_text(PLUGIN)
    (tmp_path / "net.prototxt").write_text(NET)
    before = set(REGISTRY)
    yield tmp_path
    from protocaffe import plugins

    for name in set(REGISTRY) - before:
        del REGISTRY[name]
        plugins.USER_TYPES.pop(name, None)
    plugins._LOADED.clear()


def test_load_with_a_plugin_file(plugin: Path) -> None:
    import torch

    module = protocaffe.load(plugin / "net.prototxt", plugins=[str(plugin / "shifted.py")])
    x = torch.tensor([[[-1.0, 0.0, 2.0], [3.0, -4.0, 1.0]]])
    out = module({"data": x})["act"].numpy()
    np.testing.assert_allclose(out, np.maximum(x.numpy(), 0) + 0.5)


def test_without_the_plugin_the_type_is_unknown(plugin: Path) -> None:
    with pytest.raises(CompileError) as info:
        protocaffe.compile(plugin / "net.prototxt")
    assert "unknown layer type 'ShiftedReLU'" in str(info.value)


def test_cli_plugin_by_module_name(plugin: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "protocaffe", "compile", "net.prototxt", "--plugin", "shifted"],
        cwd=plugin,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ShiftedReLU" in done.stdout and "1x2x3" in done.stdout


def test_a_clash_with_a_builtin_type_is_refused(plugin: Path) -> None:
    (plugin / "clash.py").write_text(
        "import protocaffe\n@protocaffe.layer('ReLU')\nclass Mine:\n    pass\n"
    )
    with pytest.raises(CompileError) as info:
        load_plugins([str(plugin / "clash.py")])
    assert "layer type 'ReLU' is already defined by protocaffe" in str(info.value)
    assert isinstance(REGISTRY["ReLU"], type(REGISTRY["ReLU"]))
    assert type(REGISTRY["ReLU"]).__module__ == "protocaffe.layers.activations"


def test_a_broken_plugin_is_a_user_error(plugin: Path) -> None:
    (plugin / "broken.py").write_text("raise ValueError('not today')\n")
    done = subprocess.run(
        [sys.executable, "-m", "protocaffe", "compile", "net.prototxt", "--plugin", "broken.py"],
        cwd=plugin,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert done.returncode == 1
    assert "cannot load plugin 'broken.py': ValueError: not today" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    with pytest.raises(CompileError, match="No module named 'no_such_plugin'"):
        load_plugins(["no_such_plugin"])
