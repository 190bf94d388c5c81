"""What the OME-Zarr pyramid costs and buys.

1. ``overhead``: ``predict`` of one volume (a zarr input on disk) with and without its
   pyramid, on the same regions and chunks, runs alternated, median of ``--repeats``.
2. ``first-view``: a large finished result, written region by region through the
   store's own ``write_region`` (level 0 and every coarser level, as a run writes them,
   with synthetic values instead of a model), then opened with the plugin's reader in a
   real napari viewer: the time from the reader's call to the first rendered frame.

    python benchmarks/bench_pyramid.py overhead [--shape 128,512,512] [--repeats 3]
    xvfb-run -a python benchmarks/bench_pyramid.py first-view [--shape 1024,2048,2048]

Prints markdown tables. No test asserts any of these times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr


def shape_arg(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


# -- 1. overhead ----------------------------------------------------------------------------
def overhead(args) -> None:
    from napari_qlty import Grid, predict

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pyramid-"))
    shape = args.shape
    rng = np.random.default_rng(0)
    source = zarr.create_array(str(workdir / "in.zarr"), shape=(1, 1, *shape), chunks=(1, 1, 64, 256, 256),
                               dtype="float32", overwrite=True)
    for z in range(0, shape[0], 64):
        source[0, 0, z:z + 64] = rng.standard_normal((min(64, shape[0] - z), *shape[1:]), dtype=np.float32)
    grid = Grid(shape, window=64, step=56, border=4)
    models = {
        "1x1 conv (I/O-bound: worst case)": torch.nn.Conv3d(1, 2, 1),
        "3x3x3 conv, 8 channels": torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                                      torch.nn.Conv3d(8, 2, 3, padding=1)),
    }
    rows = []
    for name, model in models.items():
        torch.manual_seed(0)
        model = model.eval()
        times = {1: [], args.levels: []}
        for _ in range(args.repeats):
            for levels in (1, args.levels):  # alternated: drift hits both alike
                out = workdir / f"out{levels}.zarr"
                shutil.rmtree(out, ignore_errors=True)  # a finished store would only be resumed
                t = time.perf_counter()
                predict(model, str(workdir / "in.zarr"), grid, out, device="cpu", chunks=(64, 64, 64),
                        region=args.region, levels=levels, postprocess="softmax", batch_size=4,
                        memory_budget="6GiB")
                times[levels].append(time.perf_counter() - t)
        plain, pyramid = statistics.median(times[1]), statistics.median(times[args.levels])
        rows.append((name, plain, pyramid))
    # the store's share alone: write_region of the same regions with and without levels
    write = {1: [], args.levels: []}
    values = torch.softmax(torch.randn(2, *args.region), 0)
    for _ in range(args.repeats):
        for levels in (1, args.levels):
            write[levels].append(write_regions(workdir / f"w{levels}.zarr", shape, args.region, levels, values))
    print(f"\n### Pyramid overhead: predict {shape} float32, window 64, step 56, chunks 64, "
          f"regions {args.region}, {args.levels} levels vs 1 (median of {args.repeats})\n")
    print("| model | without pyramid (s) | with pyramid (s) | extra |")
    print("| --- | ---: | ---: | ---: |")
    for name, plain, pyramid in rows:
        print(f"| {name} | {plain:.1f} | {pyramid:.1f} | {100 * (pyramid / plain - 1):+.1f} % |")
    plain, pyramid = statistics.median(write[1]), statistics.median(write[args.levels])
    print(f"| `write_region` alone (every region's final values, no model) | {plain:.1f} | {pyramid:.1f} | "
          f"{100 * (pyramid / plain - 1):+.1f} % |")


def write_regions(path: Path, shape, region, levels: int, values: torch.Tensor) -> float:
    """Seconds to write every region of ``shape`` through ``write_region`` (``values`` each time)."""
    shutil.rmtree(path, ignore_errors=True)
    store = open_store(path, shape, (64,) * len(shape), region, levels, "float32")
    t = time.perf_counter()
    for r in np.ndindex(*store.layout["region_counts"]):
        start = [i * s for i, s in zip(r, region)]
        stop = [min(a + s, n) for a, s, n in zip(start, region, shape)]
        store.write_region(0, start, values[(slice(None), *(slice(0, b - a) for a, b in zip(start, stop)))])
    took = time.perf_counter() - t
    store.close()
    return took


def open_store(path: Path, shape, chunks, region, levels, dtype):
    """A prediction store of ``shape`` (2 classes and labels) ready for ``write_region``."""
    from napari_qlty.core.pyramid import level_factors
    from napari_qlty.io.formats import canonical
    from napari_qlty.io.ngff import Dims
    from napari_qlty.io.prediction import OutputStore, levels_layout
    from napari_qlty.run.regions import LEVEL_CHUNK_FLOOR

    nd = len(shape)
    factors = level_factors(shape, (2,) * nd, levels)
    layout = canonical({
        "n_images": 1, "channels": 2, "shape": shape, "chunks": chunks, "region": region,
        "region_counts": [-(-s // r) for s, r in zip(shape, region)], "probabilities": True, "labels": True,
        "labels_rule": {"kind": "argmax"}, "dtype": dtype, "batch_size": 1, "axes": list("zyx"[-nd:]),
        "image_axis": "n", "dims": Dims.plan(1, "zyx"[-nd:]).to_json(),
        "label_dims": Dims.plan(1, "zyx"[-nd:], channel=False).to_json(),
        "levels": levels_layout(shape, chunks, factors, (LEVEL_CHUNK_FLOOR[nd],) * nd),
        "scale": [1.0] * nd, "translation": [0.0] * nd, "units": [None] * nd, "classes": ["background", "object"],
    })
    params = {"benchmark": list(shape), "levels": levels, "postprocess": "softmax"}  # the values are probabilities
    return OutputStore.open_for_run(path, params, layout, overwrite=True)


# -- 2. first view ----------------------------------------------------------------------------
def build(path: Path, shape, slab: int) -> float:
    """A finished prediction of ``shape`` written through OutputStore.write_region."""
    from napari_qlty.core.pyramid import granule, level_factors
    from napari_qlty.run.regions import DEFAULT_CHUNK, LEVEL_CHUNK_FLOOR

    nd = len(shape)
    chunks = (DEFAULT_CHUNK[nd],) * nd
    factors = level_factors(shape, (2,) * nd)
    unit = granule(chunks, factors, (LEVEL_CHUNK_FLOOR[nd],) * nd)
    region = (max(unit[0], slab // unit[0] * unit[0]), *(u * max(1, 512 // u) for u in unit[1:]))
    store = open_store(path, shape, chunks, region, len(factors), "float16")
    counts = store.layout["region_counts"]
    t = time.perf_counter()
    for r in np.ndindex(*counts):
        start = [i * s for i, s in zip(r, region)]
        stop = [min(a + s, n) for a, s, n in zip(start, region, shape)]
        axes = [torch.arange(a, b, dtype=torch.float32) for a, b in zip(start, stop)]
        mesh = sum(torch.sin(g / (7 + 3 * i)).reshape([-1 if j == i else 1 for j in range(nd)])
                   for i, g in enumerate(axes))
        p = torch.sigmoid(mesh)
        store.write_region(0, start, torch.stack([1 - p, p]))
        store.mark_finished((0, *r))
        print(f"  region {r} of {counts}", end="\r", flush=True)
    store.mark_complete()
    store.close()
    return time.perf_counter() - t


def first_view(args) -> None:
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/napari-qlty-runtime")
    shape = args.shape
    path = Path(args.workdir or tempfile.mkdtemp(prefix="bench-view-")) / "large.zarr"
    if not (path / "zarr.json").exists() or args.rebuild:
        took = build(path, shape, args.slab)
        print(f"\nbuilt {path} ({np.prod(shape):.3g} voxels) in {took:.0f} s")
    import napari

    from napari_qlty._napari.reader import get_reader
    from napari_qlty.io.prediction import Prediction

    store = Prediction(path)
    rows = []
    for repeat in range(args.repeats):
        viewer = napari.Viewer(show=False)
        t0 = time.perf_counter()
        layers = get_reader(str(path))(str(path))
        t1 = time.perf_counter()
        for data, kwargs, kind in layers:
            getattr(viewer, f"add_{kind}")(data, **kwargs)
        t2 = time.perf_counter()
        viewer.screenshot(canvas_only=True)  # the first frame, rendered
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        viewer.close()
    print(f"\n### First view of a finished {shape} prediction ({np.prod(shape):.3g} voxels, 2 classes float16 + "
          f"labels, {store.levels} levels, coarsest {tuple(store.layout['levels'][-1]['shape'])})\n")
    print("| run | reader (s) | add layers (s) | first frame (s) | total (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for i, row in enumerate(rows):
        print(f"| {'cold' if i == 0 else 'warm'} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--shape", type=shape_arg, default=(128, 512, 512))
    p.add_argument("--region", type=shape_arg, default=(128, 256, 256))
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None)
    p = sub.add_parser("first-view")
    p.add_argument("--shape", type=shape_arg, default=(1024, 2048, 2048))
    p.add_argument("--slab", type=int, default=128, help="region depth along the first axis")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None)
    p.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    {"overhead": overhead, "first-view": first_view}[args.what](args)


if __name__ == "__main__":
    main()
