"""The README's command transcripts are real: each one without elisions is re-run here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"```\n(\$ protocaffe [^\n]*)\n(.*?)```", re.S)


def transcripts() -> list[tuple[str, str]]:
    return [
        (cmd[2:], out)
        for cmd, out in BLOCK.findall(README)
        if "..." not in out and out.strip() and "--weights" not in cmd
    ]


@pytest.mark.parametrize(("command", "expected"), transcripts(), ids=lambda v: v[:60])
def test_transcript_matches(command: str, expected: str, tmp_path: Path) -> None:
    # Run where the README's relative paths resolve but outputs land in a scratch folder.
    for folder in ("models", "examples"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    argv = shlex.split(command)
    quiet = argv[-2:] == [">", "/dev/null"]
    argv = argv[:-2] if quiet else argv
    done = subprocess.run(
        [sys.executable, "-m", "protocaffe", *argv[1:]],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)},
        text=True,
    )
    shown = done.stderr if quiet else done.stdout
    assert shown == expected


def test_readme_has_transcripts() -> None:
    assert len(transcripts()) >= 3


def test_supported_layer_table_lists_every_registered_type() -> None:
    from protocaffe.layers import REGISTRY

    table = README[README.index("## Supported layers") : README.index("## Where Caffe")]
    missing = [t for t in REGISTRY if not re.search(rf"\b{re.escape(t)}\b", table)]
    assert not missing, f"README's layer table lacks {missing}"
