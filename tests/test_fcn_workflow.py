"""The FCN workflow: the synthetic set, the FCN nets and solvers in models/ against the
published recipe, and a short run of the demo (interp -> train -> score -> run) whose loss
must fall."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protocaffe.cli import main
from protocaffe.fcn import synthetic

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def test_synthetic_set_is_voc_like(tmp_path):
    counts = synthetic.write_set(tmp_path, train=6, val=3, size=32, seed=1)
    assert counts == {"train": 6, "val": 3}
    images = (tmp_path / "val.txt").read_text().split("\n")[:-1]
    labels = (tmp_path / "val_labels.txt").read_text().split("\n")[:-1]
    assert [i.replace("images/", "labels/") for i in images] == labels
    seen: set[int] = set()
    for line in labels:
        label = np.asarray(Image.open(tmp_path / line.split()[0]))
        assert label.shape == (32, 32) and label.dtype == np.uint8
        seen |= set(np.unique(label).tolist())
        # No two classes touch: a void band separates every object from what surrounds it.
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()
    assert seen <= {0, 1, 2, 3, 255} and {0, 255} <= seen
    image = np.asarray(Image.open(tmp_path / images[0].split()[0]))
    assert image.shape == (32, 32, 3)


FCN_NETS = {
    "32s": {"upscore": (64, 32)},
    "16s": {"upscore2": (4, 2), "upscore16": (32, 16)},
    "8s": {"upscore2": (4, 2), "upscore_pool4": (4, 2), "upscore8": (16, 8)},
}
SHAPES = {"data": (1, 3, 500, 500), "label": (1, 1, 500, 500), "data_id": (1,), "label_id": (1,)}


@pytest.mark.parametrize("kind", FCN_NETS)
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_fcn_trainval_nets_follow_the_published_recipe(kind, phase):
    from protocaffe.runtime.api import compile_net

    graph = compile_net(MODELS / f"fcn{kind}_trainval.prototxt", phase=phase, input_shapes=SHAPES)
    assert graph.blob("score").shape == (1, 21, 500, 500)
    assert all(c.status == "aligned" for c in graph.coords.crops) and graph.coords.crops
    deconvs = {layer.name: layer for layer in graph.layers if layer.type == "Deconvolution"}
    assert set(deconvs) == set(FCN_NETS[kind])
    for name, (kernel, stride) in FCN_NETS[kind].items():
        param = deconvs[name].proto.convolution_param
        assert (param.kernel_size[0], param.stride[0], param.bias_term) == (kernel, stride, False)
        assert [p.lr_mult for p in deconvs[name].proto.param] == [0]
    loss = graph.layer("loss").proto.loss_param
    assert (loss.ignore_label, loss.normalize) == (255, False)
    conv = graph.layer("conv1_1").proto
    assert conv.convolution_param.pad[0] == 100
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]


@pytest.mark.parametrize(("kind", "base_lr"), [("32s", 1e-10), ("16s", 1e-12), ("8s", 1e-14)])
def test_fcn_solvers_have_the_published_settings(kind, base_lr):
    from protocaffe.frontend import load_solver

    solver = load_solver(str(MODELS / f"fcn{kind}_solver.prototxt")).message
    assert solver.base_lr == pytest.approx(base_lr, rel=1e-6)
    assert solver.momentum == pytest.approx(0.99)
    assert (solver.lr_policy, solver.iter_size) == ("fixed", 1)
    assert solver.weight_decay == pytest.approx(0.0005)
    assert solver.net == f"models/fcn{kind}_trainval.prototxt"


def test_demo_trains_scores_and_segments(tmp_path, monkeypatch, capsys):
    """`make train-demo` in small: 32x32 images, a few iterations; the loss must fall."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(MODELS)
    data = tmp_path / "demo-train" / "data"
    synthetic.write_set(data, train=16, val=4, size=32, seed=0)
    assert (
        main(["surgery", "interp", "models/fcn_demo_trainval.prototxt", "-o", "init.caffemodel"])
        == 0
    )
    # The demo's solver, logging every iteration's own loss.
    solver = (MODELS / "fcn_demo_solver.prototxt").read_text()
    solver = solver.replace("display: 20", "display: 1").replace("average_loss: 20", "")
    Path("solver.prototxt").write_text(solver)
    argv = ["train", "solver.prototxt", "--weights", "init.caffemodel", "--iterations", "10"]
    assert main([*argv, "--log", "log.jsonl", "--no-progress"]) == 0
    records = [json.loads(line) for line in Path("log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("phase") == "train"]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
    weights = "demo-train/snapshots/fcn_demo_iter_10.caffemodel"
    capsys.readouterr()
    deploy = "models/fcn_demo_deploy.prototxt"
    score = ["score", deploy, "--weights", weights, "--json"]
    lists = ["--images", str(data / "val.txt"), "--labels", str(data / "val_labels.txt")]
    assert main([*score, *lists]) == 0
    report = json.loads(capsys.readouterr().out)
    labels = np.stack([np.asarray(Image.open(p)) for p in sorted((data / "labels").glob("val_*"))])
    assert report["pixels"] == int((labels != 255).sum())
    assert report["ignored_pixels"] == int((labels == 255).sum())
    image = str(data / "images" / "val_0000.png")
    assert main(["run", deploy, "--weights", weights, "--input", image, "--output", "seg"]) == 0
    assert Path("seg/val_0000_seg.png").is_file()
