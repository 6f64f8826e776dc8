"""`protocaffe.load` and `protocaffe.compile`: a prototxt (and weights) to a runnable module."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
    "double": "float64",
}


def compile_net(
    prototxt: str | Path,
    *,
    phase: str | int = "TEST",
    stages: Iterable[str] = (),
    level: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    dialect: str | None = None,
    follow_solver: bool = False,
    plugins: Iterable[str] = (),
) -> Any:
    """Parse, upgrade, filter and shape-check a net: its Graph, or CompileError.
    `follow_solver`: a solver stands for its training net (else it is an error).
    `dialect` reads fork layers as that Caffe fork does (default: the file's evidence).
    `plugins` are modules (or .py paths) that declare user layers (protocaffe.plugins).

    `prototxt` is always a path (as a Path, never taken for prototxt text)."""
    from protocaffe.frontend import load_net
    from protocaffe.ir.build import build_graph
    from protocaffe.plugins import load_plugins

    load_plugins(plugins)
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    return build_graph(
        load_net(Path(prototxt), follow_solver=follow_solver),
        phase=phase,
        stages=stages,
        level=level,
        input_shapes=shapes,
        dialect=dialect,
    )


def resolve_device(device: Any) -> Any:
    """ "auto" is CUDA when available, else CPU; anything else is passed to torch.device."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:  # torch says "Invalid device string"
        raise ValueError(f"device {device!r} is not a device: {err}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        why = (
            f"this torch ({torch.__version__}) is built without CUDA"
            if torch.version.cuda is None
            else "no CUDA GPU is visible"
        )
        raise ValueError(f"device {str(device)!r} is not available: {why}; use 'cpu' or 'auto'")
    return resolved


def resolve_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r} (use one of float32, float16, bfloat16)")
    return getattr(torch, name)


def load(
    prototxt: str | Path,
    weights: str | Path | None = None,
    *,
    device: Any = "auto",
    dtype: Any = "float32",
    channels_last: bool = False,
    compile: bool = False,
    phase: str | int = "TEST",
    stages: Iterable[str] = (),
    level: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    outputs: Sequence[str] | None = None,
    seed: int | None = None,
    allow_missing: bool = False,
    fold_bn: bool = False,
    allow_oversize: bool = False,
    max_variants: int = 8,
    dialect: str | None = None,
    plugins: Iterable[str] = (),
    fast_cpu: bool = True,
) -> Any:
    """A Caffe net as a CaffeModule (an nn.Module; in eval() mode for TEST).

    Blobs come from `weights` (a binary .caffemodel) when given, otherwise from the layers'
    fillers, seeded by `seed`. With `allow_missing`, layers the weights file lacks keep
    their filler values and layers the net lacks are skipped (see `module.weights_report`).
    `outputs` names extra blobs to return. `compile=True` applies torch.compile in place.
    `fold_bn=True` folds TEST-time BatchNorm (+ Scale) into the Convolution/InnerProduct
    before it (see `protocaffe.lower.fold_bn`); `module.folded_layers` lists what went.
    `fast_cpu=False` keeps TEST convolutions as plain `F.conv2d` calls instead of the fused
    oneDNN / GEMM CPU inference path (`protocaffe.lower.passes`).

    Before allocating, the plan (parameters and activations at the input shapes and dtype)
    is compared with the device's free memory: ResourceError when it does not fit, unless
    `allow_oversize`. Floating inputs are cast to the module's dtype and device; calling with
    new input shapes re-plans the net (keeping the `max_variants` most recently used plans).
    """
    import warnings

    from protocaffe.lower.builder import fill_blobs, lower_graph
    from protocaffe.runtime.caffemodel import load_caffemodel
    from protocaffe.runtime.guards import check_fits
    from protocaffe.runtime.statefile import load_state_file, state_format

    graph = compile_net(
        prototxt,
        phase=phase,
        stages=stages,
        level=level,
        input_shapes=input_shapes,
        dialect=dialect,
        plugins=plugins,
    )
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    check_fits(graph, device, dtype, allow_oversize=allow_oversize)
    module = lower_graph(
        graph,
        device=device,
        dtype=dtype,
        seed=seed,
        outputs=outputs,
        init=weights is None,
        fast_cpu=fast_cpu,
    )
    module.weights_report = None
    if weights is not None:
        if state_format(weights) is not None:  # a .safetensors / .pt state_dict
            report = load_state_file(module, weights, allow_missing=allow_missing)
        else:
            report = load_caffemodel(module, weights, allow_missing=allow_missing, seed=seed)
        if report.missing:
            fill_blobs(module, report.missing, seed=seed)
        for d in report.diagnostics:
            warnings.warn(d.render(), stacklevel=2)
        module.weights_report = report
    if fold_bn:
        from protocaffe.lower.fold_bn import fold_batch_norm

        report = module.weights_report
        module = fold_batch_norm(module)
        module.weights_report = report
    module.allow_oversize = allow_oversize
    module.max_variants = max_variants
    if channels_last:
        import torch

        module.to(memory_format=torch.channels_last)
    if compile:
        module.compile()
    return module


compile = compile_net  # `protocaffe.compile(path)`; `load`'s `compile` flag shadows it there
