"""CUDA execution of FCN-8s: float32 equals the CPU result; float16/bfloat16 and channels_last
run and stay close. Skipped (visibly) without CUDA."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
]

FCN8S = Path(__file__).resolve().parents[1] / "models" / "fcn8s.prototxt"
SHAPE = (1, 3, 256, 320)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """FCN-8s with seeded gaussian conv weights saved to a .caffemodel, an input and the CPU
    float32 output as the reference."""
    from protocaffe.runtime.api import load
    from protocaffe.runtime.caffemodel import save_caffemodel

    tmp = tmp_path_factory.mktemp("fcn8s")
    gauss = '{ type: "gaussian" std: 0.01 }'
    text = re.sub(
        r'(type: "Convolution"[^{]*convolution_param \{)',
        lambda m: f"{m[1]} weight_filler {gauss} bias_filler {gauss}",
        FCN8S.read_text(),
    )
    proto = tmp / "fcn8s.prototxt"
    proto.write_text(text)
    weights = tmp / "fcn8s.caffemodel"
    save_caffemodel(load(proto, device="cpu", seed=0, input_shapes={"data": SHAPE}), weights)
    x = np.random.default_rng(0).uniform(-120, 130, SHAPE).astype(np.float32)
    cpu = load(proto, weights, device="cpu", input_shapes={"data": SHAPE})
    with torch.no_grad():
        ref = cpu(torch.from_numpy(x))["score"].numpy()
    assert np.abs(ref).max() > 0
    return proto, weights, x, ref


def run_cuda(net, **options) -> np.ndarray:
    from protocaffe.runtime.api import load

    proto, weights, x, _ = net
    module = load(proto, weights, device="cuda", input_shapes={"data": SHAPE}, **options)
    inp = torch.from_numpy(x).cuda().to(next(module.parameters()).dtype)
    if options.get("channels_last"):
        inp = inp.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = module(inp)["score"]
    assert out.is_cuda
    return out.float().cpu().numpy()


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_float32_matches_cpu(net) -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    assert rel_error(run_cuda(net), net[3]) < 1e-4


def test_channels_last_matches_cpu(net) -> None:
    torch.backends.cudnn.allow_tf32 = False
    assert rel_error(run_cuda(net, channels_last=True), net[3]) < 1e-4


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-2), ("bfloat16", 8e-2)])
def test_half_precision_is_close(net, dtype: str, tol: float) -> None:
    got = run_cuda(net, dtype=dtype)
    assert np.isfinite(got).all()
    assert rel_error(got, net[3]) < tol
    # The class decision agrees on almost every pixel.
    agree = (got.argmax(1) == net[3].argmax(1)).mean()
    assert agree > 0.95, agree
