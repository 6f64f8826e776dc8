"""Hostile and unusual inputs to the front end and the commands that read and write prototxt:
each is a clear error with the right exit code (1: bad input, 2: bad usage), never a traceback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocaffe import __version__
from protocaffe.cli import main
from protocaffe.commands._args import SEED_RANGE, seed_value
from protocaffe.frontend import loader

ROOT = Path(__file__).resolve().parents[1]
FCN32 = str(ROOT / "models" / "fcn32s.prototxt")
RELU = (
    'name: "tiny"\n'
    'layer { name: "in" type: "Input" top: "data"\n'
    "  input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }\n"
    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n'
)


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    return code, out, err


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.prototxt"
    path.write_text(RELU)
    return path


@pytest.fixture
def stdin(monkeypatch):
    """Replace standard input with bytes (read once per process, so the cache is reset)."""

    def feed(data: bytes) -> None:
        loader._stdin_bytes.cache_clear()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    yield feed
    loader._stdin_bytes.cache_clear()


# --- inputs that are not prototxt files ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/dev/zero", "a character device"), ("/dev/urandom", "a character device")],
)
@pytest.mark.parametrize("command", ["compile", "fmt", "upgrade", "run", "bench", "convert"])
def test_devices_are_refused_before_reading(
    capsys, tmp_path: Path, command: str, path: str, kind: str
) -> None:
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing here")
    image = tmp_path / "x.npy"
    image.write_bytes(b"")
    extra = {"run": ["--input", image], "convert": ["-o", tmp_path / "w.pt"]}.get(command, [])
    code, _, err = cli(capsys, command, path, *extra)
    assert code == 1
    assert f"'{path}' is {kind}, not a file" in err


def test_directory_is_refused(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "compile", tmp_path)
    assert code == 1 and f"the prototxt '{tmp_path}' is a directory, not a file" in err


def test_oversized_file_is_refused_by_its_size(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(loader, "MAX_PROTOTXT_BYTES", 1000)
    path = tmp_path / "big.prototxt"
    path.write_text(RELU + "#" * 2000)
    code, _, err = cli(capsys, "compile", path)
    assert code == 1 and "larger than any plausible prototxt (limit 1000 bytes)" in err


def test_oversized_stdin_is_refused(capsys, stdin, monkeypatch) -> None:
    monkeypatch.setattr(loader, "MAX_PROTOTXT_BYTES", 1000)
    stdin(b" " * 5000)
    code, _, err = cli(capsys, "fmt", "-")
    assert code == 1 and "standard input holds more than 1000 bytes" in err


def test_real_limit_fits_every_plausible_net() -> None:
    # ResNet-152's deploy prototxt, among the largest hand-written nets, is under 100 KiB.
    assert loader.MAX_PROTOTXT_BYTES >= 16 << 20


def test_stdin_is_the_net_for_compile(capsys, stdin) -> None:
    stdin(RELU.encode())
    code, out, _ = cli(capsys, "compile", "-")
    assert code == 0 and "tiny (<stdin>)" in out and "1x3x4x4" in out


def test_stdin_is_the_net_for_upgrade(capsys, stdin) -> None:
    stdin(b'input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n')
    code, out, _ = cli(capsys, "upgrade", "-")
    assert code == 0 and 'type: "Input"' in out


def test_pipe_is_read(capsys, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat > '{fifo}'"], stdin=subprocess.PIPE)
    writer.stdin.write(RELU.encode())
    writer.stdin.close()
    code, out, _ = cli(capsys, "compile", fifo)
    writer.wait(timeout=10)
    assert code == 0 and "1x3x4x4" in out


@pytest.mark.parametrize(
    ("weights", "says"),
    [
        ("/dev/null", "--weights '/dev/null' is a character device, not a file"),
        ("{tmp}", "--weights '{tmp}' is a directory, not a file"),
        ("{tmp}/missing.caffemodel", "--weights {tmp}/missing.caffemodel: no such file"),
    ],
)
@pytest.mark.parametrize("command", ["run", "convert"])
def test_weights_that_are_no_file_say_what_they_are(
    capsys, net: Path, tmp_path: Path, command: str, weights: str, says: str
) -> None:
    weights, says = weights.format(tmp=tmp_path), says.format(tmp=tmp_path)
    extra = ["--input", tmp_path / "x.npy"] if command == "run" else ["-o", tmp_path / "w.pt"]
    code, _, err = cli(capsys, command, net, "-w", weights, *extra)
    assert code == 1 and says in err


# --- numbers past every limit ---------------------------------------------------------------


def test_integer_with_thousands_of_digits(capsys, tmp_path: Path) -> None:
    path = tmp_path / "n.prototxt"
    path.write_text('input: "d"\ninput_dim: ' + "9" * 5000 + "\n")
    code, _, err = cli(capsys, "compile", path)
    assert code == 1
    assert "'input_dim' (int32): '999999999999...' (5000 characters) is out of range" in err
    assert len(err) < 2000  # the value is not echoed in full


def test_enum_with_thousands_of_digits(capsys, tmp_path: Path) -> None:
    path = tmp_path / "n.prototxt"
    path.write_text(
        'layer { name: "p" type: "Pooling" pooling_param { pool: 1' + "0" * 5000 + " } }"
    )
    code, _, err = cli(capsys, "fmt", path)
    assert code == 1 and "(5001 characters) is not a PoolMethod value" in err


@pytest.mark.parametrize("seed", [str(2**64), str(-(2**63) - 1), "9" * 5000, "1.5", "x"])
def test_seed_beyond_64_bits_is_a_usage_error(capsys, net: Path, tmp_path: Path, seed: str):
    with pytest.raises(SystemExit) as info:
        main(["run", str(net), "--input", str(tmp_path / "x.npy"), "--seed", seed])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed: expected an integer from" in err and len(err) < 1000


def test_seed_range_is_torchs() -> None:
    import torch

    for seed in SEED_RANGE:
        torch.Generator().manual_seed(seed_value(str(seed)))


# --- output paths, checked before any work --------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["compile", "{broken}", "--emit-python", "/nonexistent/dir/x.py"], "does not exist"),
        (["compile", "{broken}", "--emit-python", "{tmp}"], "it is a directory"),
        (["fmt", "{broken}", "-o", "{tmp}/no/such/x.prototxt"], "does not exist"),
        (["upgrade", "{broken}", "-o", "{tmp}"], "it is a directory"),
        (["convert", "{broken}", "-o", "{tmp}/no/w.pt"], "does not exist"),
        (["fmt", "{broken}", "-o", "{file}/x.prototxt"], "is not a directory"),
    ],
)
def test_output_paths_are_checked_first(capsys, tmp_path: Path, argv: list[str], says: str):
    broken = tmp_path / "broken.prototxt"
    broken.write_text("layer { nmae: 1 }")  # would be an error of its own, later
    afile = tmp_path / "afile"
    afile.write_text("")
    argv = [a.format(broken=broken, tmp=tmp_path, file=afile) for a in argv]
    code, _, err = cli(capsys, *argv)
    assert code == 1 and "cannot write" in err and says in err
    assert "nmae" not in err


def test_emit_python_to_a_good_path_still_works(capsys, net: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.py"
    code, _, err = cli(capsys, "compile", net, "--emit-python", out)
    assert code == 0 and out.is_file() and f"wrote {out}" in err


# --- compile's report -----------------------------------------------------------------------


def many_errors(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "many.prototxt"
    path.write_text(
        'name: "m"\n'
        + "".join(f'layer {{ name: "l{i}" type: "ReLU" bogus: 1 }}\n' for i in range(n))
    )
    return path


def test_many_errors_are_capped_and_counted(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "compile", many_errors(tmp_path, 60))
    assert code == 1
    assert err.count("error: unknown field 'bogus'") == 25
    lines = err.rstrip("\n").splitlines()
    assert lines[-2] == "... 35 more not shown (--max-errors 0 lists all)"
    assert lines[-1] == "60 errors, 0 warnings"


def test_max_errors_zero_lists_all(capsys, tmp_path: Path) -> None:
    code, _, err = cli(capsys, "compile", many_errors(tmp_path, 60), "--max-errors", "0")
    assert code == 1 and err.count("error: unknown field 'bogus'") == 60
    assert err.rstrip().endswith("60 errors, 0 warnings") and "more not shown" not in err


def test_summary_counts_warnings(capsys, tmp_path: Path) -> None:
    path = tmp_path / "w.prototxt"
    path.write_text(
        RELU.replace('top: "r" }', 'top: "r" relu_param {negative_slope: 0engine: CAFFE} }')
    )
    code, _, err = cli(capsys, "compile", path)
    assert code == 0 and err.rstrip().endswith("0 errors, 1 warning")


def test_clean_compile_prints_no_summary(capsys, net: Path) -> None:
    code, _, err = cli(capsys, "compile", net)
    assert code == 0 and err == ""


def test_explain_prints_only_the_explanation(capsys) -> None:
    code, out, _ = cli(capsys, "compile", FCN32, "--explain", "upscore")
    assert code == 0
    assert out.startswith("layer 'upscore' (Deconvolution), ")
    assert "total:" not in out and "bottoms -> tops" not in out


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"protocaffe {__version__}\n"


# --- solvers ---------------------------------------------------------------------------------


def test_compile_follows_a_solvers_net_file(capsys, net: Path, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net.name}"\nbase_lr: 0.01\n')  # beside the solver
    code, out, err = cli(capsys, "compile", solver)
    assert code == 0 and "tiny" in out and "1x3x4x4" in out
    assert f"solver.prototxt is a solver; compiling '{tmp_path / net.name}'" in err


def test_compile_follows_a_solvers_inline_net(capsys, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    body = "".join("  " + line + "\n" for line in RELU.splitlines())
    solver.write_text(f"base_lr: 0.01\ntrain_net_param {{\n{body}}}\n")
    code, out, err = cli(capsys, "compile", solver)
    assert code == 0 and "1x3x4x4" in out and "compiling its inline train_net_param" in err


def test_solver_errors_point_into_the_solver(capsys, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        'base_lr: 0.01\nnet_param {\n  layer { name: "r" type: "ReLU" bottom: "x" }\n}\n'
    )
    code, _, err = cli(capsys, "compile", solver)
    assert code == 1 and f"{solver}:3:" in err


def test_solver_with_a_missing_net(capsys, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text('train_net: "nowhere/train.prototxt"\n')
    code, _, err = cli(capsys, "compile", solver)
    assert code == 1 and f"{solver}:1:1: error: the solver's net 'nowhere/train.prototxt'" in err


def test_solver_naming_two_nets(capsys, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "a.prototxt"\ntrain_net: "b.prototxt"\n')
    code, _, err = cli(capsys, "compile", solver)
    assert code == 1 and "this solver names 2 training nets (net, train_net)" in err


def test_run_still_rejects_a_solver(capsys, net: Path, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net}"\n')
    code, _, err = cli(capsys, "bench", solver)
    assert code == 1 and "this file is a solver definition" in err


def test_upgrade_solver_with_inline_v1_net(capsys, tmp_path: Path) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        "base_lr: 0.01\n"
        "net_param {\n"
        '  name: "inline"  # the net\n'
        '  layers { name: "data" type: DATA top: "data"\n'
        '    data_param { source: "x" batch_size: 4 } }\n'
        '  layers { name: "ip" type: INNER_PRODUCT bottom: "data" top: "ip"\n'
        "    inner_product_param { num_output: 10 } }\n"
        "}\n"
    )
    code, out, err = cli(capsys, "upgrade", solver)
    assert code == 0 and "already in the latest format" not in err
    assert "upgraded V1 'layers' format to V2 'layer' (2 layers)" in err
    assert f"{solver}:4:3: note" in err  # located in the solver
    assert 'type: "Data"' in out and 'type: "InnerProduct"' in out and "layers" not in out
    assert '  name: "inline"  # the net\n' in out


def test_upgrade_in_place(capsys, tmp_path: Path) -> None:
    path = tmp_path / "old.prototxt"
    path.write_text('input: "data"  # the input\n' + "input_dim: 1\n" * 4)
    code, out, _ = cli(capsys, "upgrade", "--in-place", path)
    assert code == 0 and out == ""
    assert 'type: "Input"' in path.read_text()
