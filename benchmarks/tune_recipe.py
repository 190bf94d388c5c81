#!/usr/bin/env python
"""Score variants of the training recipe with step counts, not seconds (docs/training.md).

Each variant trains the recipe's networks for fixed steps (U-Net 500, MSDNet 300: what
60 s gives on a shared 2-core machine) on the small sample's volume, predicts it with
the recipe's inference grid and scores it against the ground truth. Steps, not a time
budget, so the machine's load cannot change the outcome; one torch thread, so a run is
deterministic.

Run: ``python benchmarks/tune_recipe.py --seeds 0 1 2 --variants mean-std percentile all``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import torch

from napari_qlty import Weighting, infer
from napari_qlty.core.holdout import hold_out, positions_of
from napari_qlty.core.pairs import clean_pairs
from napari_qlty.data.tomogram import DEFAULT_SHAPE, make_tomogram
from napari_qlty.train.metrics import per_class_f1
from napari_qlty.train.recipe import DEFAULT_RECIPE, combine, iter_train_members

#: name -> (recipe changes, hold out labels for validation)
VARIANTS = {
    "mean-std": ({"normalisation": "mean-std"}, True),
    "percentile": ({"normalisation": "percentile"}, True),
    "none": ({"normalisation": "none"}, True),
    "all": ({}, False),
    "validation-0.1": ({"validation": 0.1}, True),
}


def run(name: str, seed: int, steps: tuple[int, int]) -> dict:
    changes, held_out = VARIANTS[name]
    recipe = replace(DEFAULT_RECIPE, **changes)
    tomo = make_tomogram(DEFAULT_SHAPE, seed=seed)
    image = torch.from_numpy(tomo.image)[None, None]
    labels = torch.from_numpy(tomo.annotations.astype(np.int16))[None]
    grid = recipe.training_grid(DEFAULT_SHAPE)
    pairs = clean_pairs(image, labels, grid)
    intensity = recipe.intensity().fit(image)
    train, val = (pairs.images, pairs.labels), None
    if held_out:
        split = hold_out(pairs.labels, positions_of(pairs.indices, pairs.origins, len(grid)), recipe.validation, seed)
        train = (pairs.images[split.train], split.train_labels)
        val = (pairs.images[split.val], pairs.labels[split.val]) if len(split.val) else None
    configs = [replace(c, epochs=max(1, s // c.steps_per_epoch))
               for c, s in zip(recipe.configs(ndim=3, classes=2, seed=seed), steps)]
    t0 = time.perf_counter()
    events = iter_train_members(configs, train, val, ndim=3, intensity=intensity)
    while True:
        try:
            next(events)
        except StopIteration as done:
            trained = done.value
            break
    seconds = time.perf_counter() - t0
    model = combine([m for _, m, _ in trained]).eval()  # applies its normalisation by itself
    with torch.no_grad():
        y = infer(model, image, recipe.inference_grid(DEFAULT_SHAPE),
                  Weighting("border", border_weight=recipe.border_weight), batch_size=1)
    predicted = y[0].argmax(0).numpy()
    f1 = per_class_f1(tomo.labels, predicted, 2)
    return {"variant": name, "seed": seed, "macro": round(float(np.mean(f1)), 4), "filament": round(float(f1[1]), 4),
            "share": round(float((predicted == 1).mean() * 100), 2), "train_s": round(seconds, 1),
            "steps": [e.step for _, _, e in trained]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["mean-std", "percentile"], choices=list(VARIANTS))
    p.add_argument("--steps", type=int, nargs=2, default=[500, 300], help="U-Net and MSDNet steps")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for seed in args.seeds:
        for name in args.variants:
            print(json.dumps(run(name, seed, tuple(args.steps))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
