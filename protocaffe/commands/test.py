"""`protocaffe test NET --weights W --iterations N`: Caffe's `caffe test` (score a model).

N forward passes of the TEST-phase net on its data layers; each output element is logged per
batch (`Batch 0, accuracy = 0.5`), then the loss-weighted loss and the mean of every output over
the N batches, in Caffe's words and number format.
"""

from __future__ import annotations

import argparse

from protocaffe.commands._args import add_net_arg, int_at_least

DESCRIPTION = """\
Score NET with trained weights as `caffe test` does: run N batches from the net's data layers
(TEST phase unless --phase says otherwise) and print each output per batch, then the mean loss
and the mean of every output (accuracy, loss, ...) over the N batches."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "test", help="score a trained net on its data (caffe test)", description=DESCRIPTION
    )
    add_net_arg(p, help="the net .prototxt, with data layers ('-': standard input)")
    p.add_argument(
        "--weights", required=True, metavar="W[,W2]", help="trained weights (.caffemodel[.h5])"
    )
    p.add_argument(
        "--iterations", type=int_at_least(1), default=50, metavar="N", help="batches (50)"
    )
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST", help="(TEST)")
    p.add_argument("--stage", action="append", default=[], help="a NetState stage (repeatable)")
    p.add_argument("--level", type=int, help="NetState level")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (auto)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(float32)")
    p.add_argument("--seed", type=int, help="seed for fillers of layers without weights")
    p.add_argument(
        "--python-layers",
        action="append",
        metavar="DIR",
        help="allow the net's Python data layers, importing their modules from DIR",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from protocaffe.cli import UsageError
    from protocaffe.commands._args import read_input
    from protocaffe.data import make_feeder
    from protocaffe.frontend import load_net
    from protocaffe.runtime.api import resolve_device, resolve_dtype
    from protocaffe.train.net import TrainableNet, net_graph
    from protocaffe.train.report import num

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device {args.device}: {str(err).split(': ', 1)[-1]}") from None
    read_input(args.net)
    graph, python = net_graph(
        load_net(args.net), args.phase, args.stage, args.level, args.python_layers
    )
    net = TrainableNet(graph, device=device, dtype=resolve_dtype(args.dtype), seed=args.seed)
    for path in (w.strip() for w in args.weights.split(",") if w.strip()):
        net.copy_from(path)
    if graph.inputs:
        net.set_feed(make_feeder(graph, seed=args.seed, python_layers=python))
    f32 = np.float32
    sums: list[np.float32] = []
    loss = f32(0)
    for i in range(args.iterations):
        loss += f32(net.forward_loss())
        k = 0
        for output, values in net.output_values():
            for value in values.tolist():
                if i == 0:
                    sums.append(f32(value))
                else:
                    sums[k] += f32(value)
                k += 1
                print(f"Batch {i}, {output.blob} = {num(value)}")
    print(f"Loss: {num(loss / f32(args.iterations))}")
    k = 0
    for output, values in net.output_values():
        for _ in range(values.numel()):
            mean = sums[k] / f32(args.iterations)
            tail = ""
            if output.loss_weight:
                w = output.loss_weight
                tail = f" (* {num(w)} = {num(f32(w) * mean)} loss)"
            print(f"{output.blob} = {num(mean)}{tail}")
            k += 1
    return 0
