"""Images per second on a batch of same-size images: protocaffe vs OpenCV's blobFromImages.

32 random BGR uint8 images (224x224 by default) go through FCN-8s (bench_forward's weights) as
one batch both ways: protocaffe stacks them, subtracts the mean and calls the module once (what
`protocaffe run DIR --batch-size 32` does per batch); OpenCV builds the blob with
`cv2.dnn.blobFromImages(images, 1.0, size, mean)` and calls `forward()`. Rounds alternate
between the two; the table gives images/s from the median round, preprocessing included.

    python benchmarks/bench_batch.py --iterations 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

MEAN = (104.00699, 116.66877, 122.67892)  # FCN's BGR mean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--size", default="224,224", help="image H,W (224,224)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import cv2
    import numpy as np
    import torch
    from bench_forward import make_weights

    from protocaffe.runtime.api import load

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    h, w = (int(v) for v in args.size.split(","))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        proto, weights = make_weights(Path(tmp), (args.images, 3, h, w))
        module = load(proto, weights, device="cpu")
        net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)

    def protocaffe_batch() -> np.ndarray:
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() - mean
        with torch.no_grad():
            return module(batch)["score"].numpy()

    def opencv_batch() -> np.ndarray:
        net.setInput(cv2.dnn.blobFromImages(images, 1.0, (w, h), MEAN, swapRB=False))
        return net.forward("score")

    runs = {"protocaffe": protocaffe_batch, "opencv": opencv_batch}
    diff = np.abs(protocaffe_batch() - opencv_batch()).max() / np.abs(opencv_batch()).max()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.iterations):
        for name in list(runs) if i % 2 == 0 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    print(
        f"FCN-8s, {args.images} images {h}x{w} in one batch, {args.threads} threads, "
        f"median of {args.iterations} interleaved rounds (max rel. diff {diff:.1e})"
    )
    print("| implementation | images/s | median s per batch |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"| {name} | {args.images / med:.2f} | {med:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
