"""Reading weights saved as a PyTorch state_dict: `.safetensors` or `torch.save` (`.pt`).

These are what `protocaffe convert` writes (keys are the module's state_dict keys, e.g.
`conv1.weight`), so a net converted to them converts back to a `.caffemodel`. The format is
told from the file's first bytes, not its name. Loading never runs code from the file:
`torch.load` is called with `weights_only=True`, and safetensors holds no code at all. Tensors
are read one at a time (safetensors and `mmap=True` map the file), so memory stays near the
parameters' size.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from protocaffe.diagnostics import Diagnostics, input_error
from protocaffe.layers.base import shape_str

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


def state_format(path: str | Path) -> str | None:
    """ "safetensors" or "torch" when the file is one of them, else None (a caffemodel)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return None
    if head.startswith(_ZIP_MAGIC):
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < 1 << 30:
            return "safetensors"
    return None


def load_state_file(module: Any, path: str | Path, *, allow_missing: bool = False) -> Any:
    """Copy a state_dict file's tensors into `module` by key; a LoadReport of what happened.

    Every problem is reported at once and nothing is copied when any is an error: a key the
    net has and the file lacks (a warning with `allow_missing`), a shape mismatch, a file that
    cannot be read. Keys the net lacks are skipped with a warning."""
    import torch

    from protocaffe.runtime.caffemodel import LoadReport

    fmt = state_format(path)
    tensors = _open(path, fmt)
    targets = module.state_dict(keep_vars=True)
    layer_of = {
        f"{attr}.{spec.name}": layer
        for layer, attr in module._layer_attrs.items()
        for spec in layer.blob_specs
    }
    report = LoadReport()
    diags = Diagnostics()
    plan = []
    for key, target in targets.items():
        layer = layer_of.get(key)
        if key not in tensors:
            if layer is not None and layer.name not in report.missing:
                report.missing.append(layer.name)
            severity = diags.warning if allow_missing else diags.error
            severity(
                f"'{key}' has no tensor in {path}",
                layer.span if layer is not None else None,
                None if allow_missing else "allow_missing=True (--allow-missing) keeps fillers",
            )
            continue
        shape = tuple(tensors.shape_of(key))
        if shape != tuple(target.shape):
            diags.error(
                f"cannot copy '{key}' from {path}: shape mismatch. Source shape is "
                f"{shape_str(shape)}; target shape is {shape_str(tuple(target.shape))}",
                layer.span if layer is not None else None,
            )
            continue
        plan.append((key, target))
    unused = [k for k in tensors.names() if k not in targets]
    if unused:
        names = ", ".join(f"'{k}'" for k in unused[:10])
        more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
        diags.warning(f"{path} has {len(unused)} tensor(s) this net lacks, ignored: {names}{more}")
    diags.check()
    with torch.no_grad():
        for key, target in plan:
            target.copy_(tensors.get(key))
    report.loaded = sorted({layer_of[k].name for k, _ in plan if k in layer_of})
    report.unused = unused
    report.diagnostics = diags.items
    return report


class _Tensors:
    """A uniform view of a safetensors file or a loaded state_dict: keys, shapes, tensors."""

    def __init__(self, source: Any, is_safetensors: bool) -> None:
        self._source = source
        self._safetensors = is_safetensors
        self._keys = list(source.keys())
        self._key_set = set(self._keys)

    def names(self) -> list[str]:
        return self._keys

    def __contains__(self, key: str) -> bool:
        return key in self._key_set

    def shape_of(self, key: str) -> tuple[int, ...]:
        if self._safetensors:
            return tuple(self._source.get_slice(key).get_shape())
        return tuple(self._source[key].shape)

    def get(self, key: str) -> Any:
        return self._source.get_tensor(key) if self._safetensors else self._source[key]


def _open(path: str | Path, fmt: str | None) -> _Tensors:
    import torch

    try:
        if fmt == "safetensors":
            from safetensors import safe_open

            return _Tensors(safe_open(str(path), framework="pt", device="cpu"), True)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except ImportError:
        raise input_error(
            f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)"
        ) from None
    except Exception as err:  # safetensors, pickle and zip readers each raise their own
        raise input_error(f"{path}: not a readable {fmt} state_dict: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise input_error(
            f"{path}: holds a {type(state).__name__}, not a state_dict of tensors",
            hint="save the module's state_dict(), as `protocaffe convert` does",
        )
    return _Tensors(state, False)
