#!/usr/bin/env python
"""Tiling overhead: ``infer`` time divided by the time of the model alone on the same
batches (the same windows, already cut, in the same process).

    python benchmarks/bench_overhead.py --workload 3d --model conv [--device cuda]

The model-alone floor runs the very batches ``infer`` runs (cut beforehand, on the device),
so the ratio is what cutting, moving, weighting, adding and normalising cost on top of
the model. Medians of ``--repeats`` runs; prints a markdown table; nothing is asserted.
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


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    from napari_qlty import Grid, Weighting, extract, infer
    from napari_qlty.core.inference import window_order
    from napari_qlty.core.weights import window_weights

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="3d", choices=sorted(WORKLOADS))
    p.add_argument("--model", default="conv", choices=["conv", "identity"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--paths", default="strided,fused", help="strided (the CPU's path), fused (accelerators')")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    wl = WORKLOADS[args.workload]
    device = torch.device(args.device)
    nd = len(wl["shape"]) - 2
    x = torch.randn(wl["shape"], generator=torch.Generator().manual_seed(0))
    grid = Grid(wl["shape"][2:], wl["window"], wl["step"], wl["border"])
    weighting = Weighting("gaussian", border_weight=wl["border_weight"])
    torch.manual_seed(0)
    model = ((torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1) if args.model == "conv"
             else torch.nn.Identity()).to(device).eval()
    order = window_order(window_weights(grid, weighting), x.shape[0])
    b = wl["batch_size"]
    batches = [extract(x, grid, order[i:i + b]).to(device) for i in range(0, len(order), b)]

    def floor():
        for batch in batches:
            model(batch)
        sync(device)

    rows = []
    for fused in [{"strided": False, "fused": True}[name] for name in args.paths.split(",")]:
        def ours():
            infer(model, x.to(device) if fused and device.type != "cpu" else x, grid, weighting, batch_size=b,
                  device=device, fused=fused)
            sync(device)

        ours()
        floor()
        t_ours, t_floor = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            floor()
            t_floor.append(time.perf_counter() - t)
            t = time.perf_counter()
            ours()
            t_ours.append(time.perf_counter() - t)
        m_ours, m_floor = statistics.median(t_ours), statistics.median(t_floor)
        rows.append((f"{args.workload} {args.model} {args.device}", "fused" if fused else "strided",
                     len(order), f"{m_floor:.3f}", f"{m_ours:.3f}", f"{m_ours / m_floor:.3f}"))
    print("| workload | path | windows | model alone s | infer s | overhead (infer / model) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")



if __name__ == "__main__":
    main()
