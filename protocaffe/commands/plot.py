"""`protocaffe plot LOG.jsonl -o curves.png`: training curves from `protocaffe train --log`.

Three panels against the iteration: the smoothed train loss (with the test nets' loss outputs),
the test nets' other outputs (accuracy, ...), and the learning rate. matplotlib's Agg backend
draws straight to the file, so no display is needed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from protocaffe.commands._args import check_output_path
from protocaffe.diagnostics import input_error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot",
        help="plot loss, test outputs and lr from a training log",
        description="Draw the loss, the test nets' outputs and the learning rate against the "
        "iteration from a JSON-lines log written by `protocaffe train --log`.",
    )
    p.add_argument("log", metavar="LOG.jsonl", help="the log written by `train --log`")
    p.add_argument(
        "-o", "--output", default="curves.png", metavar="PNG", help="image to write (curves.png)"
    )
    p.set_defaults(func=run)


def read_log(path: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines training log; a malformed line is a located error."""
    from protocaffe.commands._args import check_input_path
    from protocaffe.diagnostics import SourceFile, Span

    check_input_path(path, "LOG")  # not a directory or a device (/dev/zero)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise input_error(f"cannot read '{path}': {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        why = f"{err.reason} at byte {err.start}"
        raise input_error(f"{path}: not a UTF-8 text log ({why})") from None
    records = []
    source = SourceFile(path, text)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            span = Span(source, n, err.colno, n, err.colno + 1)
            raise input_error(f"not a JSON line: {err.msg}", span) from None
        if isinstance(record, dict) and "iter" in record:
            records.append(record)
    if not records:
        raise input_error(
            f"'{path}' has no training records", hint="write one with `protocaffe train --log`"
        )
    return records


def series(records: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{panel: {curve label: [(iter, value)]}} for the loss, test-output and lr panels."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {"loss": {}, "test": {}, "lr": {}}
    for r in records:
        it = r["iter"]
        if r.get("phase") == "train":
            if "loss" in r:
                panels["loss"].setdefault("train loss", []).append((it, r["loss"]))
            if "lr" in r:
                panels["lr"].setdefault("lr", []).append((it, r["lr"]))
        elif r.get("phase") == "test":
            for name, value in r.get("outputs", {}).items():
                values = value if isinstance(value, list) else [value]
                for k, v in enumerate(values):
                    label = f"test#{r.get('net', 0)} {name}" + (f"[{k}]" if len(values) > 1 else "")
                    panel = "loss" if "loss" in name else "test"
                    panels[panel].setdefault(label, []).append((it, v))
    return panels


def run(args: argparse.Namespace) -> int:
    check_output_path(args.output, "-o")  # before reading the log
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {k: v for k, v in series(read_log(args.log)).items() if v}
    titles = {"loss": "loss", "test": "test outputs", "lr": "learning rate"}
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True)
    for ax, (name, curves) in zip(list(getattr(axes, "flat", [axes])), panels.items(), strict=True):
        for label, points in curves.items():
            xs, ys = zip(*points, strict=True)
            style = {"drawstyle": "steps-post"} if name == "lr" else {}
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=label, **style)
        values = [y for points in curves.values() for _, y in points]
        if name != "test" and min(values) > 0 and max(values) > 100 * min(values):
            ax.set_yscale("log")  # an untrained first test, or lr decayed by decades
        ax.set_ylabel(titles[name])
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes_list = list(getattr(axes, "flat", [axes]))
    axes_list[-1].set_xlabel("iteration")
    fig.tight_layout()
    try:
        fig.savefig(args.output, dpi=100)
    except OSError as err:
        raise input_error(f"cannot write '{args.output}': {err.strerror or err}") from None
    finally:
        plt.close(fig)
    print(f"wrote {args.output}")
    return 0
