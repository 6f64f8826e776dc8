"""Snapshots and resuming: file names, Caffe's .solverstate contents (BINARYPROTO and HDF5),
atomic writes, and resume-then-continue equal to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
from _train_util import batches, blob, linear_net, make_solver

from protocaffe.proto import caffe_pb2

SOLVER = """net: "net.prototxt"
type: "%s"
base_lr: 0.1
momentum: 0.9
momentum2: 0.999
lr_policy: "multistep"
stepvalue: 2
stepvalue: 4
gamma: 0.5
weight_decay: 0.01
max_iter: 6
snapshot: 3
snapshot_prefix: "%s"
random_seed: 3
%s"""


@pytest.mark.parametrize(
    ("kind", "extra"), [("SGD", ""), ("Adam", ""), ("AdaDelta", "snapshot_format: HDF5\n")]
)
def test_resume_equals_uninterrupted_run(kind, extra, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    feed = batches(6)
    text = SOLVER % (kind, "snap/run", extra)
    full = make_solver(tmp_path, text, linear_net(), feed=feed)
    full.solve()
    ext = ".solverstate.h5" if extra else ".solverstate"
    assert (tmp_path / f"snap/run_iter_3{ext}").exists()
    assert (tmp_path / f"snap/run_iter_6{ext}").exists()

    resumed = make_solver(tmp_path, text.replace("snap/run", "snap/again"), linear_net())
    resumed.net.set_feed(feed[3:])  # Caffe restarts data; feed what the first run saw next
    resumed.solve(f"snap/run_iter_3{ext}")
    assert resumed.iter == 6
    assert resumed.current_step == full.current_step == 2
    for i in range(2):
        np.testing.assert_array_equal(blob(resumed, "ip", i), blob(full, "ip", i))
    for a, b in zip(resumed.rule.history, full.rule.history, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_solverstate_is_caffes_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = SOLVER % ("Adam", "out/x", "")
    solver = make_solver(tmp_path, text, linear_net(), feed=batches(3))
    solver.step(3)
    model, state_path = solver.snapshot()
    assert (model, state_path) == ("out/x_iter_3.caffemodel", "out/x_iter_3.solverstate")
    state = caffe_pb2.SolverState.FromString((tmp_path / state_path).read_bytes())
    assert state.iter == 3 and state.learned_net == model and state.current_step == 1
    # Adam: 2 sets of P=2 blobs: m(W), m(b), v(W), v(b), each with its blob's shape.
    assert [tuple(h.shape.dim) for h in state.history] == [(2, 3), (2,), (2, 3), (2,)]
    np.testing.assert_array_equal(
        np.asarray(state.history[2].data).reshape(2, 3), solver.rule.history[2].numpy()
    )
    import protocaffe

    net = protocaffe.load(tmp_path / "net.prototxt", tmp_path / model, device="cpu")
    np.testing.assert_array_equal(net.ip.weight.detach().numpy(), blob(solver, "ip", 0))
    assert not list(tmp_path.glob("out/*.part"))


def test_hdf5_snapshot_layout(tmp_path, monkeypatch):
    import h5py

    monkeypatch.chdir(tmp_path)
    text = SOLVER % ("SGD", "h", "snapshot_format: HDF5\n")
    solver = make_solver(tmp_path, text, linear_net(), feed=batches(2))
    solver.step(2)
    model, state = solver.snapshot()
    assert (model, state) == ("h_iter_2.caffemodel.h5", "h_iter_2.solverstate.h5")
    with h5py.File(model) as f:
        np.testing.assert_array_equal(f["data/ip/0"][()], blob(solver, "ip", 0))
        assert sorted(f["data/ip"]) == ["0", "1"]
    with h5py.File(state) as f:
        assert f["iter"][()].tolist() == [2]
        assert f["learned_net"][()].decode() == model
        assert sorted(f["history"]) == ["0", "1"]
    # --weights accepts the HDF5 model, as Caffe's H5Fis_hdf5 check does.
    other = make_solver(tmp_path, text, linear_net())
    other.net.copy_from(model)
    np.testing.assert_array_equal(blob(other, "ip", 1), blob(solver, "ip", 1))


def test_snapshot_prefix_defaults_follow_caffe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = 'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n'
    solver = make_solver(tmp_path, base, linear_net(), feed=batches(1))
    assert solver.param.snapshot_prefix == "solver"  # the solver file without extension
    (tmp_path / "snaps").mkdir()
    solver = make_solver(tmp_path, base + 'snapshot_prefix: "snaps"\n', linear_net())
    assert solver.param.snapshot_prefix == "snaps/solver"  # a directory gets the file stem


def test_restore_rejects_a_state_of_another_solver(tmp_path, monkeypatch):
    from protocaffe.diagnostics import CompileError

    monkeypatch.chdir(tmp_path)
    sgd = make_solver(tmp_path, SOLVER % ("SGD", "a", ""), linear_net(), feed=batches(1))
    sgd.step(1)
    _, state = sgd.snapshot()
    adam = make_solver(tmp_path, SOLVER % ("Adam", "b", ""), linear_net())
    with pytest.raises(CompileError, match="holds 2 history blobs, this solver has 4"):
        adam.restore(state)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from protocaffe.train import snapshot

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "x.solverstate"
    target.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        snapshot.atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert not (tmp_path / "x.solverstate.part").exists()
