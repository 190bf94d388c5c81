#!/usr/bin/env python
"""Does ``--memory-budget`` hold with ``--batch-size auto``?

For each case, one process runs ``napari-qlty predict`` over a zarr volume larger than the
budget, and ``/usr/bin/time -v`` reads its peak RSS. The interpreter's own baseline
(python, torch, zarr and the model loaded, a tiny prediction run) is measured the same
way in its own process, so ``peak - baseline`` is what the run itself held, and the
ratio to the budget says whether the budget held (target: at most 1.0).

Run: ``python benchmarks/bench_memory_budget.py --workdir /path/with/space``. Prints a
markdown table; no timing or memory is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_out_of_core import MAKE, timed_process  # noqa: E402

NETS = {
    "conv": "torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1))",
    "unet": "__import__('napari_qlty.train.networks', fromlist=['unet']).unet(dims=3, channels=8)",
}

SAVE = """
import sys, torch
from napari_qlty.train import save_checkpoint
torch.manual_seed(0)
kind = sys.argv[2]
if kind == "conv":
    torch.jit.script({conv}.eval()).save(sys.argv[1])
else:
    net = {unet}
    save_checkpoint(net, sys.argv[1], "napari_qlty.train.networks:unet", {{"dims": 3, "channels": 8}})
"""

BASELINE = """
import sys, numpy as np, torch, zarr
from napari_qlty import Grid, predict
from napari_qlty.models import ModelSpec
x = np.zeros((1, 1, 32, 32, 32), np.float32)
predict(ModelSpec(sys.argv[1]), x, Grid(x.shape[2:], 32, 32), sys.argv[2], device="cpu", overwrite=True)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None)
    p.add_argument("--cases", default="conv:2GiB:1GiB,unet:128MiB:512MiB",
                   help="model:volume:budget, comma separated")
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="qlty-budget-")
    rows = []
    for case in args.cases.split(","):
        kind, size, budget = case.split(":")
        voxels = {"GiB": 1 << 30, "MiB": 1 << 20}[size[-3:]] * float(size[:-3]) // 4
        edge = int(round((voxels / 2) ** (1 / 3) / 64) * 64)
        z, y, x = edge, edge, 2 * edge
        data = os.path.join(work, f"in-{kind}-{size}.zarr")
        if not os.path.exists(data):
            subprocess.run([sys.executable, "-c", MAKE, data, str(z), str(y), str(x)], check=True)
        model = os.path.join(work, f"{kind}.pt")
        subprocess.run([sys.executable, "-c", SAVE.format(**NETS), model, kind], check=True)
        _, base, _ = timed_process([sys.executable, "-c", BASELINE, model, os.path.join(work, f"base-{kind}.zarr")])
        out = os.path.join(work, f"out-{kind}-{size}.zarr")
        window, step, border = ("64", "48", "8") if kind == "unet" else ("128", "108", "10")
        wall, peak, _ = timed_process([
            sys.executable, "-m", "napari_qlty.cli", "predict", data, out, "--model", model,
            "--window", window, "--step", step, "--border", border, "--border-weight", "0",
            "--postprocess", "softmax", "--dtype", "float16", "--batch-size", "auto",
            "--memory-budget", budget, "--device", "cpu", "--overwrite",
        ])
        budget_gib = {"GiB": 1, "MiB": 1 / 1024}[budget[-3:]] * float(budget[:-3])
        rows.append((kind, f"{z}x{y}x{x} ({size})", budget, f"{base:.2f}", f"{peak:.2f}",
                     f"{peak - base:.2f}", f"{(peak - base) / budget_gib:.2f}", f"{wall:.0f}"))
    print("| model | volume | budget | baseline GiB | peak RSS GiB | peak - baseline GiB | / budget | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
