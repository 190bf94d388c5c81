#!/usr/bin/env python
"""How many torch operators does one ``infer`` call dispatch?

Counted with ``TorchDispatchMode`` on the CPU (every operator that reaches the
dispatcher, views included), with the identity model, and split into those that would
launch a kernel on a GPU (everything that is not a pure view). The count of one call is
fitted as ``fixed + per batch * batches + per window * windows`` from three runs: two
grids run in one batch each, and two batch sizes on one grid.

    python benchmarks/count_ops.py            # the 2D and 3D benchmark workloads

Prints a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from bench_stitch import WORKLOADS  # noqa: E402


def is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops, self.launches, self.names = 0, 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.names[func.__name__] += 1
        if not is_view(func):
            self.launches += 1
        return func(*args, **(kwargs or {}))


def count(shape, window, step, border, bw, batch_size, mode="border", fused=None):
    from napari_qlty import Grid, Weighting, infer

    x = torch.randn(shape)
    grid = Grid(shape[2:], window, step, border)
    weighting = Weighting(mode, border_weight=bw)
    infer(torch.nn.Identity(), x, grid, weighting, batch_size=batch_size, fused=fused)  # warm: weights built
    with torch.no_grad(), Count() as c:
        infer(torch.nn.Identity(), x, grid, weighting, batch_size=batch_size, fused=fused)
    windows = shape[0] * len(grid)
    return c, windows, -(-windows // batch_size)


def fit(wl, mode, fused=None):
    """(fixed, per batch, per window) for ops and for launches, and the workload's own count."""
    shape, window, step, border, bw = wl["shape"], wl["window"], wl["step"], wl["border"], wl["border_weight"]
    nd = len(shape) - 2
    small = (1, 1, *[window + step] * nd)
    large = (1, 1, *[window + 3 * step] * nd)
    rows, targets = [], []
    for s, b in ((small, 10**6), (large, 10**6), (large, 1)):
        c, windows, batches = count(s, window, step, border, bw, b, mode, fused)
        rows.append((1.0, batches, windows))
        targets.append((c.ops, c.launches))
    a = np.array(rows)
    sol = np.linalg.solve(a, np.array(targets, dtype=float))
    c, windows, batches = count(shape, window, step, border, bw, wl["batch_size"], mode, fused)
    return sol, (c, windows, batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="2d,3d")
    p.add_argument("--mode", default="border")
    p.add_argument("--top", type=int, default=0, help="also print the most frequent operators")
    p.add_argument("--path", default="both", choices=["both", "fused", "strided"],
                   help="fused: the accelerators' path (fixed operators per batch); strided: the CPU's")
    args = p.parse_args()
    print("| workload | path | windows | batches | ops | launching | fixed | per batch (launching) | per window (launching) |")
    print("|---|---|---|---|---|---|---|---|---|")
    paths = {"both": (True, False), "fused": (True,), "strided": (False,)}[args.path]
    for name in args.workloads.split(","):
        for fused in paths:
            sol, (c, windows, batches) = fit(WORKLOADS[name], args.mode, fused)
            print(f"| {name} {args.mode} | {'fused' if fused else 'strided'} | {windows} | {batches} | {c.ops} | "
                  f"{c.launches} | {sol[0, 0]:.0f} ({sol[0, 1]:.0f}) | {sol[1, 0]:.1f} ({sol[1, 1]:.1f}) | "
                  f"{sol[2, 0]:.2f} ({sol[2, 1]:.2f}) |")
            if args.top:
                print("   ", ", ".join(f"{k} {v}" for k, v in c.names.most_common(args.top)))


if __name__ == "__main__":
    main()
