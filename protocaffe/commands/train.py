"""`protocaffe train SOLVER`: Caffe's `caffe train` (the Solver::Solve loop).

Ctrl-C stops after the current iteration and snapshots (Caffe's SIGINT action); a second
Ctrl-C aborts at once (snapshots are written atomically, so none is left half-written).
SIGHUP snapshots and goes on. Under torchrun every process trains (see
protocaffe.train.distributed); rank 0 prints, tests and snapshots.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from protocaffe.commands._args import check_output_path, int_at_least

DESCRIPTION = """\
Train with a Caffe solver definition, as `caffe train --solver=SOLVER` does: the train net and
any test nets it names (paths relative to the working directory), the solver type and lr policy,
test_interval/test_iter, display, iter_size, snapshots (a missing snapshot directory is
created). Prints Caffe's log lines, a progress bar on a terminal, and with --log a JSON-lines
record per display and test (for `protocaffe plot`). Ctrl-C snapshots, then stops."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a net with a Caffe solver (caffe train)", description=DESCRIPTION
    )
    p.add_argument("solver", metavar="SOLVER", nargs="?", help="the solver .prototxt")
    p.add_argument(
        "--solver", dest="solver_flag", metavar="SOLVER", help="the solver (Caffe's spelling)"
    )
    start = p.add_mutually_exclusive_group()
    start.add_argument(
        "--weights",
        metavar="W[,W2]",
        help="initial weights (.caffemodel or .caffemodel.h5, comma-separated, applied in "
        "order); replaces the solver's `weights`",
    )
    start.add_argument(
        "--snapshot", metavar="S.solverstate", help="resume from a .solverstate (.h5) snapshot"
    )
    p.add_argument(
        "--iterations", type=int_at_least(0), metavar="N", help="train to N (overrides max_iter)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N (auto)"
    )
    p.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="(float32, Caffe's)"
    )
    p.add_argument("--stage", action="append", default=[], help="add a stage to train_state")
    p.add_argument("--level", type=int, help="train_state level")
    p.add_argument("--log", metavar="FILE.jsonl", help="append JSON-lines records to FILE")
    p.add_argument(
        "--python-layers",
        action="append",
        metavar="DIR",
        help="allow the nets' Python data layers, importing their modules from DIR",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from protocaffe.cli import UsageError
    from protocaffe.train.distributed import init_from_env, shutdown
    from protocaffe.train.report import Reporter
    from protocaffe.train.solver import Solver

    if (args.solver is None) == (args.solver_flag is None):
        raise UsageError("give the solver once: SOLVER or --solver SOLVER")
    path = args.solver if args.solver is not None else args.solver_flag
    if args.log is not None:
        check_output_path(args.log, "--log")  # before any work, like every output path
    try:
        rank, world, device = init_from_env(args.device)
    except ValueError as err:
        raise UsageError(f"--device {args.device}: {str(err).split(': ', 1)[-1]}") from None
    reporter = Reporter(
        jsonl=args.log if rank == 0 else None,
        progress=False if args.no_progress else None,
        quiet=rank != 0,
    )
    weights = None
    if args.weights is not None:
        weights = [w.strip() for w in args.weights.split(",") if w.strip()]
    elif args.snapshot is not None:
        weights = []  # Caffe: --snapshot clears the solver's `weights`
    try:
        solver = Solver(
            path,
            weights=weights,
            device=device,
            dtype=args.dtype,
            stages=args.stage,
            level=args.level,
            reporter=reporter,
            rank=rank,
            world_size=world,
            python_path=args.python_layers,
        )
        if args.iterations is not None:
            solver.param.max_iter = args.iterations
        _header(solver, reporter)
        with _signals(solver):
            if rank == 0:
                solver.solve(args.snapshot)
            else:  # Caffe's worker solvers run Step only (no final snapshot or test)
                if args.snapshot:
                    solver.restore(args.snapshot)
                solver.step(solver.param.max_iter - solver.iter)
    finally:
        reporter.close()
        if world > 1:
            shutdown()
    return 0


def _header(solver: Any, reporter: Any) -> None:
    p = solver.param
    reporter.line(f"Solving {solver.net.graph.name}")
    reporter.line(f"Learning Rate Policy: {p.lr_policy}")
    if solver.world_size > 1:
        reporter.line(f"{solver.world_size} processes, each with its own full batch")


@contextmanager
def _signals(solver: Any) -> Iterator[None]:
    """SIGINT: stop after this iteration (a second one aborts); SIGHUP: snapshot."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        solver.reporter.line("Interrupted: stopping after this iteration (Ctrl-C again aborts)")
        solver.request("stop")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_hangup(signum: int, frame: Any) -> None:
        solver.request("snapshot")

    old_int = signal.signal(signal.SIGINT, on_interrupt)
    old_hup = signal.signal(signal.SIGHUP, on_hangup) if hasattr(signal, "SIGHUP") else None
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        if old_hup is not None:
            signal.signal(signal.SIGHUP, old_hup)
