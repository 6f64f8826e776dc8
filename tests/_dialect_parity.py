"""Shared by the fork-layer tests: run a small net through protocaffe and OpenCV's importer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def net_text(inputs: dict[str, tuple[int, ...]], body: str) -> str:
    """`body` after one Input layer per blob."""
    layers = [
        f'layer {{ name: "{name}" type: "Input" top: "{name}" '
        f"input_param {{ shape {{ {' '.join(f'dim: {d}' for d in shape)} }} }} }}"
        for name, shape in inputs.items()
    ]
    return 'name: "t"\n' + "\n".join([*layers, body]) + "\n"


def opencv_parity(
    tmp_path: Path,
    body: str,
    inputs: dict[str, np.ndarray],
    compared: list[str],
    rtol: float = 1e-4,
    atol: float = 1e-5,
    blobs: dict[str, list[np.ndarray]] | None = None,
) -> None:
    """Every blob in `compared` agrees between protocaffe (seeded filler weights, or `blobs`
    by layer name) and cv2.dnn on the same prototxt and weights."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip(f"OpenCV {cv2.__version__} has no Caffe importer")
    import torch

    import protocaffe
    from protocaffe.commands.diff import blob_order, compare, opencv_blobs, render_table

    path = tmp_path / "net.prototxt"
    path.write_text(net_text({k: v.shape for k, v in inputs.items()}, body))
    module = protocaffe.load(path, device="cpu", seed=0)
    if blobs:
        from protocaffe.runtime.caffemodel import assign_blobs

        assign_blobs(module, blobs)
    graph = module.caffe_graph
    every = module.with_outputs(b for layer in graph.layers for b in layer.tops)
    with torch.no_grad():
        result = every({k: torch.from_numpy(v) for k, v in inputs.items()})
    ours = {k: v.numpy() for k, v in result.items()}
    theirs = opencv_blobs(str(path), None, graph, module, inputs)
    rows = compare(ours, theirs, blob_order(graph), rtol, atol)
    status = {r.blob: r.status for r in rows}
    assert all(status.get(b) == "ok" for b in compared), render_table(rows)
