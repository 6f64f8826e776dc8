"""Shared by the fuzz suites (tests/test_fuzz_*.py): how a hostile case is run and judged.

Every case must end as a success, a located input error or a usage error: no internal error,
no traceback, bounded time and memory. The CLI runs in-process (`protocaffe.cli.main`), with
stdin empty and the memory guard told that the machine has `MEMORY_LIMIT` bytes, so nothing a
case plans can grow the test process past that; `ru_maxrss` checks it did not.

Example counts scale with PROTOCAFFE_FUZZ: unset, a few hundred cases over the suites (well
under a minute on two busy cores); `PROTOCAFFE_FUZZ=slow` (the `slow` profile, `make fuzz`)
runs twenty times as many. `STATS` counts the cases tried and the internal errors found.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, settings

from protocaffe.diagnostics import CompileError

PROFILE = os.environ.get("PROTOCAFFE_FUZZ", "default")
SCALE = 20 if PROFILE == "slow" else 1
MEMORY_LIMIT = 256 << 20  # what the guard believes the machine has, for every case
RSS_BUDGET = 1536 << 20  # the test process may grow at most this much over the whole suite
CASE_SECONDS = 60  # one case (busy machine: generous; a hang still ends)

settings.register_profile(
    "fuzz",
    deadline=None,  # the machine is shared: per-example time is checked by `deadline` below
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
    print_blob=True,
    # CI judges one submission once: there the cases are a fixed sample (set PROTOCAFFE_FUZZ to
    # explore anew); elsewhere every run draws new ones.
    derandomize=bool(os.environ.get("CI")) and "PROTOCAFFE_FUZZ" not in os.environ,
)


def fuzz_settings(examples: int) -> settings:
    """Hypothesis settings for one property: `examples` cases, times the profile's scale."""
    return settings(settings.get_profile("fuzz"), max_examples=examples * SCALE)


@dataclass
class Stats:
    cases: int = 0
    internal_errors: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    distinct: set[str] = field(default_factory=set)  # the error itself, not the input

    def count(self, kind: str) -> None:
        self.cases += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items()))
        return (
            f"fuzz ({PROFILE} profile): {self.cases} cases ({kinds}); "
            f"{self.internal_errors} internal errors ({len(self.distinct)} distinct)"
        )


STATS = Stats()
_BASELINE_RSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CaseTimeout(BaseException):
    """Raised in a case that ran past CASE_SECONDS (a BaseException: the CLI must not catch it)."""


@contextlib.contextmanager
def bounded(kind: str) -> Iterator[None]:
    """Count one case; fail it when it runs too long or grows the process too much. The
    memory guard sees a small machine, and PROTOCAFFE_TRACEBACK is unset."""

    def expire(*_: Any) -> None:
        raise CaseTimeout(f"{kind} case ran past {CASE_SECONDS} s")

    STATS.count(kind)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    env = {k: v for k, v in os.environ.items() if k != "PROTOCAFFE_TRACEBACK"}
    try:
        with (
            mock.patch.dict(os.environ, env, clear=True),
            mock.patch("protocaffe.runtime.guards._host_available", lambda: MEMORY_LIMIT),
        ):
            yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - _BASELINE_RSS
    assert grown < RSS_BUDGET, f"{kind}: the process grew by {grown >> 20} MiB"


def internal(kind: str, what: str, error: str) -> None:
    """Record an internal error: `what` the case, `error` the error (shrinking repeats it)."""
    STATS.internal_errors += 1
    STATS.failures.append(f"{kind}: {what[:300]}: {error[:300]}")
    STATS.distinct.add(error.strip().splitlines()[0][:200] if error.strip() else kind)


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


def cli(argv: list[str], kind: str = "cli", stdin: str = "") -> Outcome:
    """`protocaffe ARGV` in-process, judged: exit 0, 1 or 2 and no internal error."""
    from protocaffe.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with (
        bounded(kind),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()))),
    ):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: usage errors, --help, --version
            code = exit_.code if isinstance(exit_.code, int) else 2
        except Exception as exc:  # main() must never let one out
            internal(kind, repr(argv), f"{type(exc).__name__}: {exc}")
            raise
    result = Outcome(code, out.getvalue(), err.getvalue(), time.perf_counter() - start)
    text = result.out + result.err
    if "internal error" in text or "Traceback (most recent call last)" in text:
        internal(kind, repr(argv), text.split("internal error:")[-1])
        raise AssertionError(f"protocaffe {' '.join(map(str, argv))}: {text[-2000:]}")
    assert code in (0, 1, 2), f"exit {code}: {argv!r}"
    return result


def api(fn: Callable[[], Any], kind: str = "api") -> Any:
    """Call `fn` (the Python API), judged: it returns, or raises a CompileError (ours, with
    its diagnostics rendered); anything else is an internal error."""
    with bounded(kind):
        try:
            return fn()
        except CompileError as err:
            assert err.diagnostics and str(err), "a CompileError without diagnostics"
            return err
        except Exception as exc:
            internal(kind, "", f"{type(exc).__name__}: {exc}")
            raise
