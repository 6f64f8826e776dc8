"""`protocaffe surgery fully-conv|interp|transplant`: FCN's net surgery, one command each.

The destination net's blobs start from its fillers (seeded by --seed) or, for `interp`, from a
weights file; the command changes them as the operation says, prints a table of what it did to
every layer and why, and writes the destination net's weights as a .caffemodel.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from protocaffe.commands._args import (
    add_input_shapes,
    check_input_path,
    check_output_path,
    parse_input_shapes,
    seed_value,
)

DESCRIPTION = """\
Net surgery for fully convolutional nets (the steps FCN's authors did in pycaffe):
  fully-conv  move a classifier's InnerProduct weights into the Convolution layers of its
              fully convolutional version (N x C*k*k read as N x C x k x k)
  interp      bilinear upsampling weights for Deconvolution layers (FCN's channel-diagonal
              variant, or Caffe's `bilinear` filler in every slice)
  transplant  copy every same-named blob of a .caffemodel into a net, coercing shapes where
              the element count allows and copying the overlapping part where it does not"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "surgery",
        help="FCN net surgery: fully-conv, interp (bilinear), transplant",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = p.add_subparsers(dest="operation", metavar="OPERATION", required=True)

    fc = ops.add_parser(
        "fully-conv",
        help="InnerProduct weights into Convolution layers",
        description="Copy SRC's weights into DST: InnerProduct layers into the same-named (or "
        "--map'ped) Convolution layers, reshaped; other layers with the name unchanged; DST "
        "layers SRC lacks keep their fillers.",
    )
    fc.add_argument("src", metavar="SRC.prototxt", help="the classifier net")
    fc.add_argument("src_weights", metavar="SRC.caffemodel", help="its weights")
    fc.add_argument("dst", metavar="DST.prototxt", help="the fully convolutional net")
    fc.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="SRC=DST",
        help="source layer -> destination layer name, e.g. fc6=fc6-conv (repeatable)",
    )
    _common(fc, "DST.caffemodel")
    fc.set_defaults(func=fully_conv)

    it = ops.add_parser(
        "interp",
        help="bilinear weights for Deconvolution layers",
        description="Write bilinear upsampling weights into NET's Deconvolution layers (all, "
        "or those --layers names). --variant fcn (default) puts the kernel on the channel "
        "diagonal W[c, c] and zeros elsewhere, as FCN's surgery.interp; --variant filler puts "
        "it in every (in, out) slice, as Caffe's `bilinear` weight filler (meant for group: C).",
    )
    it.add_argument("net", metavar="NET.prototxt")
    it.add_argument("weights", nargs="?", metavar="W.caffemodel", help="start from these weights")
    it.add_argument(
        "--layers",
        action="append",
        default=[],
        metavar="GLOB",
        help="Deconvolution layers to set, by name or glob, e.g. 'up*' (repeatable; "
        "comma-separated lists work too)",
    )
    it.add_argument("--variant", choices=("fcn", "filler"), default="fcn", help="(fcn)")
    _common(it, "OUT.caffemodel")
    it.set_defaults(func=interp)

    tp = ops.add_parser(
        "transplant",
        help="copy same-named blobs into another net",
        description="Copy every blob of SRC.caffemodel into the same-named layer of DST: "
        "'copied' when the shapes agree, 'coerced' when only the element counts do (row-major "
        "reshape, e.g. fc weights into a conv), 'partial' when the counts differ but the axes "
        "agree (the overlapping leading part on every axis, e.g. 21 classes into the first 21 "
        "of 60); 'skipped' otherwise. DST layers SRC lacks keep their fillers.",
    )
    tp.add_argument("src_weights", metavar="SRC.caffemodel")
    tp.add_argument("dst", metavar="DST.prototxt")
    _common(tp, "OUT.caffemodel")
    tp.set_defaults(func=transplant)


def _common(p: argparse.ArgumentParser, output: str) -> None:
    p.add_argument("-o", "--output", required=True, metavar=output, help="weights to write")
    add_input_shapes(
        p, "shape of a data layer's top the net cannot infer (repeatable), e.g. data=1,3,64,64"
    )
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST", help="(TEST)")
    p.add_argument("--seed", type=seed_value, default=0, help="seed for the fillers (0)")


def _load(args: argparse.Namespace, net: str, weights: str | None = None) -> Any:
    """The net as a CPU module (fillers, or `weights` over them); warnings printed, located."""
    import warnings

    from protocaffe.commands.run import report_load
    from protocaffe.runtime.api import load

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # report_load prints them, located
        module = load(
            net,
            weights,
            device="cpu",
            phase=args.phase,
            input_shapes=parse_input_shapes(args.shape),
            seed=args.seed,
            allow_missing=weights is not None,
        )
    report_load(module)
    return module


def _finish(module: Any, changes: list[Any], output: str, what: str) -> int:
    from protocaffe.fcn.surgery import render_changes, summary
    from protocaffe.runtime.caffemodel import save_caffemodel

    print(render_changes(changes))
    save_caffemodel(module, output)
    print(f"{what}: {summary(changes)}; wrote {output}", file=sys.stderr)
    return 0


def fully_conv(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError
    from protocaffe.fcn import surgery

    try:
        mapping = surgery.parse_map(args.map)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for path, flag in ((args.src, "SRC"), (args.src_weights, "SRC.caffemodel"), (args.dst, "DST")):
        check_input_path(path, flag)
    check_output_path(args.output, "--output")
    source = surgery.source_from_module(_load(args, args.src, args.src_weights))
    module = _load(args, args.dst)
    changes = surgery.fully_conv(source, module, mapping)
    return _finish(module, changes, args.output, "fully-conv")


def interp(args: argparse.Namespace) -> int:
    from protocaffe.diagnostics import print_diagnostics
    from protocaffe.fcn import surgery

    check_input_path(args.net, "NET")
    if args.weights is not None:
        check_input_path(args.weights, "W.caffemodel")
    check_output_path(args.output, "--output")
    module = _load(args, args.net, args.weights)
    patterns = [p.strip() for item in args.layers for p in item.split(",") if p.strip()]
    layers = surgery.select_layers(module, patterns)
    changes, warnings = surgery.interp(module, layers, args.variant)
    print_diagnostics(warnings)
    return _finish(module, changes, args.output, f"interp ({args.variant})")


def transplant(args: argparse.Namespace) -> int:
    from protocaffe.fcn import surgery

    check_input_path(args.src_weights, "SRC.caffemodel")
    check_input_path(args.dst, "DST")
    check_output_path(args.output, "--output")
    source = surgery.source_from_caffemodel(args.src_weights)
    module = _load(args, args.dst)
    changes = surgery.transplant(source, module)
    return _finish(module, changes, args.output, "transplant")
