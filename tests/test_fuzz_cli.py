"""Fuzzing the command line: mutated prototxt files through every stage the CLI reaches, and
hostile arguments to every subcommand (found by introspecting the parser, so new commands and
flags are covered without editing this file).

Each case runs `protocaffe.cli.main` in-process (see tests/_fuzz.py) and must end with exit 0,
1 or 2, no internal error and no traceback; a handful run as real subprocesses, to check what
a shell user sees. PROTOCAFFE_FUZZ=slow runs twenty times as many examples.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from _corpus import CORPUS
from _fuzz import STATS, cli, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

TINY = """name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 } }
layer { name: "up" type: "Deconvolution" bottom: "norm1" top: "up"
  convolution_param { num_output: 4 kernel_size: 4 stride: 2 bias_term: false } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop"
  crop_param { axis: 2 offset: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "crop" top: "crop" }
layer { name: "fc" type: "InnerProduct" bottom: "crop" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _seeds() -> list[str]:
    """Texts to mutate: the tiny net, the shipped models and examples, a few corpus nets."""
    texts = [TINY]
    texts += [p.read_text() for p in sorted((ROOT / "models").glob("*.prototxt"))]
    texts += [p.read_text() for p in sorted((ROOT / "examples" / "broken").glob("*.prototxt"))]
    if CORPUS.is_dir():
        small = sorted(CORPUS.glob("*/*.prototxt"), key=lambda p: p.stat().st_size)
        texts += [p.read_text(errors="replace") for p in small[:: max(len(small) // 12, 1)]]
    return texts


SEEDS = _seeds()


def _vocabulary() -> list[str]:
    """Words a prototxt may hold: every field name of caffe.proto, layer types, enum names."""
    from protocaffe.layers import REGISTRY
    from protocaffe.proto import caffe_pb2

    words: set[str] = set(REGISTRY)
    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        stack = [message]
        while stack:
            m = stack.pop()
            words.update(f.name for f in m.fields)
            words.update(v.name for e in m.enum_types for v in e.values)
            stack.extend(m.nested_types)
    return sorted(words)


WORDS = _vocabulary()
NUMBERS = ["0", "-1", "1", "3", "2147483648", "4294967296", "18446744073709551616", "1e400"]
NUMBERS += ["nan", "-inf", "0x1F", "1.5", "9" * 5000, "100000000"]
PUNCT = ["{", "}", ":", '"', "#", "\n", " ", "'", "\\", "<", ">", "[", "]", ",", ";"]
token = (
    st.sampled_from(WORDS)
    | st.sampled_from(NUMBERS)
    | st.sampled_from(PUNCT)
    | st.text(max_size=6)
    | st.sampled_from(WORDS).map(lambda w: f" {w}: ")
)
mutation = st.tuples(
    st.sampled_from(["insert", "delete", "replace", "duplicate"]),
    st.integers(0, 10**7),
    st.integers(0, 40),
    token,
)


def mutate(text: str, edits: list[tuple[str, int, int, str]]) -> str:
    for kind, where, length, word in edits:
        at = where % (len(text) + 1)
        end = min(at + length, len(text))
        if kind == "insert":
            text = text[:at] + word + text[at:]
        elif kind == "delete":
            text = text[:at] + text[end:]
        elif kind == "replace":
            text = text[:at] + word + text[end:]
        else:
            text = text[:end] + text[at:end] + text[end:]
    return text


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size (PIL checks its pixel limit on opening, before any data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def workdir():
    """A scratch folder holding the files hostile arguments point at; cases run inside it."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as path:
        here = Path(path)
        os.chdir(here)
        try:
            (here / "tiny.prototxt").write_text(TINY)
            (here / "empty.prototxt").write_text("")
            (here / "binary.bin").write_bytes(bytes(range(256)) * 4)
            (here / "dir").mkdir()
            (here / "solver.prototxt").write_text(
                'net: "tiny.prototxt"\nmax_iter: 1\nbase_lr: 0.1\n'
            )
            np.save(here / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
            np.save(here / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
            from PIL import Image

            Image.new("RGB", (9, 7), (200, 10, 10)).save(here / "x.png")
            (here / "bomb.png").write_bytes(png_header(20000, 20000))
            assert cli(["convert", "tiny.prototxt", "-o", "tiny.caffemodel"], "setup").code == 0
            yield here
        finally:
            os.chdir(old)


@fuzz_settings(80)
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    edits=st.lists(mutation, min_size=1, max_size=4),
    then=st.sampled_from(["compile", "fmt", "upgrade", "bench", "run", "convert"]),
)
def test_mutated_prototxt_through_the_cli(workdir, seed, edits, then):
    path = workdir / "mutant.prototxt"
    path.write_text(mutate(SEEDS[seed], edits), errors="surrogatepass")
    compiled = cli(["compile", str(path)], "prototxt")
    argv = {
        "compile": ["compile", str(path), "--json"],
        "fmt": ["fmt", str(path), "--check"],
        "upgrade": ["upgrade", str(path), "-o", str(workdir / "up.prototxt")],
        "bench": ["bench", str(path), "--device", "cpu", "--iterations", "1", "--warmup", "0"],
        "run": ["run", str(path), "--input", "x.npy", "--device", "cpu", "--output", "out"],
        "convert": ["convert", str(path), "-o", str(workdir / "m.safetensors")],
    }[then]
    if compiled.code == 0 or then in ("fmt", "upgrade"):
        cli(argv, "prototxt")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from protocaffe.cli import build_parser

    root = build_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


PARSERS = _parsers()
# Slow by design rather than hostile: a fuzz case must not wait for torch.compile.
SKIPPED_FLAGS = {"--compile", "-h", "--help"}
COUNTS = {"--iterations", "--warmup", "--max-iter", "--epochs"}  # small values only
PATHS = ["tiny.prototxt", "tiny.caffemodel", "x.npy", "x.png", "obj.npy", "bomb.png", "dir"]
PATHS += ["missing.prototxt", "/dev/null", "/dev/zero", "-", "empty.prototxt", "binary.bin"]
PATHS += ["/nonexistent/dir/x.py", "dir/", "solver.prototxt", "a" * 300, "new\nline", "out.py"]
VALUES = ["", "0", "1", "-1", "2", "99999999999999999999", "9" * 5000, "1e400", "nan", "ü"]
VALUES += ["data=1,3,8,8", "data=0,1", "data=99999999,99999999,99999999,99999999", "=1"]
VALUES += ["data=1x3x8x8", "data", "conv1", "relu1,prob", "104,117,123", "1,2,3,4,5", "-"]
SMALL = ["0", "1", "2", "-1", "x", ""]


@st.composite
def hostile_argv(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(PARSERS)))
    parser = PARSERS[command]
    argv = [command]
    positionals = [a for a in parser._actions if not a.option_strings]
    options = [
        a for a in parser._actions if a.option_strings and not SKIPPED_FLAGS & set(a.option_strings)
    ]
    for action in positionals:
        argv.append(draw(st.sampled_from(PATHS) if action.choices is None else _choice(action)))
    for action in draw(st.lists(st.sampled_from(options), max_size=4)) if options else []:
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        elif action.choices is not None:
            argv += [flag, draw(_choice(action) | st.sampled_from(VALUES))]
        else:
            pool = SMALL if flag in COUNTS else PATHS + VALUES
            argv += [flag, draw(st.sampled_from(pool))]
    if draw(st.booleans()):  # sometimes the arguments in another order
        argv[1:] = draw(st.permutations(argv[1:]))
    return argv


def _choice(action: argparse.Action) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(map(str, action.choices)))


@fuzz_settings(120)
@given(argv=hostile_argv())
def test_hostile_arguments(workdir, argv):
    cli(argv, "argv")


@pytest.mark.parametrize(
    "argv",
    [
        ["compile", "/dev/zero"],
        ["bench", "tiny.prototxt", "--shape", "data=99999999,99999999,99999999,99999999"],
    ],
)
def test_a_shell_user_sees_no_traceback(workdir, argv):
    # A handful as real processes: what a user's terminal shows, exit status included.
    STATS.count("subprocess")
    done = subprocess.run(
        [sys.executable, "-m", "protocaffe", *argv],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert "error:" in done.stderr


def test_cli_fuzz_counted(capsys):
    with capsys.disabled():
        print(f"\n{STATS.summary()}")
    assert STATS.cases > 0 and STATS.internal_errors == 0, STATS.failures
