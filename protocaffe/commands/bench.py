"""`protocaffe bench NET`: forward-pass timing per layer and in total, like `caffe time`."""

from __future__ import annotations

import argparse
import json

from protocaffe.commands._args import (
    add_input_shapes,
    add_net_arg,
    add_runtime_args,
    int_at_least,
    parse_input_shapes,
)

DESCRIPTION = """\
Time NET's forward pass on random input (weights from the layers' fillers): W warm-up runs,
then N timed runs (by default as many as fit in about 2 seconds, at most 10), reporting the
median and minimum. The whole-net time calls the module as `protocaffe run` does (compiled with
--compile); the per-layer table replays the graph one layer at a time (eager, synchronised
after each layer on CUDA), timing only each layer's calls, in network order with each layer's
share of the per-layer total; what the replay spent between the calls is shown apart."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="time the forward pass per layer and in total", description=DESCRIPTION
    )
    add_net_arg(p)
    add_input_shapes(
        p, "input blob shape (repeatable), e.g. data=1,3,500,500; default: the net's own", "--input"
    )
    p.add_argument(
        "--iterations",
        type=int_at_least(1),
        metavar="N",
        help="timed runs (default: as many as fit in about 2 s, at most 10)",
    )
    p.add_argument(
        "--warmup", type=int_at_least(0), default=1, metavar="W", help="untimed runs (1)"
    )
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from protocaffe.commands.run import load_model, to_input
    from protocaffe.runtime.timing import activation_peak_bytes, blob_bytes, layer_times, time_calls

    shapes = parse_input_shapes(args.shape)
    model = load_model(args, weights=None, input_shapes=shapes or None, quiet_fillers=True)
    module, device, dtype = model.module, model.device, model.dtype
    gen = torch.Generator().manual_seed(args.seed)
    inputs = {
        value.blob: to_input(model, torch.randn(value.shape, generator=gen))
        for value in module.caffe_graph.inputs
    }

    # The memory pass runs the eager graph: for an uncompiled module it is the first warm-up,
    # and that warm-up also serves the per-layer replay (the same eager kernels).
    peak = activation_peak_bytes(module, inputs)
    eager_warmups = max(args.warmup - 1, 0)
    warmup_layers = args.warmup if args.compile else 0
    with torch.no_grad():
        total = time_calls(
            lambda: module(inputs),
            args.iterations,
            args.warmup if args.compile else eager_warmups,
            device,
        )
        replay = (
            None
            if args.no_layers
            # the eager module's warm-up above warmed the kernels the replay runs
            else layer_times(module, inputs, args.iterations, warmup_layers, device)
        )
    layers = replay.layers if replay is not None else []

    result = {
        "net": args.net,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "channels_last": args.channels_last,
        "compile": args.compile,
        "inputs": {v.blob: list(v.shape) for v in module.caffe_graph.inputs},
        "iterations": len(total.samples),
        "warmup": args.warmup,
        "peak_activation_bytes": peak,
        "blob_bytes": blob_bytes(module.caffe_graph, torch.empty((), dtype=dtype).element_size()),
        "forward_ms": {"median": total.median * 1e3, "min": total.min * 1e3},
        "layer_replay_overhead_ms": replay.overhead.median * 1e3 if replay is not None else None,
        "layers": [
            {
                "name": t.name,
                "type": t.type,
                "top_shapes": [list(s) for s in t.top_shapes],
                "median_ms": t.stats.median * 1e3,
                "min_ms": t.stats.min * 1e3,
            }
            for t in layers
        ],
    }
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def render(result: dict) -> str:
    from protocaffe.layers.base import shape_str

    lines = []
    layers = result["layers"]
    if layers:
        layer_sum = sum(t["median_ms"] for t in layers) or 1.0
        rows = [("layer", "type", "top shape", "median ms", "min ms", "%")]
        for t in layers:
            rows.append(
                (
                    t["name"],
                    t["type"],
                    ", ".join(shape_str(s) for s in t["top_shapes"]),
                    f"{t['median_ms']:.3f}",
                    f"{t['min_ms']:.3f}",
                    f"{100 * t['median_ms'] / layer_sum:.1f}",
                )
            )
        rows.append(("sum of layers", "", "", f"{layer_sum:.3f}", "", "100.0"))
        overhead = result["layer_replay_overhead_ms"]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for i, row in enumerate(rows):
            left = "  ".join(c.ljust(w) for c, w in zip(row[:3], widths[:3], strict=True))
            right = "  ".join(c.rjust(w) for c, w in zip(row[3:], widths[3:], strict=True))
            lines.append(f"{left}  {right}")
            if i == 0 or i == len(rows) - 2:
                lines.append("-" * len(lines[-1]))
        lines.append(
            f"(layers timed one call at a time, eager; the replay also spent {overhead:.3f} ms "
            "per pass between calls, charged to no layer)"
        )
        lines.append("")
    inputs = ", ".join(f"{k} {shape_str(v)}" for k, v in result["inputs"].items())
    mode = " channels_last" * result["channels_last"] + " compiled" * result["compile"]
    fwd = result["forward_ms"]
    runs = result["iterations"]
    lines.append(
        f"forward: median {fwd['median']:.3f} ms, min {fwd['min']:.3f} ms over "
        f"{runs} run{'s' * (runs != 1)} ({result['warmup']} warm-up) on {result['device']} "
        f"{result['dtype']}{mode}; input {inputs}"
    )
    mib = 1024 * 1024
    lines.append(
        f"memory: blobs peak at {result['peak_activation_bytes'] / mib:.1f} MiB live "
        f"(all blobs together: {result['blob_bytes'] / mib:.1f} MiB, what Caffe allocates)"
    )
    return "\n".join(lines)
