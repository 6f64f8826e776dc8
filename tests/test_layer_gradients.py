"""Every trained layer's backward equals Caffe's Backward_cpu.

Like Caffe's GradientChecker, each layer's gradients (bottoms and parameters) are compared
with central finite differences in float64, with an objective sum(top * w) for fixed random
w; where Caffe's backward is not the derivative (ties, ignored labels, the FLT_MIN clamp,
Dropout's mask) the expected gradient is Caffe's backward loop written out in numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocaffe.lower.builder import lower_graph
from protocaffe.testing import compile_snippet

SAMPLES = 12  # finite-difference points per tensor (the machine is small and shared)
GAUSS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


class Net:
    """One snippet lowered in float64 at TRAIN, with a scalar objective over its outputs."""

    def __init__(self, text: str, inputs: dict[str, np.ndarray], phase: str = "TRAIN"):
        self.reseed = "Dropout" in text
        graph = compile_snippet(text, {k: v.shape for k, v in inputs.items()}, phase=phase)
        self.module = lower_graph(graph, dtype=torch.float64, seed=0)
        self.inputs = {k: torch.tensor(v, dtype=torch.float64) for k, v in inputs.items()}
        rng = np.random.default_rng(1)
        shapes = {v.blob: v.shape for v in graph.outputs}
        self.weights = {k: torch.tensor(rng.standard_normal(s)) for k, s in shapes.items()}

    def objective(self, **override: torch.Tensor) -> torch.Tensor:
        if self.reseed:
            torch.manual_seed(0)  # the same Dropout mask on every pass
        out = self.module({**self.inputs, **override})
        return sum((out[k] * w).sum() for k, w in self.weights.items())

    def gradients(self, wrt: list[str]) -> tuple[dict, dict]:
        """Autograd gradients of the objective: (bottoms in `wrt`, learnable parameters)."""
        leaves = {k: self.inputs[k].clone().requires_grad_() for k in wrt}
        for p in self.module.parameters():
            p.grad = None
        self.objective(**leaves).backward()
        params = {n: p.grad.clone() for n, p in self.params()}
        return {k: v.grad for k, v in leaves.items()}, params

    def params(self):
        return [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]

    def numeric(self, wrt: list[str], h: float = 1e-6) -> tuple[dict, dict]:
        """Central differences of the objective at up to SAMPLES elements of each bottom in
        `wrt` and each parameter (NaN elsewhere: not checked)."""

        def central(tensor: torch.Tensor, run) -> torch.Tensor:
            grad = torch.full_like(tensor, float("nan"))
            flat, gflat = tensor.view(-1), grad.view(-1)
            picked = np.random.default_rng(flat.numel()).permutation(flat.numel())[:SAMPLES]
            with torch.no_grad():
                for i in picked.tolist():
                    keep = flat[i].item()
                    flat[i] = keep + h
                    up = run().item()
                    flat[i] = keep - h
                    down = run().item()
                    flat[i] = keep
                    gflat[i] = (up - down) / (2 * h)
            return grad

        bottoms = {}
        for k in wrt:
            x = self.inputs[k].clone()
            bottoms[k] = central(x, lambda x=x, k=k: self.objective(**{k: x}))
        params = {n: central(p.data, self.objective) for n, p in self.params()}
        return bottoms, params


def check(text, inputs, wrt=None, phase="TRAIN", atol=1e-6, rtol=1e-5):
    net = Net(text, inputs, phase)
    wrt = list(inputs) if wrt is None else wrt
    got_b, got_p = net.gradients(wrt)
    want_b, want_p = net.numeric(wrt)
    assert got_p.keys() == want_p.keys()
    pairs = [(got_b[k], want_b[k]) for k in wrt] + [(got_p[k], want_p[k]) for k in got_p]
    for got, want in pairs:
        checked = ~torch.isnan(want)
        torch.testing.assert_close(got[checked], want[checked], atol=atol, rtol=rtol)
    return net


def away_from_zero(shape, seed=0, gap=0.1):
    """Random values at least `gap` from 0 (no kinks within the finite-difference step)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < gap, np.sign(x) * gap + x, x)


X = away_from_zero((2, 3, 4, 3))

SMOOTH = {
    "ReLU negative_slope": (
        'layer { name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.2 } }',
        {"x": X},
    ),
    "ReLU in place after conv": (
        f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param {{ '
        f"num_output: 2 kernel_size: 3 {GAUSS} }} }}"
        'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }',
        {"x": X},
    ),
    "Sigmoid": ('layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }', {"x": X}),
    "TanH": ('layer { name: "t" type: "TanH" bottom: "x" top: "y" }', {"x": X}),
    "AVE pooling ceil + pad": (
        'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }",
        {"x": X},
    ),
    "Convolution stride pad dilation": (
        f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: 4 kernel_size: 2 stride: 2 pad: 1 dilation: 2 {GAUSS} }} }}",
        {"x": X},
    ),
    "Deconvolution": (
        f'layer {{ name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ '
        f"num_output: 2 kernel_size: 4 stride: 2 pad: 1 {GAUSS} }} }}",
        {"x": X},
    ),
    "InnerProduct": (
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        f"inner_product_param {{ num_output: 3 {GAUSS} }} }}",
        {"x": X},
    ),
    "InnerProduct transpose axis 2": (
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param '
        f"{{ num_output: 2 axis: 2 transpose: true {GAUSS} }} }}",
        {"x": X},
    ),
    "LRN across channels": (
        'layer { name: "n" type: "LRN" bottom: "x" top: "y" '
        "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }",
        {"x": X},
    ),
    "LRN within channel": (
        'layer { name: "n" type: "LRN" bottom: "x" top: "y" '
        "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }",
        {"x": X},
    ),
    "Scale with bias": (
        'layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true '
        'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }',
        {"x": X},
    ),
    "Scale by a bottom": (
        'layer { name: "s" type: "Scale" bottom: "x" bottom: "m" top: "y" '
        "scale_param { axis: 0 } }",
        {"x": X, "m": away_from_zero((2, 3), 2)},
    ),
    "Bias": (
        'layer { name: "b" type: "Bias" bottom: "x" top: "y" '
        'bias_param { filler { type: "gaussian" std: 1 } } }',
        {"x": X},
    ),
    "Eltwise SUM coefficients": (
        'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "z" top: "y" '
        "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }",
        {"x": X, "z": away_from_zero(X.shape, 3)},
    ),
    "Eltwise PROD": (
        'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "z" bottom: "w" top: "y" '
        "eltwise_param { operation: PROD } }",
        {"x": X, "z": away_from_zero(X.shape, 3), "w": away_from_zero(X.shape, 4)},
    ),
    "Concat and Slice": (
        'layer { name: "c" type: "Concat" bottom: "x" bottom: "z" top: "c" }'
        'layer { name: "s" type: "Slice" bottom: "c" top: "a" top: "b" top: "d" '
        "slice_param { slice_point: 1 slice_point: 4 } }",
        {"x": X, "z": away_from_zero((2, 2, 4, 3), 3)},
    ),
    "Crop with offsets": (
        'layer { name: "c" type: "Crop" bottom: "x" bottom: "r" top: "y" '
        "crop_param { axis: 2 offset: 1 offset: 2 } }",
        {"x": X, "r": np.zeros((1, 1, 2, 1))},
    ),
    "BatchNorm batch statistics": (
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }',
        {"x": X},
    ),
    "BatchNorm use_global_stats at TRAIN": (
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
        "batch_norm_param { use_global_stats: true } }",
        {"x": X},
    ),
    "EuclideanLoss": (
        'layer { name: "l" type: "EuclideanLoss" bottom: "x" bottom: "z" top: "l" }',
        {"x": X, "z": away_from_zero(X.shape, 3)},
    ),
    "SigmoidCrossEntropyLoss": (
        'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" }',
        {"x": X, "t": np.random.default_rng(5).random(X.shape)},
    ),
}


LABELS4 = np.array([0.0, 2.0, 1.0, 2.0])
SCORES = np.random.default_rng(0).standard_normal((4, 3))
POSITIVE = np.abs(X) + 0.5

# The other layers a net may train through.
SMOOTH |= {
    "Softmax": ('layer { name: "s" type: "Softmax" bottom: "x" top: "y" }', {"x": X}),
    "PReLU": (
        'layer { name: "p" type: "PReLU" bottom: "x" top: "y" '
        'prelu_param { filler { type: "gaussian" std: 0.5 } } }',
        {"x": X},
    ),
    "ELU": (
        'layer { name: "e" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.7 } }',
        {"x": X},
    ),
    "Power": (
        'layer { name: "p" type: "Power" bottom: "x" top: "y" '
        "power_param { power: 2.5 scale: 0.5 shift: 2 } }",
        {"x": POSITIVE},
    ),
    "BNLL": ('layer { name: "p" type: "BNLL" bottom: "x" top: "y" }', {"x": X}),
    "MVN": ('layer { name: "p" type: "MVN" bottom: "x" top: "y" }', {"x": X}),
    "Reduction SUMSQ": (
        'layer { name: "p" type: "Reduction" bottom: "x" top: "y" '
        "reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 } }",
        {"x": X},
    ),
    "Tile": (
        'layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 2 } }',
        {"x": X},
    ),
    "Embed": (
        'layer { name: "e" type: "Embed" bottom: "lab" top: "y" embed_param { num_output: 3 '
        f"input_dim: 5 {GAUSS} }} }}",
        {"lab": np.array([[0.0, 3.0], [4.0, 3.0]])},
    ),
    "Convolution group": (
        'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        f"num_output: 4 group: 2 kernel_size: 3 pad: 1 {GAUSS} }} }}",
        {"x": away_from_zero((1, 2, 4, 4))},
    ),
    "Deconvolution group bilinear": (
        'layer { name: "c" type: "Deconvolution" bottom: "x" top: "y" convolution_param { '
        'num_output: 2 group: 2 kernel_size: 4 stride: 2 weight_filler { type: "bilinear" } } }',
        {"x": away_from_zero((1, 2, 3, 3))},
    ),
    "InfogainLoss": (
        'layer { name: "l" type: "InfogainLoss" bottom: "x" bottom: "lab" bottom: "h" top: "l" }',
        {"x": SCORES, "lab": LABELS4, "h": np.random.default_rng(1).random((3, 3))},
    ),
    "HingeLoss L2": (
        'layer { name: "l" type: "HingeLoss" bottom: "x" bottom: "lab" top: "l" '
        "hinge_loss_param { norm: L2 } }",
        {"x": away_from_zero((4, 3)) * 3, "lab": LABELS4},
    ),
    "MultinomialLogisticLoss": (
        'layer { name: "l" type: "MultinomialLogisticLoss" bottom: "x" bottom: "lab" top: "l" }',
        {"x": np.abs(SCORES) + 0.1, "lab": LABELS4},
    ),
}
NOT_DIFFERENTIATED = ("r", "t", "lab", "h")  # Crop's reference, targets, labels, H


@pytest.mark.parametrize("name", list(SMOOTH))
def test_gradient_matches_finite_differences(name):
    text, inputs = SMOOTH[name]
    check(text, inputs, [k for k in inputs if k not in NOT_DIFFERENTIATED])


# --- where Caffe's backward is its own loop -------------------------------------------------


def softmax_loss_grad(x, labels, ignore, normalizer):
    """SoftmaxWithLoss::Backward_cpu: prob - onehot at each position, 0 where ignored, over
    the normaliser (outer x C x inner layout)."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    diff = prob.copy()
    outer, _, inner = x.shape
    for i in range(outer):
        for j in range(inner):
            if ignore is not None and labels[i, j] == ignore:
                diff[i, :, j] = 0
            else:
                diff[i, labels[i, j], j] -= 1
    return diff / normalizer


LABELS = np.array([[[0, 2], [255, 1]], [[255, 255], [2, 0]]], dtype=np.float64)  # 2x2x2


@pytest.mark.parametrize(
    ("loss_param", "normalizer"),
    [
        ("ignore_label: 255", 5),  # VALID (the default): 5 labelled positions
        ("ignore_label: 255 normalization: FULL", 8),
        ("ignore_label: 255 normalization: BATCH_SIZE", 2),
        ("ignore_label: 255 normalization: NONE", 1),
        ("ignore_label: 255 normalize: false", 2),  # legacy false = BATCH_SIZE
        ("ignore_label: 255 normalize: true", 5),  # legacy true = VALID
        ("normalization: VALID", None),  # no ignore_label: VALID counts every position
    ],
)
def test_softmax_with_loss_backward(loss_param, normalizer):
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2))
    labels = LABELS if normalizer is not None else np.where(LABELS == 255, 1, LABELS)
    text = (
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "l" '
        f"loss_weight: 2 loss_param {{ {loss_param} }} }}"
    )
    net = Net(text, {"x": x, "label": labels})
    net.weights = {"l": torch.tensor(2.0)}  # the loss_weight is the top's diff
    got, _ = net.gradients(["x"])
    ignore = 255 if "ignore_label" in loss_param else None
    flat = labels.reshape(2, 4).astype(int)
    want = softmax_loss_grad(x.reshape(2, 3, 4), flat, ignore, normalizer or 8) * 2
    np.testing.assert_allclose(got["x"].numpy().reshape(2, 3, 4), want, rtol=1e-12, atol=1e-15)
    # Away from the clamp, this is also the derivative of the loss.
    check(text, {"x": x, "label": labels}, ["x"])


def test_softmax_with_loss_gradient_survives_the_flt_min_clamp():
    # p(label) = exp(-200) underflows FLT_MIN: the loss is clamped, Caffe's gradient is not.
    x = np.zeros((1, 2, 1, 1))
    x[0, 1] = 200.0
    net = Net(
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "l" }',
        {"x": x, "label": np.zeros((1, 1, 1, 1))},
    )
    net.weights = {"l": torch.tensor(1.0)}
    got, _ = net.gradients(["x"])
    np.testing.assert_allclose(got["x"].numpy().ravel(), [-1.0, 1.0])


def test_softmax_prob_top_gets_no_gradient():
    # Caffe's backward reads only top[0]'s diff: a weight on the prob top changes nothing.
    x = np.random.default_rng(0).standard_normal((2, 3))
    text = (
        'layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" '
        'top: "l" top: "prob" }'
    )
    net = Net(text, {"x": x, "label": np.array([0.0, 2.0])})
    net.weights = {"l": torch.tensor(1.0)}
    alone, _ = net.gradients(["x"])
    net.weights["prob"] = torch.ones(2, 3) * 5
    with_prob, _ = net.gradients(["x"])
    torch.testing.assert_close(alone["x"], with_prob["x"])


def test_sigmoid_cross_entropy_ignore_label():
    x = away_from_zero((2, 3))
    t = np.array([[1.0, 0.0, -1.0], [0.0, -1.0, 1.0]])
    text = (
        'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" '
        "loss_param { ignore_label: -1 normalization: VALID } }"
    )
    net = Net(text, {"x": x, "t": t})
    net.weights = {"l": torch.tensor(1.0)}
    got, _ = net.gradients(["x"])
    # Backward_cpu: (sigmoid(x) - t) / normaliser, 0 at ignored targets; VALID counts 4.
    want = np.where(t == -1, 0.0, 1 / (1 + np.exp(-x)) - t) / 4
    np.testing.assert_allclose(got["x"].numpy(), want, rtol=1e-12)


def max_pool_grad(x, k, s, p, out, dy):
    """PoolingLayer MAX: the first maximum of each clipped window (strict >), row-major."""
    dx = np.zeros_like(x)
    n, c, height, width = x.shape
    for b in range(n):
        for ch in range(c):
            for ph in range(out[0]):
                for pw in range(out[1]):
                    hs, ws = ph * s - p, pw * s - p
                    he, we = min(hs + k, height), min(ws + k, width)
                    hs, ws = max(hs, 0), max(ws, 0)
                    best, where = -np.inf, None
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, ch, h, w] > best:
                                best, where = x[b, ch, h, w], (h, w)
                    dx[b, ch, where[0], where[1]] += dy[b, ch, ph, pw]
    return dx


@pytest.mark.parametrize(("k", "s", "p"), [(2, 2, 0), (3, 2, 0), (3, 2, 1), (2, 3, 0), (3, 1, 1)])
def test_max_pooling_ties_take_the_first_max(k, s, p):
    # Values from {0, 1}: most windows hold ties.
    x = np.random.default_rng(k * 10 + s).integers(0, 2, (1, 2, 7, 7)).astype(np.float64)
    net = Net(
        'layer { name: "p" type: "Pooling" bottom: "x" top: "y" '
        f"pooling_param {{ pool: MAX kernel_size: {k} stride: {s} pad: {p} }} }}",
        {"x": x},
    )
    got, _ = net.gradients(["x"])
    dy = net.weights["y"].numpy()
    want = max_pool_grad(x, k, s, p, dy.shape[2:], dy)
    np.testing.assert_allclose(got["x"].numpy(), want)


def test_eltwise_max_ties_follow_caffes_mask():
    a = np.array([1.0, 2.0, 3.0, 5.0])
    b = np.array([1.0, 1.0, 3.0, 5.0])
    c = np.array([1.0, 2.0, 4.0, 5.0])
    net = Net(
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
        "eltwise_param { operation: MAX } }",
        {"a": a, "b": b, "c": c},
    )
    net.weights = {"y": torch.ones(4)}
    got, _ = net.gradients(["a", "b", "c"])
    # Caffe: a tie of bottoms 0 and 1 goes to 1; a later bottom must be strictly greater.
    assert got["a"].tolist() == [0, 1, 0, 0]
    assert got["b"].tolist() == [1, 0, 0, 1]
    assert got["c"].tolist() == [0, 0, 1, 0]


def test_dropout_scales_kept_units_by_one_over_keep():
    x = np.random.default_rng(0).standard_normal((4, 50)) + 10  # never 0: mask = y != 0
    net = Net(
        'layer { name: "d" type: "Dropout" bottom: "x" top: "y" '
        "dropout_param { dropout_ratio: 0.25 } }",
        {"x": x},
    )
    torch.manual_seed(0)
    y = net.module(net.inputs)["y"].numpy()
    mask = y != 0
    np.testing.assert_allclose(y[mask], x[mask] / 0.75)
    got, _ = net.gradients(["x"])  # the same seed: the same mask
    np.testing.assert_allclose(got["x"].numpy(), mask * net.weights["y"].numpy() / 0.75)
    assert 0.6 < mask.mean() < 0.9


def test_batch_norm_train_updates_caffes_sums():
    x = np.random.default_rng(0).standard_normal((3, 2, 2, 2))
    net = Net(
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
        "batch_norm_param { moving_average_fraction: 0.9 } }",
        {"x": x},
    )
    for _ in range(2):
        net.module(net.inputs)
    m = x.size // x.shape[1]
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    blobs = net.module.layer_module("bn")
    # s <- 0.9 s + 1; mean_sum <- 0.9 mean_sum + mean; var_sum <- 0.9 var_sum + m/(m-1) var.
    np.testing.assert_allclose(blobs.scale_factor.numpy(), [1.9])
    np.testing.assert_allclose(blobs.mean.numpy(), 1.9 * mean)
    np.testing.assert_allclose(blobs.variance.numpy(), 1.9 * var * m / (m - 1))


def test_out_of_range_label_is_a_data_error():
    from protocaffe.diagnostics import CompileError

    net = Net(
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "l" '
        "loss_param { ignore_label: 255 } }",
        {"x": np.zeros((2, 3)), "label": np.array([255.0, 3.0])},
    )
    with pytest.raises(CompileError, match=r"SoftmaxWithLoss 'loss': label 3 is not a class"):
        net.gradients(["x"])
