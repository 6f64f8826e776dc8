"""`protocaffe convert NET --weights W -o OUT`: export a net's blobs to another format."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from protocaffe.commands._args import (
    add_dialect,
    add_force,
    add_net_arg,
    check_input_path,
    check_output_path,
    seed_value,
    write_error,
)

DESCRIPTION = """\
Load NET with its weights (or filler-initialised blobs when --weights is omitted) and write
them to OUT. The format follows OUT's extension: .safetensors and .pt hold the PyTorch
state_dict of the module `protocaffe.load` builds (keys like conv1.weight; sanitised layer
names are listed in the metadata), .caffemodel writes a Caffe weights file (with --fp16,
half-precision raw_data as OpenCV's shrinkCaffeModel and NVIDIA Caffe store it) and
.caffemodel.h5 an HDF5 snapshot (Caffe's snapshot_format: HDF5)."""

FORMATS = (".safetensors", ".pt", ".pth", ".caffemodel", ".caffemodel.h5")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="export weights to safetensors, a PyTorch state_dict or a caffemodel",
        description=DESCRIPTION,
    )
    add_net_arg(p)
    p.add_argument("-w", "--weights", metavar="W.caffemodel", help="Caffe weights to load")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=f"one of {FORMATS}")
    p.add_argument("--phase", type=str.upper, choices=("TRAIN", "TEST"), default="TEST")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="keep filler values for layers the weights lack; skip layers the net lacks",
    )
    p.add_argument(
        "--seed", type=seed_value, default=0, help="seed for filler-initialised blobs (0)"
    )
    add_force(p)
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold BatchNorm (+ Scale) into the Convolution/InnerProduct before it",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="store .caffemodel blobs as half-precision raw_data (half the size)",
    )
    add_dialect(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError

    out = Path(args.output)
    if not out.name.endswith(FORMATS):
        raise UsageError(f"cannot tell the output format of {out}: use one of {FORMATS}")
    if args.fp16 and out.suffix != ".caffemodel":
        raise UsageError("--fp16 applies to .caffemodel output")
    safetensors = None
    if out.suffix == ".safetensors":
        try:
            import safetensors.torch as safetensors
        except ImportError:
            raise UsageError(
                "writing .safetensors needs the safetensors package (pip install safetensors)"
            ) from None

    check_output_path(out, "-o")  # fail before loading (a large net takes a while)
    if args.weights is not None:
        check_input_path(args.weights, "--weights")

    from protocaffe.commands.run import report_load
    from protocaffe.runtime.api import load

    if args.weights is None:  # as `run` says it: the output is not a trained net
        print(
            f"warning: no --weights: writing Caffe fillers (seed {args.seed}); "
            "the weights are not trained",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights report's are printed below, located
        module = load(
            args.net,
            args.weights,
            device="cpu",
            phase=args.phase,
            seed=args.seed,
            allow_missing=args.allow_missing,
            fold_bn=args.fold_bn,
            allow_oversize=args.force,
            dialect=args.dialect,
        )
    report_load(module)
    try:
        _write(module, out, safetensors, args.fp16)
    except (OSError, RuntimeError) as err:  # torch and safetensors raise their own types
        raise write_error(out, getattr(err, "strerror", None) or str(err)) from None
    except Exception as err:
        if type(err).__name__ != "SafetensorError":
            raise
        raise write_error(out, str(err)) from None
    folded = len(getattr(module, "folded_layers", ()))
    print(
        f"wrote {out} ({len(module.state_dict())} tensors"
        + (f"; {folded} BatchNorm/Scale layers folded" if args.fold_bn else "")
        + ")"
    )
    return 0


def _write(module: object, out: Path, safetensors: object, fp16: bool) -> None:
    if out.suffix == ".caffemodel":
        from protocaffe.runtime.caffemodel import save_caffemodel

        save_caffemodel(module, out, fp16=fp16)
    elif out.name.endswith(".caffemodel.h5"):
        from protocaffe.runtime.caffemodel import save_hdf5

        save_hdf5(module, out)
    elif safetensors is not None:
        import json

        safetensors.save_file(
            _unshared(module.state_dict()),
            str(out),
            metadata={"caffe_names": json.dumps(module.caffe_names)},
        )
    else:
        import torch

        torch.save(module.state_dict(), out)


def _unshared(state: dict) -> dict:
    """safetensors refuses tensors that share memory (Caffe's shared params): copy repeats."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor.contiguous()
        seen.add(ptr)
    return out
