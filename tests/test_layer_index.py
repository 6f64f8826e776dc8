"""protocaffe/layers/_index.py: which layer file registers each type (so a compile imports only
the files its net uses) and the built-in fork fields' wire numbers. It must be current, and a
compile that imports layer files on demand must say exactly what one with all of them says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _corpus import CORPUS

from protocaffe.layers import REGISTRY, _index, load_all
from protocaffe.proto import schema

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_index_is_current() -> None:
    # A fresh process: the numbers are the ones importing every file in name order gives.
    fresh = _python(
        "from protocaffe.proto import schema; schema._builtin_numbers = {}\n"
        "from protocaffe.layers import index_source; print(index_source(), end='')"
    )
    assert fresh.returncode == 0, fresh.stderr
    written = (ROOT / "protocaffe/layers/_index.py").read_text()
    assert fresh.stdout == written, "protocaffe/layers/_index.py is stale: run `make layer-index`"


def test_every_type_comes_from_its_indexed_file() -> None:
    load_all()
    builtin = {t: d for t, d in REGISTRY.items() if type(d).__module__.startswith("protocaffe.")}
    assert set(builtin) == set(_index.MODULES)
    for type_name, spec in builtin.items():
        assert type(spec).__module__ == f"protocaffe.layers.{_index.MODULES[type_name][0]}"
    # choose_dialect counts on it: a type name is never taken for a fork field's evidence.
    assert not set(_index.MODULES) & set(schema.FIELD_DIALECTS)


def test_a_layer_file_imported_alone_keeps_its_numbers() -> None:
    # Pooling first, then a declaration from outside the layer files (a plugin's) that wants
    # ceil_mode's number: the built-in keeps it, the newcomer gets a free one, as always.
    run = _python(
        "import sys\n"
        "import protocaffe.layers.pooling\n"
        "from protocaffe.proto import schema\n"
        "from protocaffe.proto.schema import Field, extend\n"
        "assert 'protocaffe.layers.ssd' not in sys.modules and not schema._all_declared\n"
        "extend('PoolingParameter', Field('index_test_flag', 13, 'bool'))\n"
        "assert 'protocaffe.layers.ssd' in sys.modules and schema._all_declared\n"
        "pool = schema._EXTENSIONS['caffe.PoolingParameter']\n"
        "print(pool['ceil_mode'].number, pool['index_test_flag'].number != 13)"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [
        str(_index.EXTENSION_NUMBERS[("caffe.PoolingParameter", "ceil_mode")]),
        "True",
    ]


NETS = [ROOT / "models/fcn8s.prototxt", ROOT / "models/fcn_demo_trainval.prototxt"]
if CORPUS.is_dir():  # a fork net too: its first fork field declares them all
    NETS += [
        CORPUS / "KaimingHe__deep-residual-networks/prototxt__ResNet-152-deploy.prototxt",
        *sorted(CORPUS.glob("chuanqi305__MobileNet-SSD/*deploy*"))[:1],
    ]


@pytest.mark.parametrize("net", NETS, ids=lambda p: p.name)
def test_compile_on_demand_says_what_a_full_import_says(net: Path) -> None:
    code = (
        "import sys\n"
        "from protocaffe.cli import main\n"
        "{}"
        "print('exit', main(['compile', '--json', sys.argv[1]]))\n"
        "print('layer files:', [m for m in sys.modules if m.startswith('protocaffe.layers.')])"
    )
    out = {}
    for mode, setup in (
        ("lazy", ""),
        ("full", "import protocaffe.layers; protocaffe.layers.load_all()\n"),
    ):
        run = subprocess.run(
            [sys.executable, "-c", code.format(setup), str(net)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report, _, loaded = run.stdout.rpartition("layer files:")
        out[mode] = (report, run.stderr, run.returncode, loaded)
    assert out["lazy"][:3] == out["full"][:3]
    if "fcn" in net.name or "ResNet" in net.name:  # BVLC nets: no fork file imported
        assert "protocaffe.layers.ssd'" not in out["lazy"][3]


def test_ignored_fields_are_fork_fields() -> None:
    # build_graph looks for them only in a net that sets some fork field.
    from protocaffe.layers.ignored import IGNORED

    for message, name in IGNORED:
        fd = schema.fields_by_name(schema.message_class(message).DESCRIPTOR)[name]
        assert fd.is_extension, (message, name)


def test_a_fork_field_looked_up_first_declares_them_all() -> None:
    run = _python(
        "import sys\n"
        "from protocaffe.proto import caffe_pb2, schema\n"
        "pool = caffe_pb2.PoolingParameter.DESCRIPTOR\n"
        "fields = schema.fields_by_name(pool)\n"
        "assert 'pool' in fields and not schema._all_declared\n"  # BVLC's: nothing imported
        "assert 'protocaffe.layers.pooling' not in sys.modules\n"
        "print(fields['ceil_mode'].is_extension, schema._all_declared)\n"
        "print('hole' in schema.fields_by_name(caffe_pb2.ConvolutionParameter.DESCRIPTOR))"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "True", "True"]
