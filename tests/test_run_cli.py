"""`protocaffe run`: preprocessing, re-shaping per input size, outputs people can use, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from protocaffe.cli import main  # noqa: E402

GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'
MEAN = (104.0, 117.0, 123.0)

# Per-pixel scores for 4 classes at the input's resolution: a segmentation net.
SEGNET = f"""
name: "seg"
layer {{ name: "input" type: "Input" top: "data"
  input_param {{ shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 {GAUSS} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "score" type: "Convolution" bottom: "conv1" top: "score"
  convolution_param {{ num_output: 4 kernel_size: 1 {GAUSS} }} }}
"""

# Conv, global pooling, InnerProduct on a fixed 6x6 input, Softmax: a classifier.
CLASSIFIER = f"""
name: "cls"
layer {{ name: "input" type: "Input" top: "data"
  input_param {{ shape {{ dim: 1 dim: 3 dim: 6 dim: 6 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3 {GAUSS} }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param {{ num_output: 5 {GAUSS} }} }}
layer {{ name: "prob" type: "Softmax" bottom: "fc" top: "prob" }}
"""


def make_net(tmp_path: Path, text: str, seed: int = 1) -> tuple[Path, Path]:
    from protocaffe.runtime.api import load
    from protocaffe.runtime.caffemodel import save_caffemodel

    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    weights = tmp_path / "net.caffemodel"
    save_caffemodel(load(proto, device="cpu", seed=seed), weights)
    return proto, weights


def make_image(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def forward(proto: Path, weights: Path, blob: np.ndarray, output: str) -> np.ndarray:
    from protocaffe.runtime.api import load

    module = load(proto, weights, device="cpu", input_shapes={"data": blob.shape})
    with torch.no_grad():
        return module(torch.from_numpy(blob))[output].numpy()


def caffe_blob(rgb: np.ndarray, mean=MEAN, scale: float = 1.0) -> np.ndarray:
    """Caffe's convention, written out: BGR, mean subtracted, then scaled, NCHW."""
    bgr = rgb[:, :, ::-1].astype(np.float32)
    return np.ascontiguousarray(((bgr - np.float32(mean)) * scale).transpose(2, 0, 1)[None])


def cli(*argv: str) -> int:
    return main(["run", *map(str, argv)])


def test_segmentation_outputs_per_image_size(tmp_path: Path, capsys) -> None:
    proto, weights = make_net(tmp_path, SEGNET)
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a": (8, 8), "b": (13, 10), "c": (8, 8)}  # a and c share a batch
    rgbs = {
        k: make_image(images / f"{k}.png", h, w, i) for i, (k, (h, w)) in enumerate(sizes.items())
    }
    out = tmp_path / "out"
    mean = ",".join(map(str, MEAN))
    assert (
        cli(
            proto,
            "--weights",
            weights,
            "--input",
            images,
            "--output",
            out,
            "--mean",
            mean,
            "--batch-size",
            "2",
            "--device",
            "cpu",
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "no --weights" not in captured.err
    for key, rgb in rgbs.items():
        want = forward(proto, weights, caffe_blob(rgb), "score")[0].argmax(0)
        labels = np.asarray(Image.open(out / f"{key}_labels.png"))
        assert labels.shape == sizes[key]
        np.testing.assert_array_equal(labels, want)
        colour = np.asarray(Image.open(out / f"{key}_seg.png").convert("RGB"))
        assert colour.shape == (*sizes[key], 3)
        overlay = np.asarray(Image.open(out / f"{key}_overlay.png").convert("RGB"))
        # Class 0 (background) leaves the image untouched; VOC class 1 is (128, 0, 0).
        np.testing.assert_array_equal(overlay[want == 0], rgb[want == 0])
        if (want == 1).any():
            assert tuple(colour[want == 1][0]) == (128, 0, 0)
        line = next(
            ln for ln in captured.out.splitlines() if ln.startswith(str(images / f"{key}.png"))
        )
        shares = [float(p.rstrip("%").split()[-1]) for p in line.split(": ", 1)[1].split(", ")]
        assert sum(shares) == pytest.approx(100.0, abs=0.5)
        top = np.bincount(want.ravel()).argmax()
        assert line.split(": ", 1)[1].startswith(f"{top} ")


def test_no_weights_warns_and_uses_seeded_fillers(tmp_path: Path, capsys) -> None:
    proto = tmp_path / "net.prototxt"
    proto.write_text(SEGNET)
    make_image(tmp_path / "x.png", 8, 8, 0)
    args = (proto, "--input", tmp_path / "x.png", "--seed", "3", "--device", "cpu")
    assert cli(*args, "--output", tmp_path / "o1") == 0
    assert "no --weights: using Caffe fillers (seed 3); outputs are not meaningful" in (
        capsys.readouterr().err
    )
    assert cli(*args, "--output", tmp_path / "o2") == 0
    first = np.asarray(Image.open(tmp_path / "o1" / "x_labels.png"))
    np.testing.assert_array_equal(first, np.asarray(Image.open(tmp_path / "o2" / "x_labels.png")))


def test_classifier_top_k_with_labels(tmp_path: Path, capsys) -> None:
    proto, weights = make_net(tmp_path, CLASSIFIER)
    rgb = make_image(tmp_path / "cat.png", 6, 6, 5)
    names = ["ant", "bee", "cat", "dog", "eel"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    assert (
        cli(
            proto,
            "--weights",
            weights,
            "--input",
            tmp_path / "cat.png",
            "--top-k",
            "3",
            "--labels",
            tmp_path / "labels.txt",
            "--rgb",
            "--scale",
            "0.01",
            "--output",
            tmp_path / "out",
            "--device",
            "cpu",
        )
        == 0
    )
    blob = np.ascontiguousarray(
        (rgb.astype(np.float32) * np.float32(0.01)).transpose(2, 0, 1)[None]
    )
    prob = forward(proto, weights, blob, "prob")[0]
    order = np.argsort(-prob)[:3]
    line = capsys.readouterr().out.strip()
    expected = ", ".join(f"{names[i]} ({prob[i]:.4f})" for i in order)
    assert line == f"{tmp_path / 'cat.png'}: top-3: {expected}"


def test_npy_input_other_outputs_and_saved_blobs(tmp_path: Path, capsys) -> None:
    proto, weights = make_net(tmp_path, SEGNET)
    blob = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(np.float32)
    np.save(tmp_path / "batch.npy", blob)
    out = tmp_path / "out"
    assert (
        cli(
            proto,
            "--weights",
            weights,
            "--input",
            tmp_path / "batch.npy",
            "--output",
            out,
            "--save-blobs",
            "conv1,data",
            "--device",
            "cpu",
        )
        == 0
    )
    want = forward(proto, weights, blob, "score")
    np.testing.assert_allclose(np.load(out / "batch.npy"), want, rtol=1e-5, atol=1e-5)
    saved = np.load(out / "batch_blobs.npz")
    assert sorted(saved.files) == ["conv1", "data"]
    np.testing.assert_array_equal(saved["data"], blob)
    assert (saved["conv1"] >= 0).all()  # after the in-place ReLU, as Caffe names the blob
    assert "2x4x5x7 -> batch.npy" in capsys.readouterr().out


def test_output_blob_selects_an_intermediate(tmp_path: Path) -> None:
    proto, weights = make_net(tmp_path, SEGNET)
    make_image(tmp_path / "x.png", 8, 8, 0)
    assert (
        cli(
            proto,
            "--weights",
            weights,
            "--input",
            tmp_path / "x.png",
            "--output-blob",
            "conv1",
            "--output",
            tmp_path / "out",
            "--device",
            "cpu",
        )
        == 0
    )
    assert (tmp_path / "out" / "x_labels.png").exists()  # 6 channels per pixel: segmentation


def test_transform_param_supplies_defaults(tmp_path: Path) -> None:
    text = SEGNET.replace(
        "input_param {",
        "transform_param { mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 } input_param {",
    )
    proto, weights = make_net(tmp_path, text)
    rgb = make_image(tmp_path / "x.png", 8, 8, 0)
    assert (
        cli(
            proto,
            "--weights",
            weights,
            "--input",
            tmp_path / "x.png",
            "--save-blobs",
            "data",
            "--output",
            tmp_path / "out",
            "--device",
            "cpu",
        )
        == 0
    )
    saved = np.load(tmp_path / "out" / "x_blobs.npz")["data"]
    np.testing.assert_allclose(saved, caffe_blob(rgb, (10, 20, 30), 0.5))


def test_fixed_size_net_resizes_images_to_its_input(tmp_path: Path, capsys) -> None:
    # Like Caffe's classification example: an image is resized to the input geometry when the
    # weights (an InnerProduct after the spatial axes) fix it; --resize to another size fails.
    proto, weights = make_net(tmp_path, CLASSIFIER)
    rgb = make_image(tmp_path / "big.png", 9, 7, 0)
    args = (proto, "--weights", weights, "--input", tmp_path / "big.png", "--device", "cpu")
    assert cli(*args, "--output", tmp_path / "o", "--save-blobs", "prob") == 0
    err = capsys.readouterr().err
    assert "fix input 'data' at 6x6; images are resized to it" in err
    resized = np.asarray(Image.fromarray(rgb).resize((6, 6), Image.BILINEAR))
    want = forward(proto, weights, caffe_blob(resized, mean=(0.0, 0.0, 0.0)), "prob")
    got = np.load(tmp_path / "o" / "big_blobs.npz")["prob"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    assert cli(*args, "--output", tmp_path / "o2", "--resize", "8,8") == 1
    err = capsys.readouterr().err
    assert "InnerProduct 'fc'" in err and "--resize 6,6" in err and "net.prototxt:" in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--input", "{tmp}/missing.png"], "missing.png: no such file or directory"),
        (["--input", "{tmp}/bad.png"], "bad.png: cannot read image"),
        (["--input", "{tmp}/x.png", "--save-blobs", "conv"], "no blob named 'conv'"),
        (["--input", "{tmp}/x.png", "--weights", "{tmp}/none.caffemodel"], "no such file"),
        (["--input", "{tmp}/grey.npy"], "input 'data' is 1x3x8x8"),
    ],
)
def test_input_errors_exit_1(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    proto = tmp_path / "net.prototxt"
    proto.write_text(SEGNET)
    (tmp_path / "bad.png").write_text("not an image")
    make_image(tmp_path / "x.png", 8, 8, 0)
    np.save(tmp_path / "grey.npy", np.zeros((1, 1, 8, 8), np.float32))
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert cli(proto, *argv, "--output", tmp_path / "out", "--device", "cpu") == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--resize", "abc"],
        ["--mean", "1,x"],
        ["--batch-size", "0"],
        ["--dtype", "int8"],
        ["--bgr", "--rgb"],
    ],
)
def test_bad_flags_exit_2(tmp_path: Path, flags: list[str]) -> None:
    proto = tmp_path / "net.prototxt"
    proto.write_text(SEGNET)
    make_image(tmp_path / "x.png", 8, 8, 0)
    with pytest.raises(SystemExit) as exc:
        code = cli(proto, "--input", tmp_path / "x.png", "--output", tmp_path / "o", *flags)
        raise SystemExit(code)
    assert exc.value.code == 2
