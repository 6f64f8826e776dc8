"""`protocaffe run NET --input IMG|DIR|NPY`: run a net on images or arrays and save the results.

Inputs are prepared like Caffe's own tools (BGR, 0..255, mean subtracted; defaults from the data
layer's transform_param, flags win). The net is re-shaped to every input size it meets (FCNs take
any size; CaffeModule keeps one variant per shape, all sharing the weights); same-shape inputs
run together in batches. Segmentation outputs become PNGs, classifier outputs a top-k list, and
anything else a .npy file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocaffe.commands._args import (
    add_input_shapes,
    add_net_arg,
    add_runtime_args,
    check_input_path,
    int_at_least,
    parse_input_shapes,
)
from protocaffe.diagnostics import CompileError, input_error

if TYPE_CHECKING:
    from protocaffe.runtime.preprocess import Preprocess, Sample

DESCRIPTION = """\
Run NET on images (or .npy blobs) and write what it produced to --output (./protocaffe-out):
for a segmentation net (per-pixel class scores at the input's size) a VOC-coloured PNG, an
overlay on the input and a class-index PNG per image, plus a line per image with the classes
present; for a classifier the top-k classes; otherwise the output blob as .npy. Without
--weights the layers' fillers initialise the net, which is only useful for smoke tests."""

DEFAULT_OUTPUT = "protocaffe-out"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="run a net on images/arrays and save usable outputs", description=DESCRIPTION
    )
    add_net_arg(p)
    p.add_argument("-w", "--weights", metavar="W.caffemodel", help="trained weights")
    p.add_argument(
        "--input",
        action="extend",
        nargs="+",
        required=True,
        metavar="IMG|DIR|NPY",
        help="image files, directories of them, or .npy blobs (CxHxW or NxCxHxW)",
    )
    add_input_shapes(
        p, "the net's input blob shape (repeatable), for nets that do not fix it: data=1,3,H,W"
    )
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help=f"(./{DEFAULT_OUTPUT})")
    p.add_argument(
        "--mean",
        metavar="B,G,R|FILE",
        help="per-channel mean in the net's channel order, e.g. 104.00699,116.66877,122.67892, "
        "or a mean image (.binaryproto or .npy, CxHxW) subtracted pixel by pixel",
    )
    p.add_argument("--scale", type=float, help="multiply after subtracting the mean")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--bgr", dest="bgr", action="store_true", default=None, help="(default)")
    order.add_argument("--rgb", dest="bgr", action="store_false", help="feed RGB channel order")
    p.add_argument("--resize", metavar="H,W", help="resize images before preprocessing")
    p.add_argument(
        "--batch-size",
        type=int_at_least(1),
        metavar="N",
        help="same-size inputs per forward pass (default: as many as fit 1 GiB of activations, "
        "up to 32, when the net computes each batch item on its own; otherwise 1)",
    )
    p.add_argument("--top-k", type=int_at_least(1), default=5, metavar="K", help="classifier: (5)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line")
    p.add_argument("--save-blobs", metavar="A,B", help="also save these blobs to <image>_blobs.npz")
    p.add_argument("--output-blob", metavar="NAME", help="the blob to interpret (default: outputs)")
    p.add_argument(
        "--allow-missing", action="store_true", help="layers missing from --weights keep fillers"
    )
    add_runtime_args(p)
    p.set_defaults(func=run)


# --- the module ------------------------------------------------------------------------------


@dataclass
class Model:
    """A lowered net ready to call, with the settings its inputs must follow."""

    module: Any  # CaffeModule; with --compile its __call__ is torch.compile'd, its graph stays
    device: Any
    dtype: Any
    channels_last: bool


def load_model(
    args: argparse.Namespace,
    weights: str | None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    outputs: Sequence[str] = (),
    quiet_fillers: bool = False,
) -> Model:
    """protocaffe.load with the command-line settings; reports warnings as diagnostics."""
    import warnings

    from protocaffe.cli import UsageError
    from protocaffe.runtime.api import load, resolve_device, resolve_dtype

    try:
        device = resolve_device(args.device)
    except ValueError as err:  # --device cuda where torch has no CUDA: bad usage, not a bug
        raise UsageError(f"--device {args.device}: {str(err).split(': ', 1)[-1]}") from None
    dtype = resolve_dtype(args.dtype)
    if weights is None and not quiet_fillers:
        print(
            f"warning: no --weights: using Caffe fillers (seed {args.seed}); "
            "outputs are not meaningful",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights report's are printed below, located
        module = load(
            args.net,
            weights=weights,
            device=device,
            dtype=dtype,
            channels_last=args.channels_last,
            input_shapes=input_shapes,
            outputs=list(outputs),
            seed=args.seed,
            allow_missing=getattr(args, "allow_missing", False),
            allow_oversize=args.force,
            dialect=args.dialect,
        )
    report_load(module)
    if args.compile:
        module.compile()
    return Model(module, device, dtype, args.channels_last)


def report_load(module: Any) -> None:
    """Print the net's warnings and the weights report's, located (load() itself sends the
    latter through `warnings`, which callers here silence)."""
    from protocaffe.diagnostics import print_diagnostics

    report = module.weights_report
    print_diagnostics(
        [d for d in module.caffe_graph.diagnostics if d.severity != "note"]
        + (report.diagnostics if report is not None else [])
    )


def _resize_hint(graph: Any) -> str:
    from protocaffe.layers.base import shape_str

    declared = ", ".join(f"{v.blob} {shape_str(v.shape)}" for v in graph.inputs)
    value = graph.inputs[0]
    size = f" {value.shape[-2]},{value.shape[-1]}" if len(value.shape) == 4 else " H,W"
    return f"the net was defined for {declared}: pass --resize{size} to match it"


def check_resizable(module: Any, shapes: dict[str, tuple[int, ...]], path: Any = None) -> Any:
    """The module re-specialised to new input shapes; fails clearly when the net cannot take
    them (an InnerProduct after the spatial axes whose loaded weights fix the size, a pooling
    window larger than its input): the module's InputShapeError, its hint naming --resize."""
    from protocaffe.lower.builder import declared_shapes_hint
    from protocaffe.runtime.guards import InputShapeError

    try:
        return module.reshaped([shapes[n] for n in module.input_names])
    except InputShapeError as err:
        generic = declared_shapes_hint(module.caffe_graph)
        for d in err.diagnostics:
            if d.hint == generic:
                d.hint = _resize_hint(module.caffe_graph)
                if path is not None and d.span is None:
                    d.message = f"{path}: {d.message}"
        raise


def fit_fixed_size(module: Any, feed: Any, prep: Preprocess) -> None:
    """Resize images to the declared input size when the weights fix it (an InnerProduct
    after the spatial axes), as Caffe's classification example resizes to the input geometry.
    --resize and transform_param.crop_size take precedence; .npy inputs are never resized."""
    from protocaffe.runtime.guards import InputShapeError

    if prep.resize is not None or prep.crop_size or len(feed.shape) != 4:
        return
    n, c, h, w = feed.shape
    try:
        check_resizable(module, {feed.blob: (n, c, h + 32, w + 32)})
    except InputShapeError:
        prep.resize = (h, w)
        print(
            f"note: the net's weights fix input '{feed.blob}' at {h}x{w}; images are resized "
            "to it (--resize H,W chooses another size)",
            file=sys.stderr,
        )


def to_input(model: Model, array: Any) -> Any:
    """A numpy array or tensor as an input blob on the model's device, dtype and layout."""
    import torch

    x = torch.as_tensor(array).to(device=model.device, dtype=model.dtype)
    if model.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# --- inputs ----------------------------------------------------------------------------------


def _parse_hw(text: str | None) -> tuple[int, int] | None:
    from protocaffe.cli import UsageError

    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--resize expects H,W (two positive integers), not {text!r}") from None
    if h <= 0 or w <= 0:
        raise UsageError(f"--resize expects H,W (two positive integers), not {text!r}")
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS and h * w > Image.MAX_IMAGE_PIXELS:
        raise UsageError(
            f"--resize {h},{w} asks for {h * w} pixels; images are limited to "
            f"{Image.MAX_IMAGE_PIXELS} (PIL's decompression-bomb limit)"
        )
    return h, w


def preprocess_for(graph: Any, args: argparse.Namespace) -> Preprocess:
    """The fed input's preparation: its data layer's transform_param, overridden by flags."""
    from protocaffe.cli import UsageError
    from protocaffe.runtime.preprocess import for_input, parse_floats

    mean_file = _mean_file_arg(args.mean)
    try:
        mean = None if mean_file is not None else parse_floats(args.mean, "--mean")
    except CompileError as err:
        raise UsageError(err.diagnostics[0].message) from None
    return for_input(
        fed_input(graph),
        args.net,
        mean=mean,
        mean_file=mean_file,
        scale=args.scale,
        bgr=args.bgr,
        resize=_parse_hw(args.resize),
    )


def _mean_file_arg(text: str | None) -> str | None:
    """--mean names a mean file (.binaryproto / .npy) rather than B,G,R values."""
    if text is None:
        return None
    if Path(text).suffix.lower() in (".binaryproto", ".npy", ".proto") or Path(text).is_file():
        if not Path(text).is_file():
            raise input_error(f"--mean {text}: no such file")
        return text
    return None


def proto_span(layer: Any) -> Any:
    return layer.span if layer is not None else None


def fed_input(graph: Any) -> Any:
    """The one input blob images are fed into."""
    if not graph.inputs:
        raise input_error("this net has no input blob to feed (no Input or data layer)")
    if len(graph.inputs) > 1:
        names = ", ".join(f"'{v.blob}'" for v in graph.inputs)
        raise input_error(
            f"this net has {len(graph.inputs)} input blobs ({names}); `protocaffe run` feeds one",
            proto_span(graph.inputs[1].producer),
            hint="use the deploy prototxt (a single Input layer), not a train/val net",
        )
    return graph.inputs[0]


def check_channels(value: Any, sample: Sample) -> None:
    want, got = value.shape, sample.blob.shape
    if len(want) != len(got) or (len(want) > 1 and want[1] != got[1]):
        from protocaffe.layers.base import shape_str

        raise input_error(
            f"{sample.path}: gives a {shape_str(got)} blob but input '{value.blob}' is "
            f"{shape_str(want)} ({'channels' if len(want) == len(got) else 'axes'} differ)",
            proto_span(value.producer),
        )


# --- the command -----------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (redrawn on a terminal, plain lines otherwise)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.enabled = total > 1 or self.tty

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {self.done}/{self.total} {label}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line + ("\n" if self.done == self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    import torch

    from protocaffe.runtime.postprocess import read_labels
    from protocaffe.runtime.preprocess import expand_inputs, group_by_shape, iter_samples

    for flag in ("weights", "labels"):
        path = getattr(args, flag)
        if path is not None:
            check_input_path(path, f"--{flag}")
    labels = read_labels(args.labels)
    _parse_hw(args.resize)  # a bad --resize is bad usage: say so before loading the net
    save_blobs = [b.strip() for b in (args.save_blobs or "").split(",") if b.strip()]
    paths = expand_inputs(args.input)
    wanted = [args.output_blob] if args.output_blob else []
    shapes = parse_input_shapes(args.shape) or None
    model = load_model(args, args.weights, input_shapes=shapes, outputs=[*wanted, *save_blobs])
    graph = model.module.caffe_graph
    feed = fed_input(graph)
    prep = preprocess_for(graph, args)
    fit_fixed_size(model.module, feed, prep)
    interpret = wanted or [v.blob for v in graph.outputs]

    batch_size = batch_size_for(model, args.batch_size)
    if batch_size is not None:
        paths = group_by_shape(paths, prep)
    out_dir = Path(args.output)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = err.strerror or err
        raise input_error(f"--output {out_dir}: cannot create the directory: {why}") from None
    writer = Writer(out_dir, labels, args.top_k, interpret, save_blobs)
    checked = {tuple(feed.shape)}
    progress = Progress(len(paths))
    passes = 0
    for batch in batches(iter_samples(paths, prep), batch_size or (lambda _: 1)):
        passes += 1
        for sample in batch:
            check_channels(feed, sample)
        blob = batch[0].blob if len(batch) == 1 else _concat([s.blob for s in batch])
        shape = tuple(blob.shape)
        if shape not in checked:
            check_resizable(model.module, {feed.blob: shape}, batch[0].path)
            checked.add(shape)
        with torch.no_grad():  # the module re-shapes itself per input shape, sharing weights
            result = model.module({feed.blob: to_input(model, blob)})
        arrays = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in result.items()}
        start = 0
        for sample in batch:
            n = sample.blob.shape[0]
            writer.write(sample, {k: a[start : start + n] for k, a in arrays.items()})
            start += n
            progress.step(sample.path.name)
    writer.finish()
    done = f"wrote results for {len(paths)} input(s) to {out_dir}/"
    print(f"{done} ({passes} forward pass{'es' if passes != 1 else ''})", file=sys.stderr)
    return 0


def _concat(blobs: list[Any]) -> Any:
    import numpy as np

    return np.concatenate(blobs, axis=0)


def batch_size_for(model: Any, given: int | None) -> Callable[[Sample], int] | None:
    """How many samples of the first one's blob shape run together (None: one at a time, in
    input order): `--batch-size`, or by default as many as `auto_batch_size` allows when the
    net computes each batch item on its own (`batch_blocker`)."""
    from protocaffe.runtime.batching import auto_batch_size, batch_blocker

    if given is not None:
        return None if given == 1 else lambda _: given
    module = model.module
    if batch_blocker(module.caffe_graph) is not None:
        return None
    sizes: dict[tuple[int, ...], int] = {}

    def size(first: Sample) -> int:
        shape = (1, *first.blob.shape[1:])
        if shape not in sizes:  # a size the net cannot take fails here, located and hinted
            one = check_resizable(module, {module.input_names[0]: shape}, first.path)
            sizes[shape] = auto_batch_size(one.caffe_graph, model.dtype, model.device)
        return sizes[shape]

    return size


def batches(samples: Any, size: Callable[[Sample], int]) -> Any:
    """Consecutive samples of one blob shape (bar the batch axis), at most `size(first)` at a
    time."""
    batch: list[Sample] = []
    for sample in samples:
        if batch and (
            batch[0].blob.shape[1:] != sample.blob.shape[1:] or len(batch) >= size(batch[0])
        ):
            yield batch
            batch = []
        batch.append(sample)
    if batch:
        yield batch


class Writer:
    """Turns one input's output blobs into files and a summary line on stdout; classifier
    results are gathered into topk.json and topk.csv (one row per input, item and rank)."""

    def __init__(
        self,
        out_dir: Path,
        labels: list[str] | None,
        k: int,
        interpret: list[str],
        save_blobs: list[str],
    ) -> None:
        self.out_dir = out_dir
        self.labels = labels
        self.k = k
        self.interpret = interpret
        self.save_blobs = save_blobs
        self.stems: set[str] = set()
        self.checked_labels = labels is None
        self.top: list[dict[str, Any]] = []  # classifier results, for topk.json / topk.csv

    def check_labels(self, blob: str, classes: int) -> None:
        """Warn once when --labels does not name one class per output channel."""
        if self.checked_labels or self.labels is None:
            return
        self.checked_labels = True
        if len(self.labels) != classes:
            print(
                f"warning: --labels has {len(self.labels)} names but '{blob}' scores "
                f"{classes} classes; classes without a name are shown by index",
                file=sys.stderr,
            )

    def finish(self) -> None:
        """Write the classifier results gathered so far (nothing when there are none)."""
        if not self.top:
            return
        import csv
        import json

        (self.out_dir / "topk.json").write_text(json.dumps(self.top, indent=2) + "\n")
        with open(self.out_dir / "topk.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["input", "blob", "item", "rank", "class", "label", "score"])
            for entry in self.top:
                for rank, t in enumerate(entry["top"], 1):
                    row = [entry["input"], entry["blob"], entry["item"], rank]
                    out.writerow([*row, t["class"], t["label"], f"{t['score']:.6g}"])

    def name(self, index: int) -> str:
        return self.labels[index] if self.labels and index < len(self.labels) else str(index)

    def unique_stem(self, path: Path) -> str:
        stem, n = path.stem, 2
        while stem in self.stems:
            stem, n = f"{path.stem}-{n}", n + 1
        self.stems.add(stem)
        return stem

    def write(self, sample: Sample, arrays: dict[str, Any]) -> None:
        import numpy as np

        from protocaffe.runtime import postprocess as post

        stem = self.unique_stem(sample.path)
        hw = tuple(sample.blob.shape[2:]) if sample.blob.ndim == 4 else None
        parts = []
        for blob in self.interpret:
            out = arrays[blob]
            tag = f"{stem}_{blob}" if len(self.interpret) > 1 else stem
            prefix = f"{blob}: " if len(self.interpret) > 1 else ""
            if out.shape[0] == 1 and post.is_segmentation(out.shape, hw):
                self.check_labels(blob, out.shape[1])
                labels = out[0].argmax(axis=0)
                post.save_rgb_png(post.colorize(labels), self.out_dir / f"{tag}_seg.png")
                post.save_label_png(labels, self.out_dir / f"{tag}_labels.png")
                if sample.image is not None:
                    overlaid = post.overlay(sample.image, labels)
                    post.save_rgb_png(overlaid, self.out_dir / f"{tag}_overlay.png")
                share = post.class_shares(labels)
                parts.append(prefix + ", ".join(f"{self.name(c)} {p:.1f}%" for c, p in share))
            elif post.is_classifier(out.shape):  # one line per item of an NxC... .npy
                self.check_labels(blob, out.shape[1])
                for i in range(out.shape[0]):
                    top = post.top_k(out[i], self.k)
                    item = f"[{i}] " if out.shape[0] > 1 else ""
                    parts.append(
                        f"{prefix}{item}top-{len(top)}: "
                        + ", ".join(f"{self.name(c)} ({s:.4f})" for c, s in top)
                    )
                    self.top.append(
                        {
                            "input": str(sample.path),
                            "blob": blob,
                            "item": i,
                            "top": [
                                {"class": int(c), "label": self.name(c), "score": float(s)}
                                for c, s in top
                            ],
                        }
                    )
            else:
                np.save(self.out_dir / f"{tag}.npy", out)
                parts.append(f"{prefix}{'x'.join(map(str, out.shape))} -> {tag}.npy")
        if self.save_blobs:
            np.savez(self.out_dir / f"{stem}_blobs.npz", **{b: arrays[b] for b in self.save_blobs})
        print(f"{sample.path}: " + "; ".join(parts))
