"""Source maps: where each message and field of a parsed file was written.

A field path is a tuple of field names and repeated-element indices from the root message,
e.g. ("layer", 3, "convolution_param", "kernel_size", 0). A path's span covers the field
name through the end of its value (for a message element, through its closing brace).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocaffe.diagnostics import SourceFile, Span

FieldPath = tuple[str | int, ...]


@dataclass
class SourceMap:
    source: SourceFile
    spans: dict[FieldPath, Span] = field(default_factory=dict)
    # Span of just the field-name token, for carets that should point at the name.
    names: dict[FieldPath, Span] = field(default_factory=dict)

    def span(self, path: FieldPath) -> Span | None:
        """The span of `path`, or of its nearest recorded ancestor."""
        for end in range(len(path), -1, -1):
            hit = self.spans.get(path[:end])
            if hit is not None:
                return hit
        return None

    def name_span(self, path: FieldPath) -> Span | None:
        """The span of the field-name token at `path` (falls back to `span`)."""
        return self.names.get(path) or self.span(path)

    def remap(self, mapping: dict[FieldPath, FieldPath]) -> SourceMap:
        """A new map with path prefixes renamed (used by the legacy-format upgrade)."""
        out = SourceMap(self.source)
        # Only prefixes as long as some key can match: one lookup per path, not one per prefix.
        lengths = sorted({len(key) for key in mapping if key}, reverse=True)
        for table, new_table in ((self.spans, out.spans), (self.names, out.names)):
            for path, span in table.items():
                new_table[_rename(path, mapping, lengths)] = span
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
            new_table.update({(*prefix, *p): s for p, s in extra.items()})
        return out


def _rename(path: FieldPath, mapping: dict[FieldPath, FieldPath], lengths: list[int]) -> FieldPath:
    """`path` with its longest prefix in `mapping` (of one of `lengths`, longest first) renamed."""
    for end in lengths:
        target = mapping.get(path[:end]) if end <= len(path) else None
        if target is not None:
            return target + path[end:]
    return path
