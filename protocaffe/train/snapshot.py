"""Snapshot files: `.caffemodel`/`.solverstate` (BINARYPROTO) or `.caffemodel.h5`/
`.solverstate.h5` (HDF5), written atomically, and read back for `--weights`/`--snapshot`.

Each file is written to `<name>.part` in the same directory and renamed over the final name,
so an interrupted or failing write leaves the earlier snapshots intact. The model is written
before the state (whose `learned_net` names it), as Caffe does.

HDF5 layouts follow Caffe: a model has `data/<layer>/<i>` datasets for each layer's blobs
(runtime.caffemodel writes and reads both model formats); a state has `iter`, `learned_net`,
`current_step` and `history/<i>` (sgd_solver.cpp SnapshotSolverStateToHDF5).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocaffe.diagnostics import input_error

if TYPE_CHECKING:
    import torch


@dataclass
class SolverStateData:
    """The contents of a .solverstate: history blobs as float32 numpy arrays."""

    iter: int
    learned_net: str
    current_step: int = 0
    history: list[Any] = field(default_factory=list)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(temp)` then rename temp over `path`; on failure the temp file is removed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- solver state ---------------------------------------------------------------------------


def write_solverstate(path: str | Path, state: SolverStateData, hdf5: bool) -> None:
    atomic_write(path, lambda tmp: (_write_h5 if hdf5 else _write_proto)(tmp, state))


def _write_proto(tmp: Path, state: SolverStateData) -> None:
    from protocaffe.proto import caffe_pb2

    msg = caffe_pb2.SolverState(
        iter=state.iter, learned_net=state.learned_net, current_step=state.current_step
    )
    for array in state.history:
        blob = msg.history.add()
        blob.shape.dim.extend(array.shape)
        blob.data.extend(array.reshape(-1).tolist())
    tmp.write_bytes(msg.SerializeToString())


def _write_h5(tmp: Path, state: SolverStateData) -> None:
    import h5py
    import numpy as np

    with h5py.File(tmp, "w") as f:
        f.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
        f.create_dataset("learned_net", data=np.bytes_(state.learned_net))
        f.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
        group = f.create_group("history")
        for i, array in enumerate(state.history):
            group.create_dataset(str(i), data=array.astype(np.float32))


def read_solverstate(path: str | Path) -> SolverStateData:
    """A .solverstate or .solverstate.h5 (chosen by the `.h5` suffix, as Caffe does)."""
    path = str(path)
    try:
        if path.endswith(".h5"):
            return _read_h5(path)
        return _read_proto(path)
    except OSError as err:
        raise input_error(f"cannot read solver state '{path}': {err.strerror or err}") from None
    except (ValueError, KeyError) as err:
        raise input_error(
            f"'{path}' is not a readable solver state: {err}",
            hint="pass the .solverstate (or .solverstate.h5) file a snapshot wrote",
        ) from None


def _read_proto(path: str) -> SolverStateData:
    import numpy as np
    from google.protobuf.message import DecodeError

    from protocaffe.proto import caffe_pb2

    msg = caffe_pb2.SolverState()
    try:
        msg.ParseFromString(Path(path).read_bytes())
    except DecodeError as err:
        raise ValueError(f"not a SolverState protobuf ({err})") from None
    history = []
    for blob in msg.history:
        shape = tuple(blob.shape.dim) if blob.HasField("shape") else _legacy_shape(blob)
        if len(blob.double_data) and not len(blob.data):
            data = np.asarray(blob.double_data, dtype=np.float32)
        else:
            data = np.asarray(blob.data, dtype=np.float32)
        history.append(data.reshape(shape))
    return SolverStateData(msg.iter, msg.learned_net, msg.current_step, history)


def _legacy_shape(blob: Any) -> tuple[int, ...]:
    return (blob.num, blob.channels, blob.height, blob.width)


def _read_h5(path: str) -> SolverStateData:
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        learned = f["learned_net"][()]
        learned = learned.decode() if isinstance(learned, bytes) else str(learned)
        group = f.get("history", {})
        history = [np.asarray(group[str(i)], dtype=np.float32) for i in range(len(group))]
        step = int(np.asarray(f["current_step"]).reshape(-1)[0]) if "current_step" in f else 0
        return SolverStateData(int(np.asarray(f["iter"]).reshape(-1)[0]), learned, step, history)


def restore_history(history: list[torch.Tensor], saved: list[Any], path: str) -> None:
    """Copy saved history blobs into the solver's, checking Caffe's count (and the shapes)."""
    import torch

    if len(saved) != len(history):
        raise input_error(
            f"'{path}' holds {len(saved)} history blobs, this solver has {len(history)}",
            hint="resume with the same net and solver type that wrote the snapshot",
        )
    for i, (target, array) in enumerate(zip(history, saved, strict=True)):
        if array.size != target.numel():
            raise input_error(
                f"'{path}': history blob {i} has {array.size} values, the net's blob has "
                f"{target.numel()}",
                hint="resume with the same net that wrote the snapshot",
            )
        target.copy_(torch.from_numpy(array.reshape(tuple(target.shape))))


# --- weights --------------------------------------------------------------------------------


def write_weights(module: Any, path: str | Path, hdf5: bool) -> None:
    """The train net's weights: a binary .caffemodel (Net::ToProto) or Caffe's HDF5 layout."""
    from protocaffe.runtime.caffemodel import save_caffemodel, save_hdf5

    save = save_hdf5 if hdf5 else save_caffemodel
    atomic_write(path, lambda tmp: save(module, tmp))


def load_weights(module: Any, path: str | Path) -> None:
    """Caffe's CopyTrainedLayersFrom (binary or HDF5): layers matched by name; file layers
    the net lacks and net layers the file lacks are skipped (those keep their values)."""
    import warnings

    from protocaffe.runtime.caffemodel import load_caffemodel

    report = load_caffemodel(module, path, allow_missing=True)
    for d in report.diagnostics:
        if "has no weights in" not in d.message:  # expected when fine-tuning: Caffe is silent
            warnings.warn(d.render(), stacklevel=2)
