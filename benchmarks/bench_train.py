"""Training iterations/s: protocaffe.Solver vs the same nets hand-written in PyTorch.

Two nets: a reduced FCN (conv/pool x2, fc6 conv, dropout, score, fixed bilinear Deconvolution
lr_mult 0, Crop, SoftmaxWithLoss normalize false; SGD momentum 0.99; 2x3x128x128) and a
classifier (conv-BatchNorm-Scale-ReLU-pool x2, InnerProduct; Adam + step; 32x3x32x32). Both
sides train on the same in-memory batches. Times: all implementations in one process, one
iteration each in turn (so a shared machine's load drifts over all alike), median per
iteration. Peak memory: each implementation alone in a fresh process (RSS; GPU: allocated).
Goal: protocaffe within 1.10x the hand-written loop's time per iteration.

Run: .venv/bin/python benchmarks/bench_train.py [--iterations 30] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

FCN_NET = """name: "reduced_fcn"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 128 dim: 128 }
    shape { dim: 2 dim: 1 dim: 128 dim: 128 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "Convolution" bottom: "pool2" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6"
  dropout_param { dropout_ratio: 0.5 } }
layer { name: "score" type: "Convolution" bottom: "fc6" top: "score"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 21 kernel_size: 1 weight_filler { type: "xavier" } } }
layer { name: "upscore" type: "Deconvolution" bottom: "score" top: "upscore" param { lr_mult: 0 }
  convolution_param { num_output: 21 group: 21 kernel_size: 8 stride: 4 bias_term: false
    weight_filler { type: "bilinear" } } }
layer { name: "crop" type: "Crop" bottom: "upscore" bottom: "data" top: "crop"
  crop_param { axis: 2 offset: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "crop" bottom: "label" top: "loss"
  loss_param { ignore_label: 255 normalize: false } }
"""

CLASSIFIER_NET = """name: "classifier"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 32 dim: 3 dim: 32 dim: 32 } shape { dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 64 kernel_size: 3 pad: 1 weight_filler { type: "msra" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

SOLVERS = {
    "fcn": 'net: "net.prototxt"\nbase_lr: 1e-4\nmomentum: 0.99\nweight_decay: 5e-4\n'
    'lr_policy: "fixed"\nmax_iter: 100000\nrandom_seed: 1\n',
    "classifier": 'net: "net.prototxt"\ntype: "Adam"\nbase_lr: 1e-3\nmomentum: 0.9\n'
    'momentum2: 0.999\nweight_decay: 5e-4\nlr_policy: "step"\ngamma: 0.1\nstepsize: 1000\n'
    "max_iter: 100000\nrandom_seed: 1\n",
}
NETS = {"fcn": FCN_NET, "classifier": CLASSIFIER_NET}


def batches(name: str, n: int, device: str) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        if name == "fcn":
            data = torch.randn(2, 3, 128, 128, generator=g)
            label = torch.randint(0, 21, (2, 1, 128, 128), generator=g).float()
            label[:, :, :8] = 255
        else:
            data = torch.randn(32, 3, 32, 32, generator=g)
            label = torch.randint(0, 10, (32,), generator=g).float()
        out.append({"data": data.to(device), "label": label.to(device)})
    return out


def make_runner(impl: str, name: str, device: str, data: list[dict]) -> Any:
    """`run(n)`: n training iterations of one implementation of net `name`."""
    if impl == "protocaffe":
        import protocaffe

        work = Path(tempfile.mkdtemp())
        (work / "net.prototxt").write_text(NETS[name.split("-")[0]])
        (work / "solver.prototxt").write_text(SOLVERS[name.split("-")[0]])
        cwd = os.getcwd()
        os.chdir(work)
        try:
            solver = protocaffe.Solver("solver.prototxt", device=device)
        finally:
            os.chdir(cwd)
        solver.net.set_feed(data[i % len(data)] for i in range(10**9))
        return solver.step
    sys.path.insert(0, str(HERE))
    from train_baseline import make, step

    model, opt = make(name)
    model.to(device)

    def run(n: int) -> None:
        for i in range(n):
            step(model, opt, data[i % len(data)])

    return run


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would include the pre-exec
    high-water mark of the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(impl: str, name: str, iterations: int, warmup: int, device: str) -> dict:
    """One implementation alone in this process: seconds per iteration and peak memory."""
    import torch

    torch.manual_seed(0)
    run = make_runner(impl, name, device, batches(name, 4, device))
    run(warmup)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(iterations)
    _sync(device)
    seconds = (time.perf_counter() - t0) / iterations
    peak = _peak_rss_mib()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"seconds": seconds, "peak_rss_mib": peak, "peak_gpu_mib": gpu}


def interleaved(variants: dict, name: str, iterations: int, warmup: int, device: str) -> dict:
    """All implementations in one process, one iteration each in turn: a shared machine's
    load then weighs on all of them alike. Median (wall, CPU) seconds per iteration of each;
    CPU time (all threads) is the steadier figure when other jobs compete for the cores."""
    import torch

    torch.manual_seed(0)
    data = batches(name, 4, device)
    runs = {label: make_runner(impl, net, device, data) for label, (impl, net) in variants.items()}
    for run in runs.values():
        run(warmup)
    wall: dict[str, list[float]] = {label: [] for label in runs}
    cpu: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(iterations):
        for label, run in runs.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            run(1)
            _sync(device)
            wall[label].append(time.perf_counter() - t0)
            cpu[label].append(time.process_time() - c0)
    return {
        label: (statistics.median(wall[label]), statistics.median(cpu[label])) for label in runs
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nets", default="fcn,classifier")
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "NET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(*args.child, args.iterations, args.warmup, args.device)
        print(json.dumps(result))
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(
        f"{'net':<11} {'implementation':<26} {'wall ms':>8} {'CPU ms':>8} {'RSS MiB':>8} "
        f"{'GPU MiB':>8}"
    )
    for name in args.nets.split(","):
        variants = {"pytorch": ("pytorch", name), "protocaffe": ("protocaffe", name)}
        if name == "classifier":  # also the literal port: BatchNorm and Scale apart
            variants["pytorch, BN+Scale apart"] = ("pytorch", "classifier-literal")
        med = interleaved(variants, name, args.iterations, args.warmup, args.device)
        for label, (impl, net) in variants.items():
            cmd = [sys.executable, __file__, "--child", impl, net, "--iterations", "3"]
            cmd += ["--warmup", "1", "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            mem = json.loads(out.stdout.strip().splitlines()[-1])
            gpu = mem["peak_gpu_mib"]
            gpu_text = f"{gpu:8.0f}" if gpu is not None else f"{'-':>8}"
            wall, cpu = med[label]
            print(
                f"{name:<11} {label:<26} {1000 * wall:8.1f} {1000 * cpu:8.1f} "
                f"{mem['peak_rss_mib']:8.0f} {gpu_text}"
            )
        for label in variants:
            if label != "protocaffe":
                w = med["protocaffe"][0] / med[label][0]
                c = med["protocaffe"][1] / med[label][1]
                print(f"{name:<11} protocaffe / {label}: wall {w:.3f}, CPU {c:.3f}")


if __name__ == "__main__":
    main()
