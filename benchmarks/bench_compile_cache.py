"""`load(..., compile=True)` on FCN-8s: what the first call costs cold, in a second process, and
for a second input size, against the eager default path.

Each process runs in a fresh interpreter: load the net (bench_forward's weights), compile, then
time the first call at the first size, the first call at the second size, and the median of a
few steady calls at both sizes next to the same module uncompiled (eager default path,
interleaved). Process 1 starts from an empty TORCHINDUCTOR_CACHE_DIR, process 2 reuses it,
as a second `protocaffe run --compile` would.

    python benchmarks/bench_compile_cache.py --sizes 500,500 375,500 --iterations 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def one_process(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from protocaffe.runtime.api import load

    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
    proto, weights = Path(args.workdir) / "fcn8s.prototxt", Path(args.workdir) / "fcn8s.caffemodel"
    start = time.perf_counter()
    compiled = load(proto, weights, device="cpu", compile=True)
    eager = load(proto, weights, device="cpu")
    result: dict = {"load_s": time.perf_counter() - start, "sizes": {}}
    rng = np.random.default_rng(0)
    inputs = [
        torch.from_numpy(rng.uniform(-120, 130, (1, 3, *hw)).astype(np.float32)) for hw in sizes
    ]
    with torch.no_grad():
        for hw, x in zip(sizes, inputs, strict=True):
            start = time.perf_counter()
            got = compiled(x)["score"]
            first = time.perf_counter() - start
            want = eager(x)["score"]
            diff = float((got - want).abs().max() / want.abs().max())
            result["sizes"][f"{hw[0]}x{hw[1]}"] = {"first_call_s": first, "max_rel_diff": diff}
        for hw, x in zip(sizes, inputs, strict=True):
            times: dict[str, list[float]] = {"compiled": [], "eager": []}
            for _ in range(args.iterations):
                for name, module in (("compiled", compiled), ("eager", eager)):
                    start = time.perf_counter()
                    module(x)
                    times[name].append(time.perf_counter() - start)
            entry = result["sizes"][f"{hw[0]}x{hw[1]}"]
            for name, values in times.items():
                entry[f"{name}_ms"] = float(np.median(values)) * 1e3
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["500,500", "375,500"], help="input H,W sizes")
    p.add_argument("--iterations", type=int, default=3, help="steady calls per size (3)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--processes", type=int, default=2, help="processes sharing the cache (2)")
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workdir:
        print(json.dumps(one_process(args)))
        return 0

    from bench_forward import make_weights

    with tempfile.TemporaryDirectory() as tmp:
        h, w = (int(v) for v in args.sizes[0].split(","))
        make_weights(Path(tmp), (1, 3, h, w))
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        for n in range(1, args.processes + 1):
            cmd = [sys.executable, __file__, *(argv or sys.argv[1:]), "--workdir", tmp]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr)
                return done.returncode
            result = json.loads(done.stdout.strip().splitlines()[-1])
            state = "empty cache" if n == 1 else "cache from process 1"
            print(f"process {n} ({state}): load {result['load_s']:.1f} s")
            for size, entry in result["sizes"].items():
                print(
                    f"  {size}: first call {entry['first_call_s']:.1f} s, then "
                    f"{entry['compiled_ms']:.0f} ms compiled vs {entry['eager_ms']:.0f} ms "
                    f"eager; max rel. diff {entry['max_rel_diff']:.1e}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
