"""`Solver`: Caffe's Solver/SGDSolver loop (solver.cpp, sgd_solver.cpp) over lowered nets.

    solver = protocaffe.Solver("solver.prototxt")
    solver.net.copy_from("vgg16.caffemodel")
    solver.step(4000)                  # pycaffe: Step (no final snapshot or test)
    solver.solve()                     # Solve: Step to max_iter, snapshot, final test

Iteration numbering is Caffe's: `iter` counts finished updates, a test labelled "Iteration
k" sees the weights after k updates (it runs before update k+1), update k uses lr(k) and
Adam's t = k+1, and `_iter_K` snapshots hold the weights after K updates. See
docs/ARCHITECTURE.md ("Training") for how the pieces fit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocaffe.diagnostics import Diagnostics, input_error
from protocaffe.ir.state import TEST, TRAIN
from protocaffe.train import lr_policy
from protocaffe.train.net import TrainableNet, net_graph
from protocaffe.train.report import Reporter
from protocaffe.train.snapshot import (
    SolverStateData,
    read_solverstate,
    restore_history,
    write_solverstate,
)
from protocaffe.train.updates import apply_update, make_rule

f32 = np.float32
HDF5 = 0  # SolverParameter.SnapshotFormat.HDF5 (BINARYPROTO = 1)


def load_solver_param(solver: Any) -> tuple[Any, Any, str | None]:
    """(SolverParameter, span lookup, solver file path or None) from a path, text or message.

    Applies Caffe's ReadSolverParamsFromTextFile defaults: an unset snapshot_prefix is the
    solver file without its extension, and a prefix naming a directory gets the file's stem.
    """
    from protocaffe.proto import caffe_pb2

    if isinstance(solver, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver)
        return param, lambda path: None, None
    from protocaffe.frontend import load_solver

    parsed = load_solver(os.fspath(solver))
    param = parsed.message
    path = parsed.source.path if parsed.source.path != "<string>" else None
    if path is not None:
        stem = Path(path).with_suffix("")
        if not param.HasField("snapshot_prefix"):
            param.snapshot_prefix = str(stem)
        elif Path(param.snapshot_prefix).is_dir():
            param.snapshot_prefix = str(Path(param.snapshot_prefix) / stem.name)
    return param, parsed.source_map.span, path


class Solver:
    """pycaffe's SGDSolver shape: `.net`, `.test_nets`, `.iter`, `.step(n)`, `.solve()`,
    `.snapshot()`, `.restore(path)`. All solver types (`type:` in the solver) go through it.

    `weights` (paths) are loaded into the train and test nets after the fillers, as
    `caffe train --weights`. `stages`/`level` add to `train_state` (`caffe train --stage`).
    `rank`/`world_size` are set by `protocaffe.train.distributed` for multi-process runs.
    Python data layers run only with `allow_python_layers=True` or `python_path` (directories
    to import their modules from; `--python-layers DIR`).
    """

    def __init__(
        self,
        solver: Any,
        *,
        weights: list[str] | str | None = None,
        device: Any = "auto",
        dtype: Any = "float32",
        stages: list[str] | None = None,
        level: int | None = None,
        reporter: Reporter | None = None,
        rank: int = 0,
        world_size: int = 1,
        allow_python_layers: bool = False,
        python_path: list[str] | None = None,
    ) -> None:
        import torch

        from protocaffe.runtime.api import resolve_device, resolve_dtype

        self.param, self._span_of, self.path = load_solver_param(solver)
        self.rank, self.world_size = rank, world_size
        # Python data layers run user code: only when allowed (None: refused).
        allowed = allow_python_layers or python_path is not None
        self.python_path = list(python_path or []) if allowed else None
        if device == "auto" and self.param.HasField("solver_mode"):
            # caffe train honours solver_mode/device_id when --gpu is not given.
            gpu = self.param.solver_mode == self.param.GPU and torch.cuda.is_available()
            device = f"cuda:{self.param.device_id}" if gpu else "cpu"
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.reporter = reporter or Reporter(quiet=rank != 0)
        self._check()
        if self.param.random_seed >= 0:
            # Before any net is built, so that fillers and Dropout masks follow it.
            torch.manual_seed(self.param.random_seed + rank)
        self.seed = self.param.random_seed + rank if self.param.random_seed >= 0 else None
        self.net = self._train_net(self.seed, stages or [], level)
        self.test_nets = self._test_nets()
        self.test_iters = list(self.param.test_iter)
        self.rule = make_rule(self.param, self.net.learnable, self._span_of)
        self.iter = 0
        self.current_step = 0
        self.smoothed_loss = 0.0
        self._losses: list[float] = []
        self._action: str | None = None
        self.requested_early_exit = False
        if self.param.snapshot > 0 and self.root:
            self._check_snapshot_prefix()
        given = weights if weights is not None else _split(self.param.weights)
        for path in [given] if isinstance(given, str) else given:
            for net in (self.net, *self.test_nets):
                net.copy_from(path)
        for net in self.test_nets:
            net.share_with(self.net)
        if world_size > 1:
            from protocaffe.train.distributed import broadcast_blobs

            broadcast_blobs(self.net.learnable)

    # --- construction ---------------------------------------------------------------------

    def _check(self) -> None:
        p, diags = self.param, Diagnostics()
        if p.average_loss < 1:
            diags.error("average_loss must be >= 1", self._span_of(("average_loss",)))
        if p.iter_size < 1:
            diags.error("iter_size must be >= 1", self._span_of(("iter_size",)))
        lr_policy.check_policy(p, diags, self._span_of)
        diags.check()

    def _check_snapshot_prefix(self) -> None:
        """Caffe's CheckSnapshotWritePermissions, before any training: create and remove a
        probe file beside the future snapshots (creating a missing directory first)."""
        probe = Path(self.snapshot_filename(".tempfile"))
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.touch()
            probe.unlink()
        except OSError as err:
            raise input_error(
                f"cannot write snapshots to '{self.param.snapshot_prefix}': {err.strerror or err}",
                self._span_of(("snapshot_prefix",)),
                hint="set snapshot_prefix to a writable location, or snapshot: 0",
            ) from None

    def _net_file(self, name: str, field: str) -> Any:
        """A net file named by the solver: relative to the working directory, as Caffe."""
        from protocaffe.frontend import load_net

        if not Path(name).exists():
            hint = None
            if self.path is not None and (Path(self.path).parent / name).exists():
                hint = (
                    f"paths in a solver are relative to the working directory (as in Caffe); "
                    f"run from '{Path(self.path).parent}' or write "
                    f"'{Path(self.path).parent / name}'"
                )
            raise input_error(f"{field}: cannot read '{name}'", self._span_of((field,)), hint)
        return load_net(name)

    def _inline_net(self, message: Any) -> Any:
        from protocaffe.frontend import format_message, load_net

        return load_net(format_message(message) + "\n")

    def _graph(self, parsed: Any, phase: int, state: Any) -> tuple[Any, Any]:
        """The net for Caffe's merged NetState (the phase, then the net's own `state`, then
        the solver's train_state/test_state: later ones win, stages add up), and its Python
        data layers, set up when the user allowed them (their tops' shapes come from them)."""
        net = parsed.message
        declared = net.state if net.HasField("state") else None
        if declared is not None and declared.HasField("phase"):
            phase = declared.phase
        level = None
        stages: list[str] = []
        if state is not None:
            if state.HasField("phase"):
                phase = state.phase
            if state.HasField("level"):
                level = state.level
            stages = list(state.stage)
        return net_graph(parsed, phase, stages, level, self.python_path)

    def _make_net(self, built: tuple[Any, Any], seed: int | None) -> TrainableNet:
        graph, python = built
        net = TrainableNet(
            graph,
            device=self.device,
            dtype=self.dtype,
            seed=seed,
            force_backward=graph.net.force_backward,
        )
        train = graph.phase == TRAIN
        net.feed_factory = _data_feeder(
            graph,
            # Caffe strides Data/HDF5Data records by rank in the train net only.
            rank=self.rank if train else 0,
            world_size=self.world_size if train else 1,
            seed=seed,
            python_layers=python,
        )
        return net

    def _train_net(self, seed: int | None, stages: list[str], level: int | None) -> TrainableNet:
        from protocaffe.proto import caffe_pb2

        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise input_error(
                f"a solver names exactly one train net (net, net_param, train_net or "
                f"train_net_param); this one gives {what}",
                self._span_of((given[1],)) if len(given) > 1 else None,
            )
        field = given[0]
        parsed = (
            self._net_file(getattr(p, field), field)
            if field in ("net", "train_net")
            else self._inline_net(getattr(p, field))
        )
        state = caffe_pb2.NetState()
        state.CopyFrom(p.train_state)
        state.stage.extend(stages)
        if level is not None:
            state.level = level
        return self._make_net(self._graph(parsed, TRAIN, state), seed)

    def _test_nets(self) -> list[TrainableNet]:
        p = self.param
        sources = [("test_net_param", self._inline_net(m)) for m in p.test_net_param]
        sources += [("test_net", self._net_file(name, "test_net")) for name in p.test_net]
        generic = None
        if p.HasField("net"):
            generic = self._net_file(p.net, "net")
        elif p.HasField("net_param"):
            generic = self._inline_net(p.net_param)
        diags = Diagnostics()
        if generic is None and len(p.test_iter) != len(sources):
            diags.error(
                f"test_iter is given {len(p.test_iter)} times for {len(sources)} test nets; "
                "give one per test net",
                self._span_of(("test_iter",)),
            )
        elif generic is not None and len(p.test_iter) < len(sources):
            diags.error(
                f"test_iter is given {len(p.test_iter)} times for at least {len(sources)} "
                "test nets",
                self._span_of(("test_iter",)),
            )
        diags.check()
        if generic is not None:
            sources += [("net", generic)] * (len(p.test_iter) - len(sources))
        if len(p.test_state) not in (0, len(sources)):
            diags.error(
                f"test_state is given {len(p.test_state)} times for {len(sources)} test nets; "
                "give none or one per test net",
                self._span_of(("test_state",)),
            )
        if sources and p.test_interval <= 0:
            diags.error(
                "test nets are defined but test_interval is not > 0",
                self._span_of(("test_interval",)) or self._span_of(("test_iter",)),
                hint="set test_interval (a huge one builds the test net without running it)",
            )
        diags.check()
        nets = []
        for i, (_, parsed) in enumerate(sources):
            state = p.test_state[i] if len(p.test_state) else None
            # random_seed also fixes test-only fillers and test data order (shuffle, mirror).
            nets.append(self._make_net(self._graph(parsed, TEST, state), self.seed))
        return nets

    # --- the loop -------------------------------------------------------------------------

    def request(self, action: str) -> None:
        """Ask the loop to 'snapshot' or 'stop' after the current iteration (Caffe's
        SIGHUP/SIGINT actions)."""
        self._action = action

    def _requested(self) -> str | None:
        action, self._action = self._action, None
        return action

    @property
    def root(self) -> bool:
        return self.rank == 0

    def step(self, iters: int) -> None:
        """Caffe's Solver::Step: `iters` iterations of test (when due), forward/backward
        `iter_size` times, display, update, snapshot (when due)."""
        import torch

        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self._losses, self.smoothed_loss = [], 0.0
        timer, iters_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (
                p.test_interval
                and self.iter % p.test_interval == 0
                and (self.iter > 0 or p.test_initialization)
            ):
                if self.root:
                    self.test_all()
                if self._action == "stop":  # Ctrl-C while testing
                    self._action = None
                    self.requested_early_exit = True
                    break
            display_now = bool(p.display) and self.iter % p.display == 0
            loss = 0.0
            for _ in range(p.iter_size):
                loss += self.net.forward_backward()
            loss = float(f32(loss) / f32(p.iter_size))
            self._update_smoothed_loss(loss, start_iter)
            if display_now:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iters_last) / (lapse or 1.0)
                self.reporter.display(
                    self.iter,
                    per_s,
                    lapse,
                    p.display,
                    self.smoothed_loss,
                    _flat_outputs(self.net),
                )
                timer, iters_last = time.perf_counter(), self.iter
            if self.world_size > 1:
                from protocaffe.train.distributed import average_gradients

                average_gradients(self.net.learnable)
            self._apply_update(display_now)
            self.reporter.step(self.iter, stop_iter, self.smoothed_loss)
            action = self._requested()
            if (p.snapshot and self.iter % p.snapshot == 0 and self.root) or action == "snapshot":
                self.snapshot()
            if action == "stop":
                self.requested_early_exit = True
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _apply_update(self, display_now: bool) -> None:
        rate, self.current_step = lr_policy.learning_rate(self.param, self.iter, self.current_step)
        if display_now:
            self.reporter.learning_rate(self.iter, rate)
        clipped = apply_update(self.param, self.rule, self.net.learnable, rate, self.iter)
        if clipped is not None:
            self.reporter.line(
                f"Gradient clipping: scaling down gradients (L2 norm {_num(clipped)} > "
                f"{_num(self.param.clip_gradients)}) by scale factor "
                f"{_num(f32(self.param.clip_gradients) / f32(clipped))}"
            )
        self.iter += 1

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        average = self.param.average_loss
        if len(self._losses) < average:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = float((f32(self.smoothed_loss) * (size - 1) + f32(loss)) / size)
        else:
            idx = (self.iter - start_iter) % average
            delta = (f32(loss) - f32(self._losses[idx])) / average
            self.smoothed_loss = float(f32(self.smoothed_loss) + f32(delta))
            self._losses[idx] = loss

    def solve(self, resume_file: str | None = None) -> None:
        """Caffe's Solver::Solve: optionally restore, step to max_iter, snapshot (unless the
        last iteration just did), then one forward-only display pass and a final test."""
        self.requested_early_exit = False
        if resume_file:
            self.restore(resume_file)
        start_iter = self.iter
        self.step(self.param.max_iter - self.iter)
        p = self.param
        due = not p.snapshot or self.iter % p.snapshot != 0
        if p.snapshot_after_train and due and self.root:
            self.snapshot()
        if self.requested_early_exit:
            self.reporter.line("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            self._update_smoothed_loss(self.net.forward_loss(), start_iter)
            self.reporter.line(f"Iteration {self.iter}, loss = {_num(self.smoothed_loss)}")
        if p.test_interval and self.iter % p.test_interval == 0 and self.root:
            self.test_all()
        self.reporter.line("Optimization Done.")

    # --- testing --------------------------------------------------------------------------

    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            self.test(i)

    def test(self, net_id: int = 0) -> list[tuple[str, float, float]]:
        """Caffe's Solver::Test: test_iter[net_id] forward passes; the mean of every output
        element (and of the loss, with test_compute_loss) is logged and returned."""
        import torch

        self.reporter.line(f"Iteration {self.iter}, Testing net (#{net_id})")
        net = self.test_nets[net_id]
        net.share_with(self.net)
        iters = self.test_iters[net_id]
        sums: np.ndarray | None = None
        names: list[tuple[str, float]] = []
        loss = f32(0)
        with torch.no_grad():
            for _ in range(iters):
                if self._action == "stop":
                    break
                iter_loss = net.forward_loss()
                if self.param.test_compute_loss:
                    loss += f32(iter_loss)
                values = net.output_values()
                flat = np.concatenate([v.numpy().astype(np.float32) for _, v in values] or [[]])
                if sums is None:
                    sums = np.zeros_like(flat, dtype=np.float32)
                    names = [(o.blob, o.loss_weight) for o, v in values for _ in range(v.numel())]
                sums += flat
        means = [] if sums is None else [float(f32(s) / f32(iters)) for s in sums]
        results = [(name, m, w) for (name, w), m in zip(names, means, strict=True)]
        mean_loss = float(loss / f32(iters)) if self.param.test_compute_loss else None
        self.reporter.test(self.iter, net_id, results, mean_loss)
        return results

    # --- snapshots ------------------------------------------------------------------------

    def snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> tuple[str, str]:
        """Write `<prefix>_iter_<iter>` .caffemodel and .solverstate (or the .h5 pair);
        returns their paths. A missing snapshot directory is created."""
        hdf5 = self.param.snapshot_format == HDF5
        model = self.snapshot_filename(".caffemodel.h5" if hdf5 else ".caffemodel")
        state = self.snapshot_filename(".solverstate.h5" if hdf5 else ".solverstate")
        Path(model).parent.mkdir(parents=True, exist_ok=True)
        kind = "HDF5" if hdf5 else "binary proto"
        self.reporter.line(f"Snapshotting to {kind} file {model}")
        try:
            self.net.save(model, hdf5=hdf5)
            self.reporter.line(f"Snapshotting solver state to {kind} file {state}")
            data = SolverStateData(
                self.iter,
                model,
                self.current_step,
                [h.detach().to("cpu", copy=True).float().numpy() for h in self.rule.history],
            )
            write_solverstate(state, data, hdf5)
        except OSError as err:
            raise input_error(f"cannot write snapshot: {err}") from None
        return model, state

    def restore(self, path: str) -> None:
        """Caffe's Restore: iter, current_step, the learned net (path as written in the
        state, relative to the working directory) into the train net, and the history."""
        self.reporter.line(f"Restoring previous solver status from {path}")
        state = read_solverstate(path)
        self.iter = state.iter
        self.current_step = state.current_step
        if state.learned_net:
            self.net.copy_from(state.learned_net)
        restore_history(self.rule.history, state.history, str(path))


def _split(weights: Any) -> list[str]:
    return [w.strip() for item in weights for w in item.split(",") if w.strip()]


def _num(x: float) -> str:
    from protocaffe.train.report import num

    return num(x)


def _flat_outputs(net: TrainableNet) -> list[tuple[str, float, float]]:
    return [(o.blob, float(x), o.loss_weight) for o, values in net.output_values() for x in values]


def _data_feeder(graph: Any, **options: Any) -> Any:
    """A factory of the net's data-layer feeder (protocaffe.data), or None without data
    layers. The feeder starts (and reads) only when the net first runs."""
    if not graph.inputs:
        return None

    def factory() -> Any:
        from protocaffe.data import make_feeder

        return make_feeder(graph, **options)

    return factory
