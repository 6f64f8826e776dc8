"""Build the graph IR from a parsed net: state filtering, SSA values, checks, shape inference.

One pass over the layers in file order does everything: each kept layer's bottoms are resolved
to the current definition of their blob, its tops become new `Value`s, and its LayerDef infers
the top shapes. A layer that fails gets tops of unknown shape, and layers that consume unknown
shapes are skipped without further messages, so one mistake produces one error while every
independent mistake is still reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from protocaffe.diagnostics import CompileError, Diagnostic, Diagnostics, Span, suggestion_hint
from protocaffe.ir.graph import Graph, Layer, Value
from protocaffe.ir.state import layer_included, net_state
from protocaffe.layers.base import REGISTRY, Arity, Shape, ShapeContext, shape_str
from protocaffe.lower.fillers import check_fillers
from protocaffe.proto.dialects import origin_of_type
from protocaffe.proto.schema import choose_dialect, fork_fields


def build_graph(
    parsed: Any,
    phase: str | int | None = None,
    stages: Iterable[str] = (),
    level: int | None = None,
    input_shapes: Mapping[str, Shape] | None = None,
    dialect: str | None = None,
) -> Graph:
    """The graph of `parsed` (a frontend ParsedFile) for one NetState, with shapes.

    `phase`/`level` default to the net's `state` field (else TEST / 0); `stages` add to its
    stages. `input_shapes` overrides input blob shapes by top name (--shape). Raises
    CompileError carrying every error (and the warnings) when anything is wrong; otherwise
    warnings and notes are left on `graph.diagnostics`. `dialect` (--dialect) decides what
    names shared by Caffe forks mean; by default the file's evidence does (a note says which).
    """
    net = parsed.message
    state = net_state(net, phase, stages, level)
    graph = Graph(net=net, source_map=parsed.source_map, phase=state.phase, state=state)
    fields = fork_fields(net)
    graph.dialect = choose_dialect(net, dialect, fields)
    builder = _Builder(graph, dict(input_shapes or {}), bool(fields))
    builder.diags.extend(getattr(parsed, "diagnostics", ()))
    builder.run()

    from protocaffe.ir.coordmap import analyze

    graph.coords = analyze(graph, builder.contexts)
    builder.diags.extend(graph.coords.diagnostics)
    diagnostics = sorted(builder.diags, key=_position)
    if any(d.severity == "error" for d in diagnostics):
        raise CompileError(diagnostics)
    given = dialect is not None
    if graph.dialect.name is not None:
        diagnostics.append(
            Diagnostic(
                "note",
                f"fork layers are read as the '{graph.dialect.name}' dialect "
                f"({graph.dialect.reason})" + ("" if given else "; --dialect chooses another"),
            )
        )
    graph.diagnostics = diagnostics
    return graph


def rebuild_graph(graph: Graph, input_shapes: Mapping[str, Shape]) -> Graph:
    """`graph`'s net for the same NetState with other input shapes (Caffe's Net::Reshape)."""
    from protocaffe.frontend import ParsedFile

    parsed = ParsedFile(graph.net, graph.source_map, graph.source_map.source)
    state = graph.state
    return build_graph(
        parsed,
        state.phase,
        stages=sorted(state.stages),
        level=state.level,
        input_shapes=input_shapes,
        dialect=graph.dialect.name if graph.dialect else None,
    )


def unknown_type_error(type_name: str, layer_name: str, span: Span | None) -> Diagnostic:
    """The error for a layer type no LayerDef registers, with the fork it most likely comes
    from (the front end uses it too, to list every unknown type with a file's other errors)."""
    diag = Diagnostic(
        "error",
        f"unknown layer type '{type_name}' (layer '{layer_name}')",
        span,
        suggestion_hint(type_name, REGISTRY),
    )
    fork = origin_of_type(type_name)
    if fork:
        diag.notes.append(f"'{type_name}' comes from {fork}; protocaffe does not implement it")
    return diag


def shape_context(
    graph: Graph, layer: Layer, overrides: Mapping[str, Shape] | None = None
) -> ShapeContext:
    """A fresh ShapeContext for a built layer (its inputs' shapes must be known)."""
    bottoms: list[Shape] = [v.shape for v in layer.inputs if v.shape is not None]
    return ShapeContext(layer, bottoms, graph.span_of, graph.phase, dict(overrides or {}))


def _position(d: Diagnostic) -> tuple[int, int]:
    return (d.span.line, d.span.col) if d.span else (0, 0)


def arity_text(arity: Arity, noun: str) -> str:
    lo, hi = arity
    plural = f"{noun}s"
    if hi == lo:
        return f"no {plural}" if lo == 0 else f"{lo} {noun if lo == 1 else plural}"
    if hi is None:
        return f"at least {lo} {noun if lo == 1 else plural}"
    joiner = "or" if hi == lo + 1 else "to"
    return f"{lo} {joiner} {hi} {plural}"


class _Builder:
    def __init__(self, graph: Graph, overrides: dict[str, Shape], forky: bool) -> None:
        self.graph = graph
        # Whether the net sets any fork field: only then can a layer set an ignored one.
        self.forky = forky
        self.contexts: dict[Layer, ShapeContext] = {}  # the shape pass's, for coord maps
        self.net = graph.net
        self.overrides = overrides
        self.diags = Diagnostics()
        self.current: dict[str, Value] = {}  # blob name -> its latest definition
        self.listed_types = False

    # --- helpers -------------------------------------------------------------------------

    def span(self, *path: str | int) -> Span | None:
        return self.graph.span_of(path)

    def where(self, layer: Layer) -> str:
        return f" (line {layer.span.line})" if layer.span else ""

    def new_value(self, blob: str, producer: Layer) -> Value:
        vid = blob if blob not in self.graph.values else f"{blob}@{producer.name}"
        base, k = vid, 2
        while vid in self.graph.values:
            vid, k = f"{base}#{k}", k + 1
        value = Value(vid, blob, producer)
        self.graph.values[vid] = value
        self.current[blob] = value
        return value

    # --- the pass ------------------------------------------------------------------------

    def with_auto_tops(self, lp: Any, needed: int) -> Any:
        """Caffe gives a loss layer written without tops anonymous ones (AutoTopBlobs).

        The copy keeps the net's own message as written; the tops are named after the layer.
        """
        lp = type(lp).FromString(lp.SerializeToString())
        while len(lp.top) < needed:
            name = lp.name if len(lp.top) == 0 else f"{lp.name}_{len(lp.top)}"
            while name in self.current:
                name += "_"
            lp.top.append(name)
        return lp

    def run(self) -> None:
        state = self.graph.state
        kept: list[int] = []
        excluded_producers: dict[str, str] = {}
        for i, lp in enumerate(self.net.layer):
            if len(lp.include) and len(lp.exclude):
                self.diags.error(
                    f"layer '{lp.name}' has both include and exclude rules",
                    self.span("layer", i, "exclude", 0),
                    hint="Caffe accepts one kind of rule per layer; keep either include or exclude",
                )
            if layer_included(state, lp):
                kept.append(i)
            else:
                for top in lp.top:
                    excluded_producers.setdefault(top, lp.name)
        if not kept:
            self.warn_empty(state)
        # Who produces each blob anywhere in the kept net, to explain out-of-order bottoms.
        producers: dict[str, list[tuple[int, str]]] = {}
        for order, i in enumerate(kept):
            for top in self.net.layer[i].top:
                producers.setdefault(top, []).append((order, self.net.layer[i].name))

        for order, i in enumerate(kept):
            self.add_layer(order, i, producers, excluded_producers)
        self.check_overrides()
        self.check_names()
        self.graph.outputs = [
            v for v in self.graph.values.values() if not v.consumers and self.current[v.blob] is v
        ]

    def add_layer(
        self,
        order: int,
        index: int,
        producers: dict[str, list[tuple[int, str]]],
        excluded: dict[str, str],
    ) -> None:
        lp = self.net.layer[index]
        path = ("layer", index)
        spec = REGISTRY.get(lp.type)
        spec = spec.for_layer(lp) if spec is not None else None
        if spec is not None and spec.is_loss and len(lp.top) < spec.tops[0]:
            lp = self.with_auto_tops(lp, spec.tops[0])
        layer = Layer(lp.name, lp.type, lp, path, self.span(*path, "name"), spec)
        layer.dialect = self.graph.dialect.name
        self.graph.layers.append(layer)
        ok = spec is not None
        if spec is None:
            self.unknown_type(layer)
        elif not self.check_arity(layer):
            ok = False

        for j, blob in enumerate(lp.bottom):
            value = self.current.get(blob)
            if value is None:
                self.missing_bottom(layer, j, blob, order, producers, excluded)
                ok = False
                continue
            layer.inputs.append(value)
            value.consumers.append(layer)

        seen: set[str] = set()
        for j, blob in enumerate(lp.top):
            self.check_top(layer, j, blob, seen)
            seen.add(blob)
            layer.outputs.append(self.new_value(blob, layer))
        if spec is not None and spec.is_input:
            self.graph.inputs.extend(layer.outputs)

        if ok and all(v.shape is not None for v in layer.inputs):
            self.infer(layer)

    def infer(self, layer: Layer) -> None:
        spec = layer.spec
        assert spec is not None
        ctx = self.contexts[layer] = shape_context(self.graph, layer, self.overrides)
        if self.forky:
            from protocaffe.layers.ignored import note_ignored

            note_ignored(ctx)
        try:
            tops = [tuple(int(d) for d in s) for s in spec.shapes(ctx)]
            if len(tops) != len(layer.outputs):
                raise AssertionError(
                    f"{layer.type}.shapes() gave {len(tops)} shapes for {len(layer.outputs)} tops"
                )
            bad = next((t for t in tops if any(d <= 0 for d in t)), None)
            if bad is not None:
                ctx.fail(
                    f"top shape {shape_str(bad)} has a non-positive size",
                    hint="the input is too small for this net; give a larger one with --shape",
                )
            layer.blob_specs = specs = list(spec.blobs(ctx))
            check_fillers(ctx, ((f"filler of '{b.name}'", b.filler, b.shape) for b in specs))
            check_per_blob_lists(ctx, len(specs))
            layer.macs = int(spec.macs(ctx, tops))
        except CompileError as err:
            self.diags.extend(err.diagnostics)
        except NotImplementedError:
            self.diags.error(
                f"{layer.type} '{layer.name}': shape inference for {layer.type} is not implemented",
                layer.span,
            )
        else:
            for value, shape in zip(layer.outputs, tops, strict=True):
                value.shape = shape
        self.diags.extend(ctx.warnings)

    # --- checks --------------------------------------------------------------------------

    def unknown_type(self, layer: Layer) -> None:
        diag = self.diags.add(
            unknown_type_error(layer.type, layer.name, self.span(*layer.path, "type"))
        )
        if not self.listed_types:
            self.listed_types = True
            names = sorted(REGISTRY)
            diag.notes.append(f"supported types ({len(names)}): " + ", ".join(names))

    def check_arity(self, layer: Layer) -> bool:
        spec = layer.spec
        assert spec is not None
        ok = True
        for kind, arity, given in (
            ("bottom", spec.bottoms, len(layer.proto.bottom)),
            ("top", spec.tops, len(layer.proto.top)),
        ):
            lo, hi = arity
            if given < lo or (hi is not None and given > hi):
                ok = False
                self.diags.error(
                    f"{layer.type} '{layer.name}' takes {arity_text(arity, kind)}, "
                    f"but {given} {'is' if given == 1 else 'are'} given",
                    layer.span,
                )
        return ok

    def missing_bottom(
        self,
        layer: Layer,
        j: int,
        blob: str,
        order: int,
        producers: dict[str, list[tuple[int, str]]],
        excluded: dict[str, str],
    ) -> None:
        later = [name for k, name in producers.get(blob, ()) if k > order]
        hint = None if later else suggestion_hint(blob, self.current)
        diag = self.diags.error(
            f"{layer.type} '{layer.name}': bottom '{blob}' is not produced by any earlier layer",
            self.span(*layer.path, "bottom", j),
            hint,
        )
        if later:
            diag.notes.append(
                f"'{blob}' is produced by layer '{later[0]}', which comes later in the file; "
                "Caffe runs layers in the order they are written"
            )
        elif blob in excluded:
            state = self.graph.state
            diag.notes.append(
                f"'{blob}' is produced by layer '{excluded[blob]}', which is not part of the "
                f"net in phase {state.phase_name}"
                + (f" with stages {sorted(state.stages)}" if state.stages else "")
            )

    def check_top(self, layer: Layer, j: int, blob: str, seen: set[str]) -> None:
        lp = layer.proto
        if blob in seen:
            self.diags.error(
                f"{layer.type} '{layer.name}' names top '{blob}' twice",
                self.span(*layer.path, "top", j),
            )
        elif layer.top_in_place(j):
            if layer.spec is not None and not layer.spec.in_place:
                self.diags.warning(
                    f"{layer.type} '{layer.name}' computes '{blob}' in place, "
                    f"which Caffe's {layer.type} does not support",
                    self.span(*layer.path, "top", j),
                    hint="give the top a name of its own",
                )
        elif blob in self.current:
            prior = self.current[blob].producer
            where = f"layer '{prior.name}'{self.where(prior)}" if prior else "a net input"
            hint = (
                f"a top is in place only when it is the bottom at the same position (bottom {j})"
                if blob in lp.bottom
                else "give the top a name of its own"
            )
            self.diags.error(
                f"{layer.type} '{layer.name}': top '{blob}' is already produced by {where}",
                self.span(*layer.path, "top", j),
                hint,
            )

    def warn_empty(self, state: Any) -> None:
        path = self.graph.source_map.source.path if self.graph.source_map else "the net"
        if not len(self.net.layer):
            self.diags.warning(
                f"{path} defines no layers",
                hint="a net is a list of 'layer { ... }' blocks; is this the right file?",
            )
            return
        stages = f" with stages {sorted(state.stages)}" if state.stages else ""
        self.diags.warning(
            f"no layer is part of the net in phase {state.phase_name}, level {state.level}"
            f"{stages}: the include/exclude rules leave out all {len(self.net.layer)}",
            hint="check the layers' include/exclude rules, or pass --phase/--stage/--level",
        )

    def check_overrides(self) -> None:
        names = [v.blob for v in self.graph.inputs]
        for name in self.overrides:
            if name not in names:
                listed = ", ".join(names) if names else "none"
                hint = suggestion_hint(name, names)
                self.diags.error(
                    f"--shape names '{name}', which is not an input blob of this net "
                    f"(inputs: {listed})",
                    None,
                    hint,
                )

    def check_names(self) -> None:
        """Duplicate layer names: Caffe accepts them, so a warning. Weights are matched by name
        and Net::CopyTrainedLayersFrom copies a .caffemodel layer into the FIRST net layer with
        its name (a linear search of layer_names_), so same-named layers after the first never
        receive trained weights and keep their filler values."""
        by_name: dict[str, list[Layer]] = {}
        for layer in self.graph.layers:
            by_name.setdefault(layer.name, []).append(layer)
        for name, layers in by_name.items():
            if len(layers) < 2:
                continue
            first, later = layers[0], layers[1]
            lines = ", ".join(str(lay.span.line) for lay in layers if lay.span)
            message = f"layer name '{name}' is used by {len(layers)} layers" + (
                f" (lines {lines})" if lines else ""
            )
            if any(lay.blob_specs for lay in layers[1:]):
                hint = (
                    f"weights are matched by name: only the first '{name}'{self.where(first)} "
                    "receives .caffemodel weights, as in Caffe; the later ones keep their filler "
                    "values. Give each layer a unique name"
                )
            else:
                hint = "layer names should be unique (weights are matched by name)"
            d = self.diags.warning(message, later.span, hint)
            if first.span is not None:
                d.notes.append(f"{first.span}: the first layer named '{name}'")


def check_per_blob_lists(ctx: ShapeContext, blobs: int) -> None:
    """Caffe's CHECKs on a layer's per-top, per-bottom and per-blob lists (Layer::SetLossWeights,
    Net::Init, Net::AppendParam): loss_weight once per top, propagate_down once per bottom,
    at most one param spec per blob."""
    lp = ctx.layer.proto
    for field, given, wanted, what in (
        ("loss_weight", len(lp.loss_weight), len(lp.top), "top"),
        ("propagate_down", len(lp.propagate_down), len(lp.bottom), "bottom"),
    ):
        if given and given != wanted:
            ctx.fail(
                f"{given} {field} values for {_count(wanted, what)}; give none or one per {what}",
                field,
                0,
            )
    if len(lp.param) > blobs:
        no_bias = ctx.param is not None and getattr(ctx.param, "bias_term", True) is False
        ctx.fail(
            f"{_count(len(lp.param), 'param spec')} for {_count(blobs, 'blob')}; Caffe refuses "
            "more param specs than the layer has blobs",
            "param",
            blobs,
            hint="remove the extra param { ... } blocks"
            + (" (bias_term: false leaves no bias blob)" if no_bias else ""),
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
