"""Compile time (parse + upgrade + graph + shapes + coordinate maps) against layer count.

Prints one row per net: layers, best-of-N seconds, microseconds per layer. Cost should be
linear in layers; ResNet-152 (corpus) should compile in well under 0.5 s.
Run: .venv/bin/python benchmarks/bench_compile.py

`--cold` times what a user waits for instead: `python -m protocaffe compile` of ResNet-152 in
fresh processes (bytecode compiled first), the median wall and CPU (user+sys) time of
`--runs` runs; `--against DIR` (a `git archive` of another commit) interleaves that tree's
runs with this one's, as the shared machine's speed drifts.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
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


def cold_run(tree: Path, net: Path) -> tuple[float, float]:
    """(wall, user+sys CPU) seconds of one `python -m protocaffe compile NET` run in `tree`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "protocaffe", "compile", str(net)],
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def cold(trees: list[Path], runs: int) -> None:
    net = CORPUS / "prototxt__ResNet-152-deploy.prototxt"
    if not net.exists():
        sys.exit(f"{net} is missing (the shared corpus)")
    for tree in trees:  # as a user's second run finds it
        subprocess.run([sys.executable, "-m", "compileall", "-q", "protocaffe"], cwd=tree)
    times: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for _ in range(runs):
        for tree in trees:
            times[tree].append(cold_run(tree, net))
    print(f"python -m protocaffe compile {net.name}, {runs} runs each, interleaved")
    for tree, rows in times.items():
        wall, cpu = [statistics.median(r[i] for r in rows) for i in (0, 1)]
        lo, hi = min(r[0] for r in rows), max(r[0] for r in rows)
        print(f"{tree!s:<30} wall {wall:.3f} s ({lo:.2f}-{hi:.2f})  cpu {cpu:.3f} s")
    print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true", help="time cold CLI runs of ResNet-152")
    parser.add_argument("--runs", type=int, default=9, help="cold runs per tree (9)")
    parser.add_argument("--against", type=Path, action="append", default=[], metavar="DIR")
    args = parser.parse_args()
    if args.cold:
        cold([Path(__file__).resolve().parents[1], *args.against], args.runs)
        return
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
