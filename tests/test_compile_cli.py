"""`protocaffe compile`: the table, JSON, --explain, exit codes and diagnostics on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from protocaffe import cli

FCN8S = str(Path(__file__).resolve().parents[1] / "models" / "fcn8s.prototxt")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["compile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_has_rows_totals_and_crops(capsys):
    code, out, err = run(capsys, FCN8S, "--input", "data=1,3,500,500")
    assert code == 0 and err == ""
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("layer "))
    for column in ("type", "bottoms -> tops", "top shape(s)", "params", "MACs", "memory"):
        assert column in header
    row = next(line for line in lines if line.startswith("upscore2 "))
    assert "score_fr -> upscore2" in row and "1x21x34x34" in row and "7.06K" in row
    assert "134.49M params" in out and "181.5 GMAC" in out
    assert "score_pool4c: score_pool4 cropped to upscore2, axis 2 offset 5: aligned" in out
    assert "score: upscore8 cropped to data, axis 2 offset 31: aligned" in out


def test_in_place_tops_are_not_counted_twice(capsys):
    _, out, _ = run(capsys, FCN8S, "--json")
    layers = {e["name"]: e for e in json.loads(out)["layers"]}
    assert layers["relu1_1"]["activation_bytes"] == 0
    assert layers["conv1_1"]["activation_bytes"] == 4 * 64 * 698 * 698


def test_json_report(capsys):
    code, out, _ = run(capsys, FCN8S, "--input", "data=1,3,375,500", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["schema_version"] == 1 and doc["ok"] is True
    assert doc["inputs"] == [{"name": "data", "shape": [1, 3, 375, 500]}]
    assert doc["outputs"] == [{"name": "score", "shape": [1, 21, 375, 500]}]
    assert doc["totals"]["params"] == 134_489_759
    assert doc["totals"]["activation_bytes"] == sum(e["activation_bytes"] for e in doc["layers"])
    assert [(c["layer"], c["aligned_offset"], c["status"]) for c in doc["crops"]] == [
        ("score_pool4c", 5, "aligned"),
        ("score_pool3c", 9, "aligned"),
        ("score", 31, "aligned"),
    ]
    fc6 = next(e for e in doc["layers"] if e["name"] == "fc6")
    assert fc6["top_shapes"] == [[1, 4096, 12, 16]]
    assert fc6["blobs"][0] == {"name": "weight", "shape": [4096, 512, 7, 7], "learnable": True}


def test_warnings_go_to_stderr_and_exit_zero(capsys, tmp_path):
    bad = tmp_path / "fcn8s.prototxt"
    bad.write_text(Path(FCN8S).read_text().replace("offset: 31\n", "offset: 32\n"))
    code, out, err = run(capsys, str(bad))
    assert code == 0
    assert "MISALIGNED, the aligned offset is 31" in out
    assert f"{bad}:" in err and "warning: Crop 'score': offset 32" in err and "^" in err


def test_errors_exit_one_and_are_all_reported(capsys, tmp_path):
    bad = tmp_path / "net.prototxt"
    bad.write_text(
        'layer { name: "data" type: "Input" top: "data" '
        "input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n"
        'layer { name: "a" type: "ReLU" bottom: "dat" top: "a" }\n'
        'layer { name: "b" type: "VideoData" bottom: "data" top: "b" }\n'
    )
    code, out, err = run(capsys, str(bad))
    assert code == 1 and out == ""
    assert f"{bad}:2:" in err and f"{bad}:3:" in err and err.count("error:") == 2
    code, out, err = run(capsys, str(bad), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and len(doc["diagnostics"]) == 2
    assert (
        doc["diagnostics"][0]["line"] == 2
        and doc["diagnostics"][0]["hint"] == "did you mean 'data'?"
    )


def test_bad_usage_exits_two(capsys):
    code, _, err = run(capsys, FCN8S, "--input", "data=1,3,x")
    assert code == 2 and "NAME=N,C,H,W" in err
    code, _, err = run(capsys, FCN8S, "--explain", "upscore3")
    assert code == 2 and "no layer or blob named 'upscore3'" in err and "'upscore2'" in err


def test_unknown_input_name_is_an_error(capsys):
    code, _, err = run(capsys, FCN8S, "--input", "image=1,3,20,20")
    assert code == 1 and "inputs: data" in err


def test_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, str(tmp_path / "nope.prototxt"))
    assert code == 1 and "error:" in err and "Traceback" not in err


def test_explain_shows_formula_inputs_and_coordinates(capsys):
    code, out, _ = run(capsys, FCN8S, "--explain", "score_pool4c")
    assert code == 0
    text = out[out.index("layer 'score_pool4c'") :]
    assert "bottom[0] score_pool4: 1x21x44x44" in text
    assert "bottom[1] upscore2: 1x21x34x34" in text
    assert "top[0] score_pool4c: 1x21x34x34" in text
    assert "axis: 2" in text and "offset: 5" in text
    assert "'score_pool4c' pixel y is input 'data' pixel 16*y - 11.5" in text
    code, out, _ = run(capsys, FCN8S, "--explain", "relu1_1")
    assert "top[0] conv1_1: 1x64x698x698  (value conv1_1@relu1_1)" in out


def test_phase_and_stage_flags(capsys, tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "t" type: "ReLU" bottom: "data" top: "t" include { phase: TRAIN } }\n'
        'layer { name: "s" type: "ReLU" bottom: "data" top: "s" include { stage: "x" } }\n'
    )
    names = lambda out: [e["name"] for e in json.loads(out)["layers"]]  # noqa: E731
    assert names(run(capsys, str(net), "--json")[1]) == ["data"]
    assert names(run(capsys, str(net), "--json", "--phase", "train")[1]) == ["data", "t"]
    assert names(run(capsys, str(net), "--json", "--stage", "x")[1]) == ["data", "s"]


def test_compile_imports_neither_torch_nor_numpy():
    # Both cost more than the compile itself on a cold CLI call (docs/benchmarks.md).
    code = (
        "import sys; from protocaffe import cli; cli.main(['compile', "
        f"{FCN8S!r}]); print([m for m in ('torch', 'numpy') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
