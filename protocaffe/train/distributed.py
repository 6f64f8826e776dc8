"""Multi-process training with torch.distributed, with Caffe's multi-GPU semantics.

Each process (rank) runs the whole solver on its own full batch (the prototxt's batch size),
so the effective batch is batch x world size, as with `caffe train --gpu 0,1`. Rank 0's blobs
are broadcast once at the start; after every iteration's forward/backward passes the param
diffs are summed over ranks and scaled by 1/world size (Caffe's NCCL all-reduce), before
clipping, iter_size normalisation and the update, which every rank then applies identically.
Only rank 0 tests, displays and snapshots. BatchNorm statistics are not synchronised (each
rank keeps its own, as in Caffe; snapshots hold rank 0's). Data/HDF5Data records are strided
by rank in the train net (the feeder's `rank`/`world_size`).

Launch with torchrun, which sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR:
    torchrun --nproc_per_node 2 -m protocaffe train solver.prototxt          # one machine
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
        --nproc_per_node 4 -m protocaffe train solver.prototxt                # on each machine
NCCL is used for CUDA devices (one GPU per process, cuda:LOCAL_RANK), gloo on the CPU.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocaffe.train.params import LearnableBlob


def world_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: Any) -> tuple[int, int, Any]:
    """(rank, world size, device) for this process, joining the process group torchrun
    describes in the environment; (0, 1, device) when not launched by torchrun."""
    import torch
    import torch.distributed as dist

    from protocaffe.runtime.api import resolve_device

    world = world_from_env()
    device = resolve_device(device)
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def broadcast_blobs(blobs: list[LearnableBlob]) -> None:
    """Every rank starts from rank 0's blobs (Caffe broadcasts its params once)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for blob in blobs:
            dist.broadcast(blob.tensor.data, src=0)


def average_gradients(blobs: list[LearnableBlob]) -> None:
    """Sum the param diffs over ranks, then scale by 1/world size, in one flat all-reduce."""
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    tensors = [b.tensor for b in blobs if b.tensor.requires_grad]
    if not tensors:
        return
    for t in tensors:
        if t.grad is None:
            t.grad = torch.zeros_like(t)
    grads = [t.grad for t in tensors]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.mul_(float(np.float32(1) / np.float32(dist.get_world_size())))
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(reduced)


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun-launched run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
