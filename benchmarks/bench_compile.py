"""Compile time (parse + upgrade + graph + shapes + coordinate maps) against layer count.

Prints one row per net: layers, best-of-N seconds, microseconds per layer. Cost should be
linear in layers; ResNet-152 (corpus) should compile in well under 0.5 s.
Run: .venv/bin/python benchmarks/bench_compile.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from protocaffe.frontend import load_net
from protocaffe.ir import build_graph

CORPUS = (
    Path(__file__).resolve().parents[2] / "shared" / "corpus" / "KaimingHe__deep-residual-networks"
)


def chain(n: int) -> str:
    """Input, then n layers alternating 3x3 Convolution and in-place ReLU."""
    out = [
        'layer { name: "data" type: "Input" top: "data" '
        "input_param { shape { dim: 1 dim: 8 dim: 32 dim: 32 } } }"
    ]
    bottom = "data"
    for i in range(n):
        if i % 2 == 0:
            out.append(
                f'layer {{ name: "c{i}" type: "Convolution" bottom: "{bottom}" top: "c{i}" '
                "convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }"
            )
            bottom = f"c{i}"
        else:
            out.append(f'layer {{ name: "r{i}" type: "ReLU" bottom: "{bottom}" top: "{bottom}" }}')
    return "\n".join(out) + "\n"


def best_time(path: Path, repeat: int = 5) -> tuple[int, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        graph = build_graph(load_net(path))
        times.append(time.perf_counter() - start)
    return len(graph.layers), min(times)


def main() -> None:
    build_graph(
        load_net(Path(__file__).resolve().parents[1] / "models" / "fcn8s.prototxt")
    )  # warm imports
    cases: list[tuple[str, Path]] = [
        (f"ResNet-{d}", CORPUS / f"prototxt__ResNet-{d}-deploy.prototxt") for d in (50, 101, 152)
    ]
    cases = [(name, p) for name, p in cases if p.exists()]
    with tempfile.TemporaryDirectory() as tmp:
        for n in (100, 400, 1600):
            p = Path(tmp) / f"chain{n}.prototxt"
            p.write_text(chain(n))
            cases.append((f"chain-{n}", p))
        print(f"{'net':<12} {'layers':>7} {'seconds':>9} {'us/layer':>9}")
        for name, path in cases:
            layers, seconds = best_time(path)
            print(f"{name:<12} {layers:>7} {seconds:>9.4f} {seconds / layers * 1e6:>9.1f}")


if __name__ == "__main__":
    main()
