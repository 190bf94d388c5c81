#!/usr/bin/env python
"""Out of core: is the device kept busy while zarr reads and writes?

``predict`` over a zarr volume in a memory budget small enough for many regions, against
two floors measured in the same process, interleaved:

- model: the model alone on as many batches as the run has, already cut, on the device;
- zarr:  reading every input chunk and writing every output chunk (probabilities and
         labels, the run's shapes, dtypes and chunks) with plain zarr, no compute.

The target is ``predict <= 1.2 x max(model, zarr)`` on a GPU, where reading and writing
overlap with the model; on a CPU the model and zarr's codecs share the cores, so the
sum of the floors is printed as well. Medians of ``--repeats``; nothing is asserted.

    python benchmarks/bench_pipeline.py [--device cuda] [--dtype uint16]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import zarr

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))


def main() -> None:
    from napari_qlty import Grid, Weighting, predict
    from napari_qlty.io.formats import FAST_CODEC

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="192,384,384")
    p.add_argument("--dtype", default="float32", help="the input's stored dtype (uint8, uint16, float32, ...)")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--step", type=int, default=48)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--budget", default="384MiB")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    device = torch.device(args.device)
    work = tempfile.mkdtemp(dir=args.workdir, prefix="qlty-pipeline-")
    try:
        rng = np.random.default_rng(0)
        src = zarr.create_array(os.path.join(work, "in.zarr"), shape=(1, 1, *shape),
                              chunks=(1, 1, *(args.chunk,) * 3), dtype=args.dtype, compressors=FAST_CODEC)
        for z in range(0, shape[0], args.chunk):
            block = rng.normal(100, 20, size=(1, 1, min(args.chunk, shape[0] - z), *shape[1:]))
            src[:, :, z : z + args.chunk] = block.astype(args.dtype)
        grid = Grid(shape, args.window, args.step, border=8)
        torch.manual_seed(0)
        model = torch.nn.Conv3d(1, 2, 3, padding=1).to(device).eval()
        batches = math.ceil(len(grid) / args.batch_size)
        batch = torch.randn((args.batch_size, 1, *grid.window), device=device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def model_floor():
            with torch.no_grad():
                for _ in range(batches):
                    torch.softmax(model(batch), 1)
            sync()

        def zarr_floor():
            out = zarr.open_group(os.path.join(work, "floor.zarr"), mode="w")
            probs = out.create_array("p", shape=(1, 2, *shape), chunks=(1, 2, *(args.chunk,) * 3),
                                     dtype="float32", compressors=FAST_CODEC)
            labels = out.create_array("l", shape=(1, *shape), chunks=(1, *(args.chunk,) * 3), dtype="uint8",
                                      compressors=FAST_CODEC)
            for z in range(0, shape[0], args.chunk):
                x = np.asarray(src[:, :, z : z + args.chunk]).astype(np.float32)
                probs[:, :, z : z + args.chunk] = np.concatenate([x, x], axis=1)
                labels[:, z : z + args.chunk] = (x[:, 0] > 100).astype(np.uint8)

        runs = {"model": [], "zarr": [], "predict": []}
        regions = None
        for _ in range(args.repeats):
            for name in runs:
                target = os.path.join(work, "out.zarr")
                shutil.rmtree(target, ignore_errors=True)
                t = time.perf_counter()
                if name == "model":
                    model_floor()
                elif name == "zarr":
                    zarr_floor()
                else:
                    last = predict(model, src, grid, target, weighting=Weighting("border", 0.0), device=args.device,
                                   batch_size=args.batch_size, memory_budget=args.budget, postprocess="softmax",
                                   chunks=(args.chunk,) * 3)
                    regions = last.regions_total
                runs[name].append(time.perf_counter() - t)
        m = {k: statistics.median(v) for k, v in runs.items()}
        print(f"input {shape} {args.dtype}, {len(grid)} windows of {args.window}^3 in {batches} batches, "
              f"{regions} regions, budget {args.budget}, device {device}, {torch.get_num_threads()} threads")
        print()
        print("| model s | zarr s | predict s | / max(model, zarr) | / (model + zarr) |")
        print("|---:|---:|---:|---:|---:|")
        print(f"| {m['model']:.2f} | {m['zarr']:.2f} | {m['predict']:.2f} | "
              f"{m['predict'] / max(m['model'], m['zarr']):.2f} | {m['predict'] / (m['model'] + m['zarr']):.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
