"""FCN-8s forward in bfloat16 against float32 on the CPU: speed (interleaved rounds) and accuracy.

Both modules load the same weights (bench_forward's: seeded gaussian convolutions, bilinear
deconvolutions) through the default path; bfloat16 is opt-in (`protocaffe.load(...,
dtype="bfloat16")`, `run --dtype bfloat16`) and pays off on CPUs with avx512_bf16 / AMX, where
oneDNN runs the convolutions in bfloat16 with float32 accumulation. Accuracy: max |bf16 - fp32| /
max |fp32| over the score map, and the share of pixels whose argmax class agrees.

    python benchmarks/bench_bf16.py --iterations 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="500,500", help="input H,W (500,500)")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from bench_forward import make_weights

    from protocaffe.runtime.api import load

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split(","))
    x = torch.from_numpy(np.random.default_rng(0).uniform(-120, 130, (1, 3, h, w)).astype("f4"))
    with tempfile.TemporaryDirectory() as tmp:
        proto, weights = make_weights(Path(tmp), (1, 3, h, w))
        modules = {
            dt: load(proto, weights, device="cpu", dtype=dt) for dt in ("float32", "bfloat16")
        }
    times: dict[str, list[float]] = {dt: [] for dt in modules}
    with torch.no_grad():
        ref = modules["float32"](x)["score"].float()
        low = modules["bfloat16"](x)["score"].float()
        for i in range(args.iterations):
            order = list(modules) if i % 2 == 0 else list(modules)[::-1]
            for dt in order:
                start = time.perf_counter()
                modules[dt](x)
                times[dt].append(time.perf_counter() - start)
    rel = float((low - ref).abs().max() / ref.abs().max())
    agree = float((low.argmax(1) == ref.argmax(1)).float().mean())
    flags = cpu_flags()
    print(
        f"FCN-8s 1x3x{h}x{w}, {args.threads} threads, torch {torch.__version__}, "
        f"avx512_bf16={'avx512_bf16' in flags} amx_bf16={'amx_bf16' in flags}, "
        f"median/min of {args.iterations} interleaved rounds"
    )
    print("| dtype | median ms | min ms | vs float32 |")
    print("|---|---:|---:|---:|")
    base = float(np.median(times["float32"]))
    for dt, ts in times.items():
        med = float(np.median(ts))
        print(f"| {dt} | {med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {med / base:.3f}x |")
    print(f"bfloat16 vs float32: max rel. diff {rel:.1e}, argmax agreement {agree * 100:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
