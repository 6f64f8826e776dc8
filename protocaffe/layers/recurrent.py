"""Recurrent layers: RNN, LSTM (Caffe's RecurrentLayer family) and LSTMUnit.

Caffe builds RNN and LSTM as an unrolled inner net over the T timesteps of bottom[0]; this
file computes what that net computes, without building it.

Bottoms, in order: x (T x N x ...), cont (T x N), an optional static input x_static (N x ...),
and with `expose_hidden` the initial state: h_0 (RNN), or h_0 then c_0 (LSTM), each
1 x N x num_output. Tops: the sequence output (T x N x num_output), and with `expose_hidden`
the final state h_T (and c_T), each 1 x N x num_output.

`cont_t` multiplies the previous state before step t uses it: 0 starts a new sequence in that
stream, 1 continues it. x is flattened from axis 2 (InnerProduct axis 2), x_static from axis 1.

LSTM (gates in Caffe's order i, f, o, g; blobs W_xc, b_c, [W_xc_static], W_hc):
    gate_t = W_xc x_t + b_c + W_xc_static x_static + W_hc (cont_t * h_{t-1})
    i, f, o = sigmoid(.), g = tanh(.);  f := 0 where cont_t == 0, else cont_t * f
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t);  top h = [h_1 .. h_T]
RNN (blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o):
    h_t = tanh(W_xh x_t + b_h + W_xh_static x_static + W_hh (cont_t * h_{t-1}))
    o_t = tanh(W_ho h_t + b_o);  top o = [o_1 .. o_T]

Initial state: without `expose_hidden`, Caffe starts each forward pass from the h_T (c_T) its
previous forward pass left behind (zeros after setup). A lowered module keeps no state across
calls, so it always starts from zeros: identical to Caffe whenever cont is 0 at t = 0, or on
the first pass. Use `expose_hidden` to carry state between calls explicitly.

MACs count the matrix products: x and x_static transforms, the recurrent product per step
(and the RNN output transform); the gate nonlinearities count 0 (see activations.py).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, ClassVar

from protocaffe.layers.base import (
    BlobSpec,
    LayerDef,
    LowerContext,
    Shape,
    ShapeContext,
    count,
    register,
    shape_str,
)
from protocaffe.lazy import np, torch

if TYPE_CHECKING:
    from torch import fx

    from protocaffe.ir.graph import Layer


# --- PyTorch helpers called from the fx graph (one call per layer, looping over T inside) ------


def _sequence_inputs(x: Any, cont: Any, x_static: Any, w_static: Any) -> tuple[Any, Any, Any]:
    """x as T x N x K, cont as T x N x 1 in x's dtype, and the static term (or None)."""
    steps, streams = cont.shape
    x = x.reshape(steps, streams, -1)
    cont = cont.to(x.dtype).unsqueeze(-1)
    static = None
    if x_static is not None:
        static = torch.matmul(x_static.reshape(streams, -1).to(x.dtype), w_static.t())
    return x, cont, static


def caffe_lstm_unit(c_prev: Any, gates: Any, cont: Any) -> tuple[Any, Any]:
    """Caffe's LSTMUnit on ... x D cells: gates ... x 4D pre-activations (i, f, o, g), cont
    broadcastable to the cells. Returns (c, h)."""
    i, f, o, g = torch.chunk(gates, 4, dim=-1)
    cont = cont.to(gates.dtype)
    forget = torch.where(cont == 0, torch.zeros_like(f), cont * torch.sigmoid(f))
    c = forget * c_prev + torch.sigmoid(i) * torch.tanh(g)
    return c, torch.sigmoid(o) * torch.tanh(c)


def caffe_lstm(
    x: Any,
    cont: Any,
    w_xc: Any,
    b_c: Any,
    w_hc: Any,
    x_static: Any = None,
    w_xc_static: Any = None,
    h0: Any = None,
    c0: Any = None,
) -> tuple[Any, Any, Any]:
    """Caffe's LSTM layer over all T steps, vectorised over the N streams.

    Returns (h: T x N x H, h_T: 1 x N x H, c_T: 1 x N x H); h0/c0 default to zeros."""
    x, cont, static = _sequence_inputs(x, cont, x_static, w_xc_static)
    steps, streams = x.shape[:2]
    hidden = w_hc.shape[1]
    gates_x = torch.matmul(x, w_xc.t()) + b_c
    if static is not None:
        gates_x = gates_x + static
    zeros = x.new_zeros(streams, hidden)
    h = zeros if h0 is None else h0.reshape(streams, hidden).to(x.dtype)
    c = zeros if c0 is None else c0.reshape(streams, hidden).to(x.dtype)
    outputs = []
    for t in range(steps):
        gates = gates_x[t] + torch.matmul(cont[t] * h, w_hc.t())
        c, h = caffe_lstm_unit(c, gates, cont[t])
        outputs.append(h)
    return torch.stack(outputs), h.unsqueeze(0), c.unsqueeze(0)


def caffe_rnn(
    x: Any,
    cont: Any,
    w_xh: Any,
    b_h: Any,
    w_hh: Any,
    w_ho: Any,
    b_o: Any,
    x_static: Any = None,
    w_xh_static: Any = None,
    h0: Any = None,
) -> tuple[Any, Any]:
    """Caffe's RNN layer over all T steps. Returns (o: T x N x H, h_T: 1 x N x H)."""
    x, cont, static = _sequence_inputs(x, cont, x_static, w_xh_static)
    steps, streams = x.shape[:2]
    hidden = w_hh.shape[1]
    pre_x = torch.matmul(x, w_xh.t()) + b_h
    if static is not None:
        pre_x = pre_x + static
    h = x.new_zeros(streams, hidden) if h0 is None else h0.reshape(streams, hidden).to(x.dtype)
    states = []
    for t in range(steps):
        h = torch.tanh(pre_x[t] + torch.matmul(cont[t] * h, w_hh.t()))
        states.append(h)
    o = torch.tanh(torch.matmul(torch.stack(states), w_ho.t()) + b_o)
    return o, h.unsqueeze(0)


# --- numpy oracle pieces (Caffe's CPU loops) ---------------------------------------------------


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _np_lstm_unit(
    c_prev: np.ndarray, gates: np.ndarray, cont: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """LSTMUnitLayer::Forward_cpu for one timestep: c_prev N x D, gates N x 4D, cont N."""
    streams, dim = c_prev.shape
    c = np.empty_like(c_prev)
    h = np.empty_like(c_prev)
    for n in range(streams):
        row = gates[n]
        i = _sigmoid(row[:dim])
        f = np.zeros(dim) if cont[n] == 0 else cont[n] * _sigmoid(row[dim : 2 * dim])
        o = _sigmoid(row[2 * dim : 3 * dim])
        g = np.tanh(row[3 * dim :])
        c[n] = f * c_prev[n] + i * g
        h[n] = o * np.tanh(c[n])
    return c, h


# --- layer declarations ------------------------------------------------------------------------


class _Recurrent(LayerDef):
    """Shared by RNN and LSTM: bottom/top layout, shape checks, blob specs."""

    param_field = "recurrent_param"
    # Names of the recurrent state blobs, in Caffe's bottom/top order under expose_hidden.
    states: ClassVar[tuple[str, ...]]
    output: ClassVar[str]  # what Caffe's unrolled net calls the sequence output

    def mixes_items(self, layer: Layer, phase: int) -> bool:
        return True  # axis 0 is time: each step reads the state the previous one left

    # The layout: T, N, and which bottoms are the static input and the initial states.
    def layout(self, ctx: ShapeContext) -> tuple[int, int, int | None, list[int]]:
        p = ctx.param
        names = ctx.layer.bottoms
        n_states = len(self.states) if p.expose_hidden else 0
        want_bottoms = (2 + n_states, 3 + n_states)
        states_text = ", ".join(f"{s}_0" for s in self.states)
        listing = "x, cont, [x_static]" + (f", {states_text}" if p.expose_hidden else "")
        if not want_bottoms[0] <= len(ctx.bottoms) <= want_bottoms[1]:
            hint = (
                None
                if p.expose_hidden
                else f"set recurrent_param {{ expose_hidden: true }} to pass {states_text} "
                "as bottoms"
            )
            ctx.fail(
                f"takes {want_bottoms[0]} or {want_bottoms[1]} bottoms ({listing})"
                f"{' with expose_hidden' if p.expose_hidden else ''}, "
                f"but {len(ctx.bottoms)} are given",
                "bottom",
                hint=hint,
            )
        want_tops = 1 + n_states
        if len(ctx.layer.tops) != want_tops:
            final = ", ".join(f"{s}_T" for s in self.states)
            listing = self.output + (f", {final}" if p.expose_hidden else "")
            ctx.fail(
                f"takes {want_tops} top{'s' if want_tops > 1 else ''} ({listing})"
                f"{' with expose_hidden' if p.expose_hidden else ''}, "
                f"but {len(ctx.layer.tops)} are given",
                "top",
                hint=None if p.expose_hidden else "expose_hidden adds the final state as tops",
            )
        if p.num_output <= 0:
            ctx.fail("num_output is required and must be positive", "num_output")
        x, cont = ctx.bottoms[0], ctx.bottoms[1]
        if len(x) < 2:
            ctx.fail(
                f"bottom '{names[0]}' has shape {shape_str(x)}; {self.type} needs at least "
                "2 axes (T timesteps x N streams x ...)",
                "bottom",
                0,
            )
        steps, streams = x[0], x[1]
        if len(cont) != 2 or tuple(cont) != (steps, streams):
            ctx.fail(
                f"bottom '{names[1]}' (cont) has shape {shape_str(cont)}, but bottom "
                f"'{names[0]}' is {shape_str(x)}: cont must be T x N = {steps}x{streams}",
                "bottom",
                1,
                hint="cont holds one sequence-continuation flag per timestep and stream",
            )
        static = 2 if len(ctx.bottoms) > 2 + n_states else None
        if static is not None:
            xs = ctx.bottoms[static]
            if len(xs) < 1 or xs[0] != streams:
                ctx.fail(
                    f"bottom '{names[static]}' (static input) has shape {shape_str(xs)}, but "
                    f"its first axis must be N = {streams} (bottom '{names[0]}' is "
                    f"{shape_str(x)})",
                    "bottom",
                    static,
                )
        first = 3 if static is not None else 2
        state_bottoms = list(range(first, first + n_states))
        want = (1, streams, p.num_output)
        for name, j in zip(self.states[:n_states], state_bottoms, strict=True):
            if tuple(ctx.bottoms[j]) != want:
                ctx.fail(
                    f"bottom '{names[j]}' ({name}_0) has shape {shape_str(ctx.bottoms[j])}; "
                    f"the initial state must be 1 x N x num_output = {shape_str(want)}",
                    "bottom",
                    j,
                )
        return steps, streams, static, state_bottoms

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        steps, streams, _, states = self.layout(ctx)
        hidden = ctx.param.num_output
        return [(steps, streams, hidden)] + [(1, streams, hidden)] * len(states)

    def dims(self, ctx: ShapeContext) -> tuple[int, int | None]:
        """K = count(x[2:]) and the static input's count(x_static[1:]) (None without one)."""
        _, _, static, _ = self.layout(ctx)
        k = count(ctx.bottoms[0][2:])
        return k, (count(ctx.bottoms[static][1:]) if static is not None else None)

    def explain(self, ctx: ShapeContext) -> list[str]:
        steps, streams, _, states = self.layout(ctx)
        k, ks = self.dims(ctx)
        x = ctx.bottoms[0]
        lines = [
            f"T = {steps} timesteps, N = {streams} streams, input dim K = {k}"
            + (f" ({shape_str(x[2:])} flattened)" if len(x) > 3 else "")
        ]
        if ks is not None:
            lines.append(f"static input: {ks} features per stream, added at every step")
        if states:
            lines.append("initial state from bottoms; final state as tops (expose_hidden)")
        else:
            lines.append("initial state: zeros (Caffe carries it over between forward passes)")
        return lines

    def inputs(
        self, ctx: LowerContext | ShapeContext, inputs: list[Any]
    ) -> tuple[Any, Any, Any, list[Any]]:
        """(x, cont, x_static or None, [initial states]) from the bottoms."""
        n_states = len(self.states) if ctx.param.expose_hidden else 0
        static = inputs[2] if len(inputs) > 2 + n_states else None
        first = 3 if static is not None else 2
        return inputs[0], inputs[1], static, list(inputs[first : first + n_states])


@register
class LSTM(_Recurrent):
    type = "LSTM"
    bottoms = (2, 5)
    tops = (1, 3)
    states = ("h", "c")
    output = "h"

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        p = ctx.param
        k, ks = self.dims(ctx)
        gates = 4 * p.num_output
        specs = [
            BlobSpec("W_xc", (gates, k), p.weight_filler),
            BlobSpec("b_c", (gates,), p.bias_filler),
        ]
        if ks is not None:
            specs.append(BlobSpec("W_xc_static", (gates, ks), p.weight_filler))
        specs.append(BlobSpec("W_hc", (gates, p.num_output), p.weight_filler))
        return specs

    def explain(self, ctx: ShapeContext) -> list[str]:
        gates = 4 * ctx.param.num_output
        return [*super().explain(ctx), f"gates: 4 x num_output = {gates}, in order i, f, o, g"]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        steps, streams, hidden = tops[0]
        k, ks = self.dims(ctx)
        gates = 4 * hidden
        total = steps * streams * k * gates + steps * streams * hidden * gates
        return total + (streams * ks * gates if ks is not None else 0)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        x, cont, static, states = self.inputs(ctx, ctx.inputs)
        args = [x, cont, ctx.blob("W_xc"), ctx.blob("b_c"), ctx.blob("W_hc")]
        kwargs: dict[str, Any] = {}
        if static is not None:
            kwargs.update(x_static=static, w_xc_static=ctx.blob("W_xc_static"))
        if states:
            kwargs.update(h0=states[0], c0=states[1])
        result = ctx.call(caffe_lstm, *args, **kwargs)
        return [ctx.call(operator.getitem, result, i) for i in range(1 + len(states))]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """The unrolled net, step by step: x_transform, per-step W_hc product on the
        cont-scaled state, then LSTMUnit's per-stream loop."""
        x, cont, static, states = self.inputs(ctx, [np.asarray(a) for a in inputs])
        steps, streams = cont.shape
        hidden = ctx.param.num_output
        w = [b.astype(np.float64) for b in blobs]
        w_xc, b_c, w_hc = w[0], w[1], w[-1]
        gates_x = x.astype(np.float64).reshape(steps * streams, -1) @ w_xc.T + b_c
        gates_x = gates_x.reshape(steps, streams, -1)
        if static is not None:
            gates_x = gates_x + (static.astype(np.float64).reshape(streams, -1) @ w[2].T)[None]
        zeros = np.zeros((streams, hidden))
        h = states[0].astype(np.float64).reshape(streams, hidden) if states else zeros
        c = states[1].astype(np.float64).reshape(streams, hidden) if states else zeros
        out = np.empty((steps, streams, hidden))
        for t in range(steps):
            cont_t = cont[t].astype(np.float64)
            h_conted = h * cont_t[:, None]
            c, h = _np_lstm_unit(c, gates_x[t] + h_conted @ w_hc.T, cont_t)
            out[t] = h
        tops = [out] + ([h[None], c[None]] if states else [])
        return [a.astype(inputs[0].dtype) for a in tops]


@register
class RNN(_Recurrent):
    type = "RNN"
    bottoms = (2, 4)
    tops = (1, 2)
    states = ("h",)
    output = "o"

    def blobs(self, ctx: ShapeContext) -> list[BlobSpec]:
        p = ctx.param
        k, ks = self.dims(ctx)
        hidden = p.num_output
        specs = [
            BlobSpec("W_xh", (hidden, k), p.weight_filler),
            BlobSpec("b_h", (hidden,), p.bias_filler),
        ]
        if ks is not None:
            specs.append(BlobSpec("W_xh_static", (hidden, ks), p.weight_filler))
        specs += [
            BlobSpec("W_hh", (hidden, hidden), p.weight_filler),
            BlobSpec("W_ho", (hidden, hidden), p.weight_filler),
            BlobSpec("b_o", (hidden,), p.bias_filler),
        ]
        return specs

    def explain(self, ctx: ShapeContext) -> list[str]:
        return [*super().explain(ctx), "h_t = tanh(...); top o_t = tanh(W_ho h_t + b_o)"]

    def macs(self, ctx: ShapeContext, tops: list[Shape]) -> int:
        steps, streams, hidden = tops[0]
        k, ks = self.dims(ctx)
        total = steps * streams * hidden * (k + 2 * hidden)
        return total + (streams * ks * hidden if ks is not None else 0)

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        x, cont, static, states = self.inputs(ctx, ctx.inputs)
        names = ("W_xh", "b_h", "W_hh", "W_ho", "b_o")
        args = [x, cont, *(ctx.blob(n) for n in names)]
        kwargs: dict[str, Any] = {}
        if static is not None:
            kwargs.update(x_static=static, w_xh_static=ctx.blob("W_xh_static"))
        if states:
            kwargs.update(h0=states[0])
        result = ctx.call(caffe_rnn, *args, **kwargs)
        return [ctx.call(operator.getitem, result, i) for i in range(1 + len(states))]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        """The unrolled net: x_transform, then per step Scale by cont, W_hh, sum, TanH, and
        the W_ho InnerProduct + TanH on each h_t."""
        x, cont, static, states = self.inputs(ctx, [np.asarray(a) for a in inputs])
        steps, streams = cont.shape
        hidden = ctx.param.num_output
        w = [b.astype(np.float64) for b in blobs]
        w_xh, b_h = w[0], w[1]
        w_hh, w_ho, b_o = w[-3], w[-2], w[-1]
        pre_x = x.astype(np.float64).reshape(steps * streams, -1) @ w_xh.T + b_h
        pre_x = pre_x.reshape(steps, streams, hidden)
        static_term = (
            static.astype(np.float64).reshape(streams, -1) @ w[2].T if static is not None else 0.0
        )
        h = (
            states[0].astype(np.float64).reshape(streams, hidden)
            if states
            else np.zeros((streams, hidden))
        )
        out = np.empty((steps, streams, hidden))
        for t in range(steps):
            h_conted = h * cont[t].astype(np.float64)[:, None]
            h = np.tanh(h_conted @ w_hh.T + pre_x[t] + static_term)
            out[t] = np.tanh(h @ w_ho.T + b_o)
        tops = [out] + ([h[None]] if states else [])
        return [a.astype(inputs[0].dtype) for a in tops]


@register
class LSTMUnit(LayerDef):
    """One LSTM step on precomputed gate inputs: bottoms c_prev (1 x N x D), x (1 x N x 4D,
    gates i, f, o, g), cont (1 x N); tops c and h (1 x N x D). No stored blobs."""

    type = "LSTMUnit"
    bottoms = (3, 3)
    tops = (2, 2)

    def shapes(self, ctx: ShapeContext) -> list[Shape]:
        names = ctx.layer.bottoms
        c_prev, x, _ = ctx.bottoms
        roles = ("c_prev", "x", "cont")
        for j, (shape, axes) in enumerate(zip(ctx.bottoms, (3, 3, 2), strict=True)):
            form = "1 x N" if axes == 2 else ("1 x N x D" if j == 0 else "1 x N x 4D")
            if len(shape) != axes or shape[0] != 1:
                ctx.fail(
                    f"bottom '{names[j]}' ({roles[j]}) has shape {shape_str(shape)}; "
                    f"LSTMUnit needs {form} (a single timestep)",
                    "bottom",
                    j,
                )
        streams, dim = c_prev[1], c_prev[2]
        for j in (1, 2):
            if ctx.bottoms[j][1] != streams:
                ctx.fail(
                    f"bottom '{names[j]}' ({roles[j]}) has shape {shape_str(ctx.bottoms[j])}, "
                    f"but bottom '{names[0]}' (c_prev) {shape_str(c_prev)} has N = {streams} "
                    "streams",
                    "bottom",
                    j,
                )
        if x[2] != 4 * dim:
            ctx.fail(
                f"bottom '{names[1]}' (x) has {x[2]} gate inputs per stream; with "
                f"D = {dim} cells (bottom '{names[0]}' is {shape_str(c_prev)}) it needs "
                f"4 x D = {4 * dim}",
                "bottom",
                1,
                hint="x holds the i, f, o and g pre-activations, D each",
            )
        return [c_prev, c_prev]

    def lower(self, ctx: LowerContext) -> list[fx.Node]:
        c_prev, x, cont = ctx.inputs
        cont = ctx.call(torch.unsqueeze, cont, -1)
        result = ctx.call(caffe_lstm_unit, c_prev, x, cont)
        return [ctx.call(operator.getitem, result, i) for i in range(2)]

    def reference(
        self, ctx: ShapeContext, inputs: list[np.ndarray], blobs: list[np.ndarray]
    ) -> list[np.ndarray]:
        c_prev, x, cont = (np.asarray(a).astype(np.float64) for a in inputs)
        c, h = _np_lstm_unit(c_prev[0], x[0], cont[0])
        return [c[None].astype(inputs[0].dtype), h[None].astype(inputs[0].dtype)]
