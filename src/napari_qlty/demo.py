"""`make demo`: the engine on the built-in synthetic tomogram.

Cuts the volume into overlapping windows, runs a small 3D network over them in
batches, blends the outputs, and checks the blend against the same network run on the
whole volume at once (with a border band at least the network's reach, they agree to
float rounding, seams included). Also prints the training-pair table for the sparse
annotations. Run ``python -m napari_qlty.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from . import Grid, Weighting, clean_pairs, extract, infer, stitch
from .sample_data import DEFAULT_SHAPE, PAPER_SHAPE, make_tomogram


def small_network(channels: int = 8, seed: int = 0) -> torch.nn.Module:
    """Two 3x3x3 convolutions (reach 2 voxels): a stand-in for a segmentation net."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(channels, 2, 3, padding=1),
    ).eval()


def timed(label: str, fn):
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    print(f"  {label:<38} {dt * 1e3:9.1f} ms")
    return out, dt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_qlty.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--paper", action="store_true", help=f"use the paper's volume {PAPER_SHAPE}")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--step", type=int, default=48)
    parser.add_argument("--border", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    shape = PAPER_SHAPE if args.paper else DEFAULT_SHAPE

    print(f"synthetic tomogram {shape} (Z, Y, X)")
    tomo, _ = timed("generate", lambda: make_tomogram(shape, seed=0))
    x = torch.from_numpy(tomo.image)[None, None]

    grid = Grid(shape, window=args.window, step=args.step, border=args.border)
    weighting = Weighting("border", border_weight=0.0)
    print(f"\n{grid}: {len(grid)} windows, duplication {grid.duplication:.2f}")
    net = small_network()

    print("\nall windows at once")
    patches, t_cut = timed("extract", lambda: extract(x, grid))
    outputs, t_model = timed(f"model on {len(patches)} windows", lambda: net(patches))
    stitched, t_stitch = timed("stitch (border 0-weighted)", lambda: stitch(outputs, grid, weighting))
    print(f"\nbatched inference (batch {args.batch_size}, memory: input + output + 2 batches)")
    streamed, t_infer = timed("infer", lambda: infer(net, x, grid, weighting, batch_size=args.batch_size))
    whole, t_whole = timed("same network on the whole volume", lambda: net(x))

    diff = (stitched - whole).abs().max().item()
    diff_streamed = (streamed - stitched).abs().max().item()
    print(f"\nmax |stitched - whole-volume| = {diff:.2e}  (border {args.border} >= network reach 2)")
    print(f"max |batched - all-at-once|   = {diff_streamed:.2e}")
    voxels = np.prod(shape)
    print(f"throughput: {voxels / t_infer / 1e6:.1f} Mvoxel/s batched, extract+stitch overhead "
          f"{(t_cut + t_stitch) * 1e3:.0f} ms for {voxels / 1e6:.1f} Mvoxel")

    print("\ntraining pairs from the sparse annotations (window 64, step 32, border 0)")
    train_grid = Grid(shape, window=min(64, min(shape)), step=32)
    pairs, _ = timed("clean_pairs", lambda: clean_pairs(x, torch.from_numpy(tomo.annotations)[None], train_grid))
    print(pairs.stats.table())
    ok = diff < 1e-4 and diff_streamed < 1e-4
    print("\nOK" if ok else "\nMISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
