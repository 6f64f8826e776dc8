"""Source maps: where each message and field of a parsed file was written.

A field path is a tuple of field names and repeated-element indices from the root message,
e.g. ("layer", 3, "convolution_param", "kernel_size", 0). A path's span covers the field
name through the end of its value (for a message element, through its closing brace).
"""

from __future__ import annotations

from typing import Any

from protocaffe.diagnostics import SourceFile, Span

FieldPath = tuple[str | int, ...]
# A region of the map's own source as the parser records it: (line, col, end_line, end_col).
# A file has thousands of fields and few are ever pointed at: the Span is made when asked for.
Region = tuple[int, int, int, int]


class SourceMap:
    def __init__(
        self,
        source: SourceFile,
        spans: dict[FieldPath, Span | Region] | None = None,
        names: dict[FieldPath, Span | Region] | None = None,
    ) -> None:
        self.source = source
        self.spans: dict[FieldPath, Span | Region] = {} if spans is None else spans
        # Span of just the field-name token, for carets that should point at the name.
        self.names: dict[FieldPath, Span | Region] = {} if names is None else names

    def span(self, path: FieldPath) -> Span | None:
        """The span of `path`, or of its nearest recorded ancestor."""
        spans = self.spans
        for end in range(len(path), -1, -1):
            key = path[:end]
            hit = spans.get(key)
            if hit is not None:
                return self._made(spans, key, hit)
        return None

    def name_span(self, path: FieldPath) -> Span | None:
        """The span of the field-name token at `path` (falls back to `span`)."""
        hit = self.names.get(path)
        return self._made(self.names, path, hit) if hit is not None else self.span(path)

    def get(self, path: FieldPath) -> Span | None:
        """The span recorded for exactly `path` (no ancestor's), or None."""
        hit = self.spans.get(path)
        return self._made(self.spans, path, hit) if hit is not None else None

    def _made(self, table: dict[FieldPath, Span | Region], path: FieldPath, hit: Any) -> Span:
        if hit.__class__ is tuple:
            hit = table[path] = Span(self.source, *hit)
        return hit

    def remap(self, mapping: dict[FieldPath, FieldPath]) -> SourceMap:
        """A new map with path prefixes renamed (used by the legacy-format upgrade): each path's
        longest prefix in `mapping` is replaced by what it maps to."""
        out = SourceMap(self.source)
        # Only prefixes as long as some key can match: one lookup per path, not one per prefix.
        # (A path shorter than `end` slices to itself, which no key of length `end` equals.)
        lengths = sorted({len(key) for key in mapping if key}, reverse=True)
        get = mapping.get
        for table, new_table in ((self.spans, out.spans), (self.names, out.names)):
            for path, span in table.items():
                for end in lengths:
                    target = get(path[:end])
                    if target is not None:
                        path = target + path[end:]
                        break
                new_table[path] = span
        return out

    def subtree(self, prefix: FieldPath) -> SourceMap:
        """The paths under `prefix`, with `prefix` cut off (a nested message's own map)."""
        n = len(prefix)
        out = SourceMap(self.source)
        for table, new_table in ((self.spans, out.spans), (self.names, out.names)):
            new_table.update({p[n:]: s for p, s in table.items() if p[:n] == prefix})
        return out

    def graft(self, prefix: FieldPath, other: SourceMap) -> SourceMap:
        """A new map with the paths under `prefix` replaced by `other`'s, put under `prefix`."""
        n = len(prefix)
        out = SourceMap(self.source)
        for table, extra, new_table in (
            (self.spans, other.spans, out.spans),
            (self.names, other.names, out.names),
        ):
            new_table.update({p: s for p, s in table.items() if p[:n] != prefix})
            # `other` may be another file's map: its regions become Spans of its source.
            new_table.update({(*prefix, *p): other._made(extra, p, s) for p, s in extra.items()})
        return out
