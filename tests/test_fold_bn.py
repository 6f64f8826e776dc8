"""BatchNorm (+ Scale) folding: the folded net computes the unfolded one's function to 1e-5.

The unfolded module is itself checked against the layers' numpy oracles elsewhere; here the
statistics are random and non-trivial (scale_factor != 1, nonzero means, Scale with and without
a bias) so that every term of the fold matters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import protocaffe
from protocaffe.cli import main
from protocaffe.lower.fold_bn import fold_batch_norm, plan_folds

NET = """
name: "bn_mix"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv/1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 8 kernel_size: 3 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "c1" top: "c1" }
layer { name: "sc1" type: "Scale" bottom: "c1" top: "c1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "conv2" type: "Convolution" bottom: "c1" top: "c2"
        convolution_param { num_output: 6 kernel_size: 3 stride: 2 group: 2 } }
layer { name: "bn2" type: "BatchNorm" bottom: "c2" top: "c2n" batch_norm_param { eps: 0.001 } }
layer { name: "sc2" type: "Scale" bottom: "c2n" top: "c2s" }
layer { name: "conv3" type: "Convolution" bottom: "c2s" top: "c3"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "side" type: "ReLU" bottom: "c3" top: "side" }
layer { name: "bn3" type: "BatchNorm" bottom: "c3" top: "c3n" }
layer { name: "fc" type: "InnerProduct" bottom: "c3n" top: "fc"
        inner_product_param { num_output: 5 } }
layer { name: "bnfc" type: "BatchNorm" bottom: "fc" top: "fc" }
layer { name: "scfc" type: "Scale" bottom: "fc" top: "fc" scale_param { bias_term: true } }
"""


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "bn_mix.prototxt"
    path.write_text(NET)
    return path


def randomise_statistics(module: torch.nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "variance":
                t.copy_((torch.rand(t.shape, generator=gen) + 0.2) * 3.0)  # stored as var * f
            elif leaf == "scale_factor":
                t.fill_(3.0)
            else:
                t.copy_(torch.randn(t.shape, generator=gen))


def test_plan_folds_what_is_foldable(net: Path) -> None:
    graph = protocaffe.compile(net)
    folds = {f.producer.name: [x.name for x in f.folded] for f in plan_folds(graph).folds}
    # conv3's top is also read by 'side', so bn3 stays; Scale sc2 has no bias but still folds.
    assert folds == {"conv/1": ["bn1", "sc1"], "conv2": ["bn2", "sc2"], "fc": ["bnfc", "scfc"]}


def test_folded_matches_unfolded(net: Path) -> None:
    module = protocaffe.load(net, device="cpu", seed=0)
    randomise_statistics(module)
    folded = fold_batch_norm(module)
    assert folded.folded_layers == ["bn1", "sc1", "bn2", "sc2", "bnfc", "scfc"]
    kept = [layer.name for layer in folded.caffe_graph.layers]
    assert "bn3" in kept and "bn1" not in kept
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    want, got = module(x), folded(x)
    assert set(want) == set(got) == {"fc", "side"}
    for name in want:
        scale = want[name].abs().max().item()
        assert (want[name] - got[name]).abs().max().item() <= 1e-5 * max(scale, 1.0)


def test_load_fold_bn_and_source_spans(net: Path) -> None:
    module = protocaffe.load(net, device="cpu", seed=0, fold_bn=True)
    graph = module.caffe_graph
    conv = graph.layer("conv/1")
    # The folded net still points into the original file.
    assert conv.span is not None and conv.span.line == 5
    assert graph.layer("fc").span.line == 18
    assert [b.name for b in conv.blob_specs] == ["weight", "bias"]


def test_convert_fold_bn_writes_the_deployed_blobs(
    net: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "w.pt"
    assert main(["convert", str(net), "-o", str(out), "--fold-bn", "--seed", "0"]) == 0
    assert "6 BatchNorm/Scale layers folded" in capsys.readouterr().out
    state = torch.load(out)
    assert "conv_1.bias" in state and not any(k.startswith(("bn1", "sc1")) for k in state)
    assert "bn3.mean" in state
