"""Inference passes over a lowered TEST net's fx graph: the fast CPU path, same Caffe semantics.

`fast_cpu_inference(graph)` rewrites every 2-D convolution (and the ReLU that is its only
user) into one call of `conv2d_inference`, which decides per call:

- on the CPU, without autograd, in float32/bfloat16, a convolution whose weights outnumber
  its activations (FCN's fc6/fc7: 7x7 and 1x1 over a small map) runs as Caffe itself runs every
  convolution, im2col + one GEMM (+ bias, ReLU in place): oneDNN would re-lay out the weights
  (411 MB for fc6) on every call, which is both slow and the forward pass's memory peak;
- the other convolutions run through oneDNN's fused convolution (`mkldnn._convolution_pointwise`,
  ReLU as a post-op) on channels_last activations: no NCHW <-> blocked reorders of the
  activations, which double the big early layers' memory and cost time;
- with autograd on, the same kernels through ops autograd knows (`F.conv2d` on channels_last
  input: the same bits), so a TEST net gives one answer with and without `torch.no_grad()`;
- anywhere else (CUDA, float64/16, torch.compile/export tracing) it is `F.conv2d` (+ `F.relu`).

A fused ReLU gives the same bits as the separate one (tests/test_speed_passes.py checks it for
each path). Channels_last values flow only into PyTorch's own functions and methods (which take
any strides), `.view` excepted; every other user (protocaffe's helpers, written for NCHW) gets a
contiguous copy. The net's outputs are returned as produced: the same values, possibly in
channels_last memory (`.contiguous()` gives NCHW).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from protocaffe.layers._spatial import conv_out

_FAST_DTYPES = (torch.float32, torch.bfloat16)
_HAS_ONEDNN = torch.backends.mkldnn.is_available()  # read once: compilers cannot trace it


def _gemm_is_cheaper(
    x: torch.Tensor, weight: torch.Tensor, groups: int, out_hw: tuple[int, int]
) -> bool:
    """Weights outnumber the activations: the per-call weight reorder would dominate. Shapes
    alone decide, so the compiler's fake kernel makes the same choice as the real one."""
    activations = x.shape[0] * (x[0].numel() + weight.shape[0] * out_hw[0] * out_hw[1])
    return groups == 1 and weight.numel() > activations


def _int32_safe(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> bool:
    """oneDNN indexes in 32-bit ints and crashes (not raises) past them, e.g. on a pad or a
    stride near 2^31 (found by fuzzing); such absurd geometry takes F.conv2d's checked path."""
    extents = [x.shape[i + 2] + 2 * padding[i] for i in range(2)]
    extents += _dilated_kernel(weight, dilation)
    return max(*stride, *padding, *dilation) < 2**16 and max(extents) < 2**30


def _dilated_kernel(weight: torch.Tensor, dilation: tuple[int, int]) -> list[int]:
    return [dilation[i] * (weight.shape[i + 2] - 1) + 1 for i in range(2)]


def _plain_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return F.relu(y, inplace=True) if relu else y


def conv2d_inference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """Caffe's Convolution (+ ReLU with negative_slope 0) for inference; see the module doc."""
    fast = (
        not torch.compiler.is_exporting()  # an exported program holds portable ops only
        and x.device.type == "cpu"
        and x.dtype in _FAST_DTYPES
        and x.dtype == weight.dtype
        and x.dim() == 4
        and _HAS_ONEDNN
        and _int32_safe(x, weight, stride, padding, dilation)
    )
    if not fast:
        return _plain_conv2d(x, weight, bias, stride, padding, dilation, groups, relu)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        # The same oneDNN kernel (the same bits) through the op autograd knows.
        x = x.contiguous(memory_format=torch.channels_last)
        return _plain_conv2d(x, weight, bias, stride, padding, dilation, groups, relu)
    if torch.compiler.is_compiling():  # one opaque op: inductor neither re-lowers nor freezes it
        return torch.ops.protocaffe.conv2d_cpu(
            x, weight, bias, list(stride), list(padding), list(dilation), groups, relu
        )
    return _conv2d_cpu(x, weight, bias, stride, padding, dilation, groups, relu)


def _conv2d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """The no-autograd CPU kernels: im2col + GEMM where it is cheaper, else fused oneDNN."""
    out_hw = _out_hw(x, weight, stride, padding, dilation)
    if _gemm_is_cheaper(x, weight, groups, out_hw):
        return _conv2d_gemm(x, weight, bias, stride, padding, dilation, relu, out_hw)
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, padding, stride, dilation, groups, "relu" if relu else "none", [], ""
    )


def _out_hw(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    extent = _dilated_kernel(weight, dilation)
    oh, ow = (conv_out(x.shape[i + 2], extent[i], stride[i], padding[i]) for i in range(2))
    return oh, ow


@torch.library.custom_op("protocaffe::conv2d_cpu", mutates_args=())
def _conv2d_cpu_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    return _conv2d_cpu(
        x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), groups, relu
    )


@_conv2d_cpu_op.register_fake
def _(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    # The same shape and memory layout the kernel returns.
    out_hw = _out_hw(x, weight, stride, padding, dilation)
    shape = (x.shape[0], weight.shape[0], *out_hw)
    if _gemm_is_cheaper(x, weight, groups, out_hw):
        return x.new_empty(shape)
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


def _conv2d_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    relu: bool,
    out_hw: tuple[int, int],
) -> torch.Tensor:
    """im2col + GEMM + bias, Caffe's forward_cpu_gemm; the output is NCHW."""
    n, out = x.shape[0], weight.shape[0]
    w2d = weight.reshape(out, -1)
    if weight.shape[2:] == (1, 1) and stride == (1, 1) and padding == (0, 0):
        cols = x.reshape(n, x.shape[1], -1)  # a 1x1 convolution's columns are the input
    else:
        cols = F.unfold(x, tuple(weight.shape[2:]), dilation, padding, stride)
    y = torch.matmul(w2d, cols)
    if bias is not None:
        y.add_(bias.reshape(out, 1))
    if relu:
        y.relu_()
    return y.reshape(n, out, *out_hw)


_RELU_TARGETS = (F.relu, torch.relu, torch.relu_)

# PyTorch's own functions take channels_last tensors as they take NCHW ones (values, not
# layout, are their contract); `view` is the exception, and protocaffe's helpers are not vetted.
_OPERATORS = frozenset({operator.getitem, operator.add, operator.sub, operator.mul})
_LAYOUT_UNSAFE: frozenset[Any] = frozenset({torch.Tensor.view, "view"})


def _is_tensor_method(target: Any) -> bool:
    """`torch.Tensor.size` and the like, called as functions (Crop reads sizes that way)."""
    return getattr(target, "__objclass__", None) in (torch.Tensor, torch._C.TensorBase)


def _layout_safe(node: fx.Node) -> bool:
    if node.target in _LAYOUT_UNSAFE:
        return False
    if node.op == "call_method" or _is_tensor_method(node.target):
        return True
    if node.op != "call_function":
        return False
    if node.target is conv2d_inference or node.target in _OPERATORS:
        return True
    return (getattr(node.target, "__module__", None) or "").split(".")[0] == "torch"


def fast_cpu_inference(graph: fx.Graph) -> int:
    """Rewrite `graph`'s conv2d (+ sole-user ReLU) nodes into `conv2d_inference`; returns how
    many convolutions were rewritten. For TEST nets only: the fast path has no autograd."""
    rewritten: list[fx.Node] = []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.conv2d:
            continue
        x, weight, bias = [*node.args, None, None][:3]
        kw = node.kwargs
        users = list(node.users)
        relu = (
            users[0]
            if len(users) == 1
            and users[0].op == "call_function"
            and users[0].target in _RELU_TARGETS
            and users[0].args[0] is node
            else None
        )
        args = (
            x,
            weight,
            kw.get("bias", bias),
            _pair(kw.get("stride", 1)),
            _pair(kw.get("padding", 0)),
            _pair(kw.get("dilation", 1)),
            kw.get("groups", 1),
            relu is not None,
        )
        # The convolution's node becomes the call: it keeps its name, so the code reads as before.
        node.target, node.args, node.kwargs = conv2d_inference, args, {}
        if relu is not None:
            node.meta["caffe_fused"] = relu.meta.get("caffe_layer")
            relu.replace_all_uses_with(node)
            graph.erase_node(relu)
        rewritten.append(node)
    if rewritten:
        _contain_channels_last(graph, rewritten)
        graph.lint()
    return len(rewritten)


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def _contain_channels_last(graph: fx.Graph, sources: list[fx.Node]) -> None:
    """Give every layout-unsafe user of a value that may be channels_last (a source's, or a
    layout-safe op's over one) a contiguous NCHW copy instead."""
    maybe = set(sources)
    for node in graph.nodes:
        inputs = [a for a in node.all_input_nodes if a in maybe]
        if not inputs or node.op == "output":
            continue
        if _layout_safe(node):
            maybe.add(node)
            continue
        for value in inputs:
            with graph.inserting_before(node):
                nchw = graph.call_method("contiguous", (value,))
            nchw.meta.update(value.meta)
            node.replace_input_with(value, nchw)
