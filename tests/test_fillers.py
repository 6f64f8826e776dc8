"""Caffe's weight fillers (include/caffe/filler.hpp) checked against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protocaffe.lower.fillers import FillerError, bilinear_kernel, fill
from protocaffe.proto import caffe_pb2


def F(**kw):
    return caffe_pb2.FillerParameter(**kw)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def upsample_filt(size):
    """FCN's surgery.upsample_filt (shelhamer/fcn.berkeleyvision.org), an independent oracle."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def test_bilinear_k4_values():
    row = [0.25, 0.75, 0.75, 0.25]
    expected = np.outer(row, row)  # [[.0625, .1875, .1875, .0625], ...]
    assert expected[0, 1] == 0.1875
    np.testing.assert_allclose(bilinear_kernel(4), expected)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 16, 32, 64])
def test_bilinear_matches_fcn_upsample_filt(k):
    np.testing.assert_allclose(bilinear_kernel(k), upsample_filt(k), atol=1e-12)


def test_bilinear_fills_every_slice():
    w = fill(F(type="bilinear"), (3, 2, 4, 4)).numpy()
    for o in range(3):
        for i in range(2):
            np.testing.assert_allclose(w[o, i], upsample_filt(4), rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 1, 3, 4)])
def test_bilinear_rejects_what_caffe_rejects(shape):
    with pytest.raises(FillerError):
        fill(F(type="bilinear"), shape)


def test_constant_and_default():
    assert torch.equal(fill(F(type="constant", value=0.5), (2, 3)), torch.full((2, 3), 0.5))
    assert torch.equal(fill(None, (4,)), torch.zeros(4))
    assert torch.equal(fill(F(), (4,)), torch.zeros(4))  # type defaults to constant 0


def test_uniform_range_and_mean():
    w = fill(F(type="uniform", min=-2, max=3), (200, 500), generator=gen())
    assert w.min() >= -2 and w.max() <= 3
    assert abs(w.mean().item() - 0.5) < 0.02
    assert w.min() < -1.99 and w.max() > 2.99


def test_gaussian_moments():
    w = fill(F(type="gaussian", mean=1.0, std=0.5), (300, 400), generator=gen())
    assert abs(w.mean().item() - 1.0) < 0.005
    assert abs(w.std().item() - 0.5) < 0.005


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    # Caffe keeps each weight with probability sparse / shape[0] (Bernoulli mask).
    w = fill(F(type="gaussian", std=1.0, sparse=5), (50, 2000), generator=gen())
    nonzero = (w != 0).float().mean().item()
    assert abs(nonzero - 5 / 50) < 0.01
    # about `sparse` non-zero outputs per input column
    assert abs((w != 0).sum(0).float().mean().item() - 5) < 0.2


def test_sparse_is_rejected_elsewhere():
    with pytest.raises(FillerError, match="sparsity"):
        fill(F(type="xavier", sparse=3), (4, 4))


@pytest.mark.parametrize(
    ("norm", "n"),
    [
        (caffe_pb2.FillerParameter.FAN_IN, 4 * 3 * 3),  # count / shape[0]
        (caffe_pb2.FillerParameter.FAN_OUT, 64 * 3 * 3),  # count / shape[1]
        (caffe_pb2.FillerParameter.AVERAGE, (4 * 9 + 64 * 9) / 2),
    ],
)
def test_xavier_bound(norm, n):
    w = fill(F(type="xavier", variance_norm=norm), (64, 4, 3, 3), generator=gen())
    bound = math.sqrt(3 / n)
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.97 * bound
    # uniform on [-b, b] has std b / sqrt(3)
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound


@pytest.mark.parametrize(
    ("norm", "n"),
    [
        (caffe_pb2.FillerParameter.FAN_IN, 16 * 25),
        (caffe_pb2.FillerParameter.FAN_OUT, 128 * 25),
        (caffe_pb2.FillerParameter.AVERAGE, (16 * 25 + 128 * 25) / 2),
    ],
)
def test_msra_std(norm, n):
    w = fill(F(type="msra", variance_norm=norm), (128, 16, 5, 5), generator=gen())
    assert abs(w.mean().item()) < 0.01 * math.sqrt(2 / n) * 10
    assert abs(w.std().item() / math.sqrt(2 / n) - 1) < 0.02


def test_positive_unitball_rows_sum_to_one():
    w = fill(F(type="positive_unitball"), (7, 3, 2, 2), generator=gen())
    assert (w >= 0).all() and (w <= 1).all()
    np.testing.assert_allclose(w.reshape(7, -1).sum(1).numpy(), np.ones(7), rtol=1e-5)


def test_seed_reproducible():
    a = fill(F(type="gaussian"), (10, 10), generator=gen(3))
    b = fill(F(type="gaussian"), (10, 10), generator=gen(3))
    c = fill(F(type="gaussian"), (10, 10), generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dtype_cast():
    assert fill(F(type="xavier"), (3, 3), dtype=torch.float64).dtype == torch.float64
    assert fill(F(type="xavier"), (3, 3), dtype=torch.float16).dtype == torch.float16


def test_unknown_type():
    with pytest.raises(FillerError, match="unknown filler type 'gausian'"):
        fill(F(type="gausian"), (2,))
