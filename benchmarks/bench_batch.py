"""Images per second on a directory of same-size images: protocaffe vs OpenCV's blobFromImages.

32 random BGR images (224x224 by default, PNG files) go through FCN-8s (bench_forward's
weights), the whole job each way, files in and label maps out:

Both jobs load the net and its weights (537 MB) each time.

- `protocaffe run DIR` as a user runs it (in-process `protocaffe.cli.main`): read, mean-subtract,
  forward in batches (by default as many same-size images as fit 1 GiB of activations), then a
  label PNG, a colour PNG and an overlay per image; and the same with `--batch-size 1`;
- OpenCV: `cv2.imread` each file, `cv2.dnn.blobFromImages(images, 1.0, size, mean)` for all 32,
  one `forward()`, then the argmax label map of each image written with `cv2.imwrite`.

Rounds alternate the order; the table gives images/s from the median round.

    python benchmarks/bench_batch.py --iterations 3
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
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
    from PIL import Image

    from protocaffe.cli import main as cli_main

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    h, w = (int(v) for v in args.size.split(","))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "images"
        images.mkdir()
        for i in range(args.images):
            cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 256, (h, w, 3), np.uint8))
        proto, weights = make_weights(work, (1, 3, h, w))
        mean = ",".join(map(str, MEAN))

        def protocaffe_run(*flags: str) -> None:
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            argv = ["run", str(proto), "--weights", str(weights), "--input", str(images)]
            argv += ["--output", str(out), "--mean", mean, "--device", "cpu", *flags]
            with contextlib.redirect_stdout(io.StringIO()):
                assert cli_main(argv) == 0

        def opencv_run() -> None:
            out = work / "out_cv"
            out.mkdir(exist_ok=True)
            net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
            files = sorted(images.iterdir())
            batch = [cv2.imread(str(f)) for f in files]
            net.setInput(cv2.dnn.blobFromImages(batch, 1.0, (w, h), MEAN, swapRB=False))
            scores = net.forward("score")
            for f, score in zip(files, scores, strict=True):
                cv2.imwrite(str(out / f"{f.stem}_labels.png"), score.argmax(0).astype(np.uint8))

        runs = {
            "protocaffe run DIR (default batching)": protocaffe_run,
            "protocaffe run DIR --batch-size 1": lambda: protocaffe_run("--batch-size", "1"),
            "OpenCV imread + blobFromImages + forward": opencv_run,
        }
        for run in runs.values():  # warm-up, and the label maps to compare
            run()
        mine = [np.asarray(Image.open(f)) for f in sorted((work / "out").glob("*_labels.png"))]
        theirs = [cv2.imread(str(f), 0) for f in sorted((work / "out_cv").glob("*_labels.png"))]
        agree = float(np.mean([np.mean(a == b) for a, b in zip(mine, theirs, strict=True)]))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for i in range(args.iterations):
            order = list(runs)[i % len(runs) :] + list(runs)[: i % len(runs)]
            for name in order:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)
    print(
        f"FCN-8s, {args.images} PNG images {h}x{w}, {args.threads} threads, median of "
        f"{args.iterations} interleaved rounds; label maps agree on {agree:.2%} of pixels"
    )
    print("| job | images/s | median s for all |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        med = float(np.median(ts))
        print(f"| {name} | {args.images / med:.2f} | {med:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
