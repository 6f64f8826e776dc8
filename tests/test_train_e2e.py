"""End-to-end training from HDF5 sources, against a hand-written float64 reference.

The reference writes each net with torch.nn.functional in float64 (Caffe's layer formulas:
ceil-mode MAX pooling, grouped Deconvolution, Crop offsets, BatchNorm with Caffe's running
sums) and applies Caffe's update rules in numpy; only the initial weights are taken from the
solver. Each net trains for a few iterations and every blob is compared.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import protocaffe

FCN_NET = """name: "tiny_fcn"
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "train.txt" batch_size: 1 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 3
    weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "upscore" type: "Deconvolution" bottom: "score" top: "upscore" param { lr_mult: 0 }
  convolution_param { num_output: 3 group: 3 kernel_size: 4 stride: 2 bias_term: false
    weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "crop"
  crop_param { axis: 2 offset: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "crop" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: false } }
"""

FCN_SOLVER = """train_net: "net.prototxt"
base_lr: 0.001
momentum: 0.99
weight_decay: 0.0005
lr_policy: "fixed"
iter_size: 2
max_iter: 3
snapshot: 3
snapshot_prefix: "snap/fcn"
random_seed: 0
"""

CLASSIFIER_NET = """name: "tiny_classifier"
layer { name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param { source: "train.txt" batch_size: 4 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

CLASSIFIER_SOLVER = """net: "net.prototxt"
type: "Adam"
base_lr: 0.05
momentum: 0.9
momentum2: 0.999
lr_policy: "step"
gamma: 0.5
stepsize: 2
weight_decay: 0.001
max_iter: 4
random_seed: 0
"""


def write_hdf5(tmp_path, data, label):
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"] = data
        f["label"] = label
    (tmp_path / "train.txt").write_text("train.h5\n")


def start(tmp_path, net, solver):
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(solver)
    s = protocaffe.Solver("solver.prototxt", device="cpu")
    return s, {b.label: b.tensor.detach().double().clone() for b in s.net.learnable}


def fcn_data(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(4, 3, 12, 12)).astype(np.float32)
    label = rng.integers(0, 3, size=(4, 1, 12, 12)).astype(np.float32)
    label[rng.random(label.shape) < 0.2] = 255
    write_hdf5(tmp_path, data, label)
    return data, label


def fcn_loss(p, x, label):
    h = F.relu(F.conv2d(x, p["conv1[0]"], p["conv1[1]"], padding=3))
    h = F.max_pool2d(h, 3, 2, ceil_mode=True)
    s = F.conv2d(h, p["score[0]"], p["score[1]"])
    u = F.conv_transpose2d(s, p["upscore[0]"], stride=2, groups=3)
    crop = u[:, :, 3:15, 3:15]
    # normalize: false = BATCH_SIZE: the summed loss over valid pixels / batch (1).
    target = torch.as_tensor(label[:, 0]).long()
    return F.cross_entropy(crop, target, ignore_index=255, reduction="sum") / len(x)


def test_fcn_like_net_sgd_momentum_iter_size(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, label = fcn_data(tmp_path)
    solver, p = start(tmp_path, FCN_NET, FCN_SOLVER)
    mults = {b.label: (b.lr_mult, b.decay_mult) for b in solver.net.learnable}
    solver.solve()

    history = {k: torch.zeros_like(v) for k, v in p.items()}
    record = 0
    for _ in range(3):
        grads = {k: torch.zeros_like(v) for k, v in p.items()}
        for _ in range(2):  # iter_size 2: diffs of the two passes add up
            leaves = {k: v.clone().requires_grad_(mults[k][0] != 0) for k, v in p.items()}
            x = torch.as_tensor(data[record % 4 : record % 4 + 1]).double()
            fcn_loss(leaves, x, label[record % 4 : record % 4 + 1]).backward()
            for k, v in leaves.items():
                if v.grad is not None:
                    grads[k] += v.grad
            record += 1
        for k in p:
            lr_mult, decay_mult = mults[k]
            g = grads[k] / 2 + 0.0005 * decay_mult * p[k]
            history[k] = 0.99 * history[k] + 0.001 * lr_mult * g
            p[k] = p[k] - history[k]

    for b in solver.net.learnable:
        np.testing.assert_allclose(
            b.tensor.detach().double().numpy(), p[b.label].numpy(), rtol=1e-4, atol=1e-6
        )
    # The fixed bilinear Deconvolution never moves and its SGD history stays 0.
    state = protocaffe.proto.caffe_pb2.SolverState.FromString(
        (tmp_path / "snap/fcn_iter_3.solverstate").read_bytes()
    )
    assert state.iter == 3 and len(state.history) == 5
    assert not np.any(state.history[4].data)
    np.testing.assert_array_equal(solver.net.params["upscore"][0].numpy(), p["upscore[0]"])


def test_fcn_like_training_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fcn_data(tmp_path)
    runs = []
    for _ in range(2):
        solver, _ = start(tmp_path, FCN_NET, FCN_SOLVER.replace("snapshot: 3", "snapshot: 0"))
        solver.step(3)
        runs.append([b.tensor.detach().clone() for b in solver.net.learnable])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_batchnorm_classifier_adam_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    data = rng.normal(size=(8, 1, 6, 6)).astype(np.float32)
    label = rng.integers(0, 3, size=8).astype(np.float32)
    write_hdf5(tmp_path, data, label)
    solver, p = start(tmp_path, CLASSIFIER_NET, CLASSIFIER_SOLVER)
    mults = {b.label: (b.lr_mult, b.decay_mult) for b in solver.net.learnable}
    assert mults["bn1[0]"] == (0.0, 1.0)
    solver.step(4)

    m1 = {k: torch.zeros_like(v) for k, v in p.items()}
    m2 = {k: torch.zeros_like(v) for k, v in p.items()}
    maf, eps = 0.999, 1e-5
    for it in range(4):
        leaves = {k: v.clone().requires_grad_(mults[k][0] != 0) for k, v in p.items()}
        x = torch.as_tensor(data[(4 * it) % 8 : (4 * it) % 8 + 4]).double()
        h = F.conv2d(x, leaves["conv1[0]"], leaves["conv1[1]"], padding=1)
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        y = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + eps)
        y = y * leaves["scale1[0]"][:, None, None] + leaves["scale1[1]"][:, None, None]
        y = F.max_pool2d(F.relu(y), 3, 2, ceil_mode=True)
        logits = y.flatten(1) @ leaves["fc[0]"].T + leaves["fc[1]"]
        F.cross_entropy(logits, torch.as_tensor(label[(4 * it) % 8 :][:4]).long()).backward()
        m = h[:, 0].numel()  # values per channel
        with torch.no_grad():  # Caffe's running sums, updated by the forward pass
            p["bn1[0]"] = maf * p["bn1[0]"] + mean
            p["bn1[1]"] = maf * p["bn1[1]"] + var * m / (m - 1)
            p["bn1[2]"] = maf * p["bn1[2]"] + 1
        rate = 0.05 * 0.5 ** (it // 2)
        corr = np.sqrt(1 - 0.999 ** (it + 1)) / (1 - 0.9 ** (it + 1))
        for k in p:
            lr_mult, decay_mult = mults[k]
            grad = leaves[k].grad if leaves[k].grad is not None else torch.zeros_like(p[k])
            g = grad + 0.001 * decay_mult * p[k]
            m1[k] = 0.9 * m1[k] + 0.1 * g
            m2[k] = 0.999 * m2[k] + 0.001 * g * g
            p[k] = p[k] - rate * lr_mult * corr * m1[k] / (m2[k].sqrt() + 1e-8)

    for i, b in enumerate(solver.net.learnable):
        np.testing.assert_allclose(
            b.tensor.detach().double().numpy(), p[b.label].numpy(), rtol=2e-4, atol=2e-6
        )
        # Adam's first moments, BatchNorm's included (weight decay reaches them).
        np.testing.assert_allclose(
            solver.rule.history[i].double().numpy(), m1[b.label].numpy(), rtol=2e-3, atol=1e-7
        )


@pytest.mark.parametrize("flag", ["", "--solver "])
def test_train_test_and_plot_commands(flag, tmp_path, monkeypatch, capsys):
    from protocaffe.cli import main

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    write_hdf5(
        tmp_path,
        rng.normal(size=(8, 1, 6, 6)).astype(np.float32),
        rng.integers(0, 3, size=8).astype(np.float32),
    )
    (tmp_path / "net.prototxt").write_text(CLASSIFIER_NET)
    text = CLASSIFIER_SOLVER + 'display: 2\nsnapshot_prefix: "out/cls"\n'
    (tmp_path / "solver.prototxt").write_text(text)
    argv = ["train", *flag.split(), "solver.prototxt", "--log", "log.jsonl", "--iterations", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Iteration 0 (" in out and ", loss = " in out
    assert "    Train net output #0: loss = " in out and "(* 1 = " in out
    assert "Iteration 0, lr = 0.05" in out
    assert "Snapshotting to binary proto file out/cls_iter_2.caffemodel" in out
    assert "Optimization Done." in out
    assert (
        main(
            ["test", "net.prototxt", "--weights", "out/cls_iter_2.caffemodel", "--iterations", "2"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Batch 1, loss = " in out and "Loss: " in out
    assert main(["plot", "log.jsonl", "-o", "curves.png"]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_weights_and_snapshot_together_is_a_usage_error(tmp_path, capsys):
    from protocaffe.cli import main

    with pytest.raises(SystemExit) as err:
        main(["train", "s.prototxt", "--weights", "a", "--snapshot", "b"])
    assert err.value.code == 2


PY_LAYER = """
import caffe
import numpy as np


class Pairs(caffe.Layer):
    def setup(self, bottom, top):
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape(4, 3)
        top[1].reshape(4, 2)

    def forward(self, bottom, top):
        rng = np.random.default_rng(self.k)
        self.k += 1
        top[0].data[...] = rng.normal(size=(4, 3))
        top[1].data[...] = rng.normal(size=(4, 2))
"""

PY_NET = """name: "py"
layer { name: "data" type: "Python" top: "x" top: "t"
  python_param { module: "pairs_layer" layer: "Pairs" } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def test_python_data_layers_only_when_allowed(tmp_path, monkeypatch, capsys):
    from protocaffe.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "layers").mkdir()
    (tmp_path / "layers" / "pairs_layer.py").write_text(PY_LAYER)
    (tmp_path / "net.prototxt").write_text(PY_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n'
        "snapshot_after_train: false\ndisplay: 1\n"
    )
    assert main(["train", "solver.prototxt"]) == 1
    assert "--python-layers" in capsys.readouterr().err
    assert main(["train", "solver.prototxt", "--python-layers", "layers"]) == 0
    out = capsys.readouterr().out
    # Batch k of the layer is rng(k): the first displayed loss is the oracle's.
    solver = protocaffe.Solver("solver.prototxt", device="cpu", python_path=["layers"])
    w, b = (t.detach().double().numpy() for t in solver.net.params["ip"])
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    loss = ((x @ w.T + b - t) ** 2).sum() / 8
    assert solver.net.forward_loss() == pytest.approx(loss, rel=1e-5)
    assert "Iteration 1 (" in out
