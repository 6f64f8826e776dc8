"""Two gloo processes, each with its own batch, equal one process with iter_size doubled.

Caffe's multi-GPU rule (each rank a full batch, diffs summed over ranks and scaled by 1/ranks,
before clipping and normalisation) makes R ranks with iter_size N the same update as one
process with iter_size R*N fed the same batches, for losses normalised per batch. (Not with
clip_gradients: Caffe clips the iter_size sum, but the ranks' mean.)
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from _train_util import batches, linear_net

SOLVER = """net: "net.prototxt"
base_lr: 0.2
momentum: 0.9
lr_policy: "step"
gamma: 0.5
stepsize: 2
weight_decay: 0.01
iter_size: %d
max_iter: 4
random_seed: 5
"""
ITERS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, workdir: str) -> None:
    import os

    import torch.distributed as dist

    import protocaffe

    os.chdir(workdir)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        solver = protocaffe.Solver("solver.prototxt", device="cpu", rank=rank, world_size=world)
        data = batches(ITERS * world)
        solver.net.set_feed(data[rank::world])  # iteration k: rank r gets batch k*world + r
        solver.step(ITERS)
        if rank == 0:
            np.save("dist.npy", solver.net.params["ip"][0].detach().numpy())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_with_double_iter_size(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    import protocaffe

    (tmp_path / "net.prototxt").write_text(linear_net())
    (tmp_path / "solver.prototxt").write_text(SOLVER % 1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    distributed = np.load(tmp_path / "dist.npy")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "solver.prototxt").write_text(SOLVER % 2)
    single = protocaffe.Solver("solver.prototxt", device="cpu")
    single.net.set_feed(batches(ITERS * 2))
    single.step(ITERS)
    # Both start from the same fillers (random_seed 5 on rank 0, broadcast to rank 1).
    np.testing.assert_allclose(
        single.net.params["ip"][0].detach().numpy(), distributed, rtol=1e-6, atol=1e-7
    )
