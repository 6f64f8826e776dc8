"""Caffe's Solve/Step loop: test cadence and test means, NetState merging, the display-loss
window, net paths, and Ctrl-C (snapshot, then stop)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _train_util import batches, linear_grads, linear_net, make_solver

from protocaffe.train.report import Reporter

BASE = 'base_lr: 0.1\nlr_policy: "fixed"\nmomentum: 0.5\nrandom_seed: 1\n'


def reporter():
    stream = io.StringIO()
    return stream, Reporter(stream=stream, progress=False)


def test_test_cadence_and_means(tmp_path, monkeypatch):
    """Tests run before update k when k % test_interval == 0 (k = 0 only with
    test_initialization), plus once after the last update; each output is the mean over
    test_iter batches of a test net that shares the train net's weights."""
    monkeypatch.chdir(tmp_path)
    stream, rep = reporter()
    text = (
        'net: "net.prototxt"\n' + BASE + "max_iter: 4\ntest_iter: 3\ntest_interval: 2\n"
        "test_initialization: false\nsnapshot_after_train: false\n"
    )
    solver = make_solver(tmp_path, text, linear_net(), reporter=rep)
    train, test = batches(4, seed=1), batches(6, seed=2)
    solver.net.set_feed(train)
    solver.test_nets[0].set_feed(test)
    weights = []
    original = solver.test

    def spy(i=0):
        weights.append([t.detach().double().numpy().copy() for t in solver.net.params["ip"]])
        return original(i)

    solver.test = spy
    solver.solve()
    log = stream.getvalue()
    assert [line for line in log.splitlines() if "Testing net" in line] == [
        "Iteration 2, Testing net (#0)",
        "Iteration 4, Testing net (#0)",
    ]
    # The first test saw test batches 0..2 with the weights after 2 updates.
    w, b = weights[0]
    losses = []
    for batch in test[:3]:
        y = batch["x"].astype(np.float64) @ w.T + b
        losses.append(((y - batch["t"]) ** 2).sum() / 8)
    first = next(line for line in log.splitlines() if "Test net output #0" in line)
    assert first.startswith("    Test net output #0: loss = ")
    assert float(first.split("= ")[1].split()[0]) == pytest.approx(np.mean(losses), rel=1e-5)
    assert first.endswith(" loss)")


def test_display_smoothing_follows_caffes_window(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream, rep = reporter()
    text = 'net: "net.prototxt"\n' + BASE + "max_iter: 100\ndisplay: 1\naverage_loss: 3\n"
    solver = make_solver(tmp_path, text, linear_net(), feed=batches(6), reporter=rep)
    raw = []
    forward_backward = solver.net.forward_backward

    def spy():
        raw.append(forward_backward())
        return raw[-1]

    solver.net.forward_backward = spy
    solver.step(6)
    shown = [
        float(line.rsplit("= ", 1)[1])
        for line in stream.getvalue().splitlines()
        if line.startswith("Iteration") and "loss = " in line
    ]
    expected = [np.mean(raw[max(0, k - 2) : k + 1]) for k in range(6)]
    np.testing.assert_allclose(shown, expected, rtol=1e-5)


def test_train_and_test_state_select_layers(tmp_path, monkeypatch):
    """train_state/test_state merge into each net's NetState (phase, stages, level)."""
    monkeypatch.chdir(tmp_path)
    net = linear_net() + (
        'layer { name: "extra" type: "Power" bottom: "y" top: "extra" '
        'include { stage: "probe" } }\n'
    )
    text = (
        'net: "net.prototxt"\n' + BASE + "test_iter: 1\ntest_iter: 1\ntest_interval: 10\n"
        'test_state { stage: "probe" }\ntest_state { }\ntrain_state { level: 2 }\n'
    )
    solver = make_solver(tmp_path, text, net)
    assert [o.blob for o in solver.test_nets[0].outputs] == ["loss", "extra"]
    assert [o.blob for o in solver.test_nets[1].outputs] == ["loss"]
    assert solver.net.graph.state.level == 2 and solver.net.graph.phase == 0
    assert solver.test_nets[0].graph.phase == 1


def test_test_iter_must_match_the_test_nets(tmp_path, monkeypatch):
    from protocaffe.diagnostics import CompileError

    monkeypatch.chdir(tmp_path)
    text = 'train_net: "net.prototxt"\ntest_net: "net.prototxt"\n' + BASE + "test_interval: 5\n"
    with pytest.raises(CompileError, match="test_iter is given 0 times for 1 test nets"):
        make_solver(tmp_path, text, linear_net())


def test_net_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    import protocaffe
    from protocaffe.diagnostics import CompileError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "net.prototxt").write_text(linear_net())
    (tmp_path / "run" / "solver.prototxt").write_text('net: "net.prototxt"\n' + BASE)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompileError) as err:
        protocaffe.Solver("run/solver.prototxt", device="cpu")
    d = err.value.diagnostics[0]
    assert "cannot read 'net.prototxt'" in d.message and "working directory" in d.hint


def test_a_plain_step_trains_as_caffe(tmp_path, monkeypatch):
    """One SGD step from the Python API (pycaffe's solver.step) against the formula."""
    monkeypatch.chdir(tmp_path)
    feed = batches(1)
    solver = make_solver(tmp_path, 'net: "net.prototxt"\n' + BASE, linear_net(), feed=feed)
    w = solver.net.params["ip"][0].detach().double().numpy().copy()
    b = solver.net.params["ip"][1].detach().double().numpy().copy()
    solver.step(1)
    gw, _ = linear_grads(w, b, feed[0])
    np.testing.assert_allclose(solver.net.params["ip"][0].detach(), w - 0.1 * gw, rtol=1e-5)
    assert solver.iter == 1


SIGINT_NET = """name: "endless"
layer { name: "d" type: "DummyData" top: "x" top: "t"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
    data_filler { type: "gaussian" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


@pytest.mark.slow
def test_ctrl_c_snapshots_then_stops(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "net.prototxt").write_text(SIGINT_NET)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\n'
        + BASE
        + 'max_iter: 100000000\ndisplay: 1000\nsnapshot_prefix: "s/x"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "protocaffe", "train", "solver.prototxt"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"},
    )
    for line in proc.stdout:
        if line.startswith("Iteration 1000 ("):
            break
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "Optimization stopped early." in out
    (snapshot,) = (tmp_path / "s").glob("x_iter_*.solverstate")
    assert int(snapshot.name.split("_")[-1].split(".")[0]) >= 1000
    assert not list((tmp_path / "s").glob("*.part"))


def test_progress_bar_only_when_asked_and_json_lines(tmp_path, monkeypatch):
    import json
    import time

    bar, out = io.StringIO(), io.StringIO()
    rep = Reporter(stream=out, jsonl=str(tmp_path / "log.jsonl"), progress=True)
    rep.bar_stream = bar
    rep.step(0, 100, 1.0)
    time.sleep(0.15)
    rep.step(10, 100, 0.5)
    assert "10/100" in bar.getvalue() and "it/s ETA " in bar.getvalue()
    rep.display(10, 12.5, 0.8, 10, 0.5, [("loss", 0.5, 1.0), ("acc", 0.25, 0.0)])
    assert bar.getvalue().endswith("\r\x1b[K")  # the bar is cleared before a log line
    rep.learning_rate(10, 0.01)
    rep.test(10, 0, [("acc", 0.75, 0.0)], None)
    rep.close()
    assert out.getvalue().splitlines() == [
        "Iteration 10 (12.5 iter/s, 0.8s/10 iters), loss = 0.5",
        "    Train net output #0: loss = 0.5 (* 1 = 0.5 loss)",
        "    Train net output #1: acc = 0.25",
        "Iteration 10, lr = 0.01",
        "    Test net output #0: acc = 0.75",
    ]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["phase"] == "train" and records[0]["lr"] == pytest.approx(0.01)
    assert records[0]["outputs"] == {"loss": 0.5, "acc": 0.25}
    assert records[1]["phase"] == "test" and records[1]["outputs"] == {"acc": 0.75}
    # Not a terminal: no bar at all.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert Reporter(stream=io.StringIO()).progress is False
