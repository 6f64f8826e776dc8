"""Errors as values: diagnostics with source spans, rendered like a compiler.

Every stage (parser, upgrader, graph builder, shape pass, lowering, weight loader) reports
problems as `Diagnostic`s. A stage that cannot continue raises `CompileError` carrying all
diagnostics collected so far; the CLI renders them and exits 1. Python tracebacks are for bugs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True, eq=False)
class SourceFile:
    """A file's text, kept so that diagnostics can quote the offending line."""

    path: str
    text: str

    @cached_property
    def _lines(self) -> list[str]:
        # Split on "\n" only: the lexer counts lines that way (a lone "\r" or form feed
        # inside a line must not shift the quoted line). Split once, not per diagnostic.
        return self.text.split("\n")

    def line(self, lineno: int) -> str:
        lines = self._lines
        return lines[lineno - 1].rstrip("\r") if 1 <= lineno <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A 1-based, end-exclusive region of a source file."""

    source: SourceFile
    line: int
    col: int
    end_line: int
    end_col: int

    @property
    def path(self) -> str:
        return self.source.path

    def __str__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    severity: Severity
    message: str
    span: Span | None = None
    hint: str | None = None
    notes: list[str] = field(default_factory=list)

    def render(self, color: bool = False) -> str:
        return render(self, color=color)


class CompileError(Exception):
    """Raised when a stage cannot go on; carries every diagnostic gathered so far."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        first = next((d for d in self.diagnostics if d.severity == "error"), None)
        super().__init__(first.message if first else "compile error")

    def __str__(self) -> str:
        return "\n".join(render(d) for d in self.diagnostics)


def input_error(message: str, span: Span | None = None, hint: str | None = None) -> CompileError:
    """A bad input (exit 1): one error diagnostic, to raise."""
    return CompileError([Diagnostic("error", message, span, hint)])


class Diagnostics:
    """A collector: stages append as they go and call `check()` at a stage boundary."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, diagnostic: Diagnostic) -> Diagnostic:
        self.items.append(diagnostic)
        return diagnostic

    def error(self, message: str, span: Span | None = None, hint: str | None = None) -> Diagnostic:
        return self.add(Diagnostic("error", message, span, hint))

    def warning(
        self, message: str, span: Span | None = None, hint: str | None = None
    ) -> Diagnostic:
        return self.add(Diagnostic("warning", message, span, hint))

    def note(self, message: str, span: Span | None = None, hint: str | None = None) -> Diagnostic:
        return self.add(Diagnostic("note", message, span, hint))

    def extend(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.items.extend(diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def check(self) -> None:
        """Raise CompileError when any error has been recorded."""
        if self.has_errors:
            raise CompileError(self.items)


_COLORS = {"error": "\033[1;31m", "warning": "\033[1;35m", "note": "\033[1;36m"}
_BOLD, _RESET, _GREEN = "\033[1m", "\033[0m", "\033[1;32m"


def render(d: Diagnostic, color: bool = False) -> str:
    """`path:line:col: error: message`, the source line, a caret under the span, the hint."""
    sev = f"{_COLORS[d.severity]}{d.severity}{_RESET}" if color else d.severity
    where = f"{d.span}: " if d.span else ""
    if color and where:
        where = f"{_BOLD}{where}{_RESET}"
    out = [f"{where}{sev}: {d.message}"]
    if d.span is not None:
        text = d.span.source.line(d.span.line).expandtabs(1)
        if text:
            start = max(d.span.col - 1, 0)
            if d.span.end_line == d.span.line and d.span.end_col > d.span.col:
                width = d.span.end_col - d.span.col
            else:
                width = max(len(text.rstrip()) - start, 1)
            width = max(1, min(width, max(len(text) - start, 1)))
            text, start, width = _clip(text, start, width)
            caret = " " * start + "^" + "~" * (width - 1)
            gutter = f"{d.span.line:>5} | "
            out.append(gutter + text)
            out.append(
                " " * (len(gutter) - 2) + "| " + (f"{_GREEN}{caret}{_RESET}" if color else caret)
            )
    if d.hint:
        out.append(f"  = hint: {d.hint}")
    out.extend(f"  = note: {n}" for n in d.notes)
    return "\n".join(out)


_MAX_QUOTED = 160  # columns of a source line quoted around the caret (minified files are long)
_ELLIPSIS = "..."


def _clip(text: str, start: int, width: int) -> tuple[str, int, int]:
    """A window of a long source line around [start, start+width), marked with '...'."""
    if len(text) <= _MAX_QUOTED:
        return text, start, width
    width = min(width, _MAX_QUOTED // 2)
    left = max(0, min(start - _MAX_QUOTED // 4, len(text) - _MAX_QUOTED))
    right = left + _MAX_QUOTED
    window = text[left:right]
    if left > 0:
        window = _ELLIPSIS + window
        start = start - left + len(_ELLIPSIS)
    if right < len(text):
        window += _ELLIPSIS
    return window, start, width


def print_diagnostics(
    diagnostics: Iterable[Diagnostic], stream=None, limit: int | None = None
) -> int:
    """Render `diagnostics` to `stream` (stderr), the first `limit` of them when given; returns
    how many were left out."""
    stream = stream or sys.stderr
    color = hasattr(stream, "isatty") and stream.isatty()
    items = list(diagnostics)
    shown = items if limit is None else items[:limit]
    for d in shown:
        print(render(d, color=color), file=stream)
    return len(items) - len(shown)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def count_summary(diagnostics: Iterable[Diagnostic]) -> str | None:
    """'3 errors, 1 warning', or None when there is neither."""
    severities = [d.severity for d in diagnostics]
    errors, warnings = severities.count("error"), severities.count("warning")
    if not errors and not warnings:
        return None
    return f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"


def did_you_mean(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Near names for a did-you-mean hint (difflib's ratio, with a case-insensitive pass)."""
    import difflib

    pool = list(candidates)
    hits = difflib.get_close_matches(word, pool, n=n, cutoff=0.6)
    if not hits:
        lowered = {c.lower(): c for c in pool}
        hits = [
            lowered[h] for h in difflib.get_close_matches(word.lower(), lowered, n=n, cutoff=0.6)
        ]
    return hits


def suggestion_hint(word: str, candidates: Iterable[str]) -> str | None:
    hits = did_you_mean(word, candidates)
    if not hits:
        return None
    return "did you mean " + " or ".join(f"'{h}'" for h in hits) + "?"
