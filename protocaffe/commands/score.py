"""`protocaffe score NET --weights W --images LIST|DIR --labels DIR|LIST`: mean IoU and friends.

Images are prepared as `protocaffe run` prepares them (the net's transform_param, flags win),
run one at a time at their own size, and their argmax added to one confusion matrix
(protocaffe.fcn.score); the per-class table and the summary come from that matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from protocaffe.commands._args import (
    add_net_arg,
    add_runtime_args,
    check_input_path,
    check_output_path,
)
from protocaffe.diagnostics import input_error

DESCRIPTION = """\
Score a segmentation net on labelled images as FCN's score.py does: one confusion matrix over
the whole set (labels outside 0..C-1, such as 255 "void", are ignored), then pixel accuracy,
mean class accuracy, per-class and mean IoU, and frequency-weighted IoU. The net's output must
be per-pixel class scores (1xCxHxW) at the label's size. --images takes a folder or a list
file (ImageData-style `path [label]` lines, relative to the working directory or the list's
folder); --labels a folder of PNGs named after the images, or a list in the same order."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score", help="mean IoU of a segmentation net on labelled images", description=DESCRIPTION
    )
    add_net_arg(p, help="the deploy .prototxt, one input blob ('-': standard input)")
    p.add_argument("-w", "--weights", required=True, metavar="W.caffemodel")
    p.add_argument("--images", required=True, metavar="LIST|DIR")
    p.add_argument("--labels", required=True, metavar="DIR|LIST", help="class-id label PNGs")
    p.add_argument("--ignore", type=int, default=255, help="label value to skip (255)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line")
    p.add_argument("--output-blob", metavar="NAME", help="the score blob (default: the output)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.add_argument("--confusion", metavar="PNG", help="save the confusion matrix as a picture")
    p.add_argument("--mean", metavar="B,G,R|FILE", help="as in `run` (default: transform_param)")
    p.add_argument("--scale", type=float, help="as in `run` (default: transform_param)")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--bgr", dest="bgr", action="store_true", default=None, help="(default)")
    order.add_argument("--rgb", dest="bgr", action="store_false", help="feed RGB channel order")
    add_runtime_args(p)
    p.set_defaults(func=score, resize=None)


def score(args: argparse.Namespace) -> int:
    import torch

    from protocaffe.commands.run import (
        Progress,
        check_channels,
        check_resizable,
        fed_input,
        load_model,
        preprocess_for,
        to_input,
    )
    from protocaffe.fcn.score import Confusion, image_label_pairs, score_images
    from protocaffe.runtime.postprocess import read_labels
    from protocaffe.runtime.preprocess import Sample, iter_samples

    check_input_path(args.weights, "--weights")
    if args.classes is not None:
        check_input_path(args.classes, "--classes")
    if args.confusion is not None:
        check_output_path(args.confusion, "--confusion")
    pairs = image_label_pairs(args.images, args.labels)
    wanted = [args.output_blob] if args.output_blob else []
    model = load_model(args, args.weights, outputs=wanted)
    graph = model.module.caffe_graph
    feed = fed_input(graph)
    blob = args.output_blob or _score_blob(graph)
    prep = preprocess_for(graph, args)
    classes = graph.blob(blob).shape[1]
    names = _class_names(read_labels(args.classes), classes)
    checked = {tuple(feed.shape)}

    def prepare(path: Path) -> Sample:
        sample = next(iter_samples([path], prep))
        check_channels(feed, sample)
        shape = tuple(sample.blob.shape)
        if shape not in checked:
            check_resizable(model.module, {feed.blob: shape}, path)
            checked.add(shape)
        return sample

    def predict(sample: Sample) -> Any:
        with torch.no_grad():
            out = model.module({feed.blob: to_input(model, sample.blob)})[blob]
        return out.detach().to("cpu", torch.float32).numpy()

    confusion = Confusion(classes, args.ignore)
    progress = Progress(len(pairs))
    progress.enabled = progress.tty  # a bar on a terminal; nothing per image in logs
    for done in score_images(predict, pairs, prepare, confusion):
        progress.step(done.image.name)
    report = _report(confusion, names, len(pairs))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_table(report))
    if confusion.unknown:
        print(
            f"warning: {confusion.unknown} labelled pixels had values outside 0..{classes - 1} "
            f"other than --ignore {args.ignore}; they were not scored",
            file=sys.stderr,
        )
    if args.confusion is not None:
        save_confusion_png(confusion.hist, names, Path(args.confusion))
        print(f"wrote {args.confusion}", file=sys.stderr)
    return 0


def _score_blob(graph: Any) -> str:
    """The net's one output blob (a deploy net ends in its score)."""
    outputs = [v.blob for v in graph.outputs]
    if len(outputs) != 1:
        raise input_error(
            f"the net has {len(outputs)} outputs ({', '.join(outputs)}); say which one holds "
            "the class scores",
            hint="pass --output-blob NAME",
        )
    return outputs[0]


def _class_names(names: list[str] | None, classes: int) -> list[str]:
    if names is not None and len(names) != classes:
        print(
            f"warning: --classes names {len(names)} classes but the net scores {classes}; "
            "classes without a name are shown by index",
            file=sys.stderr,
        )
    names = names or []
    return [names[i] if i < len(names) and names[i] else str(i) for i in range(classes)]


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _report(confusion: Any, names: list[str], images: int) -> dict[str, Any]:
    from protocaffe.fcn.score import scores

    s = scores(confusion.hist)
    rows = confusion.hist.sum(1)
    return {
        "images": images,
        "pixels": int(confusion.hist.sum()),
        "ignored_pixels": confusion.ignored,
        "pixel_accuracy": _number(s.pixel_accuracy),
        "mean_accuracy": _number(s.mean_accuracy),
        "mean_iou": _number(s.mean_iou),
        "frequency_weighted_iou": _number(s.frequency_weighted_iou),
        "classes": [
            {
                "name": name,
                "iou": _number(s.iou[i]),
                "accuracy": _number(s.class_accuracy[i]),
                "pixels": int(rows[i]),
            }
            for i, name in enumerate(names)
        ],
        "confusion": confusion.hist.tolist(),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(report: dict[str, Any]) -> str:
    width = max(5, *(len(c["name"]) for c in report["classes"]))
    total = max(report["pixels"], 1)
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'acc':>6}  {'pixels':>7}"]
    lines.append(f"{'-' * width}  {'-' * 6}  {'-' * 6}  {'-' * 7}")
    for c in report["classes"]:
        share = f"{100 * c['pixels'] / total:.1f}%"
        lines.append(
            f"{c['name']:<{width}}  {_fmt(c['iou']):>6}  {_fmt(c['accuracy']):>6}  {share:>7}"
        )
    lines.append("")
    lines.append(
        f"{report['images']} images, {report['pixels']} labelled pixels "
        f"({report['ignored_pixels']} ignored)"
    )
    for key, label in (
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_accuracy", "mean class accuracy"),
        ("mean_iou", "mean IoU"),
        ("frequency_weighted_iou", "frequency-weighted IoU"),
    ):
        lines.append(f"{label + ':':<24}{_fmt(report[key])}")
    return "\n".join(lines)


def save_confusion_png(hist: Any, names: list[str], path: Path) -> None:
    """The confusion matrix, each row normalised to the share of its true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = hist.sum(1, keepdims=True)
    share = np.divide(hist, rows, out=np.zeros(hist.shape), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(2 + 0.5 * n, 1.6 + 0.5 * n))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
