"""Comments kept through `fmt` and `upgrade`: each `#` comment is attached to a field or block.

The printer writes fields from the message, not from the text, so a comment survives only if
it is tied to something the printer writes. Each comment is attached, by the source map, to:
- the field or block that ends on its line before it (`num_output: 21  # classes`,
  `}  # end conv1`): printed after that line (`after`);
- else the block whose `{` is on its line (`layer {  # the stem`): after the `{` (`opening`);
- else the next field or block that starts after it inside the same block: on the lines
  before it (`before`);
- else the block it is in (it sits before the `}`), or the end of the file (`closing`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from protocaffe.diagnostics import SourceFile, Span
from protocaffe.frontend.sourcemap import FieldPath, SourceMap

__all__ = ["Comments", "attach_comments", "printed_paths"]


@dataclass
class Comments:
    """Comment lines by the path of the field they belong to (`()`: the file itself)."""

    before: dict[FieldPath, list[str]] = field(default_factory=dict)
    after: dict[FieldPath, str] = field(default_factory=dict)
    opening: dict[FieldPath, str] = field(default_factory=dict)
    closing: dict[FieldPath, list[str]] = field(default_factory=dict)
    total: int = 0  # comments found in the text (the printer counts those it writes)


@dataclass(frozen=True)
class _Comment:
    line: int
    col: int
    text: str


def _comments(source: SourceFile) -> Iterator[_Comment]:
    from protocaffe.frontend.textformat import comment_tokens

    for tok in comment_tokens(source.text):
        yield _Comment(tok.line, tok.column, tok.value.rstrip())


def printed_paths(msg: Message, path: FieldPath = ()) -> Iterator[tuple[FieldPath, bool]]:
    """Every path the printer writes a line for, with whether it is a block, in text order."""
    for fd, value in msg.ListFields():
        is_block = fd.type == FieldDescriptor.TYPE_MESSAGE
        items = enumerate(value) if fd.is_repeated else ((None, value),)
        for i, v in items:
            sub = (*path, fd.name) if i is None else (*path, fd.name, i)
            yield sub, is_block
            if is_block:
                yield from printed_paths(v, sub)  # type: ignore[arg-type]


def attach_comments(msg: Message, source_map: SourceMap, source: SourceFile) -> Comments:
    """Where each comment of `source` goes when `msg` (parsed from it) is printed."""
    out = Comments()
    found = list(_comments(source))
    out.total = len(found)
    if not found:
        return out
    spans: list[tuple[FieldPath, bool, Span]] = []
    for path, is_block in printed_paths(msg):
        span = source_map.get(path)
        if span is not None and span.source is source:
            spans.append((path, is_block, span))
    # Indexes by line, and the blocks in text order, so that each comment costs about its
    # line's fields (a hostile file may hold many thousands of each).
    ending: dict[int, list[tuple[int, int, FieldPath]]] = {}
    opening: dict[int, list[tuple[int, int, FieldPath, int]]] = {}
    for p, is_block, s in spans:
        ending.setdefault(s.end_line, []).append((s.end_col, -len(p), p))
        if is_block:
            opening.setdefault(s.line, []).append((s.col, len(p), p, s.end_line))
    starts = sorted(((s.line, s.col), len(p), p) for p, _, s in spans)
    keys = [(pos, depth) for pos, depth, _ in starts]
    blocks = sorted(((s.line, s.col), (s.end_line, s.end_col), p) for p, b, s in spans if b)
    stack: list[tuple[tuple[int, int], FieldPath]] = []  # the blocks open at the comment
    j = 0
    for c in found:  # in text order
        here = (c.line, c.col)
        while j < len(blocks) and blocks[j][0] < here:
            stack.append((blocks[j][1], blocks[j][2]))
            j += 1
        stack = [(end, p) for end, p in stack if end > here]
        ended = max(
            ((col, depth, p) for col, depth, p in ending.get(c.line, ()) if col <= c.col),
            default=None,
        )  # on a line that closes a block: the block, else the field last ended
        opened = max(
            (
                (col, depth, p)
                for col, depth, p, end_line in opening.get(c.line, ())
                if col < c.col and end_line > c.line
            ),
            default=None,
        )  # the innermost block opened on the comment's line and still open after it
        if opened is not None and (ended is None or opened[0] > ended[0]):
            out.opening[opened[2]] = c.text
            continue
        if ended is not None:
            out.after[ended[2]] = c.text
            continue
        end, enclosing = stack[-1] if stack else ((1 << 62, 0), ())
        i = bisect_right(keys, (here, 1 << 30))
        if i < len(starts) and starts[i][0] < end:  # the next field, if it is in the block
            out.before.setdefault(starts[i][2], []).append(c.text)
        else:
            out.closing.setdefault(enclosing, []).append(c.text)
    return out
