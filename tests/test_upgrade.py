"""Legacy-format upgrades (Caffe's UpgradeNetAsNeeded / UpgradeSolverAsNeeded).

Synthetic cases check each rule against what Caffe's upgrade_proto.cpp does; corpus cases check
that upgrading an old upstream file gives the file upstream later committed in its place.
"""

from __future__ import annotations

import csv

import pytest
from _corpus import CORPUS
from google.protobuf import text_format

from protocaffe.diagnostics import CompileError
from protocaffe.frontend.upgrade import upgrade_net, upgrade_solver
from protocaffe.proto import caffe_pb2

needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
V1 = caffe_pb2.V1LayerParameter


def parse(text: str, message_type=caffe_pb2.NetParameter, path: str = "<test>"):
    from protocaffe.frontend.textformat import parse_text

    return parse_text(text, path, message_type)


def upgrade(text: str):
    """The upgraded message and the diagnostics, as (message, [(severity, message)])."""
    parsed, diags = upgrade_net(parse(text))
    return parsed.message, [(d.severity, d.message) for d in diags]


def errors_of(text: str, upgrader=upgrade_net, message_type=caffe_pb2.NetParameter):
    with pytest.raises(CompileError) as info:
        upgrader(parse(text, message_type))
    return [d for d in info.value.diagnostics if d.severity == "error"]


def layer(text: str):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


# --- V0 -> V1 -> V2 ------------------------------------------------------------------------

V0_NET = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32
layers {
  layer { name: "pad1" type: "padding" pad: 2 }
  bottom: "data" top: "pad1"
}
layers {
  layer {
    name: "conv1" type: "conv" num_output: 8 kernelsize: 5 stride: 2 group: 1 biasterm: false
    weight_filler { type: "gaussian" std: 0.01 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "pad1" top: "conv1"
}
layers {
  layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 pad: 1 }
  bottom: "conv1" top: "pool1"
}
layers {
  layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }
  bottom: "pool1" top: "norm1"
}
layers {
  layer { name: "drop" type: "dropout" dropout_ratio: 0.25 }
  bottom: "norm1" top: "norm1"
}
layers {
  layer { name: "fc" type: "innerproduct" num_output: 10 bias_filler { type: "constant" value: 1 } }
  bottom: "norm1" top: "fc"
}
"""


def test_v0_layers_map_field_by_field_and_padding_folds_into_conv():
    net, diags = upgrade(V0_NET)
    assert [(lyr.name, lyr.type) for lyr in net.layer] == [
        ("input", "Input"),
        ("conv1", "Convolution"),
        ("pool1", "Pooling"),
        ("norm1", "LRN"),
        ("drop", "Dropout"),
        ("fc", "InnerProduct"),
    ]
    assert net.layer[1] == layer(
        """name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 8 bias_term: false pad: 2 kernel_size: 5 group: 1
                            stride: 2 weight_filler { type: "gaussian" std: 0.01 } }"""
    )
    assert net.layer[2].pooling_param == text_format.Parse(
        "pool: AVE kernel_size: 3 stride: 2 pad: 1", caffe_pb2.PoolingParameter()
    )
    assert net.layer[3].lrn_param == text_format.Parse(
        "local_size: 3 alpha: 0.5 beta: 0.75 k: 2", caffe_pb2.LRNParameter()
    )
    assert net.layer[4].dropout_param.dropout_ratio == 0.25
    assert net.layer[5].inner_product_param.num_output == 10
    assert net.layer[5].inner_product_param.bias_filler.value == 1
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 32, 32]
    assert not net.layers and not net.input and not net.input_dim
    messages = [m for _, m in diags]
    assert "folded padding layer 'pad1' (pad 2) into 'conv1'" in messages
    # Six V0 entries, one of them the padding layer folded away.
    assert "upgraded V0 'layers { layer { ... } }' format to V1 (5 layers)" in messages
    assert "upgraded V1 'layers' format to V2 'layer' (5 layers)" in messages


def test_v0_data_layers_fill_their_params_and_transform_param():
    net, _ = upgrade(
        """
        layers { layer { name: "d" type: "data" source: "db" batchsize: 8 rand_skip: 3
                         scale: 0.5 meanfile: "m.binaryproto" cropsize: 7 mirror: true }
                 top: "data" }
        layers { layer { name: "i" type: "images" source: "list.txt" batchsize: 2
                         shuffle_images: true new_height: 5 new_width: 6 }
                 top: "img" }
        layers { layer { name: "w" type: "window_data" source: "w.txt" batchsize: 4
                         det_fg_threshold: 0.6 det_bg_threshold: 0.4 det_fg_fraction: 0.3
                         det_context_pad: 16 det_crop_mode: "square" }
                 top: "win" }
        layers { layer { name: "c" type: "concat" concat_dim: 2 }
                 bottom: "data" bottom: "img" top: "cat" }
        layers { layer { name: "o" type: "hdf5_output" hdf5_output_param { file_name: "f.h5" } }
                 bottom: "cat" }
        layers { layer { name: "h" type: "hdf5_data" source: "h.txt" batchsize: 9 } top: "h" }
        """
    )
    d, i, w, c, o, h = net.layer
    assert d == layer(
        """name: "d" type: "Data" top: "data"
        transform_param { scale: 0.5 mean_file: "m.binaryproto" crop_size: 7 mirror: true }
        data_param { source: "db" batch_size: 8 rand_skip: 3 }"""
    )
    assert i.image_data_param == text_format.Parse(
        'source: "list.txt" batch_size: 2 shuffle: true new_height: 5 new_width: 6',
        caffe_pb2.ImageDataParameter(),
    )
    assert w.window_data_param == text_format.Parse(
        'source: "w.txt" batch_size: 4 fg_threshold: 0.6 bg_threshold: 0.4 fg_fraction: 0.3 '
        'context_pad: 16 crop_mode: "square"',
        caffe_pb2.WindowDataParameter(),
    )
    assert (c.type, c.concat_param.concat_dim) == ("Concat", 2)
    assert (o.type, o.hdf5_output_param.file_name) == ("HDF5Output", "f.h5")
    assert (h.type, h.hdf5_data_param.source, h.hdf5_data_param.batch_size) == (
        "HDF5Data",
        "h.txt",
        9,
    )


def test_v0_field_on_the_wrong_layer_type_is_dropped_with_a_warning():
    net, diags = upgrade(
        'layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "x" top: "x" }\n'
        'input: "x" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1'
    )
    assert net.layer[1] == layer('name: "r" type: "ReLU" bottom: "x" top: "x"')
    assert (
        "warning",
        "V0 field 'num_output' has no meaning for a 'relu' layer; dropped (as Caffe does)",
    ) in diags


def test_v0_unknown_type_is_a_located_error_with_a_suggestion():
    (err,) = errors_of('layers {\n  layer { name: "c" type: "inner_product" }\n  top: "c"\n}')
    assert err.message == "unknown V0 layer type 'inner_product'"
    assert err.hint == "did you mean 'innerproduct'?"
    assert err.span is not None and err.span.line == 2


def test_v0_padding_into_a_non_conv_layer_is_an_error():
    (err,) = errors_of(
        """input: "x"
        layers { layer { name: "p" type: "padding" pad: 1 } bottom: "x" top: "p" }
        layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }"""
    )
    assert "padding layer 'p' feeds a 'relu' layer" in err.message


def test_v0_unknown_bottom_is_an_error():
    (err,) = errors_of('layers { layer { name: "r" type: "relu" } bottom: "nope" top: "r" }')
    assert err.message.startswith("unknown bottom blob 'nope'")


# --- data-transformation fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("v1_type", "param"),
    [
        ("DATA", "data_param"),
        ("IMAGE_DATA", "image_data_param"),
        ("WINDOW_DATA", "window_data_param"),
    ],
)
def test_v1_data_layer_transform_fields_move_to_transform_param(v1_type, param):
    net, diags = upgrade(
        f"""layers {{ name: "d" type: {v1_type} top: "data"
                     {param} {{ source: "s" scale: 0.25 mean_file: "m" crop_size: 9
                                mirror: true }} }}"""
    )
    (d,) = net.layer
    assert d.transform_param == text_format.Parse(
        'scale: 0.25 mean_file: "m" crop_size: 9 mirror: true', caffe_pb2.TransformationParameter()
    )
    assert getattr(d, param) == text_format.Parse('source: "s"', type(getattr(d, param))())
    assert (
        "note",
        "moved deprecated data-transformation fields into 'transform_param' (1 layer)",
    ) in diags


# --- V1 -> V2 ------------------------------------------------------------------------------

# Caffe's own type strings for a sample of V1 enum values (UpgradeV1LayerType).
CAFFE_TYPE_NAMES = {
    "ABSVAL": "AbsVal",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "HDF5_DATA": "HDF5Data",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INNER_PRODUCT": "InnerProduct",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "TANH": "TanH",
    "MVN": "MVN",
    "BNLL": "BNLL",
}


@pytest.mark.parametrize(
    "enum_name", [v.name for v in V1.LayerType.DESCRIPTOR.values if v.name != "NONE"]
)
def test_every_v1_layer_type_has_a_v2_type(enum_name):
    net, _ = upgrade(f'layers {{ name: "l" type: {enum_name} }}')
    v2 = net.layer[0].type
    assert v2 and v2[0].isupper()
    if enum_name in CAFFE_TYPE_NAMES:
        assert v2 == CAFFE_TYPE_NAMES[enum_name]
    else:  # the rest are the enum name in CamelCase
        assert v2.lower() == enum_name.replace("_", "").lower()


def test_v1_type_none_is_a_located_error():
    text = 'layers {\n  name: "l"\n  type: NONE\n}'
    (err,) = errors_of(text)
    assert err.message == "V1 layer type NONE has no V2 equivalent"
    assert err.span is not None and err.span.line == 3


def test_v1_param_fields_become_param_specs():
    net, _ = upgrade(
        """layers { name: "c" type: CONVOLUTION bottom: "x" top: "y"
             param: "w" param: "b" blob_share_mode: PERMISSIVE
             blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 weight_decay: 5
             loss_weight: 0.5
             include { phase: TRAIN } exclude { stage: "deploy" }
             convolution_param { num_output: 4 kernel_size: 3 } }"""
    )
    assert net.layer[0] == layer(
        """name: "c" type: "Convolution" bottom: "x" top: "y" loss_weight: 0.5
        include { phase: TRAIN } exclude { stage: "deploy" }
        param { name: "w" share_mode: PERMISSIVE lr_mult: 1 decay_mult: 1 }
        param { name: "b" lr_mult: 2 decay_mult: 0 }
        param { decay_mult: 5 }
        convolution_param { num_output: 4 kernel_size: 3 }"""
    )


def test_v1_every_param_message_is_copied():
    v1 = V1(name="l", type=V1.CONVOLUTION)
    copied = []
    for fd in V1.DESCRIPTOR.fields:
        if fd.name.endswith("_param") and not fd.is_repeated:
            getattr(v1, fd.name).SetInParent()
            copied.append(fd.name)
    net = caffe_pb2.NetParameter()
    net.layers.append(v1)
    net, _ = upgrade(text_format.MessageToString(net))
    assert len(copied) > 25
    assert [name for name in copied if not net.layer[0].HasField(name)] == []


def test_mixing_layer_and_layers_is_refused():
    text = 'layers { name: "a" type: RELU }\nlayer { name: "b" type: "ReLU" }'
    (err,) = errors_of(text)
    assert "mixes V2 'layer' and deprecated V1 'layers'" in err.message
    assert err.span is not None and err.span.line == 2


# --- net-level inputs ----------------------------------------------------------------------


def test_input_dims_become_an_input_layer_named_input_first():
    net, diags = upgrade(
        """input: "a" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4
        input: "b" input_dim: 5 input_dim: 6 input_dim: 7 input_dim: 8
        layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "c" }"""
    )
    assert net.layer[0] == layer(
        """name: "input" type: "Input" top: "a" top: "b"
        input_param { shape { dim: [1, 2, 3, 4] } shape { dim: [5, 6, 7, 8] } }"""
    )
    assert net.layer[1].name == "cat"
    assert not net.input and not net.input_dim
    assert ("note", "converted net-level inputs (a, b) to an 'Input' layer named 'input'") in diags


def test_input_shape_becomes_an_input_layer():
    net, _ = upgrade('input: "x" input_shape { dim: 2 dim: 5 }')
    assert net.layer[0] == layer(
        'name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 5 } }'
    )
    assert not net.input_shape


def test_input_dim_count_must_be_four_per_input():
    (err,) = errors_of('input: "x"\ninput_dim: 1\ninput_dim: 3')
    assert err.message == "1 inputs need 4 'input_dim' values (4 per input), got 2"
    assert err.span is not None and err.span.line == 2


def test_input_without_shape_is_dropped_with_a_warning():
    net, diags = upgrade('input: "x"')
    assert not net.input and not net.layer
    assert diags == [
        (
            "warning",
            "net-level 1 input ('x') without 'input_dim' or 'input_shape' dropped (as Caffe does)",
        )
    ]


# --- BatchNorm -----------------------------------------------------------------------------


def test_batchnorm_with_three_param_specs_gets_zero_lr_and_decay():
    net, diags = upgrade(
        """layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }
                   param { lr_mult: 0 name: "v" } }
        layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } }"""
    )
    assert [
        (p.name, p.lr_mult, p.decay_mult, p.HasField("decay_mult")) for p in net.layer[0].param
    ] == [
        ("", 0, 0, True),
        ("", 0, 0, True),
        ("v", 0, 0, True),
    ]
    assert net.layer[1].param[0].lr_mult == 1  # Caffe only touches the 3-param form
    assert [sev for sev, _ in diags] == ["note"]


def test_already_upgraded_batchnorm_is_left_alone():
    text = 'layer { name: "bn" type: "BatchNorm" ' + "param { lr_mult: 0 decay_mult: 0 } " * 3 + "}"
    parsed = parse(text)
    upgraded, diags = upgrade_net(parsed)
    assert upgraded is parsed and diags == []


def test_current_net_is_returned_unchanged():
    parsed = parse('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }')
    upgraded, diags = upgrade_net(parsed)
    assert upgraded is parsed and diags == []


# --- solver --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enum_name", "type_name"),
    [
        ("SGD", "SGD"),
        ("NESTEROV", "Nesterov"),
        ("ADAGRAD", "AdaGrad"),
        ("RMSPROP", "RMSProp"),
        ("ADADELTA", "AdaDelta"),
        ("ADAM", "Adam"),
    ],
)
def test_solver_type_enum_becomes_type_string(enum_name, type_name):
    parsed, diags = upgrade_solver(
        parse(f"base_lr: 0.1\nsolver_type: {enum_name}", caffe_pb2.SolverParameter)
    )
    assert parsed.message.type == type_name
    assert not parsed.message.HasField("solver_type")
    assert [d.severity for d in diags] == ["note"]
    assert diags[0].span is not None and diags[0].span.line == 2


def test_solver_with_both_type_fields_is_an_error():
    (err,) = errors_of('solver_type: ADAM\ntype: "Adam"', upgrade_solver, caffe_pb2.SolverParameter)
    assert "cannot both be set" in err.message


def test_current_solver_is_returned_unchanged():
    parsed = parse('type: "Adam" base_lr: 0.1', caffe_pb2.SolverParameter)
    upgraded, diags = upgrade_solver(parsed)
    assert upgraded is parsed and diags == []


# --- source map: upgraded paths point at the original text ---------------------------------

V1_TEXT = """name: "n"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layers {
  name: "conv"
  type: CONVOLUTION
  bottom: "data"
  top: "conv"
  blobs_lr: 1
  blobs_lr: 2
  convolution_param {
    num_output: 4
    kernel_size: 3
  }
}
layers {
  name: "d"
  type: DATA
  top: "x"
  data_param {
    scale: 0.5
  }
}
"""


def line_of(parsed, path):
    span = parsed.source_map.span(path)
    assert span is not None, path
    return span.line


def test_upgraded_paths_point_at_the_v1_text():
    parsed, _ = upgrade_net(parse(V1_TEXT))
    assert [lyr.name for lyr in parsed.message.layer] == ["input", "conv", "d"]
    assert line_of(parsed, ("layer", 1)) == 7
    assert line_of(parsed, ("layer", 1, "type")) == 9
    assert line_of(parsed, ("layer", 1, "bottom", 0)) == 10
    assert line_of(parsed, ("layer", 1, "param", 1, "lr_mult")) == 13
    assert line_of(parsed, ("layer", 1, "convolution_param", "kernel_size", 0)) == 16
    assert line_of(parsed, ("layer", 2, "transform_param", "scale")) == 24
    assert line_of(parsed, ("layer", 0)) == 2  # the Input layer: the net-level input fields
    assert line_of(parsed, ("layer", 0, "top", 0)) == 2
    assert line_of(parsed, ("layer", 0, "input_param", "shape", 0, "dim", 2)) == 5


def test_upgraded_paths_point_at_the_v0_text():
    parsed, _ = upgrade_net(parse(V0_NET))
    text = V0_NET.splitlines()

    def text_at(path):
        return text[line_of(parsed, path) - 1]

    assert "pad: 2" in text_at(("layer", 1, "convolution_param", "pad", 0))
    assert "num_output: 8" in text_at(("layer", 1, "convolution_param", "num_output"))
    assert "weight_decay" in text_at(("layer", 1, "param", 1, "decay_mult"))
    assert "pool: AVE" in text_at(("layer", 2, "pooling_param", "pool"))
    assert 'bottom: "conv1"' in text_at(("layer", 2, "bottom", 0))
    assert 'name: "fc"' in text_at(("layer", 5, "name"))


# --- the command ---------------------------------------------------------------------------


def run_cli(*argv):
    from protocaffe.cli import main

    return main(["upgrade", *map(str, argv)])


def test_cli_upgrades_to_a_file(tmp_path, capsys):
    src = tmp_path / "old.prototxt"
    src.write_text(V1_TEXT)
    out = tmp_path / "new.prototxt"
    assert run_cli(src, "-o", out) == 0
    written = parse(out.read_text()).message
    assert written == upgrade_net(parse(V1_TEXT))[0].message
    assert "upgraded V1 'layers' format" in capsys.readouterr().err


def test_cli_reports_a_current_file(tmp_path, capsys):
    src = tmp_path / "net.prototxt"
    src.write_text('layer { name: "r" type: "ReLU" bottom: "x" top: "x" }\n')
    assert run_cli(src) == 0
    captured = capsys.readouterr()
    assert "already in the latest format" in captured.err
    assert parse(captured.out).message == parse(src.read_text()).message


def test_cli_upgrades_a_solver(tmp_path, capsys):
    src = tmp_path / "solver.prototxt"
    src.write_text('net: "train.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    assert run_cli(src) == 0
    assert parse(capsys.readouterr().out, caffe_pb2.SolverParameter).message.type == "Nesterov"


def test_cli_bad_input_exits_1_with_a_located_error(tmp_path, capsys):
    src = tmp_path / "bad.prototxt"
    src.write_text('layers {\n  name: "l"\n  type: NONE\n}\n')
    assert run_cli(src) == 1
    assert f"{src}:3:" in capsys.readouterr().err


def test_cli_missing_file_exits_1(tmp_path, capsys):
    assert run_cli(tmp_path / "nope.prototxt") == 1
    assert "cannot read" in capsys.readouterr().err


# --- real files ----------------------------------------------------------------------------


def manifest() -> list[dict[str, str]]:
    with open(CORPUS / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def legacy_files(fork: bool) -> list[str]:
    if not CORPUS.is_dir():
        return []
    return [
        row["file"]
        for row in manifest()
        if row["format"].startswith(("V0", "V1"))
        and ("BVLC caffe.proto: FAIL" in row["notes"]) == fork
    ]


def load_corpus(rel: str):
    path = CORPUS / rel
    return parse(path.read_text(), path=str(path))


@needs_corpus
@pytest.mark.parametrize("rel", legacy_files(fork=False))
def test_every_bvlc_legacy_corpus_file_upgrades(rel):
    parsed, diags = upgrade_net(load_corpus(rel))
    net = parsed.message
    assert not net.layers and net.layer
    assert not [d for d in diags if d.severity != "note"]
    assert all(d.span is not None for d in diags)


@needs_corpus
@pytest.mark.parametrize("rel", legacy_files(fork=True))
def test_fork_legacy_files_upgrade_with_their_fork_types(rel):
    """V1 files of forks (DeepLab v1, the FCN-era branch) upgrade like BVLC ones: their fork
    type names (INTERP, PADDING, CROP, ...) become V2 type strings."""
    parsed, diags = upgrade_net(load_corpus(rel))
    net = parsed.message
    assert not net.layers and net.layer
    assert not [d for d in diags if d.severity == "error"]
    fork_types = {"Interp", "Padding", "ImageSegData", "MatWrite", "SegAccuracy", "Crop"}
    assert fork_types & {layer.type for layer in net.layer}


def upgraded_layers(rel: str):
    return list(upgrade_net(load_corpus(rel))[0].message.layer)


def reference_layers(rel: str):
    return list(load_corpus(rel).message.layer)


# Pairs where upstream replaced the old file by exactly what Caffe's upgrade tool produced,
# except that the hand-written Input layer is named "data" where Caffe's upgrade says "input".
SAME_NET = [
    (
        "examples__siamese__mnist_siamese_train_test@V1-2015-02",
        "examples__siamese__mnist_siamese_train_test",
    ),
    (
        "models__bvlc_reference_caffenet__train_val@V1-2015-02",
        "models__bvlc_reference_caffenet__train_val",
    ),
    ("models__bvlc_alexnet__deploy@input_dim-2015-08", "models__bvlc_alexnet__deploy"),
    ("models__bvlc_googlenet__deploy@V1-2015-02", "models__bvlc_googlenet__deploy"),
    ("models__bvlc_googlenet__deploy@input_shape-2015-12", "models__bvlc_googlenet__deploy"),
]


@needs_corpus
@pytest.mark.parametrize(("old", "new"), SAME_NET)
def test_upgrading_an_old_upstream_file_gives_its_successor(old, new):
    got = upgraded_layers(f"BVLC__caffe/{old}.prototxt")
    want = reference_layers(f"BVLC__caffe/{new}.prototxt")
    if want[0].type == "Input":
        assert got[0].name == "input"
        got[0].name = want[0].name
    for g, w in zip(got, want, strict=True):
        assert g == w, w.name


def without(lyr, *fields):
    out = type(lyr)()
    out.CopyFrom(lyr)
    for name in fields:
        out.ClearField(name)
    for sub in ("convolution_param", "inner_product_param"):
        for filler in ("weight_filler", "bias_filler"):
            getattr(out, sub).ClearField(filler)
        if not getattr(out, sub).ListFields():
            out.ClearField(sub)
    return out


@needs_corpus
def test_v0_imagenet_deploy_matches_caffenet_deploy():
    # examples/imagenet/imagenet_deploy.prototxt became models/bvlc_reference_caffenet/deploy;
    # upstream then dropped the (deploy-irrelevant) fillers and lr/decay multipliers and named
    # the Input layer "data". Everything else must match layer by layer.
    got = upgraded_layers("BVLC__caffe/examples__imagenet__imagenet_deploy@V0-2014-03.prototxt")
    want = reference_layers("BVLC__caffe/models__bvlc_reference_caffenet__deploy.prototxt")
    assert got[0].name == "input"
    for g, w in zip(got[1:], want[1:], strict=True):
        assert without(g, "param") == without(w, "param"), w.name
    assert got[0].input_param == want[0].input_param


@needs_corpus
def test_v0_lenet_train_matches_lenet_train_test():
    # lenet_train.prototxt was later merged with lenet_test into lenet_train_test.prototxt: a
    # TEST data layer and an accuracy layer were added, the TRAIN data layer got include {
    # phase: TRAIN } and an LMDB source. The compute layers must match exactly; of the data
    # layer, the transformation and batch size. The loss layer also gained `top: "loss"`.
    got = upgraded_layers("BVLC__caffe/examples__lenet__lenet_train@V0-2014-03.prototxt")
    want = {
        lyr.name: lyr
        for lyr in reference_layers("BVLC__caffe/examples__mnist__lenet_train_test.prototxt")
        if not any(r.phase == caffe_pb2.TEST for r in lyr.include)
    }
    data, *compute = got
    assert data.transform_param == want["mnist"].transform_param
    assert data.data_param.batch_size == want["mnist"].data_param.batch_size
    assert (data.type, list(data.top)) == (want["mnist"].type, list(want["mnist"].top))
    assert len(compute) == 8
    compute[-1].top.append("loss")
    for g in compute:
        assert g == want[g.name], g.name
