"""What training prints: Caffe's log lines, a progress bar on a terminal, a JSON-lines log.

Lines read like `caffe train`'s glog output without the glog prefix (`Iteration 100 (...),
loss = 0.5`, `    Train net output #0: loss = 0.5 (* 1 = 0.5 loss)`, `Iteration 100, lr =
0.01`, `    Test net output #0: accuracy = 0.9`), numbers printed as C++ streams print floats
(6 significant digits), so scripts that parse Caffe logs keep working. The progress bar (rate
and ETA) is drawn on stderr only when stderr is a terminal, and cleared before each line.
The JSON-lines log has one object per display step (`"phase": "train"`) and per test
(`"phase": "test"`); `protocaffe plot` reads it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any


def num(x: float) -> str:
    """A float as `std::ostream << float` writes it (%g, 6 significant digits)."""
    return format(float(x), ".6g")


class Reporter:
    """Receives the solver's events; prints, draws and logs them."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        jsonl: str | None = None,
        progress: bool | None = None,
        quiet: bool = False,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.quiet = quiet
        self.bar_stream = sys.stderr
        self.progress = self.bar_stream.isatty() if progress is None else progress
        self._jsonl = open(jsonl, "a", encoding="utf-8") if jsonl else None  # noqa: SIM115
        self._pending: dict[str, Any] = {}
        self._bar_shown = False
        self._bar_drawn_at = 0.0
        self._started: tuple[float, int] | None = None

    # --- text ---------------------------------------------------------------------------

    def line(self, text: str) -> None:
        if self.quiet:
            return
        self._clear_bar()
        print(text, file=self.stream, flush=True)

    def display(
        self, it: int, per_s: float, lapse: float, every: int, loss: float, outputs: list
    ) -> None:
        """A display iteration: the smoothed loss and each train-net output element."""
        self.line(
            f"Iteration {it} ({num(per_s)} iter/s, {num(lapse)}s/{every} iters), loss = {num(loss)}"
        )
        self._outputs("Train", outputs)
        self._pending = {
            "phase": "train",
            "iter": it,
            "loss": float(loss),
            "iters_per_s": float(per_s),
            "outputs": _named(outputs),
        }

    def learning_rate(self, it: int, rate: float) -> None:
        self.line(f"Iteration {it}, lr = {num(rate)}")
        record = self._pending or {"phase": "train", "iter": it}
        record["lr"] = float(rate)
        self._record(record)
        self._pending = {}

    def test(self, it: int, net_id: int, outputs: list, loss: float | None) -> None:
        if loss is not None:
            self.line(f"Test loss: {num(loss)}")
        self._outputs("Test", outputs)
        record: dict[str, Any] = {
            "phase": "test",
            "iter": it,
            "net": net_id,
            "outputs": _named(outputs),
        }
        if loss is not None:
            record["loss"] = float(loss)
        self._record(record)

    def _outputs(self, which: str, outputs: list) -> None:
        for k, (name, value, weight) in enumerate(outputs):
            tail = f" (* {num(weight)} = {num(weight * value)} loss)" if weight else ""
            self.line(f"    {which} net output #{k}: {name} = {num(value)}{tail}")

    def _record(self, record: dict[str, Any]) -> None:
        if self._jsonl is not None:
            record["time"] = round(time.time(), 3)
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    # --- progress bar --------------------------------------------------------------------

    def step(self, it: int, stop: int, loss: float) -> None:
        """After each iteration: redraw the bar (at most ~10 times a second)."""
        if not self.progress or self.quiet:
            return
        now = time.monotonic()
        if self._started is None:
            self._started = (now, it)
            return
        if now - self._bar_drawn_at < 0.1 and it < stop:
            return
        self._bar_drawn_at = now
        t0, it0 = self._started
        rate = (it - it0) / max(now - t0, 1e-9)
        eta = (stop - it) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * it / stop) if stop else width
        bar = "#" * filled + "." * (width - filled)
        text = f"\r[{bar}] {it}/{stop} {rate:.2f} it/s ETA {_clock(eta)} loss {num(loss)}\x1b[K"
        self.bar_stream.write(text)
        self.bar_stream.flush()
        self._bar_shown = True

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.bar_stream.write("\r\x1b[K")
            self.bar_stream.flush()
            self._bar_shown = False

    def close(self) -> None:
        self._clear_bar()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def _named(outputs: list) -> dict[str, Any]:
    """{name: value}, or {name: [values]} for an output with several elements."""
    out: dict[str, Any] = {}
    for name, value, _ in outputs:
        if name in out:
            prev = out[name]
            out[name] = [*prev, float(value)] if isinstance(prev, list) else [prev, float(value)]
        else:
            out[name] = float(value)
    return out


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
