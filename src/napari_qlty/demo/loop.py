"""`make demo`: sparse labels to a whole-volume segmentation, in one loop (issue 5).

On the built-in synthetic tomogram (filaments in noise, with a ground truth and a few
painted slices, 0.06 % of voxels, as in the paper):

1. checks the engine: a small network stitched from windows equals the same network
   run on the whole volume;
2. exports training pairs with window 64, step 32, border 0 to a zarr (Table 2);
3. trains a small ensemble (a U-Net and a mixed-scale dense network) on them with a
   masked cross-entropy;
4. runs the ensemble over the volume with window 128, step 108, border 10 and border
   weight 0 into a zarr store (Table 3);
5. scores the stitched segmentation against the ground truth (macro F1), near the
   seams and away from them;
6. draws the paper's Figure 2 (a slice, the filament probability, the sparse labels,
   the windows and the seams) with Pillow.

``python -m napari_qlty.demo --paper`` runs it on the paper's volume (236, 720, 510).
See ``docs/demo.md`` for the choices and the measured results.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import Grid, Weighting, infer
from ..data.tomogram import PAPER_SHAPE, make_tomogram
from ..io.pairs_store import PairsDataset, export_pairs
from ..run import predict
from ..train.recipe import DEFAULT_RECIPE, Recipe
from ..train.trainer import TrainConfig
from .figure import figure2

DEMO_SHAPE: tuple[int, int, int] = (128, 236, 236)
"""The default volume: the paper's inference window (128) fits along Z with no padding,
and Y and X (236, the paper's Z) take two windows each at step 108, exactly as in the
paper (overlap 20 = 2 x border), so the seams are the paper's seams."""


#: the paper's figures, printed beside ours
PAPER = {
    "shape": PAPER_SHAPE,
    "windows": 2310,
    "kept": 256,
    "labelled": {0: 51505, 1: 1809},
    "duplication": 7.47,
    "table3_windows": 231,
    "macro_f1": 0.88,
}


#: the recipe the demo and the Train widget share (napari_qlty.train.recipe)
TRAIN_WINDOW, TRAIN_STEP = DEFAULT_RECIPE.window, DEFAULT_RECIPE.step


INFER_WINDOW, INFER_STEP = DEFAULT_RECIPE.infer_window, DEFAULT_RECIPE.infer_step
INFER_BORDER = DEFAULT_RECIPE.infer_border


F1_TARGET, SEAM_TOLERANCE = 0.85, 0.02


# -- printing ---------------------------------------------------------------------------
def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def table(rows: list[tuple], header: tuple | None = None) -> str:
    rows = [tuple(str(c) for c in r) for r in rows]
    if header:
        rows = [tuple(header)] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  " + "  ".join(cells))
        if header and k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_s(seconds: float) -> str:
    return f"{seconds:.1f} s"


# -- 1. the engine check ------------------------------------------------------------------
def engine_check(x: torch.Tensor) -> tuple[bool, str]:
    """A 2-convolution network (reach 2) stitched from windows with a border band of 4 and
    border weight 0 equals the same network run on the whole volume at once."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(2, 2, 3, padding=1)
    ).eval()
    shape = tuple(x.shape[2:])
    window = tuple(min(64, s) for s in shape)
    grid = Grid(shape, window=window, step=tuple(max(1, w - 8) for w in window), border=4)
    with torch.no_grad():
        stitched = infer(net, x, grid, Weighting("border", border_weight=0.0), batch_size=4)
        whole = net(x)
    diff = float((stitched - whole).abs().max())
    ok = diff < 1e-4
    line = (f"engine check: max |stitched - whole-volume| = {diff:.1e} over {len(grid)} windows "
            f"(window {window[0]}, border 4 >= network reach 2): {'OK' if ok else 'MISMATCH'}")
    return ok, line


# -- 2. pairs ---------------------------------------------------------------------------
def table2(stats, shape) -> str:
    paper = shape == PAPER_SHAPE
    rows = [
        ("windows in the grid", stats.total_windows, PAPER["windows"]),
        ("windows kept (>= 1 label)", stats.kept_windows, PAPER["kept"]),
    ]
    for c in sorted(stats.labelled_voxels):
        rows.append((f"labelled voxels, class {c} ({'filament' if c == 1 else 'background'})",
                     stats.labelled_voxels[c], PAPER["labelled"].get(c, "")))
    rows.append(("labelled voxels in kept windows", stats.labelled_in_kept, ""))
    rows.append(("duplication rate", f"{stats.duplication:.2f}", f"{PAPER['duplication']:.2f}"))
    header = ("Table 2", "ours", "paper" + ("" if paper else f" {PAPER_SHAPE}"))
    return table(rows, header)


# -- 3. training ------------------------------------------------------------------------
def demo_recipe(args) -> Recipe:
    """The shared recipe, with the hidden knobs' changes."""
    return replace(DEFAULT_RECIPE, window=args.train_window, step=args.train_step,
                   infer_window=args.infer_window, infer_step=args.infer_step, infer_border=args.infer_border)


def train_members(train_set, val_set, out: Path, args, recipe: Recipe, intensity) -> tuple[list, list[Path], float]:
    from ..train.recipe import iter_train_members

    configs = recipe.configs(ndim=3, classes=2, seed=args.train_seed, axes=tuple(args.axes), patch=args.patch,
                             batch_size=args.batch_size, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                             lr=args.lr, device=args.device, log_every=max(1, args.steps_per_epoch))
    for config in configs:
        print(f"  {config.arch}: {config.net}, 2.5D ({config.context} neighbouring slices a side), "
              f"{config.steps} steps of {config.batch_size} crops {config.patch}x{config.patch}", flush=True)
    t0 = time.perf_counter()
    paths = [out / f"{config.arch}.pt" for config in configs]
    trained = yield_all(iter_train_members(configs, train_set, val_set, ndim=3, budget=args.max_train_seconds,
                                           checkpoints=paths, intensity=intensity),
                        lambda event: print(f"    {event.member:<7}{event.line()}", flush=True)
                        if event.kind in ("start", "epoch", "done", "stopped") else None)
    return [model for _, model, _ in trained], paths[: len(trained)], time.perf_counter() - t0


def yield_all(events, show):
    """Run a generator to its end, showing each event; its return value."""
    while True:
        try:
            show(next(events))
        except StopIteration as done:
            return done.value


# -- 4. inference -----------------------------------------------------------------------
def table3(grid: Grid, seconds: float, model_windows: int) -> str:
    rows = []
    for axis, name in enumerate("ZYX"):
        origins = ", ".join(str(int(o)) for o in grid.axis_origins[axis])
        padded = "" if grid.padded_shape[axis] == grid.shape[axis] else f" (padded to {grid.padded_shape[axis]})"
        rows.append((f"axis {name}: size {grid.shape[axis]}{padded}", grid.counts[axis], f"origins {origins}"))
    rows.append(("windows", len(grid), " x ".join(map(str, grid.counts))))
    rows.append(("time (all windows, all members)", fmt_s(seconds), "+1 zeros window: predict's output check"))
    rows.append(("windows / s", f"{model_windows / seconds:.3f}" if seconds > 0 else "-", ""))
    return table(rows, ("Table 3", "windows", ""))


def paper_grid_note() -> str:
    g108 = Grid(PAPER_SHAPE, window=INFER_WINDOW, step=INFER_STEP, border=INFER_BORDER)
    g64 = Grid(PAPER_SHAPE, window=INFER_WINDOW, step=64)
    return (f"on the paper's volume {PAPER_SHAPE}, window {INFER_WINDOW} step {INFER_STEP} gives "
            f"{' x '.join(map(str, g108.counts))} = {len(g108)} windows, not the {PAPER['table3_windows']} "
            f"of the paper's Table 3; {PAPER['table3_windows']} = {' x '.join(map(str, g64.counts))} is "
            f"what step 64 gives")


def repo_figure_path() -> Path | None:
    """docs/figures/figure2.png of the source checkout this module runs from, if any."""
    root = Path(__file__).resolve().parents[2]
    docs = root / "docs"
    if (root / "pyproject.toml").is_file() and docs.is_dir():
        return docs / "figures" / "figure2.png"
    return None


# -- the loop ---------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m napari_qlty.demo", description=__doc__.split("\n")[0])
    p.add_argument("--paper", action="store_true", help=f"use the paper's volume {PAPER_SHAPE} (slow on a CPU)")
    p.add_argument("--out", default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--figure", default="auto",
                   help="where else to save Figure 2 ('auto': docs/figures/figure2.png of a source "
                        "checkout; 'none': only the output folder)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small convolutions gain nothing from more on a "
                        "CPU, and lose a lot when the machine is shared)")
    p.add_argument("--max-train-seconds", type=float, default=180.0,
                   help="stop training when this much time is spent (both networks); 0: no limit")
    # hidden knobs (tests, experiments)
    h = argparse.SUPPRESS
    p.add_argument("--shape", default=None, help=h)
    default = TrainConfig()
    p.add_argument("--epochs", type=int, default=default.epochs, help=h)
    p.add_argument("--steps-per-epoch", type=int, default=default.steps_per_epoch, help=h)
    p.add_argument("--batch-size", type=int, default=default.batch_size, help=h)
    p.add_argument("--patch", type=int, default=default.patch, help=h)
    p.add_argument("--lr", type=float, default=default.lr, help=h)
    p.add_argument("--axes", default="".join(map(str, default.axes)), help=h)
    p.add_argument("--train-window", type=int, default=TRAIN_WINDOW, help=h)
    p.add_argument("--train-step", type=int, default=TRAIN_STEP, help=h)
    p.add_argument("--infer-window", type=int, default=INFER_WINDOW, help=h)
    p.add_argument("--infer-step", type=int, default=INFER_STEP, help=h)
    p.add_argument("--infer-border", type=int, default=INFER_BORDER, help=h)
    p.add_argument("--annotated-fraction", type=float, default=6e-4, help=h)
    p.add_argument("--train-seed", type=int, default=None, help=h)  # default: --seed
    args = p.parse_args(argv)
    if args.train_seed is None:
        args.train_seed = args.seed
    args.axes = [int(c) for c in str(args.axes).replace(",", "")]
    if args.shape:
        args.shape = tuple(int(s) for s in args.shape.split(","))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    shape = PAPER_SHAPE if args.paper else (args.shape or DEMO_SHAPE)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="napari-qlty-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"napari-qlty demo: sparse labels to segmentation, on a synthetic tomogram {shape} (Z, Y, X)")
    print(f"output folder: {out}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")

    # 1 ------------------------------------------------------------------------------
    section("1. data and engine check")
    t = time.perf_counter()
    tomo = make_tomogram(shape, seed=args.seed, annotated_fraction=args.annotated_fraction)
    timings["generate"] = time.perf_counter() - t
    x = torch.from_numpy(tomo.image)[None, None]
    annotations = tomo.annotations.astype(np.int16)
    labelled = int((annotations >= 0).sum())
    print(f"  tomogram generated in {fmt_s(timings['generate'])}: {math.prod(shape) / 1e6:.1f} M voxels, "
          f"{tomo.labels.mean() * 100:.1f} % filament; {labelled} voxels labelled "
          f"({labelled / math.prod(shape) * 100:.3f} %) on slices {tomo.annotated_slices}")
    t = time.perf_counter()
    ok_engine, line = engine_check(x)
    timings["engine check"] = time.perf_counter() - t
    print("  " + line)

    # 2 ------------------------------------------------------------------------------
    recipe = demo_recipe(args)
    section(f"2. training pairs: window {recipe.window}, step {recipe.step}, border {recipe.border} (Table 2)")
    t = time.perf_counter()
    train_grid = recipe.training_grid(shape)
    pairs_path = out / "pairs.zarr"
    for _written, _total, stats in export_pairs(x.numpy(), annotations[None], train_grid, pairs_path,
                                                overwrite=True):
        pass
    timings["export"] = time.perf_counter() - t
    print(table2(stats, shape))
    print(f"  written to {pairs_path} in {fmt_s(timings['export'])}")

    # 3 ------------------------------------------------------------------------------
    section("3. training an ensemble (masked cross-entropy, Adam, 20 % of the labels held out for validation)")
    from ..core.holdout import hold_out
    from ..train import as_pairs, save_ensemble
    from ..train.recipe import combine

    args.max_train_seconds = args.max_train_seconds or None
    t = time.perf_counter()
    dataset = PairsDataset(pairs_path)
    intensity = recipe.intensity().fit(x)  # statistics of the whole volume; the models keep the mode
    pairs = as_pairs(dataset)  # read the zarr once for both networks (the trainer maps the intensities)
    split = hold_out(pairs.labels, dataset.positions, recipe.validation, args.train_seed,
                     ignore_label=pairs.ignore_label)
    train_set = (pairs.images[split.train], split.train_labels)
    val_set = (pairs.images[split.val], pairs.labels[split.val]) if len(split.val) else None
    timings["read pairs"] = time.perf_counter() - t
    print(f"  {len(split.train)} training windows, {len(split.val)} validation windows holding "
          f"{split.val_voxels} of the {split.labelled_voxels} labelled voxels (no training label lies in a "
          "validation window)")
    members, paths, timings["train"] = train_members(train_set, val_set, out, args, recipe, intensity)
    model = combine(members).eval()
    ens_path = save_ensemble(model, out / "ensemble.pt", paths) if len(members) > 1 else paths[0]
    print(f"  trained in {fmt_s(timings['train'])}; checkpoints {', '.join(p.name for p in paths)} and "
          f"{ens_path.name} (weights + recipe) in {out}")

    # 4 ------------------------------------------------------------------------------
    section(f"4. inference: window {recipe.infer_window}, step {recipe.infer_step}, border {recipe.infer_border}, "
            f"border weight {recipe.border_weight:g} (Table 3)")
    grid = replace(recipe, infer_depth=None).inference_grid(shape)  # the paper's deep windows
    prediction = out / "prediction.zarr"
    t = time.perf_counter()
    predict(model, x.numpy(), grid, prediction, weighting=Weighting("border", border_weight=recipe.border_weight),
            batch_size=1, device=args.device, postprocess="softmax", overwrite=True)
    timings["inference"] = time.perf_counter() - t
    print(table3(grid, timings["inference"], len(grid)))
    print(f"  {paper_grid_note()}")
    print(f"  stitched probabilities: {prediction} (OME-Zarr, levels 0/ 1/ ..., {(2, *shape)})")

    # 5 ------------------------------------------------------------------------------
    section("5. quality against the ground truth")
    from ..io.prediction import Prediction
    from ..train.metrics import per_class_f1, seam_report

    t = time.perf_counter()
    store = Prediction(prediction)
    predicted = store.labels()[0]
    truth = tomo.labels
    report = seam_report(truth, predicted, grid, classes=2, distance=2)
    per_class = per_class_f1(truth, predicted, 2)
    timings["score"] = time.perf_counter() - t
    f1_ok = report["all"] >= F1_TARGET
    seams_ok = (not math.isnan(report["near"])) and abs(report["gap"]) <= SEAM_TOLERANCE
    print(table([
        ("macro F1, all voxels", f"{report['all']:.3f}", f"target >= {F1_TARGET}: {'met' if f1_ok else 'NOT met'}"),
        ("  F1 background / filament", f"{per_class[0]:.3f} / {per_class[1]:.3f}", ""),
        (f"macro F1 within 2 voxels of a seam ({report['voxels_near']} voxels)", f"{report['near']:.3f}", ""),
        (f"macro F1 elsewhere ({report['voxels_elsewhere']} voxels)", f"{report['elsewhere']:.3f}",
         f"difference {report['gap']:+.3f} (tolerance {SEAM_TOLERANCE}): "
         + ("no seam artefact" if seams_ok else "SEAM ARTEFACT" if not math.isnan(report['near']) else "no seams")),
        ("predicted / true filament share", f"{(predicted == 1).mean() * 100:.2f} % / {truth.mean() * 100:.2f} %", ""),
    ]))

    # 6 ------------------------------------------------------------------------------
    section("6. Figure 2")
    t = time.perf_counter()
    z = int(tomo.annotated_slices["xy"][0])
    prob = store.probabilities()[0, 1, z]
    figure_paths = [out / "figure2.png"]
    if args.figure == "auto":
        repo = repo_figure_path()
        if repo is not None:
            figure_paths.append(repo)
    elif args.figure and args.figure.lower() != "none":
        figure_paths.append(Path(args.figure))
    figure2(tomo.image[z], prob, annotations[z], truth[z].astype(bool), predicted[z] == 1, grid, z, figure_paths,
            f"synthetic tomogram {shape}, XY slice z={z}; inference window {grid.window[0]}, step "
            f"{grid.step[0]}, border {grid.border[0]} (weight 0): {len(grid)} windows; macro F1 {report['all']:.3f}")
    timings["figure"] = time.perf_counter() - t
    for p in figure_paths:
        print(f"  {p}")

    total = time.perf_counter() - t_start
    section("timings")
    print(table([(k, fmt_s(v)) for k, v in timings.items()] + [("total", fmt_s(total))]))
    print(f"\nsummary: macro F1 {report['all']:.3f} (filament F1 {per_class[1]:.3f}), seam gap {report['gap']:+.3f}, "
          f"{len(grid)} inference windows, total {fmt_s(total)}; "
          + ("OK" if ok_engine else "ENGINE MISMATCH"))
    return 0 if ok_engine else 1
