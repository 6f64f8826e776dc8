"""`run` stacks same-size inputs into one batch by default, only where Caffe's per-item
results stay the same: every blob keeps the batch on axis 0 and no layer mixes items."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from test_run_cli import CLASSIFIER, MEAN, SEGNET, caffe_blob, forward, make_image, make_net  # noqa: E402

from protocaffe.cli import main  # noqa: E402
from protocaffe.runtime import batching  # noqa: E402
from protocaffe.testing import compile_snippet  # noqa: E402

CONV = 'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 1 } }\n'  # noqa: E501


def blocker(text: str, phase: str = "TEST") -> str | None:
    return batching.batch_blocker(compile_snippet(text, {"data": (1, 3, 6, 6)}, phase=phase))


@pytest.mark.parametrize(
    "extra, why",
    [
        ("", None),
        ('layer { name: "p" type: "Softmax" bottom: "conv" top: "p" }', None),
        (
            'layer { name: "p" type: "Softmax" bottom: "conv" top: "p" softmax_param { axis: 0 } }',
            "Softmax layer 'p' mixes batch items",
        ),
        (
            'layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" '
            "batch_norm_param { use_global_stats: false } }",
            "BatchNorm layer 'bn' mixes batch items",
        ),
        ('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "bn" }', None),
        (
            'layer { name: "cat" type: "Concat" bottom: "conv" bottom: "conv" top: "cat" '
            "concat_param { axis: 0 } }",
            "Concat layer 'cat': top 'cat' does not keep the batch on axis 0",
        ),
        (
            'layer { name: "r" type: "Reshape" bottom: "conv" top: "r" '
            "reshape_param { shape { dim: 1 dim: -1 } } }",
            "Reshape layer 'r': top 'r' does not keep the batch on axis 0",
        ),
        (
            'layer { name: "f" type: "Flatten" bottom: "conv" top: "f" flatten_param { axis: 0 } }',
            "Flatten layer 'f': top 'f' does not keep the batch on axis 0",
        ),
        (
            'layer { name: "s" type: "Reduction" bottom: "conv" top: "s" '
            "reduction_param { axis: 0 } }",
            "Reduction layer 's': top 's' does not keep the batch on axis 0",
        ),
    ],
)
def test_which_nets_can_stack_inputs(extra: str, why: str | None) -> None:
    assert blocker(CONV + extra) == why


def test_a_net_that_only_takes_its_declared_batch_is_not_batched() -> None:
    text = CONV + (
        'layer { name: "r" type: "Reshape" bottom: "conv" top: "r" '
        "reshape_param { shape { dim: 1 dim: 4 dim: 36 } } }"
    )
    assert blocker(text) == "the net does not take a batch of 2"


def test_auto_batch_size_keeps_activations_within_the_budget(monkeypatch) -> None:
    graph = compile_snippet(CONV, {"data": (1, 3, 6, 6)})
    per_item = 4 * (3 + 4) * 36  # the data and conv blobs, float32
    assert batching.auto_batch_size(graph) == batching.MAX_AUTO_BATCH
    monkeypatch.setattr(batching, "BATCH_BUDGET_BYTES", 5 * per_item + 1)
    assert batching.auto_batch_size(graph) == 5
    monkeypatch.setattr(batching, "BATCH_BUDGET_BYTES", per_item // 2)
    assert batching.auto_batch_size(graph) == 1


def _run(tmp_path: Path, proto: Path, weights: Path, images: Path, *flags: str) -> Path:
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    mean = ",".join(map(str, MEAN))
    argv = [proto, "--weights", weights, "--input", images, "--output", out, "--mean", mean]
    assert main(["run", *map(str, argv), "--device", "cpu", *flags]) == 0
    return out


def test_run_batches_same_size_images_by_default(tmp_path: Path, capsys) -> None:
    proto, weights = make_net(tmp_path, SEGNET)
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a": (8, 8), "b": (13, 10), "c": (8, 8), "d": (8, 8)}
    rgbs = {k: make_image(images / f"{k}.png", *hw, i) for i, (k, hw) in enumerate(sizes.items())}
    out = _run(tmp_path, proto, weights, images)
    assert "(2 forward passes)" in capsys.readouterr().err  # a, c, d together; then b
    for key, rgb in rgbs.items():
        want = forward(proto, weights, caffe_blob(rgb), "score")[0].argmax(0)
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{key}_labels.png")), want)
    _run(tmp_path, proto, weights, images, "--batch-size", "1")
    assert "(4 forward passes)" in capsys.readouterr().err
    _run(tmp_path, proto, weights, images, "--batch-size", "2")
    assert "(3 forward passes)" in capsys.readouterr().err


def test_a_net_mixing_batch_items_runs_them_one_at_a_time(tmp_path: Path, capsys) -> None:
    text = CLASSIFIER.replace('top: "prob" }', 'top: "prob" softmax_param { axis: 0 } }')
    proto, weights = make_net(tmp_path, text)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        make_image(images / f"{i}.png", 6, 6, i)
    out = _run(tmp_path, proto, weights, images)
    assert "(3 forward passes)" in capsys.readouterr().err
    # Softmax over the batch axis of a batch of one: every score is 1 (stacked, they'd be ~1/3).
    text = json.dumps(json.loads((out / "topk.json").read_text()))
    scores = [float(v) for v in re.findall(r'"score": ([0-9.e+-]+)', text)]
    assert len(scores) == 3 * 5 and all(v == pytest.approx(1.0) for v in scores)


def test_a_size_the_net_cannot_take_is_located_and_hinted_when_batching(
    tmp_path: Path, capsys
) -> None:
    proto, weights = make_net(tmp_path, SEGNET.replace("kernel_size: 3 pad: 1", "kernel_size: 5"))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):  # two of a size: deciding their batch is where the size is first met
        make_image(images / f"{i}.png", 3, 3, i)
    mean = ",".join(map(str, MEAN))
    argv = [proto, "--weights", weights, "--input", images, "--output", tmp_path / "out"]
    assert main(["run", *map(str, argv), "--mean", mean, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "net.prototxt:" in err and "kernel 5 (dilated 5) is larger" in err
    assert f"note: {images / '0.png'}: the net does not take input data 1x3x3x3" in err
    assert "pass --resize 8,8 to match it" in err
    assert "Traceback" not in err
