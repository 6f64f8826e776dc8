"""`protocaffe export NET --onnx OUT.onnx | --torch-export OUT.pt2`: take a net elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocaffe.commands._args import (
    add_input_shapes,
    add_net_arg,
    check_output_path,
    parse_input_shapes,
    write_error,
)

DESCRIPTION = """\
Load NET (with --weights, else filler-initialised blobs) at TEST phase, trace it with
torch.export and write an ONNX model (opset 18, through torch's exporter) or a torch.export
program (.pt2, loadable with torch.export.load without protocaffe). The batch size stays
dynamic, and with --dynamic hw so do height and width (an error names the layer that fixes
them). The ONNX model is run in onnxruntime on random inputs and compared with protocaffe's own
output; --report lists the ONNX ops each Caffe layer became."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a net to ONNX or a torch.export program, checked in onnxruntime",
        description=DESCRIPTION,
    )
    add_net_arg(p)
    p.add_argument("-w", "--weights", metavar="W.caffemodel", help="Caffe weights to load")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model")
    out.add_argument("--torch-export", metavar="OUT.pt2", help="write a torch.export program")
    add_input_shapes(
        p, "export for this input shape (repeatable), e.g. data=1,3,500,500", "--input"
    )
    p.add_argument(
        "--dynamic",
        action="append",
        choices=("batch", "hw"),
        default=[],
        help="sizes left dynamic (batch always; hw: also height and width)",
    )
    p.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold BatchNorm (+ Scale) into the Convolution/InnerProduct before it",
    )
    p.add_argument("--report", action="store_true", help="print Caffe layer -> ONNX ops")
    p.add_argument("--seed", type=int, default=0, help="seed for filler-initialised blobs (0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError

    onnx = args.onnx is not None  # `--onnx ''` is still --onnx (a bad path, below)
    target = Path(args.onnx if onnx else args.torch_export)
    want = ".onnx" if onnx else ".pt2"
    if target.suffix != want:
        raise UsageError(f"{'--onnx' if onnx else '--torch-export'} writes a {want} file")
    if args.report and not onnx:
        raise UsageError("--report describes an ONNX export: use it with --onnx")
    check_output_path(target, "--onnx" if onnx else "--torch-export")
    shapes = parse_input_shapes(args.shape)

    from protocaffe.export.program import export_program, save_pt2
    from protocaffe.runtime.api import load

    module = load(
        args.net,
        args.weights,
        device="cpu",
        input_shapes=shapes,
        seed=args.seed,
        fold_bn=args.fold_bn,
    )
    dynamic = {"batch", *args.dynamic}
    exported = export_program(module, dynamic, strict_hw="hw" in dynamic)
    for note in exported.notes:
        print(f"note: {note}")
    if args.torch_export:
        save_pt2(exported, str(target))
        print(f"wrote {target} ({_dims(exported)})")
        return 0
    return _onnx(exported, target, args.report)


def _dims(exported: object) -> str:
    from protocaffe.export.program import Exported

    assert isinstance(exported, Exported)
    parts = []
    for name, shape in zip(exported.input_names, exported.module.input_shapes, strict=True):
        axes = exported.dynamic.get(name, [])
        dims = [
            "N"
            if i == 0 and i in axes
            else "H"
            if i == 2 and i in axes
            else "W"
            if i == 3 and i in axes
            else "?"
            if i in axes
            else str(d)
            for i, d in enumerate(shape)
        ]
        parts.append(f"{name}: {'x'.join(dims)}")
    return "inputs " + ", ".join(parts)


def _onnx(exported: object, target: Path, report: bool) -> int:
    from protocaffe.export.onnx import check_onnx, layer_ops, render_layer_ops, save_onnx
    from protocaffe.export.program import Exported

    assert isinstance(exported, Exported)
    try:
        model = save_onnx(exported, str(target))
    except OSError as err:
        raise write_error(target, err.strerror or err) from None
    shapes = [list(exported.module.input_shapes), _other_shapes(exported)]
    checks = check_onnx(str(target), exported, [s for s in shapes if s])
    print(f"wrote {target} (opset {model.opset_import[0].version}, {_dims(exported)})")
    for c in checks:
        shown = ", ".join("x".join(map(str, s)) for s in c.shapes)
        print(
            f"onnxruntime {shown}: max error {c.max_error:.2e} of the output's scale"
            + (
                " (the outputs are all zero: a check with --weights says more)"
                if c.all_zero
                else ""
            )
        )
    if report:
        graph = exported.module.caffe_graph
        print()
        print(
            render_layer_ops(layer_ops(model, exported), {la.name: la.type for la in graph.layers})
        )
    worst = max(c.max_error for c in checks)
    if worst > 1e-4:
        print(f"error: the ONNX model differs from protocaffe by {worst:.2e} of the output's scale")
        return 1
    return 0


def _other_shapes(exported: object) -> list[tuple[int, ...]]:
    """Input shapes that exercise the dynamic sizes (batch + 1, height/width - 1 ... + 7)."""
    from protocaffe.export.program import Exported

    assert isinstance(exported, Exported)
    out = []
    changed = False
    for name, shape in zip(exported.input_names, exported.module.input_shapes, strict=True):
        s = list(shape)
        for axis in exported.dynamic.get(name, []):
            s[axis] += 1 if axis == 0 else 7
            changed = True
        out.append(tuple(s))
    return out if changed else []
