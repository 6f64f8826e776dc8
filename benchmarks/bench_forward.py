"""FCN-8s forward: protocaffe vs a hand-written PyTorch module vs OpenCV dnn, side by side.

All three run the same weights (seeded gaussian convolutions, the prototxt's bilinear deconvs):
protocaffe's module is the source, the hand-written module gets its state_dict, and OpenCV
reads the prototxt plus the .caffemodel protocaffe writes. Timed runs are interleaved (one run
of each per round, the order rotating) so that thermal and background drift hit all alike;
the table gives the median and min of N rounds. Peak memory of one forward pass is measured in
a fresh process per implementation (peak RSS on CPU, the CUDA allocator's peak on GPU) and
compared with the sum of all blob sizes, which is what Caffe itself would allocate.

    python benchmarks/bench_forward.py                      # CPU, float32, 1x3x500x500
    python benchmarks/bench_forward.py --device cuda --dtype float16
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

PROTOTXT = REPO / "models" / "fcn8s.prototxt"
IMPLS = ("protocaffe", "handwritten", "opencv")
# protocaffe-plain: load(..., fast_cpu=False), the lowering without lower/passes.py's CPU path
EXTRA_IMPLS = ("protocaffe-plain",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--size", default="500,500", help="input H,W (500,500)")
    p.add_argument("--iterations", type=int, default=5, help="timed rounds (5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds (1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and cv2 threads")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile both torch modules")
    p.add_argument(
        "--freezing",
        action="store_true",
        help=(
            "with --compile: inductor freezing for the hand-written module too "
            "(protocaffe's compile() freezes only protocaffe-plain, fast_cpu=False)"
        ),
    )
    p.add_argument(
        "--impls", default=",".join(IMPLS), help="subset of " + ",".join(IMPLS + EXTRA_IMPLS)
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--memory-of", choices=IMPLS + EXTRA_IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_weights(workdir: Path, shape: tuple[int, ...]) -> tuple[Path, Path]:
    """FCN-8s with gaussian conv weights (std 0.01, seed 0) as prototxt + .caffemodel."""
    import torch

    from protocaffe.runtime.api import load
    from protocaffe.runtime.caffemodel import save_caffemodel

    proto, weights = workdir / "fcn8s.prototxt", workdir / "fcn8s.caffemodel"
    text = PROTOTXT.read_text().replace(
        "dim: 1 dim: 3 dim: 500 dim: 500", " ".join(f"dim: {d}" for d in shape)
    )
    proto.write_text(text)
    module = load(proto, device="cpu", seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in module._layer_attrs:
            if layer.type == "Convolution":
                for spec in layer.blob_specs:
                    t = module.blob_tensor(layer, spec.name)
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.01)
    save_caffemodel(module, weights)
    return proto, weights


class Runner:
    """One implementation, ready to run forward on a fixed input."""

    def __init__(self, impl: str, args: argparse.Namespace, proto: Path, weights: Path, x) -> None:
        import numpy as np
        import torch

        self.impl = impl
        self.device = torch.device(args.device)
        dtype = getattr(torch, args.dtype)
        if impl == "opencv":
            import cv2

            cv2.setNumThreads(args.threads)
            self.net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
            self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self.x = np.ascontiguousarray(x)
            return
        from protocaffe.runtime.api import load

        module = load(
            proto, weights, device=args.device, dtype=args.dtype, fast_cpu=impl == "protocaffe"
        )
        if impl == "handwritten":
            from handwritten_fcn8s import HandFCN8s

            hand = HandFCN8s()
            hand.load_state_dict(module.state_dict())
            module = hand.to(self.device, dtype).eval()
        if args.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if args.compile and impl.startswith("protocaffe"):
            module.compile()  # protocaffe's own (freezing only with fast_cpu=False)
            self.module = module
        else:
            self.module = torch.compile(module) if args.compile else module
        t = torch.from_numpy(x).to(self.device, dtype)
        self.x = t.contiguous(memory_format=torch.channels_last) if args.channels_last else t

    def __call__(self):
        import torch

        if self.impl == "opencv":
            self.net.setInput(self.x)
            return self.net.forward("score")
        with torch.no_grad():
            out = self.module(self.x)
            out = out["score"] if isinstance(out, dict) else out
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def output(self):
        out = self()
        return out if self.impl == "opencv" else out.float().cpu().numpy()


def live_bytes(args: argparse.Namespace, proto: Path, weights: Path, x) -> int:
    """protocaffe's activation peak: the most blob memory its generated code keeps alive."""
    import torch

    from protocaffe.runtime.api import load
    from protocaffe.runtime.timing import activation_peak_bytes

    module = load(proto, weights, device=args.device, dtype=args.dtype)
    t = torch.from_numpy(x).to(args.device, getattr(torch, args.dtype))
    return activation_peak_bytes(module, {"data": t})


def peak_memory(impl: str, args: argparse.Namespace, proto: Path, weights: Path, x) -> int:
    """Bytes one forward pass adds at its peak over the loaded model (this process)."""
    runner = Runner(impl, args, proto, weights, x)
    if args.device == "cuda":
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        runner()
        return torch.cuda.max_memory_allocated() - before
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
    runner()
    return (_status_kb("VmHWM") - before) * 1024


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch

    from protocaffe.runtime.api import compile_net
    from protocaffe.runtime.timing import blob_bytes

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.freezing:
        import torch._inductor.config

        torch._inductor.config.freezing = True
    h, w = (int(v) for v in args.size.split(","))
    shape = (1, 3, h, w)
    x = np.random.default_rng(0).uniform(-120, 130, shape).astype(np.float32)
    impls = [i for i in args.impls.split(",") if i]
    if args.device == "cuda" and "opencv" in impls:
        impls.remove("opencv")  # the pip OpenCV wheel has no CUDA backend
        print("note: OpenCV skipped on CUDA (no CUDA backend in opencv-python)", file=sys.stderr)

    if args.memory_of:
        workdir = Path(args.workdir)
        proto, weights = workdir / "fcn8s.prototxt", workdir / "fcn8s.caffemodel"
        print(json.dumps({"peak": peak_memory(args.memory_of, args, proto, weights, x)}))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        proto, weights = make_weights(Path(tmp), shape)
        runners = [Runner(i, args, proto, weights, x) for i in impls]
        ref = runners[0].output()
        agree = {r.impl: float(np.abs(r.output() - ref).max() / np.abs(ref).max()) for r in runners}
        for _ in range(args.warmup):
            for r in runners:
                r()
        times: dict[str, list[float]] = {r.impl: [] for r in runners}
        for i in range(args.iterations):
            for r in runners[i % len(runners) :] + runners[: i % len(runners)]:
                start = time.perf_counter()
                r()
                times[r.impl].append(time.perf_counter() - start)
        del runners
        memory: dict[str, int] = {}
        if not args.no_memory:
            for impl in impls:
                cmd = [sys.executable, __file__, *(argv or sys.argv[1:])]
                cmd += ["--memory-of", impl, "--workdir", tmp]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                memory[impl] = json.loads(done.stdout.strip().splitlines()[-1])["peak"]
        blobs = blob_bytes(compile_net(proto), 4 if args.dtype == "float32" else 2)
        live = live_bytes(args, proto, weights, x) if "protocaffe" in impls else None

    results = {
        "device": args.device,
        "dtype": args.dtype,
        "input": list(shape),
        "threads": args.threads,
        "torch": torch.__version__,
        "iterations": args.iterations,
        "blob_bytes": blobs,
        "protocaffe_live_activation_bytes": live,
        "impls": {
            impl: {
                "median_ms": float(np.median(times[impl])) * 1e3,
                "min_ms": min(times[impl]) * 1e3,
                "peak_bytes": memory.get(impl),
                "max_rel_diff": agree[impl],
            }
            for impl in impls
        },
    }
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def render(results: dict) -> str:
    base = results["impls"].get("handwritten", {}).get("median_ms")
    mib = 1024 * 1024
    lines = [
        f"FCN-8s forward, input {'x'.join(map(str, results['input']))}, {results['device']} "
        f"{results['dtype']}, {results['threads']} threads, torch {results['torch']}, "
        f"median/min of {results['iterations']} interleaved rounds",
        "",
        "| implementation | median ms | min ms | vs hand-written | peak forward memory | "
        "max rel. diff vs protocaffe |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for impl, r in results["impls"].items():
        ratio = f"{r['median_ms'] / base:.3f}x" if base else "-"
        peak = f"{r['peak_bytes'] / mib:.0f} MiB" if r["peak_bytes"] is not None else "-"
        lines.append(
            f"| {impl} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {ratio} | {peak} | "
            f"{r['max_rel_diff']:.1e} |"
        )
    lines.append("")
    lines.append(
        f"Sum of all blob sizes (what Caffe allocates): {results['blob_bytes'] / mib:.0f} MiB; "
        "protocaffe's live activations at their peak (inputs and intermediates, freed after "
        f"last use): {(results['protocaffe_live_activation_bytes'] or 0) / mib:.0f} MiB"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
