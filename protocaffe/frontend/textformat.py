"""Protocol-buffer text format → caffe_pb2 messages, with a source map and diagnostics.

Two passes. The lark LALR parser (grammar in prototxt.lark, driven by `_Lexer`, a single-regex
lexer built from the grammar's own terminals) turns text into a light tree of tuples; then
`_Builder` walks that tree top-down against the message DESCRIPTOR, converting values, filling
the protobuf message and recording a `Span` for every field path. Value rules follow
google.protobuf.text_format, so both accept and reject the same files; we only say it better.
One exception, with a warning: a value run into the next field name (`num_output: 21bias_term:`,
as pasted from web pages) is split where the field name begins (see `fused_value`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import cache, cached_property
from itertools import takewhile
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf import text_encoding
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from lark import Lark
from lark.common import LexerConf
from lark.exceptions import UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer

from protocaffe.diagnostics import (
    CompileError,
    Diagnostic,
    Diagnostics,
    SourceFile,
    Span,
    suggestion_hint,
)
from protocaffe.frontend.sourcemap import FieldPath, SourceMap
from protocaffe.proto import dialects, schema

__all__ = ["ParsedFile", "message_class", "parse_text"]


class ParsedFile:
    """A parsed prototxt: the protobuf message, where each field was written, and the text.
    (Plain classes here, not dataclasses: each of those costs a cold compile a millisecond.)"""

    def __init__(
        self,
        message: Message,
        source_map: SourceMap,
        source: SourceFile,
        diagnostics: list[Diagnostic] | None = None,
    ) -> None:
        self.message = message
        self.source_map = source_map
        self.source = source
        # Warnings and notes (errors are raised as CompileError instead).
        self.diagnostics = [] if diagnostics is None else diagnostics

    def replace(self, **changes: Any) -> ParsedFile:
        """A copy with the given attributes changed (the others shared, as dataclasses.replace
        shares them)."""
        given = {
            "message": self.message,
            "source_map": self.source_map,
            "source": self.source,
            "diagnostics": self.diagnostics,
        }
        return ParsedFile(**{**given, **changes})


# ---------------------------------------------------------------------------------------------
# Lexing and parsing


class Tok:
    """A token. Lighter than lark.Token (which the parser does not need): tokens never span
    lines, so the end position follows from the start and the length."""

    __slots__ = ("column", "line", "start_pos", "type", "value")

    def __init__(self, type: str, value: str, start_pos: int, line: int, column: int):
        self.type = type
        self.value = value
        self.start_pos = start_pos
        self.line = line
        self.column = column

    # lark reads these when it builds the end-of-input token and its error objects.
    @property
    def end_line(self) -> int:
        return self.line

    @property
    def end_column(self) -> int:
        return self.column + len(self.value)

    @property
    def end_pos(self) -> int:
        return self.start_pos + len(self.value)

    def __repr__(self) -> str:
        return f"Tok({self.type}, {self.value!r}, {self.line}:{self.column})"


class LexError(Exception):
    """A character no token can start with (e.g. an unterminated string)."""

    def __init__(self, text: str, pos: int, line: int, column: int):
        super().__init__(f"unexpected character at {line}:{column}")
        self.text, self.pos, self.line, self.column = text, pos, line, column


class _Lexer(Lexer):
    """One compiled alternation of the grammar's terminals, scanned with finditer.

    lark's own basic lexer does the same job at about 2.5x the cost per token; parsing speed is
    dominated by per-token Python work, so this matters (see benchmarks/bench_parse.py).

    While `_folding` is set (parse_text's first try), the lexer folds what makes most of a
    file into fewer tokens (see prototxt.lark): each run of one-line `name: value` fields
    becomes one SCALARS token and each `name {` one OPEN token, and the whitespace before a
    token is part of its match. lark's loop then sees a few tokens per layer, not dozens. A
    field is folded only where the plain tokens are exactly NAME COLON value or NAME [COLON]
    LBRACE (no fused name or value, no adjacent string after the value): both token streams
    give the same tree, and every error is reported from a plain re-parse.
    """

    def __init__(self, conf: LexerConf):
        terminals = {t.name: t.pattern.to_regexp() for t in conf.terminals}
        groups = [f"(?P<{name}>{regexp})" for name, regexp in terminals.items()]
        self.pattern = "|".join([*groups, r"(?P<_BAD>[\s\S])"])
        name, value = (
            terminals["NAME"],
            "|".join(terminals[t] for t in ("NUMBER", "NAME", "STRING")),
        )
        folded = [
            # Groups 1-3: a scalar field, its name, its value. 4-6: `name {`, the name, ':'.
            f"(?P<SCALAR>({name})[ \\t]*:[ \\t]*({value}))",
            f"(?P<OPEN>({name})[ \\t]*(:[ \\t]*)?\\{{)",
            *groups,
            r"(?P<_BAD>\S)",
            r"(?P<_END>\Z)",  # trailing whitespace: one match (a possessive \s* never backs off)
        ]
        self.folding_regex = re.compile(r"\s*+(?:" + "|".join(folded) + ")")
        self.ignore = frozenset(conf.ignore)

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """The plain tokens' regex (compiled when first needed: a file without errors and
        fused values never needs it)."""
        return re.compile(self.pattern)

    def lex(self, text: str, *_: Any) -> Iterator[Tok]:  # type: ignore[override]
        if _folding.get():
            return self._lex_folding(text)
        return self._lex_plain(text, 0, len(text), 1, 0)

    def _lex_plain(
        self, text: str, pos: int, endpos: int, line: int, line_start: int
    ) -> Iterator[Tok]:
        ignore = self.ignore
        for m in self.regex.finditer(text, pos, endpos):
            kind = m.lastgroup
            if kind in ignore:
                value = m.group()
                newlines = value.count("\n")
                if newlines:
                    line += newlines
                    line_start = m.start() + value.rindex("\n") + 1
                continue
            start = m.start()
            if kind == "_BAD":
                raise LexError(text, start, line, start - line_start + 1)
            yield from _tokens(text, kind, m.group(), start, m.end(), line, start - line_start + 1)

    def _lex_folding(self, text: str) -> Iterator[Tok]:
        line, line_start = 1, 0
        ignore = self.ignore
        names = _known_field_names()
        run: list[tuple[Tok, bool, Any]] = []  # the fields folded since the last other token
        for m in self.folding_regex.finditer(text):
            start = m.start(m.lastindex)  # type: ignore[arg-type]  # after the whitespace
            if start > m.start():  # the whitespace before the token: count its lines
                newlines = text.count("\n", m.start(), start)
                if newlines:
                    line += newlines
                    line_start = text.rindex("\n", m.start(), start) + 1
            kind = m.lastgroup
            if kind == "SCALAR":
                key, value = m.group(2, 3)
                first = value[0]
                if first == '"' or first == "'":
                    token, fusable = "STRING", False
                elif first in _NAME_STARTS:
                    token, fusable = "NAME", first in _NAME_VALUE_STARTS
                else:
                    token, fusable = "NUMBER", not value.isdigit()
                at = m.start(3)
                if (fusable and _field_follows(text, m.end())) or (
                    key[0] in _NAME_VALUE_STARTS and key not in names
                ):
                    # The name or the value may be a fused one: the plain tokens split it.
                    if run:
                        yield _scalars(run)
                        run = []
                    yield from self._lex_plain(text, start, m.end(), line, line_start)
                    continue
                item = Tok(token, value, at, line, at - line_start + 1)
                name = Tok("NAME", key, start, line, start - line_start + 1)
                run.append((name, True, [item] if token == "STRING" else item))
                continue
            if kind in ignore or kind == "_END":
                continue
            if run:
                if kind == "STRING" and run[-1][2].__class__ is list:
                    # An adjacent string continues the last value: that field is not folded.
                    name, _, value_toks = run.pop()
                    if run:
                        yield _scalars(run)
                    yield name
                    yield _colon_after(text, name)
                    yield value_toks[0]
                else:
                    yield _scalars(run)
                run = []
            if kind == "OPEN":
                key = m.group(5)
                if key[0] in _NAME_VALUE_STARTS and key not in names:
                    yield from self._lex_plain(text, start, m.end(), line, line_start)
                    continue
                brace = m.end() - 1
                yield Tok(
                    "OPEN",
                    (  # type: ignore[arg-type]
                        Tok("NAME", key, start, line, start - line_start + 1),
                        m.start(6) >= 0,
                        Tok("LBRACE", "{", brace, line, brace - line_start + 1),
                    ),
                    start,
                    line,
                    start - line_start + 1,
                )
                continue
            if kind == "_BAD":
                raise LexError(text, start, line, start - line_start + 1)
            yield from _tokens(
                text, kind, m.group(kind), start, m.end(), line, start - line_start + 1
            )
        if run:
            yield _scalars(run)


def _tokens(
    text: str, kind: Any, value: str, start: int, end: int, line: int, column: int
) -> tuple[Tok, ...]:
    """The token for one match: two where it is a value run into a field name."""
    # Cheap tests first (this runs for every token): a plain integer, or a name that starts
    # neither like true/false nor like an enum value (upper case), is whole.
    fusable = not value.isdigit() if kind == "NUMBER" else value[0] in _NAME_VALUE_STARTS
    if fusable and _field_follows(text, end):
        fused = fused_value(value, line, column)
        if fused is not None:
            at = fused.cut
            return (
                Tok(kind, value[:at], start, line, column),
                Tok("NAME", value[at:], start + at, line, column + at),
            )
    return (Tok(kind, value, start, line, column),)


def _colon_after(text: str, name: Tok) -> Tok:
    """The ':' token after a folded field's name (same line)."""
    at = text.index(":", name.start_pos + len(name.value))
    return Tok("COLON", ":", at, name.line, name.column + at - name.start_pos)


def _scalars(run: list[tuple[Tok, bool, Any]]) -> Tok:
    """The SCALARS token of folded fields: its value is their field tuples."""
    first = run[0][0]
    return Tok("SCALARS", run, first.start_pos, first.line, first.column)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Values run into the next field name (`num_output: 21bias_term: false`, as pasted from web
# pages that lost their newlines). Neither Caffe nor text_format reads these. The lexer splits
# such a token where a number, true/false or an enum value ends and a field name that
# caffe.proto knows begins (parse_text warns), so the file still parses, and `protocaffe fmt`
# writes it out fixed.

_BOOL_WORDS = ("true", "false", "True", "False")
_NAME_VALUE_STARTS = frozenset("tfABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_STARTS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_FIELD_NAME = re.compile(r"[a-zA-Z_][0-9a-zA-Z_]*")
_NUMBER_PREFIX = re.compile(r"[+\-]?(?:[0-9]|\.[0-9])[0-9a-fA-FxX.+\-]*")
_WS = re.compile(r"\s*")


class FusedValue(NamedTuple):
    """A token read as a value run into a field name: where it is and where it splits."""

    text: str
    line: int
    column: int
    cut: int  # where the field name begins
    known: tuple[int, ...]  # every offset where a field name caffe.proto knows begins

    @property
    def shown(self) -> str:
        return f"{self.text[: self.cut]} {self.text[self.cut :]}"


# The fused tokens lexed while parse_text runs, by position (the recovering parser lexes a
# part of the file more than once).
_fused_seen: ContextVar[dict[tuple[int, int], FusedValue] | None] = ContextVar(
    "fused_seen", default=None
)
# Whether the lexer folds runs of scalar fields (parse_text's first try; see `_Lexer`).
_folding: ContextVar[bool] = ContextVar("folding", default=False)


def _field_follows(text: str, end: int) -> bool:
    """Whether ':' or a block follows offset `end` (then the token before was a field name)."""
    after = _WS.match(text, end).end()  # type: ignore[union-attr]
    return text[after : after + 1] in (":", "{", "<")


@cache
def _known_field_names() -> frozenset[str]:
    names: set[str] = set()
    todo = list(_caffe_pb2().DESCRIPTOR.message_types_by_name.values())
    while todo:
        d = todo.pop()
        names.update(d.fields_by_name)
        todo.extend(d.nested_types)
    return frozenset(names)


@cache
def _known_enum_values() -> frozenset[str]:
    names: set[str] = set()
    todo = list(_caffe_pb2().DESCRIPTOR.message_types_by_name.values())
    names.update(*(e.values_by_name for e in _caffe_pb2().DESCRIPTOR.enum_types_by_name.values()))
    while todo:
        d = todo.pop()
        for e in d.enum_types:
            names.update(e.values_by_name)
        todo.extend(d.nested_types)
    return frozenset(names)


def _is_value(text: str) -> bool:
    """Whether `text` reads as a value: a whole number or float (text_format's rules),
    true/false, or an enum value caffe.proto names (MAX, TEST, ...)."""
    if text in _BOOL_WORDS or text in _known_enum_values():
        return True
    if not _NUMBER_PREFIX.fullmatch(text):
        return False
    for parse in (parse_int, parse_float):
        try:
            parse(text)
            return True
        except BadValue:
            pass
    return False


def fused_value(value: str, line: int, column: int) -> FusedValue | None:
    """How a token written where a field name belongs splits into a value and a field name
    (None: it does not). Without a known field name there, it splits after the longest value,
    and the schema check reports the unknown name."""
    names = _known_field_names()
    if value in names:
        return None
    cuts = [
        i for i in range(1, len(value)) if _FIELD_NAME.fullmatch(value, i) and _is_value(value[:i])
    ]
    if not cuts:
        return None
    known = tuple(i for i in cuts if value[i:] in names)
    fused = FusedValue(value, line, column, known[0] if known else cuts[-1], known)
    seen = _fused_seen.get()
    if seen is not None:
        seen.setdefault((line, column), fused)
    return fused


# Tree shapes produced by the parser callbacks:
#   field   = (name: Tok, colon: bool (whether ':' is written), value)
#   value   = Tok (NUMBER or NAME) | list[Tok] (adjacent STRINGs)
#           | ("{", fields, open: Tok, close: Tok) | ("[", items, open: Tok, close: Tok)
MSG, LIST = "{", "["


class _Callbacks:
    """Inlined into the LALR parser: each reduction builds a tuple, never a lark Tree."""

    @staticmethod
    def start(c: list) -> list:
        return c[0]

    @staticmethod
    def fields(c: list) -> list:
        if c:
            c[0].append(c[1])
            return c[0]
        return []

    @staticmethod
    def field(c: list) -> tuple:
        return (c[0], c[1] is not None, c[2])

    @staticmethod
    def scalars(c: list) -> list:
        c[0].extend(c[1].value)
        return c[0]

    @staticmethod
    def string(c: list) -> list:
        return c

    @staticmethod
    def message(c: list) -> tuple:
        return (MSG, c[1], c[0], c[2])

    @staticmethod
    def block(c: list) -> tuple:
        name, colon, brace = c[0].value
        return (name, colon, (MSG, c[1], brace, c[2]))

    @staticmethod
    def list(c: list) -> tuple:
        return (LIST, [x for x in c[1:-1] if x is not None], c[0], c[-1])


@cache
def _parser() -> Lark:
    grammar = Path(__file__).with_name("prototxt.lark").read_text()
    return Lark(
        grammar,
        parser="lalr",
        lexer=_Lexer,
        transformer=_Callbacks(),
        maybe_placeholders=True,
        cache=True,  # the LALR tables, in the temp dir keyed by grammar and lark version
    )


@cache
def _lexer() -> _Lexer:
    """A standalone lexer for the grammar's terminals (the parser holds its own)."""
    return _Lexer(_parser().lexer_conf)


def tokenize(text: str) -> Iterator[Tok]:
    """The token stream of `text` (raises LexError)."""
    return _lexer().lex(text)


def comment_tokens(text: str) -> Iterator[Tok]:
    """The `#` comments of `text`, as COMMENT tokens (none after a character that does not lex)."""
    line, line_start = 1, 0
    for m in _lexer().regex.finditer(text):
        kind = m.lastgroup
        if kind == "_BAD":
            return
        if kind == "COMMENT":
            yield Tok("COMMENT", m.group(), m.start(), line, m.start() - line_start + 1)
        elif kind == "WS" or kind == "STRING":
            newlines = m.group().count("\n")
            if newlines:
                line += newlines
                line_start = m.start() + m.group().rindex("\n") + 1


def parse_tree(text: str) -> list:
    """Text → field tuples (raises LexError or lark's UnexpectedInput)."""
    return _parser().parse(text)


# ---------------------------------------------------------------------------------------------
# Values


class BadValue(Exception):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def _quoted(text: str) -> str:
    """A value quoted in a message; a huge one is cut short (the caret shows where it is)."""
    return f"'{text}'" if len(text) <= 40 else f"'{text[:12]}...' ({len(text)} characters)"


_C_OCTAL = re.compile(r"(-?)0(\d+)$")
_OCTAL_FLOAT = re.compile(r"-?0[0-9]+")
_INF = re.compile(r"-?inf(?:inity)?f?$", re.IGNORECASE)
_NAN = re.compile(r"nanf?$", re.IGNORECASE)
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: ("int32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: ("sint32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: ("sfixed32", -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: ("int64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: ("sint64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: ("sfixed64", -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: ("uint32", 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: ("fixed32", 0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: ("uint64", 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: ("fixed64", 0, 2**64 - 1),
}
_BOOLS = {"true": True, "t": True, "1": True, "True": True}
_BOOLS.update({"false": False, "f": False, "0": False, "False": False})


def _scalar_text(v: Any, what: str) -> str:
    """The text of a bare (unquoted) value; quoted strings are an error for non-string types."""
    if v.__class__ is Tok:
        return v.value
    text = "".join(t.value for t in v)
    raise BadValue(
        f"expected {what}, found the string {text}",
        "remove the quotes" if len(v) == 1 and _unquote(v).strip() else None,
    )


# More digits than any 64-bit integer has, in any base text_format reads (octal: 22). Python
# refuses to convert over 4300 digits; a net has no use for anything near.
_MAX_INT_CHARS = 40


def parse_int(text: str) -> int:
    """An integer as text_format reads it: decimal, 0x hex, C octal (017), optional sign."""
    if len(text) > _MAX_INT_CHARS:
        raise BadValue(f"{_quoted(text)} is out of range for any field")
    if text.isdigit() and (text[0] != "0" or len(text) == 1):
        return int(text)
    m = _C_OCTAL.match(text)
    try:
        return int(f"{m.group(1)}0o{m.group(2)}" if m else text, 0)
    except ValueError:
        raise BadValue(f"expected an integer, found {_quoted(text)}") from None


def parse_float(text: str) -> float:
    """A float as text_format reads it: also inf/-inf/infinity/nan and a trailing f/F."""
    if _OCTAL_FLOAT.match(text):
        raise BadValue(f"invalid number {_quoted(text)} (a leading 0 makes it octal)")
    try:
        return float(text)
    except ValueError:
        if _INF.match(text):
            return float("-inf") if text[0] == "-" else float("inf")
        if _NAN.match(text):
            return float("nan")
        try:
            return float(text.rstrip("fF"))
        except ValueError:
            raise BadValue(f"expected a number, found {_quoted(text)}") from None


def _int_converter(type_name: str, lo: int, hi: int) -> Callable[[Any], int]:
    what = f"an integer ({type_name})"

    def convert(v: Any) -> int:
        text = _scalar_text(v, what)
        if len(text) > _MAX_INT_CHARS:
            raise BadValue(f"{_quoted(text)} is out of range for {type_name} ({lo} to {hi})")
        try:
            n = parse_int(text)
        except BadValue:
            hint = None
            try:
                x = parse_float(text)
                if x == x and abs(x) != float("inf"):
                    hint = f"this field is {type_name}; write a whole number"
                    if x == int(x):
                        hint += f" ({int(x)})"
            except BadValue:
                pass
            raise BadValue(f"expected {what}, found {_quoted(text)}", hint) from None
        if not lo <= n <= hi:
            raise BadValue(f"{text} is out of range for {type_name} ({lo} to {hi})")
        return n

    return convert


def _convert_float(v: Any) -> float:
    return parse_float(_scalar_text(v, "a number"))


def _convert_bool(v: Any) -> bool:
    text = _scalar_text(v, "true or false")
    try:
        return _BOOLS[text]
    except KeyError:
        hint = f"write {text.lower()}" if text.lower() in _BOOLS else None
        raise BadValue(f"expected true or false, found {_quoted(text)}", hint) from None


def _unquote(toks: list[Tok]) -> str:
    return "".join(t.value[1:-1] for t in toks)


def _string_bytes(v: Any) -> bytes:
    if v.__class__ is Tok:
        raise BadValue(
            f"expected a quoted string, found '{v.value}'", f'write it in quotes: "{v.value}"'
        )
    body = _unquote(v)
    if "\\" not in body:
        return body.encode("utf-8")
    try:
        with warnings.catch_warnings():  # unknown escapes: reported by _Builder.convert
            warnings.simplefilter("ignore", DeprecationWarning)
            return text_encoding.CUnescape(body)
    except ValueError as err:
        raise BadValue(f"invalid escape sequence in string: {err}") from None


# Escapes that text_format's CUnescape (Python's unicode_escape) understands; others stay as
# written, backslash included.
_KNOWN_ESCAPES = frozenset("\\'\"abfnrtv01234567xNuU")
_ESCAPE = re.compile(r"\\(.)")


def unknown_escapes(toks: list[Tok]) -> list[str]:
    return [
        m.group(0)
        for t in toks
        for m in _ESCAPE.finditer(t.value[1:-1])
        if m.group(1) not in _KNOWN_ESCAPES
    ]


def _convert_string(v: Any) -> str:
    if v.__class__ is list and len(v) == 1 and "\\" not in v[0].value:
        return v[0].value[1:-1]  # the common case: one plain string
    try:
        return _string_bytes(v).decode("utf-8")
    except UnicodeDecodeError:
        raise BadValue("string escapes do not form valid UTF-8 text") from None


_MAX_LISTED = 12


class ForkValue(NamedTuple):
    """A value that a fork keeps in another field: a fork's V1 `type:` name (INTERP) is stored
    in V1LayerParameter's fork_type (protocaffe/layers/deeplab.py) as its V2 type string."""

    field: str
    value: Any


def _enum_converter(fd: FieldDescriptor) -> Callable[[Any], int | ForkValue]:
    enum = fd.enum_type
    names = enum.values_by_name
    numbers = enum.values_by_number
    valid = ", ".join(v.name for v in enum.values[:_MAX_LISTED])
    valid = f"valid: {valid}" if len(enum.values) <= _MAX_LISTED else f"{len(enum.values)} values"

    def convert(v: Any) -> int:
        if v.__class__ is list:
            text = _unquote(v)
            hint = "enum values are written without quotes"
            if text in names:
                hint += f": {text}"
            raise BadValue(f"expected a {enum.name} value, found a string", hint)
        text = v.value
        hit = names.get(text)
        if hit is not None:
            return hit.number
        if v.type == "NUMBER":
            try:
                number = int(text, 0)
            except ValueError:
                number = None
            if number in numbers:
                return number
        hint = suggestion_hint(text, names)
        fork = dialects.origin_of_v1_type(text)
        if fork is not None and "fork_type" in schema.fields_by_name(fd.containing_type):
            return ForkValue("fork_type", fork[0])  # the upgrade makes it the V2 type
        if fork is not None:
            hint = f"{text} is from {fork[1]}, not BVLC caffe.proto"
        raise BadValue(f"{_quoted(text)} is not a {enum.name} value ({valid})", hint)

    return convert


def _type_name(fd: FieldDescriptor) -> str:
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return fd.message_type.name
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return fd.enum_type.name
    return _SCALAR_NAMES.get(fd.type, "value")


_SCALAR_NAMES = {t: name for t, (name, _, _) in _INT_RANGES.items()}
_SCALAR_NAMES.update(
    {
        FieldDescriptor.TYPE_FLOAT: "float",
        FieldDescriptor.TYPE_DOUBLE: "double",
        FieldDescriptor.TYPE_BOOL: "bool",
        FieldDescriptor.TYPE_STRING: "string",
        FieldDescriptor.TYPE_BYTES: "bytes",
    }
)


class FieldPlan(NamedTuple):
    """What the builder needs to know about one field, computed once per message type."""

    name: str
    fd: FieldDescriptor
    repeated: bool
    is_message: bool
    convert: Callable[[Any], Any] | None
    type_name: str


def _converter(fd: FieldDescriptor) -> Callable[[Any], Any]:
    t = fd.type
    if t in _INT_RANGES:
        return _int_converter(*_INT_RANGES[t])
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _convert_float
    if t == FieldDescriptor.TYPE_BOOL:
        return _convert_bool
    if t == FieldDescriptor.TYPE_STRING:
        return _convert_string
    if t == FieldDescriptor.TYPE_BYTES:
        return _string_bytes
    if t == FieldDescriptor.TYPE_ENUM:
        return _enum_converter(fd)
    raise TypeError(f"unsupported field type {t} for {fd.full_name}")  # groups: not in Caffe


def plan_for(descriptor: Descriptor) -> dict[str, FieldPlan]:
    """The plans of `descriptor`'s fields, with the fork fields declared so far (a name it
    lacks: `schema.load_declarations()`, then ask again)."""
    return _plans(descriptor, schema.generation())


@cache
def _plans(descriptor: Descriptor, _generation: int) -> dict[str, FieldPlan]:
    plans = {}
    for fd in schema.declared_fields(descriptor).values():
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        plans[fd.name] = FieldPlan(
            fd.name,
            fd,
            fd.is_repeated,
            is_message,
            None if is_message else _converter(fd),
            _type_name(fd),
        )
    return plans


# ---------------------------------------------------------------------------------------------
# Building messages


def _store(msg: Message, plan: FieldPlan, converted: Any) -> None:
    """Set a singular scalar field (a fork's value may go to another field)."""
    if converted.__class__ is ForkValue:
        schema.set_field(msg, converted.field, converted.value)
    elif plan.fd.is_extension:
        msg.Extensions[plan.fd] = converted  # type: ignore[index]
    else:
        setattr(msg, plan.name, converted)


def _region(first: Tok, last: Tok) -> tuple[int, int, int, int]:
    """The SourceMap region from `first` through `last`."""
    return (first.line, first.column, last.line, last.column + len(last.value))


def _end_of(value: Any) -> Tok:
    """The last token of a value."""
    if value.__class__ is Tok:
        return value
    if value.__class__ is list:
        return value[-1]
    return value[3]


def _start_of(value: Any) -> Tok:
    if value.__class__ is Tok:
        return value
    if value.__class__ is list:
        return value[0]
    return value[2]


class _Builder:
    """Fills a message from field tuples, recording spans and collecting every error."""

    def __init__(self, source: SourceFile):
        self.source = source
        self.source_map = SourceMap(source)
        self.diags = Diagnostics()

    def span(self, first: Tok, last: Tok) -> Span:
        return Span(self.source, first.line, first.column, last.line, last.column + len(last.value))

    def error(self, message: str, first: Tok, last: Tok | None = None, hint: str | None = None):
        self.diags.error(message, self.span(first, last or first), hint)

    def fill(self, msg: Message, fields: list, path: FieldPath) -> None:
        plans = plan_for(msg.DESCRIPTOR)
        spans, names = self.source_map.spans, self.source_map.names
        seen: dict[str, Tok] = {}  # singular fields already set -> their name token
        counts: dict[str, int] = {}  # repeated fields -> next index
        pending: dict[str, list] = {}  # repeated scalars, extended in one call at the end
        source = self.source
        for name_tok, colon, value in fields:
            name = name_tok.value
            plan = plans.get(name)
            if plan is None:
                # A fork field, perhaps, of a layer file not imported yet.
                schema.load_declarations()
                plans = plan_for(msg.DESCRIPTOR)
                plan = plans.get(name)
            if plan is None:
                self.unknown_field(msg.DESCRIPTOR, name_tok, fields, value)
                continue
            if (
                colon
                and value.__class__ is not tuple
                and not plan.repeated
                and not plan.is_message
                and name not in seen
            ):
                # Most fields: `name: value`, once. The same as the general case below does.
                seen[name] = name_tok
                line, column = name_tok.line, name_tok.column
                last = value if value.__class__ is Tok else value[-1]
                field_path = (*path, name)
                spans[field_path] = (line, column, last.line, last.column + len(last.value))
                names[field_path] = (line, column, line, column + len(name))
                converted = self.convert(plan, value)
                if converted is not _FAILED:
                    _store(msg, plan, converted)
                continue
            if value.__class__ is tuple and value[0] is LIST:
                if not plan.repeated:
                    self.error(
                        f"'{name}' is not a repeated field; it takes one {plan.type_name}, "
                        "not a [...] list",
                        value[2],
                        value[3],
                    )
                    continue
                items = value[1]
            else:
                items = (value,)
            if (
                not colon
                and not plan.is_message
                and (value.__class__ is not tuple or value[0] is LIST)
            ):
                shown = "[...]" if value.__class__ is tuple else _start_of(value).value
                self.error(
                    f"expected ':' after '{name}'", name_tok, hint=f"write '{name}: {shown}'"
                )
                continue
            # Where the name and the whole field are (SourceMap regions: Spans when asked for).
            line, column = name_tok.line, name_tok.column
            name_span = (line, column, line, column + len(name))
            last = _end_of(value)
            whole = (line, column, last.line, last.column + len(last.value))
            field_path = (*path, name)
            if not plan.repeated:
                first = seen.get(name)
                if first is not None:
                    d = self.diags.error(
                        f"'{name}' is given more than once, but it is not a repeated field",
                        Span(source, *name_span),
                        f"remove one of them (the first is at line {first.line})",
                    )
                    d.notes.append(f"{self.span(first, first)}: first here")
                    continue
                seen[name] = name_tok
                spans[field_path] = whole
                names[field_path] = name_span
                if plan.is_message:
                    if not self.check_message(plan, value):
                        continue
                    sub = getattr(msg, name)
                    sub.SetInParent()
                    self.fill(sub, value[1], field_path)
                    continue
                converted = self.convert(plan, value)
                if converted is not _FAILED:
                    _store(msg, plan, converted)
                continue
            # Repeated: every element gets its own path; the bare field path names the first.
            if field_path not in spans:
                spans[field_path] = whole
                names[field_path] = name_span
            index = counts.get(name, 0)
            if plan.is_message:
                container = getattr(msg, name)
                for item in items:
                    if not self.check_message(plan, item):
                        continue
                    sub_path = (*field_path, index)
                    spans[sub_path] = whole if item is value else _region(item[2], item[3])
                    names[sub_path] = name_span
                    self.fill(container.add(), item[1], sub_path)
                    index += 1
            else:
                out = pending.get(name)
                if out is None:
                    out = pending[name] = []
                for item in items:
                    converted = self.convert(plan, item)
                    if converted is _FAILED:
                        continue
                    sub_path = (*field_path, index)
                    spans[sub_path] = (
                        whole if item is value else _region(_start_of(item), _end_of(item))
                    )
                    names[sub_path] = name_span
                    out.append(converted)
                    index += 1
            counts[name] = index
        for name, values in pending.items():
            getattr(msg, name).extend(values)

    def check_message(self, plan: FieldPlan, value: Any) -> bool:
        if value.__class__ is tuple and value[0] is MSG:
            return True
        first = _start_of(value)
        self.error(
            f"'{plan.name}' is a message ({plan.type_name}); expected '{{' but found "
            f"{_describe(first)}",
            first,
            _end_of(value),
            hint=f"write '{plan.name} {{ ... }}'",
        )
        return False

    def convert(self, plan: FieldPlan, value: Any) -> Any:
        if value.__class__ is tuple:  # a message where a scalar belongs
            self.error(
                f"'{plan.name}' takes a {plan.type_name} value, not a message block",
                value[2],
                value[3],
            )
            return _FAILED
        try:
            converted = plan.convert(value)  # type: ignore[misc]
        except BadValue as err:
            self.error(
                f"invalid value for '{plan.name}' ({plan.type_name}): {err.message}",
                _start_of(value),
                _end_of(value),
                err.hint,
            )
            return _FAILED
        if value.__class__ is list and "\\" in value[0].value:
            odd = unknown_escapes(value)
            if odd:
                self.diags.warning(
                    f"unknown escape sequence '{odd[0]}' in a string; it is kept as written",
                    self.span(value[0], value[-1]),
                    "write '\\\\' for a backslash (or use '/' in paths)",
                )
        return converted

    def unknown_field(
        self, descriptor: Descriptor, name_tok: Tok, siblings: list, value: Any = None
    ) -> None:
        name = name_tok.value
        self.error(
            f"unknown field '{name}' in {descriptor.name}",
            name_tok,
            hint=unknown_field_hint(descriptor, name, siblings, value),
        )


_FAILED = object()


def _describe(tok: Tok) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type == "STRING":
        return f"the string {tok.value}"
    return f"'{tok.value}'"


# ---------------------------------------------------------------------------------------------
# Hints for unknown fields

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _param_for_type(layer_type: str) -> str:
    """'InnerProduct' or V1 'INNER_PRODUCT' -> 'inner_product_param'."""
    return _CAMEL.sub("_", layer_type).lower() + "_param"


def _fits(fd: FieldDescriptor, value: Any) -> bool:
    """Whether `value` (None: unknown) has the shape `fd` takes: a block for a message field."""
    if value is None:
        return True
    if value.__class__ is tuple and value[0] is LIST:
        return fd.is_repeated and all(_fits(fd, item) for item in value[1])
    is_block = value.__class__ is tuple and value[0] is MSG
    return is_block == (fd.type == FieldDescriptor.TYPE_MESSAGE)


def unknown_field_hint(
    descriptor: Descriptor, name: str, siblings: list, value: Any = None
) -> str | None:
    """Did-you-mean, the sub-message the field belongs in, or the fork that defines it.

    `value` (the tree value written for the field) keeps a block from being sent to a scalar
    field of the same name (python_param.layer is a string; `layer { layer { ... } } }` is V0).
    """
    fork = dialects.origin_of_field(descriptor.name, name)
    if fork is not None:
        return f"'{name}' is from {fork}, not BVLC caffe.proto; protocaffe does not implement it"
    is_block = value.__class__ is tuple and value[0] is MSG
    if descriptor.name == "LayerParameter" and name == "layer" and is_block:
        return (
            "a layer does not nest inside a layer; the V0 format nests 'layer { ... }' inside "
            "'layers { ... }', the current format writes the layer's fields in 'layer { ... }'"
        )
    homes = [
        fd.name
        for fd in descriptor.fields
        if fd.type == FieldDescriptor.TYPE_MESSAGE
        and name in fd.message_type.fields_by_name
        and _fits(fd.message_type.fields_by_name[name], value)
    ]
    if homes:
        layer_type = next(
            (
                v.value.strip("\"'") if v.__class__ is Tok else _unquote(v)
                for n, _, v in siblings
                if n.value == "type" and v.__class__ in (Tok, list)
            ),
            None,
        )
        if layer_type is not None and _param_for_type(layer_type) in homes:
            home = _param_for_type(layer_type)
            written = f"{name} {{ ... }}" if is_block else f"{name}: ..."
            return f"'{name}' belongs in {home}: write '{home} {{ {written} }}'"
        shown = " or ".join(homes[:4]) + (" ..." if len(homes) > 4 else "")
        return f"'{name}' is not a field of {descriptor.name}; it belongs in {shown}"
    return suggestion_hint(name, descriptor.fields_by_name)


# ---------------------------------------------------------------------------------------------
# Syntax errors

_CLOSERS = {"{": "}", "<": ">", "[": "]"}
_TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "COLON": "':'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LANGLE": "'<'",
    "RANGLE": "'>'",
    "LBRACKET": "'['",
    "RBRACKET": "']'",
    "COMMA": "','",
    "SEMICOLON": "';'",
    "$END": "the end of the file",
}


def _expected_words(expected: set[str], opener: Tok | None) -> str:
    """What the parser wanted, phrased for where it is (LALR merges the lookaheads of states
    that look alike, so the raw set also names closers that cannot apply here)."""
    closer = f"'{_CLOSERS[opener.value]}'" if opener is not None else "the end of the file"
    if {"NUMBER", "STRING", "LBRACE"} <= expected:
        words = ["a value"]
    elif "NAME" in expected and "NUMBER" not in expected:
        words = ["a field name", closer]
    else:
        words = [_TOKEN_WORDS.get(t, t) for t in sorted(expected)]
    return ", ".join(words[:-1]) + (" or " if len(words) > 1 else "") + words[-1]


def _lex_error(err: LexError, source: SourceFile) -> Diagnostic:
    text, pos = err.text, err.pos
    char = text[pos]
    at = Span(source, err.line, err.column, err.line, err.column + 1)
    if char in "\"'":
        line_end = text.find("\n", pos)
        line_end = len(text) if line_end < 0 else line_end
        whole = Span(source, err.line, err.column, err.line, err.column + line_end - pos)
        return Diagnostic(
            "error",
            "unterminated string",
            whole,
            f"close it with {char} on the same line (a string cannot span lines)",
        )
    hint, what = None, ""
    placeholder = re.match(r"\$\{\w+\}", text[pos:])
    if placeholder:
        # DeepLab's configs are shell templates its scripts fill in; no Caffe dialect reads them.
        what = (
            f": {placeholder.group()} is a shell-template placeholder, which no Caffe dialect's"
            " prototxt (BVLC or any fork) accepts"
        )
        hint = "this file is a template: substitute its ${...} placeholders before compiling"
    elif char == "$":
        hint = "this looks like a template placeholder (${...}); substitute it before parsing"
    elif text.startswith(("//", "/*"), pos):
        hint = "prototxt comments start with '#'"
    elif char == "=":
        hint = "separate a field name from its value with ':'"
    elif char == "\ufeff":
        hint = "a byte-order mark in the middle of the file; remove it"
    if char.isprintable():
        message = f"unexpected character '{char}'{what}"
    else:
        message = f"unexpected character U+{ord(char):04X}"
        hint = hint or "control characters are not allowed outside strings (is this a text file?)"
    return Diagnostic("error", message, at, hint)


def _syntax_error(err: UnexpectedToken, text: str, source: SourceFile) -> Diagnostic:
    tok = err.token
    end = tok.type == "$END"
    # Stop at the error token: the text after it may not even lex.
    before = list(takewhile(lambda t: end or t.start_pos < tok.start_pos, tokenize(text)))
    stack: list[Tok] = []
    for t in before:
        if t.value in _CLOSERS:
            stack.append(t)
        elif stack and t.value == _CLOSERS.get(stack[-1].value):
            stack.pop()
    prev = before[-1] if before else None
    prev2 = before[-2] if len(before) > 1 else None

    def at(t: Tok) -> Span:
        return Span(source, t.line, t.column, t.line, t.column + max(len(t.value), 1))

    def missing_value(colon: Tok, name: Tok | None) -> Diagnostic:
        what = f" for '{name.value}'" if name is not None and name.type == "NAME" else ""
        return Diagnostic(
            "error", f"missing value{what} after ':'", at(colon), "write a value after ':'"
        )

    if prev is not None and prev.type == "COLON" and tok.type in ("RBRACE", "RANGLE", "$END"):
        return missing_value(prev, prev2)
    if (
        prev is not None
        and prev.type == "NAME"
        and prev2 is not None
        and prev2.type == "COLON"
        and (tok.type == "COLON" or (tok.type in ("LBRACE", "LANGLE") and prev2.line < prev.line))
    ):
        # `name:` with its value missing took the next field's name (or the next line's block
        # name) as the value.
        return missing_value(prev2, before[-3] if len(before) > 2 else None)
    if end and stack:
        opener = stack[-1]
        return Diagnostic(
            "error",
            f"unterminated '{opener.value}': the file ends before its closing "
            f"'{_CLOSERS[opener.value]}'",
            at(opener),
            f"add the missing '{_CLOSERS[opener.value]}' (this is the innermost block left open)",
        )
    if tok.type in ("RBRACE", "RANGLE", "RBRACKET"):
        if not stack:
            return Diagnostic(
                "error",
                f"unmatched '{tok.value}'",
                at(tok),
                "remove it, or look above for a block closed twice",
            )
        opener = stack[-1]
        if _CLOSERS[opener.value] != tok.value:
            return Diagnostic(
                "error",
                f"'{tok.value}' does not close the '{opener.value}' opened at line "
                f"{opener.line}, column {opener.column}",
                at(tok),
                f"close it with '{_CLOSERS[opener.value]}'",
            )
    expected = set(err.expected)
    opener = stack[-1] if stack else None
    if opener is not None and opener.value == "[" and prev is not None and prev.value == ",":
        return Diagnostic(
            "error",
            f"unexpected {_describe(tok)} after ','; expected a list item",
            at(tok),
            "remove the trailing ','" if tok.value == "]" else None,
        )
    if opener is not None and opener.value == "[" and prev is not None and prev.value != "[":
        return Diagnostic(
            "error",
            f"unexpected {_describe(tok)} in a list; expected ',' or ']'",
            at(tok),
            "separate list items with ','",
        )
    message = f"unexpected {_describe(tok)}; expected {_expected_words(expected, opener)}"
    hint = None
    if "NAME" in expected and tok.type in ("NUMBER", "STRING") and "NUMBER" not in expected:
        hint = (
            "a non-repeated field takes one value; a repeated field is written once per value "
            "('dim: 1 dim: 3') or as a list ('dim: [1, 3]')"
        )
    return Diagnostic("error", message, at(tok), hint)


# ---------------------------------------------------------------------------------------------
# Entry point


def _caffe_pb2() -> Any:
    from protocaffe.proto import caffe_pb2

    return caffe_pb2


def message_class(message_type: type[Message] | str) -> type[Message]:
    """'net', 'solver', a caffe_pb2 message name, or a message class -> the class."""
    if isinstance(message_type, str):
        name = {"net": "NetParameter", "solver": "SolverParameter"}.get(message_type, message_type)
        return getattr(_caffe_pb2(), name)
    return message_type


def detect_message_type(tree: list) -> type[Message]:
    """NetParameter or SolverParameter, judged from the top-level field names."""
    pb2 = _caffe_pb2()
    net = pb2.NetParameter.DESCRIPTOR.fields_by_name
    solver = pb2.SolverParameter.DESCRIPTOR.fields_by_name
    names = {f[0].value for f in tree}
    solver_votes = sum(1 for n in names if n in solver and n not in net)
    net_votes = sum(1 for n in names if n in net and n not in solver)
    return pb2.SolverParameter if solver_votes > net_votes else pb2.NetParameter


def parse_text(
    text: str,
    path: str = "<string>",
    message_type: type[Message] | str | None = None,
    source: SourceFile | None = None,
) -> ParsedFile:
    """Parse prototxt `text` into a message (NetParameter or SolverParameter unless forced).

    Raises CompileError with every problem found: the syntax errors (after each one the parser
    resynchronises at the next top-level block, see `parse_tree_recovering`) and the schema
    errors (unknown fields, bad values, duplicates) of every part that parsed.
    """
    source = source or SourceFile(path, text)
    cls = message_class(message_type) if message_type is not None else None
    fused: dict[tuple[int, int], FusedValue] = {}
    reset = _fused_seen.set(fused)
    try:
        folding = _folding.set(True)
        try:
            tree = parse_tree(text)
        finally:
            _folding.reset(folding)
        syntax: list[Diagnostic] = []
    except (LexError, UnexpectedInput):  # the slow path: recover, then check the good parts
        fused.clear()  # what the plain re-parse finds, in its order
        tree, syntax = parse_tree_recovering(text, source, cls)
    finally:
        _fused_seen.reset(reset)
    syntax[:0] = [_fused_diagnostic(f, source, i == 0) for i, f in enumerate(fused.values())]
    if cls is None:
        cls = detect_message_type(tree)
    msg = cls()
    builder = _Builder(source)
    try:
        builder.fill(msg, tree, ())
    except RecursionError:
        span = Span(source, 1, 1, 1, 1)
        raise CompileError([Diagnostic("error", "messages are nested too deeply", span)]) from None
    found = [*syntax, *builder.diags]
    if builder.diags.has_errors and isinstance(msg, _caffe_pb2().NetParameter):
        # The file stops here, so the layer types it uses are checked now: every unknown
        # construct of a fork file is then listed at once.
        found += _unknown_layer_types(msg, builder.source_map)
    if len(found) > len(builder.diags):
        found.sort(key=lambda d: (d.span.line, d.span.col) if d.span else (1 << 62, 0))
    if any(d.severity == "error" for d in found):
        raise CompileError(found)
    return ParsedFile(msg, builder.source_map, source, found)


def _unknown_layer_types(net: Message, source_map: SourceMap) -> list[Diagnostic]:
    from protocaffe.ir.build import unknown_type_error
    from protocaffe.layers import REGISTRY

    return [
        unknown_type_error(layer.type, layer.name, source_map.span(("layer", i, "type")))
        for i, layer in enumerate(net.layer)  # type: ignore[attr-defined]
        if layer.type and layer.type not in REGISTRY
    ]


def _fused_diagnostic(fused: FusedValue, source: SourceFile, first: bool) -> Diagnostic:
    text = fused.text
    span = Span(source, fused.line, fused.column, fused.line, fused.column + len(text))
    if len(fused.known) > 1:
        ways = " or ".join(f"'{text[:i]} {text[i:]}'" for i in fused.known)
        return Diagnostic(
            "error",
            f"'{text}' runs a value into a field name, and it splits more than one way: {ways}",
            span,
            "put a space between the value and the field name you mean",
        )
    return Diagnostic(
        "warning",
        f"'{text}' runs a value into the next field name; read as '{fused.shown}'",
        span,
        f"put a space or a newline after the value; `protocaffe fmt --in-place {source.path}` "
        "writes the fixed file"
        if first
        else None,
    )


# ---------------------------------------------------------------------------------------------
# Syntax-error recovery (panic mode, at top-level blocks)

MAX_SYNTAX_ERRORS = 50
_OPENERS = frozenset(("LBRACE", "LANGLE", "LBRACKET"))
_CLOSER_TYPES = frozenset(("RBRACE", "RANGLE", "RBRACKET"))
# A block statement that starts a line: `layer {`, `layers <`, `net_param: {`.
_RESYNC = re.compile(r"^([a-zA-Z_][0-9a-zA-Z_+\-]*)[ \t]*(?::[ \t]*)?[{<]", re.MULTILINE)


def parse_tree_recovering(
    text: str, source: SourceFile, message_type: type[Message] | None = None
) -> tuple[list, list[Diagnostic]]:
    """Text -> (field tuples of the parts that parse, syntax-error diagnostics).

    Panic mode at top-level blocks. A *sync line* is a line that opens, in column 1, a block
    for a message field of the top-level message (`layer {`, `layers {`, `input_shape {`).
    After a syntax error, everything from the last sync line at or before the error (or the
    statement holding it, or the start of the file) is dropped, the statements before it are
    kept, and parsing resumes at the next sync line after the error that cannot be nested in
    the dropped statement (V0's `layers { layer { ... } }` must not resume at the inner
    `layer`). Where there is none, parsing stops and the rest of the file goes unchecked: a
    guess could only add errors that the recovery made up.
    """
    tops = [message_type.DESCRIPTOR] if message_type is not None else _top_descriptors()
    sync_names = frozenset().union(*(_message_fields(d) for d in tops))
    tree: list = []
    diags: list[Diagnostic] = []
    segment = text  # the text still to parse; lines already dealt with are blanked to "\n"s
    while True:
        try:
            tree.extend(parse_tree(segment))
            break
        except LexError as err:
            diags.append(_lex_error(err, source))
            pos, eof, lexical = err.pos, False, True
        except UnexpectedToken as err:
            diags.append(_syntax_error(err, segment, source))
            eof, lexical = err.token.type == "$END", False
            pos = len(segment) if eof else err.token.start_pos
        except UnexpectedInput as err:  # not raised by this grammar and lexer; a backstop
            span = Span(source, err.line, err.column, err.line, err.column + 1)
            diags.append(Diagnostic("error", "syntax error", span))
            break
        if len(diags) > 1 and _same(diags[-1], diags[-2]):
            diags.pop()  # the recovery did not get past it: a repeat says nothing new
            break
        start, dropped, prev, depth = _statement_at(segment, pos, lexical, sync_names)
        try:
            tree.extend(parse_tree(segment[:start]))  # whole statements: it parses
        except (LexError, UnexpectedInput):
            break
        if len(diags) >= MAX_SYNTAX_ERRORS:
            diags.append(Diagnostic("note", f"stopped after {MAX_SYNTAX_ERRORS} syntax errors"))
            break
        after = start + 1 if eof or prev is None else max(start + 1, prev.start_pos)
        resume = _resume_point(segment, after, dropped, depth > 0, tops, sync_names)
        if resume is None:
            break
        if eof and depth:
            # An unterminated block, reported at the innermost opener. Resume only where the
            # dropped part holds that opener (else the same error comes back) and nothing
            # after the resume point closes a block opened before it.
            span = diags[-1].span
            opener = _offset(segment, span.line, span.col) if span is not None else len(segment)
            if opener >= resume or not _nests_from(segment, resume):
                break
        segment = "\n" * segment.count("\n", 0, resume) + segment[resume:]
    return tree, diags


_NAME_START = re.compile(r"[a-zA-Z_]")


def _statement_at(
    text: str, pos: int, lexical: bool, sync_names: frozenset[str]
) -> tuple[int, list[Tok], Tok | None, int]:
    """Where to drop from, for a syntax error at offset `pos` of `text`.

    Returns (that offset, the name tokens of the top-level statements dropped that may hold
    the error, the token before `pos`, the brace depth at `pos`). `lexical`: the error is a
    character that does not lex. The text before `pos` is known to parse, so a small state
    machine over its tokens finds the top-level statements.
    """
    depth, state = 0, 0  # state at depth 0: 0 expects a field, 1 after its name, 2 after ':'
    current: Tok | None = None  # name token of the last top-level statement begun
    last_block: Tok | None = None  # name token of the last top-level statement with a block
    sync: Tok | None = None  # name token of the last top-level statement on a sync line
    prev: Tok | None = None
    try:
        for t in tokenize(text):
            if t.start_pos >= pos:
                break
            prev = t
            kind = t.type
            if depth:
                if kind in _OPENERS:
                    depth += 1
                elif kind in _CLOSER_TYPES:
                    depth -= 1
                    if not depth:
                        state = 0
                continue
            if kind == "NAME" and state == 0:
                current, state = t, 1
                if t.column == 1 and t.value in sync_names:
                    sync = t
            elif kind == "COLON":
                state = 2
            elif kind in _OPENERS:
                depth, last_block = 1, current
            else:  # a value, ';' or ','
                state = 0
    except LexError:
        pass
    here = text[pos : pos + 1]
    if depth or state:
        statement = current  # the error is inside it
    elif here in ("}", ">", "]"):
        # An unmatched closer: a block above was probably closed early, and the fields after
        # it were read as top-level ones.
        statement = last_block
    elif current is not None and (
        (not lexical and not _NAME_START.match(here))
        or (lexical and prev is not None and prev.end_pos == pos)
    ):
        # A token that cannot start a statement, right after one: that one may have taken
        # the next one's name for its value (`name:` with the value missing); or a bad
        # character stuck to the last value (`name: AlexNet"` lost its opening quote).
        statement = current
    else:  # a bad character where a statement would start: what came before is whole
        return pos, [], prev, 0
    # Back to the last sync line: between it and the error nothing marks a statement
    # boundary that can be trusted (after an early '}' a layer's fields look top-level).
    dropped = [t for t in (sync, statement) if t is not None]
    start = min((t.start_pos for t in dropped), default=0)
    return (0 if sync is None else start), dropped, prev, depth


def _resume_point(
    text: str,
    after: int,
    dropped: list[Tok],
    open_block: bool,
    tops: list[Descriptor],
    sync_names: frozenset[str],
) -> int | None:
    """The first sync line at or after offset `after` that cannot belong to a `dropped`
    statement (judged by name: a field that can be nested in one is passed over; after an
    unknown one with a block still open at the error, none can be trusted)."""
    banned: frozenset[str] = frozenset()
    for statement in dropped:
        fds = [
            d.fields_by_name[statement.value] for d in tops if statement.value in d.fields_by_name
        ]
        for fd in fds:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                banned |= _nested_message_fields(fd.message_type)
        if not fds and open_block:  # unknown to the schema: anything could be nested in it
            for d in tops:
                banned |= _nested_message_fields(d)
    for m in _RESYNC.finditer(text, after):
        name = m.group(1)
        if name in sync_names and name not in banned:
            return m.start()
    return None


def _offset(text: str, line: int, col: int) -> int:
    """The offset of 1-based `line`:`col` in `text` (lines split on "\n", as the lexer counts)."""
    pos = 0
    for _ in range(line - 1):
        pos = text.index("\n", pos) + 1
    return pos + col - 1


def _same(a: Diagnostic, b: Diagnostic) -> bool:
    return a.message == b.message and a.span == b.span


def _nests_from(text: str, start: int) -> bool:
    """Whether the blocks from `start` on never close more than they open (else a closer there
    belongs to a block before `start`: resuming there would report it as unmatched)."""
    depth = 0
    for t in tokenize(text[start:]):
        if t.type in _OPENERS:
            depth += 1
        elif t.type in _CLOSER_TYPES:
            depth -= 1
            if depth < 0:
                return False
    return True


def _top_descriptors() -> list[Descriptor]:
    pb2 = _caffe_pb2()
    return [pb2.NetParameter.DESCRIPTOR, pb2.SolverParameter.DESCRIPTOR]


@cache
def _message_fields(descriptor: Descriptor) -> frozenset[str]:
    return frozenset(fd.name for fd in descriptor.fields if fd.type == FieldDescriptor.TYPE_MESSAGE)


@cache
def _nested_message_fields(descriptor: Descriptor) -> frozenset[str]:
    """Names of the message fields of `descriptor` and of every message nested in it."""
    seen: set[str] = set()
    names: set[str] = set()
    todo = [descriptor]
    while todo:
        d = todo.pop()
        if d.full_name in seen:
            continue
        seen.add(d.full_name)
        for fd in d.fields:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                names.add(fd.name)
                todo.append(fd.message_type)
    return frozenset(names)
