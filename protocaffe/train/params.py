"""A net's learnable blobs in Caffe's order, with their lr_mult and decay_mult.

Caffe's `Net::learnable_params()` is every blob every layer owns, layer by layer then blob by
blob, including `lr_mult: 0` blobs and BatchNorm's three statistics: the solver keeps a history
for each and regularises each every iteration. A blob shared by `param { name }` belongs to the
first layer that names it; later users add their gradients into the owner's and are not listed
again. The owner's lr_mult/decay_mult apply, and a sharer's explicit value fills one the owner
left unset (net.cpp AppendParam).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import Diagnostics

if TYPE_CHECKING:
    import torch

    from protocaffe.ir.graph import Layer


@dataclass
class LearnableBlob:
    """One entry of Caffe's learnable_params: `tensor` is the stored blob (an nn.Parameter, or
    a buffer for BatchNorm's statistics); `label` names it for messages (`conv1[0]`)."""

    layer: Layer
    index: int
    tensor: torch.Tensor
    lr_mult: float = 1.0
    decay_mult: float = 1.0

    @property
    def label(self) -> str:
        return f"{self.layer.name}[{self.index}]"

    @property
    def grad(self) -> torch.Tensor | None:
        return self.tensor.grad


def _spec(layer: Layer, i: int) -> Any:
    params = layer.proto.param
    return params[i] if i < len(params) else None


def _mults(layer: Layer, i: int) -> tuple[float | None, float | None]:
    """(lr_mult, decay_mult) as this layer sets them for blob i (None: left unset)."""
    if layer.type == "BatchNorm":
        # Caffe's upgrade drops a BatchNorm's three param entries and the layer then adds
        # `lr_mult: 0` ones, so decay_mult is the default 1 unless fewer entries were given.
        spec = _spec(layer, i) if len(layer.proto.param) != 3 else None
        decay = spec.decay_mult if spec is not None and spec.HasField("decay_mult") else None
        return 0.0, decay
    spec = _spec(layer, i)
    if spec is None:
        return None, None
    lr = spec.lr_mult if spec.HasField("lr_mult") else None
    decay = spec.decay_mult if spec.HasField("decay_mult") else None
    return lr, decay


def learnable_blobs(module: Any) -> list[LearnableBlob]:
    """The learnable blobs of a CaffeModule, in Caffe's order (see the module docstring)."""
    owners: dict[str, tuple[LearnableBlob, list[bool]]] = {}  # param name -> owner, mults set
    out: list[LearnableBlob] = []
    diags = Diagnostics()
    for layer in module.caffe_graph.layers:
        if layer not in module._layer_attrs:
            continue
        for i, spec in enumerate(layer.blob_specs):
            lr, decay = _mults(layer, i)
            param = _spec(layer, i)
            share = param.name if param is not None else ""
            if share and share in owners:
                owner, given = owners[share]
                for k, (attr, value) in enumerate((("lr_mult", lr), ("decay_mult", decay))):
                    if value is None:
                        continue
                    if not given[k]:
                        setattr(owner, attr, value)
                        given[k] = True
                    elif getattr(owner, attr) != value:
                        diags.error(
                            f"layer '{layer.name}' shares param '{share}' with layer "
                            f"'{owner.layer.name}' but sets {attr} {value:g}, the owner "
                            f"{getattr(owner, attr):g}",
                            layer.span,
                            hint="shared params must have the same lr_mult and decay_mult",
                        )
                continue
            blob = LearnableBlob(
                layer,
                i,
                module.blob_tensor(layer, spec.name),
                1.0 if lr is None else lr,
                1.0 if decay is None else decay,
            )
            out.append(blob)
            if share:
                owners[share] = (blob, [lr is not None, decay is not None])
    diags.check()
    return out


def set_requires_grad(blobs: list[LearnableBlob], force_backward: bool) -> None:
    """Caffe computes a param's diff only when its lr_mult is non-zero (param_propagate_down),
    or for every param with `force_backward`; the others' diffs stay 0."""
    for blob in blobs:
        if blob.tensor.is_leaf and blob.tensor.dtype.is_floating_point:
            import torch

            if isinstance(blob.tensor, torch.nn.Parameter):
                blob.tensor.requires_grad_(force_backward or blob.lr_mult != 0)
