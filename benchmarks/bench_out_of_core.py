#!/usr/bin/env python
"""Out-of-core prediction: a volume bigger than the memory budget, through a small conv.

Steps (each its own process, so peak memory is each step's own, read by /usr/bin/time -v):

1. make    a float32 input zarr (N=1, C=1, Z, Y, X), 128^3 chunks, written slab by slab
2. floor   plain zarr: read every input chunk and write an output of our output's shape,
           dtype and chunks (the I/O our run cannot avoid)
3. ours    ``napari-qlty predict`` with ``--memory-budget`` (default 2GiB), conv 1->2, softmax
4. qlty    qlty 1.5.0 ``LargeNCZYXQuilt`` on a volume it can handle (per-window stitch into
           zarr), timed on a subset of windows and reported as windows/s; ours on the same
           windows for the ratio
5. cluster the same ``predict`` on a 2-worker ``distributed.LocalCluster`` over a smaller
           volume, compared byte for byte with the local run

Run: ``python benchmarks/bench_out_of_core.py --size 8GiB --workdir /path/with/space``.
``--peers-python`` names the interpreter holding qlty (``.venv-peers/bin/python`` from
``benchmarks/run.sh``). Prints a markdown table. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"([\d.]+)\s*([KMG]i?B)?", text.strip(), re.I)
    if not m:
        raise SystemExit(f"--size must look like 8GiB, got {text!r}")
    mult = {None: 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1e3, "mb": 1e6, "gb": 1e9}
    return int(float(m.group(1)) * mult[(m.group(2) or "").lower() or None])


def shape_for(nbytes: int) -> tuple[int, int, int]:
    """(Z, Y, X) of a float32 volume of about ``nbytes``, X twice Y, multiples of 128."""
    voxels = nbytes // 4
    edge = round((voxels / 2) ** (1 / 3) / 128) * 128
    return max(128, edge), max(128, edge), max(128, 2 * edge)


def timed_process(cmd: list[str], env=None) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) from /usr/bin/time -v, and stdout."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, (int(rss.group(1)) / (1 << 20)) if rss else float("nan"), proc.stdout


MAKE = """
import sys, numpy as np, zarr
from zarr.codecs import BloscCodec
path, z, y, x = sys.argv[1], *map(int, sys.argv[2:5])
arr = zarr.create_array(path, shape=(1, 1, z, y, x), chunks=(1, 1, 128, 128, 128), dtype="float32",
                        compressors=BloscCodec(cname="lz4", clevel=3, shuffle="shuffle"), overwrite=True)
rng = np.random.default_rng(0)
yy, xx = np.meshgrid(np.arange(y, dtype=np.float32), np.arange(x, dtype=np.float32), indexing="ij")
base = np.sin(yy / 17.0) * np.cos(xx / 23.0)
for z0 in range(0, z, 128):
    d = min(128, z - z0)
    slab = base[None] + rng.standard_normal((d, y, x), dtype=np.float32) * 0.5
    arr[0, 0, z0:z0 + d] = slab
"""

FLOOR = """
import sys, numpy as np, zarr
from zarr.codecs import BloscCodec
src = zarr.open_array(sys.argv[1], mode="r")
_, _, z, y, x = src.shape
out = zarr.create_array(sys.argv[2], shape=(1, 2, z, y, x), chunks=(1, 2, 128, 128, 128), dtype=sys.argv[3],
                        compressors=BloscCodec(cname="lz4", clevel=3, shuffle="shuffle"), overwrite=True)
for z0 in range(0, z, 128):
    slab = src[0, 0, z0:z0 + 128]
    out[0, :, z0:z0 + 128] = np.stack([slab, 1 - slab]).astype(sys.argv[3])
"""

MODEL = """
import sys, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval()
torch.jit.script(net).save(sys.argv[1])
"""

QLTY = """
import sys, time, numpy as np, torch
from qlty import LargeNCZYXQuilt
n_windows, z, y, x, w, s = map(int, sys.argv[2:8])
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval()
data = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, z, y, x), dtype=np.float32))
q = LargeNCZYXQuilt(sys.argv[1], 1, z, y, x, window=(w, w, w), step=(s, s, s), border=(10, 10, 10),
                    border_weight=0.0)
t0 = time.perf_counter()
done = 0
with torch.no_grad():
    for _ in range(min(n_windows, q.N_chunks)):
        i, patch = q.unstitch_next(data)
        q.stitch(net(patch[None]), i)
        done += 1
print(done / (time.perf_counter() - t0), q.N_chunks)
"""

OURS_SAME = """
import sys, time, numpy as np, torch
from napari_qlty.io.prediction import Prediction
from napari_qlty import Grid, Weighting
from napari_qlty import predict
z, y, x, w, s = map(int, sys.argv[2:7])
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1)).eval()
data = np.random.default_rng(0).standard_normal((1, 1, z, y, x), dtype=np.float32)
grid = Grid((z, y, x), w, s, 10)
t0 = time.perf_counter()
predict(net, data, grid, sys.argv[1], weighting=Weighting("border", 0.0), device="cpu", overwrite=True,
        memory_budget="2GiB")
print(len(grid) / (time.perf_counter() - t0), len(grid))
"""

CLUSTER = """
import sys, numpy as np, zarr
from distributed import Client, LocalCluster
from napari_qlty import Grid, Weighting
from napari_qlty.models import ModelSpec
from napari_qlty import predict
src, model, out = sys.argv[1:4]
shape = zarr.open_array(src, mode="r").shape[2:]
grid = Grid(shape, 128, 108, 10)
kw = dict(weighting=Weighting("border", 0.0), device="cpu", memory_budget="2GiB", overwrite=True,
          postprocess="softmax")
predict(ModelSpec(model), src, grid, out + "/local.zarr", **kw)
with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as c, Client(c) as client:
    predict(ModelSpec(model), src, grid, out + "/cluster.zarr", scheduler=client, **kw)
a = Prediction(out + "/local.zarr").probabilities()[...]
b = Prediction(out + "/cluster.zarr").probabilities()[...]
print("identical" if np.array_equal(a, b) else f"DIFFERENT max {np.abs(a - b).max()}")
"""


class Rows(list):
    """Table rows, each also printed to stderr as soon as it is measured."""

    def append(self, row) -> None:
        print("row:", row, file=sys.stderr, flush=True)
        super().append(row)


def run_py(code: str, *args, python=sys.executable, timed=True):
    cmd = [python, "-c", textwrap.dedent(code), *map(str, args)]
    if timed:
        return timed_process(cmd)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return out.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="8GiB", help="input size (float32)")
    p.add_argument("--budget", default="2GiB")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="output probabilities")
    p.add_argument("--workdir", default=None)
    p.add_argument("--peers-python", default=os.path.join(REPO, ".venv-peers", "bin", "python"))
    p.add_argument("--qlty-windows", type=int, default=40)
    p.add_argument("--skip", default="", help="comma list of steps to skip: floor,ours,qlty,cluster")
    p.add_argument("--reuse-input", action="store_true", help="keep an input.zarr already in --workdir")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = args.workdir or tempfile.mkdtemp(prefix="qlty-ooc-")
    os.makedirs(work, exist_ok=True)
    z, y, x = shape_for(parse_size(args.size))
    gib = z * y * x * 4 / (1 << 30)
    src, model = os.path.join(work, "input.zarr"), os.path.join(work, "model.pt")
    rows = Rows()
    print(f"input (1, 1, {z}, {y}, {x}) float32 = {gib:.2f} GiB; budget {args.budget}; work dir {work}",
          file=sys.stderr)
    if not (args.reuse_input and os.path.exists(src)):
        t_make, rss_make, _ = run_py(MAKE, src, z, y, x)
        rows.append(("make input (zarr write)", t_make, rss_make, ""))
    run_py(MODEL, model, timed=False)
    if "floor" not in skip:
        t_floor, rss_floor, _ = run_py(FLOOR, src, os.path.join(work, "floor.zarr"), args.dtype)
        rows.append(("floor: zarr read input + write output", t_floor, rss_floor, "1.00x"))
        shutil.rmtree(os.path.join(work, "floor.zarr"), ignore_errors=True)
    if "ours" not in skip:
        cli = os.path.join(os.path.dirname(sys.executable), "napari-qlty")
        t_ours, rss_ours, out = timed_process([
            cli, "predict", src, os.path.join(work, "ours.zarr"), "--model", model, "--window", "128",
            "--step", "108", "--border", "10", "--border-weight", "0", "--postprocess", "softmax",
            "--outputs", "probabilities", "--dtype", args.dtype, "--device", "cpu", "--batch-size", "4",
            "--memory-budget", args.budget, "--overwrite"])
        ratio = f"{t_ours / t_floor:.2f}x floor" if "floor" not in skip else ""
        rows.append((f"ours: napari-qlty predict (budget {args.budget})", t_ours, rss_ours, ratio))
        shutil.rmtree(os.path.join(work, "ours.zarr"), ignore_errors=True)
    if "qlty" not in skip and os.path.exists(args.peers_python):
        qz, qy, qx = 236, 720, 510
        qlty_rate = float(run_py(QLTY, os.path.join(work, "qlty"), args.qlty_windows, qz, qy, qx, 128, 108,
                                 python=args.peers_python, timed=False).split()[0])
        shutil.rmtree(os.path.join(work, "ours_small.zarr"), ignore_errors=True)  # else it resumes
        ours_rate = float(run_py(OURS_SAME, os.path.join(work, "ours_small.zarr"), qz, qy, qx, 128, 108,
                                 timed=False).split()[0])
        rows.append((f"qlty LargeNCZYXQuilt, ({qz}, {qy}, {qx}) w128 s108", float("nan"), float("nan"),
                     f"{qlty_rate:.2f} windows/s"))
        rows.append((f"ours predict, same volume and grid", float("nan"), float("nan"),
                     f"{ours_rate:.2f} windows/s ({ours_rate / qlty_rate:.1f}x qlty)"))
    if "cluster" not in skip:
        small = os.path.join(work, "small.zarr")
        run_py(MAKE, small, 256, 256, 512, timed=False)
        verdict = run_py(CLUSTER, small, model, work, timed=False).strip()
        rows.append(("2-worker LocalCluster vs local, (256, 256, 512)", float("nan"), float("nan"), verdict))
    print(f"\n| step | seconds | peak RSS (GiB) | note |\n|---|---:|---:|---|")
    for name, t, rss, note in rows:
        ts = "" if math.isnan(t) else f"{t:.1f}"
        rs = "" if math.isnan(rss) else f"{rss:.2f}"
        print(f"| {name} | {ts} | {rs} | {note} |")
    print(json.dumps({"shape": [1, 1, z, y, x], "gib": gib}), file=sys.stderr)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
