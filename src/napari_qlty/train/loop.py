"""One round of the interactive loop: the labels as they are now become a model, recorded.

:func:`iter_round` copies the labels into a new round of a
:class:`~napari_qlty.io.rounds.Rounds` folder (so what was trained on is kept, whatever
is painted meanwhile), cuts training pairs from that copy, holds out windows no training
label overlaps, trains the recipe's networks (new ones, or the parent round's to
continue it: "Train more"), scores the model on the held-out windows and saves it in the
round. A round that fails or is cancelled leaves nothing behind.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.grid import Grid
from ..core.holdout import hold_out, positions_of
from ..core.labels import IGNORE, OURS, LabelView
from ..core.pairs import clean_pairs
from ..io.rounds import PendingRound, Round, Rounds
from ..models.loading import describe
from .metrics import confusion_matrix, f1_scores
from .recipe import Recipe, combine, iter_train_members, members_of, model_factory
from .trainer import TrainEvent, save_checkpoint

__all__ = ["RoundEvent", "RoundResult", "held_out_scores", "iter_round"]


@dataclass(frozen=True)
class RoundEvent:
    """What a round reports besides training events: ``kind`` "pairs" or "scores"."""

    kind: str
    message: str
    values: dict


@dataclass
class RoundResult:
    round: Round
    model: torch.nn.Module
    """The trained model (eval mode; it applies its normalisation by itself)."""


@torch.no_grad()
def held_out_scores(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int,
                    intensity) -> tuple[float, list[float]]:
    """(macro F1, per-class F1) of ``model`` on whole held-out windows (labelled voxels only)."""
    confusion = np.zeros((classes, classes), dtype=np.int64)
    for x, y in zip(images, labels):
        x = intensity.apply(x[None].to(torch.float32, copy=True))
        predicted = model(x).argmax(1)[0]
        confusion += confusion_matrix(y, predicted, classes, ignore_label=IGNORE)
    scores = f1_scores(confusion)
    present = scores[~np.isnan(scores)]
    return (float(present.mean()) if present.size else math.nan), [float(s) for s in scores]


def _named(values: Sequence[float], names: Sequence[str]) -> dict:
    return {n: (None if math.isnan(v) else round(v, 4)) for n, v in zip(names, values)}


def iter_round(
    rounds: Rounds,
    source,
    labels,
    *,
    recipe: Recipe,
    grid: Grid | None = None,
    class_names: Sequence[str],
    budget: float | None = None,
    seed: int = 0,
    add_image_axis: bool = True,
    parent: Round | None = None,
    parent_model: torch.nn.Module | None = None,
    axes: str | None = None,
    scale=None,
    translate=None,
    stop: Callable[[], bool] | None = None,
    overrides: dict | None = None,
    name: str = "",
) -> Iterator[RoundEvent | TrainEvent]:
    """Train one round on ``labels`` (0 = unlabelled, class k = value k, the image's
    shape; ``add_image_axis``: ``source`` holds one image) and record it in ``rounds``.

    Without ``parent`` the recipe's networks are trained from scratch; with it,
    ``parent_model`` (that round's model) is trained on at the recipe's "Train more"
    settings. Yields :class:`RoundEvent` and :class:`TrainEvent` objects; returns a
    :class:`RoundResult`. ``grid``: the training windows (default: the recipe's);
    ``overrides`` go to every network's :class:`TrainConfig`.
    """
    t0 = time.perf_counter()
    classes = len(class_names)
    more = parent is not None
    if more and parent_model is None:
        raise ValueError("continuing a round needs its model")
    pending = rounds.begin(kind="train more" if more else "train", parent=parent.number if more else None,
                           name=name, seed=seed, budget=budget, recipe=recipe.to_json(),
                           normalisation=recipe.intensity().to_json(), classes=list(class_names))
    try:
        result = yield from _train(pending, source, labels, recipe=recipe, grid=grid, class_names=class_names,
                                   classes=classes, budget=budget, seed=seed, add_image_axis=add_image_axis,
                                   more=more, parent_model=parent_model, axes=axes, scale=scale,
                                   translate=translate, stop=stop, overrides=overrides or {}, t0=t0)
    except BaseException:
        pending.discard()
        raise
    return result


def _train(pending: PendingRound, source, labels, *, recipe, grid, class_names, classes, budget, seed,
           add_image_axis, more, parent_model, axes, scale, translate, stop, overrides, t0):
    snapshot = pending.snapshot(labels, {k + 1: n for k, n in enumerate(class_names)},
                                scale=scale, translate=translate)
    view = LabelView(snapshot, OURS, add_image_axis=add_image_axis)
    ndim = len(view.shape) - 1
    if grid is None:
        grid = recipe.training_grid(view.shape[1:])
    pairs = clean_pairs(source, view, grid)
    if len(pairs) == 0:
        raise ValueError("no training window holds labels: paint some strokes first")
    positions = positions_of(pairs.indices, pairs.origins, len(grid))
    split = hold_out(pairs.labels, positions, recipe.validation, seed)
    normalisation = recipe.intensity()
    intensity = normalisation.fit(source)  # the whole image, never one window
    train = (pairs.images[split.train], split.train_labels)
    val = (pairs.images[split.val], pairs.labels[split.val]) if len(split.val) else None
    counts = {n: pairs.stats.labelled_voxels.get(k, 0) for k, n in enumerate(class_names)}
    pairs_info = {"windows": len(pairs), "train": int(len(split.train)), "validation": int(len(split.val)),
                  "labelled_voxels": split.labelled_voxels, "held_out_voxels": split.val_voxels}
    yield RoundEvent("pairs", f"{len(split.train)} training windows, {len(split.val)} held out "
                              f"({split.val_voxels:,} of {split.labelled_voxels:,} labelled voxels)",
                     {**pairs_info, "labelled": counts})

    configs = recipe.configs(ndim=ndim, classes=classes, seed=seed, more=more, **overrides)
    models = None
    if more:  # a copy: the parent round's model stays as it was recorded
        models = members_of(copy.deepcopy(parent_model), len(configs))
        configs = configs[: len(models)]  # a round stopped early has the first networks only
    trained = yield from iter_train_members(configs, train, val, ndim=ndim, models=models, budget=budget,
                                            stop=stop, intensity=intensity, class_names=class_names)
    if not trained:
        raise ValueError("training stopped before its first step: nothing to record")
    configs = [c for c, _, _ in trained]
    model = combine([m for _, m, _ in trained]).eval()
    inference = recipe.inference(grid.shape)
    info = {"window": list(grid.window), "classes": list(class_names), "normalisation": normalisation.to_json(),
            "inference": inference, "name": pending.attrs.get("name") or None}
    if axes:
        info["axes"] = axes
    describe(model, info)

    val_f1, per_class = math.nan, [math.nan] * classes
    if val is not None:
        val_f1, per_class = held_out_scores(model, val[0], val[1], classes, intensity)
    scores = {"val_f1": None if math.isnan(val_f1) else round(val_f1, 4), "per_class": _named(per_class, class_names)}
    yield RoundEvent("scores", "", scores)

    factory, kwargs = model_factory(configs, ndim)
    save_checkpoint(model, pending.model_path, factory, kwargs,
                    {**info, "config": [c.to_json() for c in configs], "recipe": recipe.to_json()})
    members = [{"arch": c.arch, "steps": e.step, "seconds": round(e.elapsed, 1), "stopped": e.kind == "stopped"}
               for c, _, e in trained]
    record = pending.finish(pairs=pairs_info, labelled=counts, grid={"window": list(grid.window),
                            "step": list(grid.step), "border": list(grid.border)},
                            members=members, scores=scores, inference=inference,
                            seconds=round(time.perf_counter() - t0, 1), model="model.pt")
    return RoundResult(record, model)
