#!/usr/bin/env python
"""What each speed option gains, and how far its result moves from float32.

``infer`` on a benchmark workload with each option of :class:`napari_qlty.Speed`
(autocast to bfloat16 / float16, channels-last, torch.compile), timed in the same process
as the float32 run it is compared with (medians of ``--repeats`` after a warm-up call that
also compiles). The error is the largest |difference| from float32 divided by float32's
largest |value|; "labels" is the share of voxels whose argmax agrees. Nothing is asserted.

    python benchmarks/bench_speed_options.py --workload 3d --model unet [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from bench_stitch import WORKLOADS  # noqa: E402

OPTIONS = {
    "float32": {},
    "bfloat16": {"precision": "bfloat16"},
    "float16": {"precision": "float16"},
    "channels-last": {"channels_last": True},
    "compile": {"compile": True},
    "bfloat16 + channels-last": {"precision": "bfloat16", "channels_last": True},
}


def main() -> None:
    from napari_qlty import Grid, Speed, Weighting, infer
    from napari_qlty.train.networks import UNet

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="3d", choices=sorted(WORKLOADS))
    p.add_argument("--shape", default=None, help="override the workload's input shape, e.g. 1,1,128,256,256")
    p.add_argument("--model", default="unet", choices=["conv", "unet"])
    p.add_argument("--options", default=",".join(OPTIONS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wl = dict(WORKLOADS[args.workload])
    if args.shape:
        wl["shape"] = tuple(int(s) for s in args.shape.split(","))
    device = torch.device(args.device)
    nd = len(wl["shape"]) - 2
    x = torch.randn(wl["shape"], generator=torch.Generator().manual_seed(0)).to(device)
    grid = Grid(wl["shape"][2:], wl["window"], wl["step"], wl["border"])
    weighting = Weighting("gaussian")
    torch.manual_seed(0)
    model = (UNet(dims=nd, channels=8) if args.model == "unet"
             else (torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)).to(device).eval()

    def run(speed):
        y = infer(model, x, grid, weighting, batch_size=wl["batch_size"], device=device, speed=speed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return y

    reference = None
    print(f"{args.workload} {tuple(wl['shape'])}, {len(grid) * wl['shape'][0]} windows, {args.model}, "
          f"{device}, {torch.get_num_threads()} threads")
    print()
    print("| option | s | x float32 | max error / max value | labels agree |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name in args.options.split(","):
        speed = Speed(**OPTIONS[name])
        t = time.perf_counter()
        y = run(speed)  # warm-up (and the compile)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            y = run(speed)
            times.append(time.perf_counter() - t)
        m = statistics.median(times)
        if reference is None:
            reference, base = y, m
        err = float((y - reference).abs().max() / reference.abs().max())
        agree = float((y.argmax(1) == reference.argmax(1)).float().mean())
        note = f" (first call {first:.1f} s)" if name == "compile" else ""
        print(f"| {name}{note} | {m:.3f} | {base / m:.2f} | {err:.1e} | {agree:.5f} |")


if __name__ == "__main__":
    main()
