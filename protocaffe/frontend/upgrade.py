"""Legacy-format upgrades, following Caffe's UpgradeNetAsNeeded and UpgradeSolverAsNeeded.

Stages run in Caffe's order: V0 -> V1 (`layers { layer { ... } }`), data-transformation fields ->
`transform_param`, V1 -> V2 (`layers` with enum types -> `layer` with type strings), net-level
`input` fields -> an `Input` layer, BatchNorm param specs. Each stage rewrites the message and
renames source-map paths (old path -> new path) so that later diagnostics on the upgraded net
still point at the text the user wrote. Where Caffe would LOG(FATAL) or CHECK-fail, we report a
located error; where Caffe logs and drops a field, we warn; every upgrade that happened is a note.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import FieldDescriptor

from protocaffe.diagnostics import Diagnostic, Diagnostics, Span, suggestion_hint
from protocaffe.frontend.sourcemap import FieldPath, SourceMap
from protocaffe.proto import caffe_pb2, schema

if TYPE_CHECKING:
    from protocaffe.frontend.textformat import ParsedFile

Mapping = dict[FieldPath, FieldPath]

# V0 type strings -> V1 LayerType enum names.
_V0_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V1 LayerType enum names -> V2 type strings. NONE is deliberately absent: it has no layer.
_V1_TYPES = {
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

_SOLVER_TYPES = {
    "SGD": "SGD",
    "NESTEROV": "Nesterov",
    "ADAGRAD": "AdaGrad",
    "RMSPROP": "RMSProp",
    "ADADELTA": "AdaDelta",
    "ADAM": "Adam",
}

_CONV, _POOL, _IP = "convolution_param", "pooling_param", "inner_product_param"
_DATA, _HDF5, _IMAGES, _WINDOW = (
    "data_param",
    "hdf5_data_param",
    "image_data_param",
    "window_data_param",
)
_ANY = "*"  # V0 fields that Caffe moves regardless of the layer type


def _to(field: str, params: dict[str, str]) -> dict[str, FieldPath]:
    return {v0_type: (param, field) for v0_type, param in params.items()}


_CONV_IP = {"conv": _CONV, "innerproduct": _IP}
_CONV_POOL = {"conv": _CONV, "pool": _POOL}
_LRN = {"lrn": "lrn_param"}
_TRANSFORM = {_ANY: "transform_param"}

# V0LayerParameter field -> {V0 type (or _ANY): destination path in the V1 layer}. A field set
# on a type not listed here is dropped (Caffe logs "Unknown parameter ... for layer type").
_V0_FIELDS: dict[str, dict[str, FieldPath]] = {
    "num_output": _to("num_output", _CONV_IP),
    "biasterm": _to("bias_term", _CONV_IP),
    "weight_filler": _to("weight_filler", _CONV_IP),
    "bias_filler": _to("bias_filler", _CONV_IP),
    "pad": _to("pad", _CONV_POOL),
    "kernelsize": _to("kernel_size", _CONV_POOL),
    "group": _to("group", {"conv": _CONV}),
    "stride": _to("stride", _CONV_POOL),
    "pool": _to("pool", {"pool": _POOL}),
    "dropout_ratio": _to("dropout_ratio", {"dropout": "dropout_param"}),
    "local_size": _to("local_size", _LRN),
    "alpha": _to("alpha", _LRN),
    "beta": _to("beta", _LRN),
    "k": _to("k", _LRN),
    "source": _to(
        "source",
        {
            "data": _DATA,
            "hdf5_data": _HDF5,
            "images": _IMAGES,
            "window_data": _WINDOW,
            "infogain_loss": "infogain_loss_param",
        },
    ),
    "scale": _to("scale", _TRANSFORM),
    "meanfile": _to("mean_file", _TRANSFORM),
    "batchsize": _to(
        "batch_size", {"data": _DATA, "hdf5_data": _HDF5, "images": _IMAGES, "window_data": _WINDOW}
    ),
    "cropsize": _to("crop_size", _TRANSFORM),
    "mirror": _to("mirror", _TRANSFORM),
    "rand_skip": _to("rand_skip", {"data": _DATA, "images": _IMAGES}),
    "shuffle_images": _to("shuffle", {"images": _IMAGES}),
    "new_height": _to("new_height", {"images": _IMAGES}),
    "new_width": _to("new_width", {"images": _IMAGES}),
    "concat_dim": _to("concat_dim", {"concat": "concat_param"}),
    "det_fg_threshold": _to("fg_threshold", {"window_data": _WINDOW}),
    "det_bg_threshold": _to("bg_threshold", {"window_data": _WINDOW}),
    "det_fg_fraction": _to("fg_fraction", {"window_data": _WINDOW}),
    "det_context_pad": _to("context_pad", {"window_data": _WINDOW}),
    "det_crop_mode": _to("crop_mode", {"window_data": _WINDOW}),
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param",)},
}
# Fields kept under the same name in the V1 layer.
_V0_SAME = ("name", "blobs", "blobs_lr", "weight_decay")
# The only net-level fields a V0 net keeps (Caffe's UpgradeV0Net copies just these).
_V0_NET_FIELDS = ("name", "layers", "input", "input_dim", "force_backward")

# Data layers whose deprecated transformation fields move into transform_param.
_DATA_PARAMS = {"DATA": _DATA, "IMAGE_DATA": _IMAGES, "WINDOW_DATA": _WINDOW}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# V1 per-blob repeated fields -> ParamSpec field.
_V1_PARAM_SPEC = {
    "param": "name",
    "blob_share_mode": "share_mode",
    "blobs_lr": "lr_mult",
    "weight_decay": "decay_mult",
}


def _count(items: Any, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


class _Run:
    """One upgrade run: the source map as renamed so far, and what was reported."""

    def __init__(self, source_map: SourceMap, diags: Diagnostics):
        self.source_map = source_map
        self.diags = diags

    def span(self, path: FieldPath) -> Span | None:
        return self.source_map.name_span(path)

    def error(self, message: str, path: FieldPath, hint: str | None = None) -> None:
        self.diags.error(message, self.span(path), hint)

    def warning(self, message: str, path: FieldPath) -> None:
        self.diags.warning(message, self.span(path))

    def note(self, message: str, path: FieldPath) -> None:
        self.diags.note(message, self.span(path))

    def remap(self, mapping: Mapping, pinned: dict[FieldPath, Span] | None = None) -> None:
        """Rename paths; `pinned` then sets spans for new paths that have no single origin."""
        self.source_map = self.source_map.remap(mapping)
        for path, span in (pinned or {}).items():
            self.source_map.spans[path] = span


def _copy_field(src: Any, name: str, dst: Any, dst_name: str) -> int | None:
    """Copy field `name` of `src` into `dst_name` of `dst`.

    A scalar copied into a repeated field is appended; the index it got is returned.
    """
    src_fd = schema.fields_by_name(src.DESCRIPTOR)[name]
    dst_fd = schema.fields_by_name(dst.DESCRIPTOR)[dst_name]
    value = getattr(src, name)
    values = [_convert(src_fd, dst_fd, v) for v in (value if src_fd.is_repeated else [value])]
    target = getattr(dst, dst_name)
    if dst_fd.is_repeated:
        target.extend(values)
        return None if src_fd.is_repeated else len(target) - 1
    if dst_fd.message_type is not None:
        target.CopyFrom(values[0])
    else:
        schema.set_field(dst, dst_name, values[0])  # a fork (extension) field too
    return None


def _convert(src_fd: FieldDescriptor, dst_fd: FieldDescriptor, value: Any) -> Any:
    """Carry an enum value over by name (a V0/V1 enum to its V2 twin); other values as they are."""
    if dst_fd.enum_type is None or dst_fd.enum_type.full_name == src_fd.enum_type.full_name:
        return value
    return dst_fd.enum_type.values_by_name[src_fd.enum_type.values_by_number[value].name].number


def _same_kind(a: FieldDescriptor, b: FieldDescriptor) -> bool:
    if a.type != b.type or a.is_repeated != b.is_repeated:
        return False
    return a.message_type is None or a.message_type.full_name == b.message_type.full_name


# --- V0 -> V1 ------------------------------------------------------------------------------


def _needs_v0(net: Any) -> bool:
    return any(conn.HasField("layer") for conn in net.layers)


def _fold_padding(net: Any, st: _Run) -> tuple[list[tuple[int, Any]], dict[int, int]]:
    """Drop V0 "padding" layers, moving their pad into the conv/pool layer they feed.

    Returns the kept layers as (original index, copy) pairs, and for each layer that received a
    pad, the original index of the padding layer it came from.
    """
    producer = dict.fromkeys(net.input, -1)  # blob -> index of the layer that last wrote it
    kept: list[tuple[int, Any]] = []
    pad_from: dict[int, int] = {}
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if not conn.HasField("layer"):
            st.error(
                "a V0 net cannot also contain V1 'layers' entries without a nested 'layer'",
                ("layers", i),
            )
        if v0.type != "padding":
            copy = caffe_pb2.V1LayerParameter()
            copy.CopyFrom(conn)
            kept.append((i, copy))
        for k, blob in enumerate(conn.bottom):
            if blob not in producer:
                st.error(
                    f"unknown bottom blob '{blob}' (no earlier layer or input produces it)",
                    ("layers", i, "bottom", k),
                )
                continue
            src = producer[blob]
            if src < 0 or net.layers[src].layer.type != "padding":
                continue
            pad = net.layers[src]
            if v0.type not in ("conv", "pool"):
                st.error(
                    f"padding layer '{pad.layer.name}' feeds a '{v0.type}' layer; Caffe can only "
                    "fold padding into a 'conv' or 'pool' layer",
                    ("layers", i, "bottom", k),
                )
            elif len(conn.bottom) != 1 or len(pad.bottom) != 1 or len(pad.top) != 1:
                st.error(
                    f"padding layer '{pad.layer.name}' and the layer it feeds must each have "
                    "exactly one bottom, and the padding layer one top",
                    ("layers", src),
                )
            else:
                target = kept[-1][1]
                target.layer.pad = pad.layer.pad
                target.bottom[k] = pad.bottom[0]
                pad_from[i] = src
                st.note(
                    f"folded padding layer '{pad.layer.name}' (pad {pad.layer.pad}) into "
                    f"'{v0.name}'",
                    ("layers", src),
                )
        for blob in conn.top:
            producer[blob] = i
    return kept, pad_from


def _v0_layer(conn: Any, path: FieldPath, new_path: FieldPath, st: _Run, mapping: Mapping) -> Any:
    """One V0 `layers { layer {...} bottom top }` entry as a V1 layer (Caffe's field mapping)."""
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    v0 = conn.layer
    for fd, _ in v0.ListFields():
        where = (*path, "layer", fd.name)
        if fd.name == "type":
            v1 = _V0_TYPES.get(v0.type)
            if v1 is None:
                hint = suggestion_hint(v0.type, _V0_TYPES)
                st.error(f"unknown V0 layer type '{v0.type}'", where, hint)
            else:
                out.type = caffe_pb2.V1LayerParameter.LayerType.Value(v1)
            dest: FieldPath = ("type",)
        elif fd.name in _V0_SAME:
            _copy_field(v0, fd.name, out, fd.name)
            dest = (fd.name,)
        else:
            rule = _V0_FIELDS.get(fd.name, {})
            dest = rule.get(v0.type) or rule.get(_ANY) or ()
            if not dest:
                st.warning(
                    f"V0 field '{fd.name}' has no meaning for a '{v0.type}' layer; dropped "
                    "(as Caffe does)",
                    where,
                )
                continue
            holder = out
            for step in dest[:-1]:
                holder = getattr(holder, step)
            index = _copy_field(v0, fd.name, holder, dest[-1])
            if index is not None:
                dest = (*dest, index)
        mapping[where] = (*new_path, *dest)
    return out


def _upgrade_v0(net: Any, st: _Run) -> Any:
    kept, pad_from = _fold_padding(net, st)
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layers")
    for fd, _ in net.ListFields():
        if fd.name not in _V0_NET_FIELDS:
            st.warning(
                f"net field '{fd.name}' is dropped when upgrading a V0 net (as Caffe does)",
                (fd.name,),
            )
            out.ClearField(fd.name)
    # Removed padding layers' paths must not collide with the layers now at their indices.
    mapping: Mapping = {("layers", i): ("<removed>", i) for i in range(len(net.layers))}
    for n, (i, conn) in enumerate(kept):
        mapping[("layers", i)] = ("layers", n)
        out.layers.append(_v0_layer(conn, ("layers", i), ("layers", n), st, mapping))
        if i in pad_from:
            # The pad that survives is the padding layer's, so point the new field at its text.
            dest = mapping.pop(("layers", i, "layer", "pad"))
            mapping[("layers", pad_from[i], "layer", "pad")] = dest
    st.note(
        f"upgraded V0 'layers {{ layer {{ ... }} }}' format to V1 ({_count(kept, 'layer')})",
        ("layers", 0),
    )
    st.remap(mapping)
    return out


# --- data transformation fields ------------------------------------------------------------


def _upgrade_data_transform(net: Any, st: _Run) -> Any:
    mapping: Mapping = {}
    moved: list[FieldPath] = []
    for i, layer in enumerate(net.layers):
        type_name = caffe_pb2.V1LayerParameter.LayerType.Name(layer.type)
        param_name = _DATA_PARAMS.get(type_name)
        if param_name is None or not layer.HasField(param_name):
            continue
        param = getattr(layer, param_name)
        for name in _TRANSFORM_FIELDS:
            if name in param.DESCRIPTOR.fields_by_name and param.HasField(name):
                _copy_field(param, name, layer.transform_param, name)
                param.ClearField(name)
                old = ("layers", i, param_name, name)
                mapping[old] = ("layers", i, "transform_param", name)
                moved.append(old)
    if moved:
        st.note(
            f"moved deprecated data-transformation fields into 'transform_param' "
            f"({_count({p[1] for p in moved}, 'layer')})",
            moved[0],
        )
        st.remap(mapping)
    return net


# --- V1 -> V2 ------------------------------------------------------------------------------


def _v1_layer(v1: Any, i: int, st: _Run, mapping: Mapping) -> Any:
    out = caffe_pb2.LayerParameter()
    v2_fields = schema.fields_by_name(out.DESCRIPTOR)  # fork fields go over by name too
    for fd, value in v1.ListFields():
        where = ("layers", i, fd.name)
        if fd.name == "fork_type":  # a fork's V1 enum name, e.g. DeepLab v1's INTERP
            out.type = value
        elif fd.name == "type":
            enum_name = fd.enum_type.values_by_number[value].name
            v2_type = _V1_TYPES.get(enum_name)
            if v2_type is None:
                st.error(f"V1 layer type {enum_name} has no V2 equivalent", where)
            else:
                out.type = v2_type
        elif fd.name in _V1_PARAM_SPEC:
            spec_field = _V1_PARAM_SPEC[fd.name]
            for k in range(len(value)):
                while len(out.param) <= k:
                    out.param.add()
                spec_fd = out.param[k].DESCRIPTOR.fields_by_name[spec_field]
                setattr(out.param[k], spec_field, _convert(fd, spec_fd, value[k]))
                mapping[(*where, k)] = ("layer", i, "param", k, spec_field)
        elif fd.name == "layer":
            st.error("a V1 layer cannot also hold a nested V0 'layer'", where)
        elif fd.name in v2_fields and _same_kind(fd, v2_fields[fd.name]):
            _copy_field(v1, fd.name, out, fd.name)
        else:
            st.error(f"V1 layer field '{fd.name}' has no V2 equivalent", where)
    return out


def _upgrade_v1(net: Any, st: _Run) -> Any:
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layers")
    mapping: Mapping = {}
    for i, v1 in enumerate(net.layers):
        mapping[("layers", i)] = ("layer", i)
        out.layer.append(_v1_layer(v1, i, st, mapping))
    st.note(
        f"upgraded V1 'layers' format to V2 'layer' ({_count(net.layers, 'layer')})", ("layers", 0)
    )
    st.remap(mapping)
    return out


# --- net-level inputs -> Input layer -------------------------------------------------------


def _upgrade_input(net: Any, st: _Run) -> Any:
    n_in, n_dim, n_shape = len(net.input), len(net.input_dim), len(net.input_shape)
    if n_shape and n_dim:
        st.warning(
            "both 'input_shape' and 'input_dim' are given; 'input_dim' is ignored (as Caffe does)",
            ("input_dim", 0),
        )
    if n_shape and n_shape != n_in:
        st.error(
            f"{n_in} inputs but {n_shape} 'input_shape' entries; give one per input",
            ("input_shape", 0),
        )
        return net
    if not n_shape and n_dim and n_dim != 4 * n_in:
        st.error(
            f"{n_in} inputs need {4 * n_in} 'input_dim' values (4 per input), got {n_dim}",
            ("input_dim", 0),
        )
        return net
    mapping: Mapping = {}
    pinned: dict[FieldPath, Span] = {}
    if n_shape or n_dim:
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        layer.top.extend(net.input)
        for k in range(n_in):
            shape = layer.input_param.shape.add()
            if n_shape:
                shape.CopyFrom(net.input_shape[k])
            else:
                shape.dim.extend(net.input_dim[4 * k : 4 * k + 4])
        layers = [layer, *net.layer]
        net.ClearField("layer")
        net.layer.extend(layers)
        mapping.update({("layer", j): ("layer", j + 1) for j in range(len(layers) - 1)})
        mapping[("input",)] = ("layer", 0, "top")
        mapping[("input_shape",)] = ("layer", 0, "input_param", "shape")
        for n in range(n_dim if not n_shape else 0):
            mapping[("input_dim", n)] = ("layer", 0, "input_param", "shape", n // 4, "dim", n % 4)
        whole = _cover(st.source_map, ("input", "input_dim", "input_shape"))
        if whole is not None:
            pinned = {("layer", 0): whole, ("layer", 0, "input_param"): whole}
        st.note(
            f"converted net-level inputs ({', '.join(net.input)}) to an 'Input' layer named "
            "'input'",
            ("input", 0),
        )
    else:
        names = ", ".join(f"'{name}'" for name in net.input)
        st.warning(
            f"net-level {_count(net.input, 'input')} ({names}) without 'input_dim' or "
            "'input_shape' dropped (as Caffe does)",
            ("input", 0),
        )
    for name in ("input", "input_dim", "input_shape"):
        net.ClearField(name)
    st.remap(mapping, pinned)
    return net


def _cover(source_map: SourceMap, fields: tuple[str, ...]) -> Span | None:
    """One span from the first to the last recorded occurrence of the given net-level fields."""
    spans = [source_map.get(p) for p in source_map.spans if p and p[0] in fields]
    if not spans:
        return None
    first = min(spans, key=lambda s: (s.line, s.col))
    last = max(spans, key=lambda s: (s.end_line, s.end_col))
    return Span(first.source, first.line, first.col, last.end_line, last.end_col)


# --- BatchNorm -----------------------------------------------------------------------------


def _upgrade_batch_norm(net: Any, st: _Run) -> Any:
    """BatchNorm computes its three blobs itself, so Caffe zeroes their lr and decay mults."""
    changed: list[int] = []
    for j, layer in enumerate(net.layer):
        if layer.type != "BatchNorm" or len(layer.param) != 3:
            continue
        before = [p.SerializeToString() for p in layer.param]
        for spec in layer.param:
            spec.lr_mult = 0.0
            spec.decay_mult = 0.0
        if before != [p.SerializeToString() for p in layer.param]:
            changed.append(j)
    if changed:
        names = ", ".join(f"'{net.layer[j].name}'" for j in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        st.note(
            "set lr_mult and decay_mult to 0 on the param entries of BatchNorm "
            f"{'layer' if len(changed) == 1 else 'layers'} {names}{more} "
            "(as Caffe does: the layer computes these blobs itself)",
            ("layer", changed[0], "param"),
        )
    return net


def _has_holes(net: Any) -> bool:
    return any(
        layer.HasField("convolution_param")
        and any(f.name.startswith("hole") for f, _ in layer.convolution_param.ListFields())
        for layer in net.layer
    )


def _upgrade_holes(net: Any, st: _Run) -> Any:
    """DeepLab v1's ConvolutionParameter hole (or hole_h/hole_w) is BVLC's dilation."""
    mapping: Mapping = {}
    changed: list[int] = []
    for j, layer in enumerate(net.layer):
        conv = layer.convolution_param
        # Undeclared (deeplab.py not imported), they cannot be set: no need to declare them.
        fields = schema.declared_fields(conv.DESCRIPTOR)
        given = [
            n for n in ("hole", "hole_h", "hole_w") if n in fields and conv.HasExtension(fields[n])
        ]
        if not given or not layer.HasField("convolution_param"):
            continue
        where = ("layer", j, "convolution_param", given[0])
        if len(conv.dilation):
            st.error("set either hole (DeepLab v1) or dilation, not both", where)
            continue
        split = "hole_h" in given or "hole_w" in given
        h, w = (conv.hole_h, conv.hole_w) if split else (conv.hole, conv.hole)
        conv.dilation.extend([h] if h == w else [h, w])
        for name in given:
            conv.ClearExtension(fields[name])
            dilation = ("layer", j, "convolution_param", "dilation", 0)
            mapping[("layer", j, "convolution_param", name)] = dilation
        changed.append(j)
    if changed:
        st.note(
            f"renamed DeepLab v1's 'hole' to 'dilation' in {_count(changed, 'layer')}",
            ("layer", changed[0], "convolution_param"),
        )
        st.remap(mapping)
    return net


# --- entry points --------------------------------------------------------------------------


def upgrade_net(parsed: ParsedFile) -> tuple[ParsedFile, list[Diagnostic]]:
    """Upgrade a parsed NetParameter to the current format, as Caffe's UpgradeNetAsNeeded does.

    Returns the upgraded file (the input itself when nothing needed upgrading) and the notes and
    warnings describing what changed. Raises CompileError when the net cannot be upgraded.
    """
    diags = Diagnostics()
    st = _Run(parsed.source_map, diags)
    net = caffe_pb2.NetParameter()
    net.CopyFrom(parsed.message)
    if net.layer and net.layers:
        st.error(
            "this net mixes V2 'layer' and deprecated V1 'layers' entries; Caffe ignores the "
            "'layer' entries when upgrading",
            ("layer", 0),
            "write every layer in one format (`protocaffe upgrade` converts a V1 file)",
        )
        diags.check()
    stages: list[tuple[Callable[[Any], bool], Callable[[Any, _Run], Any]]] = [
        (_needs_v0, _upgrade_v0),
        (lambda n: bool(n.layers), _upgrade_data_transform),
        (lambda n: bool(n.layers), _upgrade_v1),
        (lambda n: bool(n.input), _upgrade_input),
        (lambda n: bool(n.layer), _upgrade_batch_norm),
        (_has_holes, _upgrade_holes),
    ]
    for needed, run in stages:
        if needed(net):
            net = run(net, st)
            diags.check()
    if net == parsed.message:
        return parsed, diags.items
    return parsed.replace(message=net, source_map=st.source_map), diags.items


INLINE_NETS = ("net_param", "train_net_param", "test_net_param")


def inline_nets(solver: ParsedFile) -> list[tuple[FieldPath, ParsedFile]]:
    """The nets a solver holds inline (`net_param`, `train_net_param`, each `test_net_param`),
    each as a ParsedFile of its own whose source map paths start at the net."""
    found = []
    for name in INLINE_NETS:
        fd = solver.message.DESCRIPTOR.fields_by_name[name]
        values = getattr(solver.message, name)
        if fd.is_repeated:
            items = [((name, i), v) for i, v in enumerate(values)]
        else:
            items = [((name,), values)] if solver.message.HasField(name) else []
        for prefix, net in items:
            found.append((prefix, _view(solver, prefix, net)))
    return found


def _view(parsed: ParsedFile, prefix: FieldPath, msg: Any) -> ParsedFile:
    view = parsed.source_map.subtree(prefix)
    return parsed.replace(message=msg, source_map=view, diagnostics=[])


def upgrade_solver(parsed: ParsedFile) -> tuple[ParsedFile, list[Diagnostic]]:
    """Upgrade a solver as Caffe's UpgradeSolverAsNeeded does (the deprecated `solver_type` enum
    becomes the `type` string), and the nets it holds inline as `upgrade_net` does."""
    notes: list[Diagnostic] = []
    nets = []
    for prefix, view in inline_nets(parsed):
        upgraded, found = upgrade_net(view)
        notes += found
        if upgraded is not view:
            nets.append((prefix, upgraded))
    if nets:
        out = type(parsed.message)()
        out.CopyFrom(parsed.message)
        source_map = parsed.source_map
        for prefix, net in nets:
            field = getattr(out, prefix[0])
            (field[prefix[1]] if len(prefix) > 1 else field).CopyFrom(net.message)
            source_map = source_map.graft(prefix, net.source_map)
        parsed = parsed.replace(message=out, source_map=source_map)
    upgraded, found = _upgrade_solver_type(parsed)
    return upgraded, [*notes, *found]


def _upgrade_solver_type(parsed: ParsedFile) -> tuple[ParsedFile, list[Diagnostic]]:
    solver = parsed.message
    if not solver.HasField("solver_type"):
        return parsed, []
    diags = Diagnostics()
    st = _Run(parsed.source_map, diags)
    if solver.HasField("type"):
        st.error(
            "'solver_type' (deprecated) and 'type' cannot both be set",
            ("solver_type",),
            "remove 'solver_type'",
        )
        diags.check()
    out = type(solver)()
    out.CopyFrom(solver)
    old = out.DESCRIPTOR.fields_by_name["solver_type"].enum_type.values_by_number[out.solver_type]
    out.type = _SOLVER_TYPES[old.name]
    out.ClearField("solver_type")
    st.note(
        f"upgraded deprecated 'solver_type: {old.name}' to 'type: \"{out.type}\"'", ("solver_type",)
    )
    st.remap({("solver_type",): ("type",)})
    return parsed.replace(message=out, source_map=st.source_map), diags.items
