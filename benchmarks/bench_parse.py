"""Parse speed: protocaffe's parse_text vs google.protobuf.text_format.Merge, same file, one run.

Usage: python benchmarks/bench_parse.py [FILE] [--repeat N]
Default FILE is ResNet-152's deploy prototxt from the shared corpus. Prints best-of-N times and
the ratio (the target is at most 3x text_format).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DEFAULT = CORPUS / "KaimingHe__deep-residual-networks" / "prototxt__ResNet-152-deploy.prototxt"


def best_of(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time of each function, run interleaved so that machine load hits both alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(path: Path, repeat: int = 7) -> tuple[float, float]:
    """(ours, text_format) best-of-`repeat` seconds for parsing `path` as a NetParameter."""
    from google.protobuf import text_format

    from protocaffe.frontend import parse_text
    from protocaffe.proto import caffe_pb2

    text = path.read_text(encoding="utf-8")
    parse_text(text, str(path), "net")  # warm up: grammar load, per-type plans
    ours, theirs = best_of(
        [
            lambda: parse_text(text, str(path), "net"),
            lambda: text_format.Merge(text, caffe_pb2.NetParameter()),
        ],
        repeat,
    )
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    if not args.file.exists():
        print(f"{args.file}: not found (the shared corpus is not checked out?)", file=sys.stderr)
        return 2
    ours, theirs = measure(args.file, args.repeat)
    print(f"file:        {args.file.name} ({args.file.stat().st_size / 1024:.0f} KiB)")
    print(f"protocaffe:  {ours * 1e3:8.2f} ms  (parse_text, with source map)")
    print(f"text_format: {theirs * 1e3:8.2f} ms  (google.protobuf.text_format.Merge)")
    print(f"ratio:       {ours / theirs:8.2f}x  (target <= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
