#!/usr/bin/env python
"""Do the Train widget's defaults reach what the demo's recipe reaches? (issue 12)

On the small sample's volume (``DEFAULT_SHAPE``, 64 x 192 x 160) with its labels
(``make_tomogram(shape, seed)``, 0.06 % of the voxels painted), with the same training
budget in seconds, and scored against the ground truth (macro F1 and filament F1 over
every voxel), three arms run, each in its own process, interleaved seed by seed (demo,
widget, before, next seed, ...) so that the load of a shared machine falls on all of
them alike; torch runs one thread in every arm:

* ``demo``: ``python -m napari_qlty.demo --shape 64,192,160 --seed S --train-seed 0
  --max-train-seconds B`` (export to zarr, held-out split, the recipe's two networks,
  ``predict``); its training seed is the widget's (0), so the two arms differ by their
  code paths and the load, not by a draw of the networks' initial weights;
* ``widget``: a real napari viewer (run under ``xvfb-run``) with the image and labels
  layers, the Train widget exactly as it opens, its time budget set to B, **Train**
  pressed; the round's whole-image prediction (made by the widget) is scored;
* ``before``: what the Train widget did before issue 12 (a U-Net of 8 channels without
  batch norm, 10-step epochs, learning rate 2e-3 with no decay within the budget, three
  orientations, 20 % of the overlapping windows for validation), predicted with the
  Tiled inference widget's defaults then (window 64, step 48, border 8, border weight 1).

Run: ``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/bench_training_defaults.py
--seeds 10 11 12 --budget 60``. Prints one JSON line per run and a markdown table; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (64, 192, 160)


def score(truth, predicted) -> dict:
    import numpy as np

    from napari_qlty.train.metrics import per_class_f1

    f1 = per_class_f1(truth, predicted, 2)
    return {"macro": round(float(np.mean(f1)), 4), "filament": round(float(f1[1]), 4),
            "share": round(float((predicted == 1).mean() * 100), 2)}


def arm_demo(seed: int, budget: float, work: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "napari_qlty.demo", "--shape", ",".join(map(str, SHAPE)), "--seed", str(seed),
         "--train-seed", "0", "--max-train-seconds", str(budget), "--threads", "1", "--figure", "none",
         "--out", str(work)],
        capture_output=True, text=True, check=True).stdout
    import numpy as np

    from napari_qlty.data.tomogram import make_tomogram
    from napari_qlty.io.prediction import Prediction

    predicted = np.asarray(Prediction(work / "prediction.zarr").labels()[0])
    steps = {m: int(s) for m, s in re.findall(r"(unet|msdnet)\s+(?:done|stopped)\s+epoch \S+\s+step (\d+)/", out)}
    return {**score(make_tomogram(SHAPE, seed=seed).labels, predicted), "steps": steps}


def arm_widget(seed: int, budget: float, work: Path) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_qlty._napari.samples import _layer_data
    from napari_qlty._napari.widgets.train import TrainWidget
    from napari_qlty.data.tomogram import make_tomogram
    from napari_qlty.io.prediction import Prediction

    tomo = make_tomogram(SHAPE, seed=seed)
    viewer = napari.Viewer(show=True)
    for data, kwargs, kind in _layer_data(tomo):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.seconds_spin.value = budget
    widget.rounds_edit.value = work / "labels.rounds"
    app = QApplication.instance()
    widget.train()
    while widget.running:
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    if widget.outcome != "done":
        raise RuntimeError(widget.status.value)
    r = widget.current_round
    predicted = np.asarray(Prediction(r.prediction_path).labels()[0])
    steps = {m["arch"]: m["steps"] for m in r.attrs["members"]}
    viewer.close()
    return {**score(tomo.labels, predicted), "steps": steps, "held_out_f1": r.attrs["scores"]["val_f1"]}


def arm_before(seed: int, budget: float, work: Path) -> dict:
    """The Train widget and the Tiled inference widget as they were before issue 12."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from napari_qlty import Grid, Weighting, infer
    from napari_qlty.core.intensity import Normalisation
    from napari_qlty.core.pairs import clean_pairs, validation_split
    from napari_qlty.data.tomogram import make_tomogram
    from napari_qlty.train import TrainConfig, build_model, iter_train

    tomo = make_tomogram(SHAPE, seed=seed)
    image = torch.from_numpy(tomo.image)[None, None]
    labels = torch.from_numpy(tomo.annotations.astype(np.int16))[None]
    intensity = Normalisation("percentile").fit(image)
    pairs = clean_pairs(image, labels, Grid(SHAPE, window=64, step=32, border=0))
    train_idx, val_idx = validation_split(len(pairs), 0.2, 0)
    config = TrainConfig(arch="unet", net={"channels": 8}, classes=2, planar=True, patch=48, epochs=100_000,
                         steps_per_epoch=10, val_samples=16, lr=2e-3, final_lr=1e-4, axes=(0, 1, 2))
    model = build_model(config, 3)
    t0 = time.perf_counter()
    last = None
    for last in iter_train(config, (pairs.images[train_idx], pairs.labels[train_idx]),
                           (pairs.images[val_idx], pairs.labels[val_idx]), model=model, intensity=intensity,
                           stop=lambda: time.perf_counter() - t0 > budget):
        pass
    x = intensity.apply(image.clone().float())
    with torch.no_grad():
        y = infer(model.eval(), x, Grid(SHAPE, window=64, step=48, border=8), Weighting("border", border_weight=1.0),
                  postprocess=lambda t: t.softmax(1), batch_size=4)
    return {**score(tomo.labels, y[0].argmax(0).numpy()), "steps": {"unet": last.step}}


ARMS = {"demo": arm_demo, "widget": arm_widget, "before": arm_before}


def one(arm: str, seed: int, budget: float) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-{arm}-") as work:
        t0 = time.perf_counter()
        result = ARMS[arm](seed, budget, Path(work))
    print(json.dumps({"arm": arm, "seed": seed, "budget": budget, **result,
                      "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)


def table(rows: list[dict], arms: list[str]) -> str:
    import numpy as np

    seeds = sorted({r["seed"] for r in rows})
    head = "| seed | " + " | ".join(f"{a} macro F1 | {a} filament F1" for a in arms) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(arms))]
    by = {(r["arm"], r["seed"]): r for r in rows}
    for s in seeds:
        cells = []
        for a in arms:
            r = by.get((a, s))
            cells += [f"{r['macro']:.3f}", f"{r['filament']:.3f}"] if r else ["–", "–"]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    means = []
    for a in arms:
        got = [by[(a, s)] for s in seeds if (a, s) in by]
        means += [f"**{np.mean([r['macro'] for r in got]):.3f}**", f"**{np.mean([r['filament'] for r in got]):.3f}**"]
    lines.append("| mean | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds, every arm")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--one", choices=list(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--log", default=None, help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    if args.one:
        one(args.one, args.seed, args.budget)
        return 0
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for seed in args.seeds:
        for arm in args.arms:
            out = subprocess.run([sys.executable, __file__, "--one", arm, "--seed", str(seed), "--budget",
                                  str(args.budget)], capture_output=True, text=True, env=env)
            line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
            if line is None:
                print(f"{arm} seed {seed} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            print(line, flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(line + "\n")
            rows.append(json.loads(line))
    print(table(rows, args.arms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
