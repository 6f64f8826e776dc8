"""Peak forward memory of FCN-8s (or any net), measured in a fresh process: independent of load.

The child process loads the net, runs one warm-up forward, then resets the kernel's peak-RSS
counter (`/proc/self/clear_refs` = 5) and runs one more forward: the peak RSS it adds over the
RSS before the call is what one forward pass costs, one-time packing excluded (`--first` keeps
the first call instead). `--per-layer` replays the module node by node (fx.Interpreter) and
prints the layers at which RSS peaked. The figure is compared with the sum of all blob sizes,
which is what Caffe itself allocates for a forward pass.

    python benchmarks/bench_memory.py                       # default path, FCN-8s 1x3x500x500
    python benchmarks/bench_memory.py --no-fast-cpu         # the plain NCHW path
    python benchmarks/bench_memory.py --channels-last --per-layer
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prototxt", default=str(REPO / "models" / "fcn8s.prototxt"))
    p.add_argument("--size", default="500,500", help="input H,W (500,500)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-fast-cpu", action="store_true", help="load(..., fast_cpu=False)")
    p.add_argument("--first", action="store_true", help="measure the first call (with packing)")
    p.add_argument("--per-layer", action="store_true", help="the layers where RSS peaked")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak() -> int:
    """Reset VmHWM to the current RSS; returns that RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS") * 1024


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch import fx

    from protocaffe.runtime.api import load
    from protocaffe.runtime.timing import activation_peak_bytes, blob_bytes

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split(","))
    kwargs: dict[str, Any] = {"input_shapes": {"data": (1, 3, h, w)}}
    if args.no_fast_cpu:
        kwargs["fast_cpu"] = False
    module = load(
        args.prototxt,
        device="cpu",
        dtype=args.dtype,
        channels_last=args.channels_last,
        seed=0,
        **kwargs,
    )
    x = torch.rand(1, 3, h, w) * 255
    itemsize = torch.empty((), dtype=module._reference_tensor().dtype).element_size()
    result: dict[str, Any] = {"blob_bytes": blob_bytes(module.caffe_graph, itemsize)}
    with torch.no_grad():
        if not args.first:
            module(x)
        before = reset_peak()
        out = module(x)
        result["peak_bytes"] = status_kb("VmHWM") * 1024 - before
        del out
        result["live_bytes"] = activation_peak_bytes(module, {"data": module._as_tensor(x)})
        if args.per_layer:
            rows: list[tuple[int, str]] = []

            class Meter(fx.Interpreter):
                def run_node(self, n: fx.Node) -> Any:
                    start = reset_peak()
                    value = super().run_node(n)
                    layer = n.meta.get("caffe_layer", n.name)
                    rows.append((status_kb("VmHWM") * 1024 - start, layer))
                    return value

            base = reset_peak()
            Meter(module, garbage_collect_values=True).run({"data": module._as_tensor(x)})
            result["base_bytes"] = base
            result["per_layer"] = sorted(rows, reverse=True)[:8]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--child"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.stderr.write(done.stderr)
        return done.returncode
    r = json.loads(done.stdout.strip().splitlines()[-1])
    blobs = r["blob_bytes"]
    print(
        f"peak forward memory: {r['peak_bytes'] / MIB:.0f} MiB "
        f"({r['peak_bytes'] / blobs:.2f} of Caffe's sum of blobs, {blobs / MIB:.0f} MiB); "
        f"live activations at their peak: {r['live_bytes'] / MIB:.0f} MiB"
    )
    for extra, layer in r.get("per_layer", []):
        print(f"  {layer:<16} +{extra / MIB:.0f} MiB over the RSS before the node")
    return 0


if __name__ == "__main__":
    sys.exit(main())
