"""Whole real nets from the corpus agree with OpenCV's independent Caffe importer.

Each net gets seeded random weights (He-scaled convolutions, positive BatchNorm variances with
scale factor 1), written by our .caffemodel saver and read by both implementations; the blob
feeding the final Softmax is compared, since a saturated softmax would hide differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _corpus import CORPUS

import protocaffe
from protocaffe.runtime.caffemodel import save_caffemodel

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV has no Caffe importer", allow_module_level=True)

NETS = {
    "squeezenet-1.0": "forresti__SqueezeNet/SqueezeNet_v1.0__deploy.prototxt",
    "mobilenet": "shicai__MobileNet-Caffe/mobilenet_deploy.prototxt",
    "googlenet": "BVLC__caffe/models__bvlc_googlenet__deploy.prototxt",
    "alexnet": "BVLC__caffe/models__bvlc_alexnet__deploy.prototxt",
    "resnet-50": "KaimingHe__deep-residual-networks/prototxt__ResNet-50-deploy.prototxt",
    "mobilenet-v2": "shicai__MobileNet-Caffe/mobilenet_v2_deploy.prototxt",
}


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights that keep activations in range through a deep net."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, attr in module._layer_attrs.items():
            blobs = getattr(module, attr)
            named = [*blobs.named_parameters(recurse=False), *blobs.named_buffers(recurse=False)]
            for name, t in named:
                if layer.type == "BatchNorm" and name == "variance":
                    t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                elif layer.type == "BatchNorm" and name != "mean":
                    t.fill_(1.0)  # the scale factor
                elif name == "weight" and t.dim() >= 2:
                    t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
                else:
                    base = 1.0 if layer.type == "Scale" and name == "weight" else 0.0
                    t.copy_(torch.randn(t.shape, generator=gen) * 0.1 + base)


@pytest.mark.parametrize("name", list(NETS))
def test_real_net_matches_opencv(name: str, tmp_path: Path) -> None:
    path = CORPUS / NETS[name]
    if not path.exists():
        pytest.skip(f"corpus file absent: {path}")
    graph = protocaffe.compile(path)
    value = graph.inputs[0]
    shape = (1, *value.shape[1:])
    module = protocaffe.load(path, device="cpu", input_shapes={value.blob: shape})
    randomize(module, seed=1)
    weights = tmp_path / "w.caffemodel"
    save_caffemodel(module, weights)
    last = graph.layers[-1]
    blob = last.bottoms[0] if last.type == "Softmax" else last.tops[0]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 20

    with torch.no_grad():
        ours = module.with_outputs([blob])(torch.from_numpy(x))[blob].numpy()
    net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    net.setInput(x)
    theirs = net.forward(blob).reshape(ours.shape)

    scale = float(np.abs(ours).max())
    assert scale > 1.0  # the random weights kept the signal alive
    assert float(np.abs(ours - theirs).max()) <= 1e-4 * scale
