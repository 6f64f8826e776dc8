"""`protocaffe score`: FCN's metrics from a hand-computed confusion matrix, and the command
on a net whose predictions are known pixel by pixel."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import protocaffe
from protocaffe.cli import main
from protocaffe.fcn.score import Confusion, scores
from protocaffe.runtime.caffemodel import assign_blobs, save_caffemodel


def test_confusion_and_metrics_match_hand_computation():
    confusion = Confusion(3)
    label = np.array([[0, 1, 255], [2, 1, 0], [7, 0, 1]])
    pred = np.array([[0, 1, 2], [1, 1, 0], [0, 2, 1]])
    confusion.add(label, pred)
    # Rows are the truth, columns the prediction; 255 is ignored, 7 is not a class.
    expected = np.array([[2, 0, 1], [0, 3, 0], [0, 1, 0]])
    np.testing.assert_array_equal(confusion.hist, expected)
    assert (confusion.ignored, confusion.unknown) == (1, 1)
    s = scores(confusion.hist)
    assert s.pixel_accuracy == pytest.approx(5 / 7)
    np.testing.assert_allclose(s.class_accuracy, [2 / 3, 1, 0])
    assert s.mean_accuracy == pytest.approx((2 / 3 + 1) / 3)
    # IoU = TP / (TP + FP + FN): class 1 has 3 TP and 1 FP (a true 2 predicted as 1).
    np.testing.assert_allclose(s.iou, [2 / 3, 3 / 4, 0])
    assert s.mean_iou == pytest.approx((2 / 3 + 3 / 4 + 0) / 3)
    assert s.frequency_weighted_iou == pytest.approx(3 / 7 * 2 / 3 + 3 / 7 * 3 / 4)


def test_a_class_absent_from_truth_and_predictions_is_left_out_of_the_means():
    s = scores(np.array([[4, 1, 0], [2, 3, 0], [0, 0, 0]]))
    assert math.isnan(s.iou[2]) and math.isnan(s.class_accuracy[2])
    assert s.mean_iou == pytest.approx((4 / 7 + 3 / 6) / 2)
    assert s.mean_accuracy == pytest.approx((4 / 5 + 3 / 5) / 2)


# Class scores = the BGR channels themselves (a 1x1 convolution with identity weights), so the
# prediction of a pixel is the index of its largest BGR value.
IDENTITY = """name: "identity"
layer { name: "in" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 3 kernel_size: 1 } }
"""

HALF = (
    IDENTITY.replace('top: "score"\n', 'top: "s"\n')
    + """layer { name: "pool" type: "Pooling" bottom: "s" top: "score"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""
)


def _identity_weights(tmp_path: Path, text: str) -> tuple[str, str]:
    net = tmp_path / "net.prototxt"
    net.write_text(text)
    module = protocaffe.load(str(net), device="cpu")
    assign_blobs(module, {"score": [np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1), np.zeros(3)]})
    weights = tmp_path / "net.caffemodel"
    save_caffemodel(module, weights)
    return str(net), str(weights)


def _dataset(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """Two 8x8 images of pure colours with random labels; the expected confusion matrix."""
    rng = np.random.default_rng(0)
    colours = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0]], np.uint8)  # RGB of BGR argmax 0..2
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    expected = np.zeros((3, 3), np.int64)
    for i, size in enumerate([(8, 8), (6, 10)]):
        pred = rng.integers(0, 3, size=size)
        label = rng.integers(0, 3, size=size).astype(np.uint8)
        label[0, :3] = 255
        Image.fromarray(colours[pred], "RGB").save(images / f"im{i}.png")
        Image.fromarray(label, "L").save(labels / f"im{i}.png")
        keep = label != 255
        np.add.at(expected, (label[keep].astype(int), pred[keep]), 1)
    return images, labels, expected


def test_score_command_counts_every_pixel(tmp_path, capsys):
    net, weights = _identity_weights(tmp_path, IDENTITY)
    images, labels, expected = _dataset(tmp_path)
    argv = ["score", net, "--weights", weights, "--images", str(images), "--labels", str(labels)]
    conf_png = tmp_path / "confusion.png"
    assert main([*argv, "--json", "--confusion", str(conf_png)]) == 0
    report = json.loads(capsys.readouterr().out)
    np.testing.assert_array_equal(report["confusion"], expected)
    assert report["images"] == 2 and report["ignored_pixels"] == 6
    assert report["mean_iou"] == pytest.approx(scores(expected).mean_iou, abs=1e-6)
    assert conf_png.stat().st_size > 0

    names = tmp_path / "classes.txt"
    names.write_text("blue\ngreen\nred\n")
    # A list file pairs up with a label list, line by line.
    (tmp_path / "list.txt").write_text("images/im0.png 0\nimages/im1.png 0\n")
    (tmp_path / "labels.txt").write_text("labels/im0.png\nlabels/im1.png\n")
    argv[4:8] = ["--images", str(tmp_path / "list.txt"), "--labels", str(tmp_path / "labels.txt")]
    assert main([*argv, "--classes", str(names)]) == 0
    table = capsys.readouterr().out
    iou = scores(expected).iou
    assert f"green  {iou[1]:.4f}" in table
    assert f"mean IoU:               {scores(expected).mean_iou:.4f}" in table


def test_output_smaller_than_the_label_suggests_a_crop(tmp_path, capsys):
    net, weights = _identity_weights(tmp_path, HALF)
    images, labels, _ = _dataset(tmp_path)
    argv = ["score", net, "--weights", weights, "--images", str(images), "--labels", str(labels)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "the net's output is 1x3x4x4 but the label" in err and "is 8x8" in err
    assert 'type: "Crop"' in err


def test_missing_label_is_named(tmp_path, capsys):
    net, weights = _identity_weights(tmp_path, IDENTITY)
    images, labels, _ = _dataset(tmp_path)
    (labels / "im1.png").unlink()
    argv = ["score", net, "--weights", weights, "--images", str(images), "--labels", str(labels)]
    assert main(argv) == 1
    assert f"no label file {labels / 'im1.png'}" in capsys.readouterr().err


def test_colour_label_images_are_refused(tmp_path, capsys):
    net, weights = _identity_weights(tmp_path, IDENTITY)
    images, labels, _ = _dataset(tmp_path)
    Image.new("RGB", (8, 8)).save(labels / "im0.png")
    argv = ["score", net, "--weights", weights, "--images", str(images), "--labels", str(labels)]
    assert main(argv) == 1
    assert "label image is RGB; labels are class ids, one channel" in capsys.readouterr().err
