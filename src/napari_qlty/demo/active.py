"""Where to label next, simulated: strokes at the unsure spots against strokes anywhere.

The interactive loop on the synthetic tomogram, with its ground truth playing the
person. A round trains as the Train widget does (:func:`~napari_qlty.train.loop.iter_round`
with the recipe: "Train" first, then "Train more" on the labels as they are now, for a
number of steps rather than seconds so that every strategy gets the same compute),
predicts the image with uncertainty at the recipe's inference settings, and is scored
against the truth on every voxel. Then spots of the widget's spot grid
(:func:`~napari_qlty.core.uncertainty.spot_grid` of the training window) are chosen, the
most unsure ones by the widget's default kind ("suggested", its unsure spots) or random
ones ("random"), and a few strokes are painted at each
(:func:`~napari_qlty.data.tomogram.paint_spot`, correcting the prediction's mistakes
first) before the next round. ``benchmarks/bench_active_learning.py`` runs it;
``docs/training.md`` gives the curves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.grid import Grid
from ..core.inference import infer
from ..core.uncertainty import Spot, default_kind, kinds, rank_spots, spot_grid, spread_of
from ..core.weights import Weighting
from ..data.tomogram import IGNORE, Tomogram, paint_spot
from ..io.rounds import Rounds
from ..io.sources import open_source
from ..train.loop import RoundResult, iter_round
from ..train.metrics import per_class_f1
from ..train.recipe import DEFAULT_RECIPE, Recipe

__all__ = ["NAMES", "STRATEGIES", "Simulation", "State", "choose_spots", "first_round", "iter_loop", "next_round",
           "paint_spots", "predict", "score", "spots_of"]

NAMES = ("background", "filament")
#: how the spots of a round are chosen: the most unsure (the widget's unsure spots), the
#: most unsure with no two overlapping, random spots of the same grid, or none at all
#: (the control: "Train more" on the labels it had)
STRATEGIES = ("suggested", "apart", "random", "none")


@dataclass(frozen=True)
class Simulation:
    """The experiment's settings (plain data: printed with every result)."""

    spots: int = 5
    """Spots painted per round, every strategy."""
    filament: int = 12
    """Filament voxels painted per spot (at most: a spot may hold less filament)."""
    background: int = 60
    """Background voxels painted per spot (at most)."""
    clearance: int = 2
    """Voxels background strokes keep from any filament (the sample's annotator: 2; 0:
    a person who also paints along the filaments' edges)."""
    epochs: int = 4
    steps_per_epoch: int = 50
    """Steps per network: "Train" takes ``epochs`` of them, "Train more" the recipe's
    share of the epochs (a quarter, rounded up)."""
    kind: str | None = None
    """Uncertainty to rank spots by; None: the widget's default for the model."""
    recipe: Recipe = DEFAULT_RECIPE
    overrides: dict = field(default_factory=dict)
    """More :class:`~napari_qlty.train.trainer.TrainConfig` fields (a test's tiny networks)."""

    def train_overrides(self) -> dict:
        return {**self.overrides, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch}


@dataclass
class State:
    """Where a strategy's loop stands after a round: the labels it trained on (``IGNORE``
    unlabelled, else the class), its model and its prediction."""

    annotations: np.ndarray
    result: RoundResult
    probabilities: np.ndarray
    """(classes, *shape) blended class probabilities."""
    uncertainty: dict[str, np.ndarray]
    """Each kind's (*shape) uncertainty."""
    scores: dict

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(0).astype(np.uint8)


def predict(model: torch.nn.Module, image: np.ndarray, recipe: Recipe = DEFAULT_RECIPE
            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(probabilities, uncertainty by kind) of ``image`` as a round's prediction makes them:
    the recipe's inference windows and weighting, softmax, one window a batch."""
    settings = recipe.inference(image.shape)
    grid = Grid(tuple(image.shape), window=settings["window"], step=settings["step"], border=settings["border"])
    values, unsure = infer(model, torch.from_numpy(image)[None, None], grid,
                           Weighting(settings["weighting"], border_weight=settings["border_weight"]),
                           postprocess=lambda y: y.softmax(1), batch_size=1, uncertainty=True)
    names = kinds(spread_of(model) is not None)
    return values[0].numpy(), {k: unsure[0, i].numpy() for i, k in enumerate(names)}


def score(truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Macro and filament F1 on every voxel (``train.metrics``), and the predicted filament share (%)."""
    f1 = per_class_f1(truth, predicted, len(NAMES))
    return {"macro": round(float(np.mean(f1)), 4), "filament": round(float(f1[1]), 4),
            "share": round(float((predicted == 1).mean() * 100), 2)}


def spots_of(shape, recipe: Recipe = DEFAULT_RECIPE) -> Grid:
    """The widget's unsure spots: half its training windows, overlapping by half."""
    return spot_grid(shape, recipe.training_grid(shape).window)


def choose_spots(strategy: str, ranked: list[Spot], count: int, rng: np.random.Generator,
                 grid: Grid | None = None) -> list[Spot]:
    """``count`` spots of ``ranked`` (every spot of the grid, most unsure first): its first
    ("suggested"), its first with no two overlapping ("apart", needs ``grid``), drawn at
    random with ``rng`` ("random"), or none ("none")."""
    if strategy == "suggested":
        return ranked[:count]
    if strategy == "none":
        return []
    if strategy == "random":
        return [ranked[i] for i in sorted(rng.choice(len(ranked), size=min(count, len(ranked)), replace=False))]
    if strategy == "apart":
        if grid is None:
            raise ValueError("choosing spots apart needs their grid")
        chosen: list[Spot] = []
        for spot in ranked:
            if all(s.image != spot.image or any(abs(a - b) >= w for a, b, w in zip(s.origin, spot.origin, grid.window))
                   for s in chosen):
                chosen.append(spot)
                if len(chosen) == count:
                    break
        return chosen
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def paint_spots(truth: np.ndarray, annotations: np.ndarray, spots: list[Spot], grid: Grid, predicted: np.ndarray,
                rngs: Callable[[int], np.random.Generator], simulation: Simulation) -> list[tuple[int, int]]:
    """Paint at each spot, in place, on the XY slice through its centre within the spot
    (half its width each side of the centre); ``rngs(k)`` draws the ``k``-th spot's
    strokes. Returns (filament, background) voxels painted per spot."""
    half = min(grid.window[1:]) // 2
    return [paint_spot(truth, annotations, spot.centre, half, rngs(k), filament=simulation.filament,
                       background=simulation.background, predicted=predicted, clearance=simulation.clearance)
            for k, spot in enumerate(spots)]


def _train(rounds: Rounds, tomo: Tomogram, annotations: np.ndarray, seed: int, simulation: Simulation,
           parent: RoundResult | None, name: str) -> tuple[RoundResult, dict]:
    labels = (annotations.astype(np.int16) + 1).astype(np.uint8)  # napari's: 0 unlabelled
    t0 = time.perf_counter()
    events = iter_round(rounds, open_source(tomo.image, axes="zyx"), labels, recipe=simulation.recipe,
                        class_names=list(NAMES), seed=seed, parent=None if parent is None else parent.round,
                        parent_model=None if parent is None else parent.model,
                        overrides=simulation.train_overrides(), name=name)
    while True:
        try:
            next(events)
        except StopIteration as done:
            result = done.value
            break
    info = {"steps": {m["arch"]: m["steps"] for m in result.round.attrs["members"]},
            "train_s": round(time.perf_counter() - t0, 1)}
    return result, info


def _round(rounds, tomo, annotations, seed, simulation, parent, name) -> tuple[State, dict]:
    result, info = _train(rounds, tomo, annotations, seed, simulation, parent, name)
    t0 = time.perf_counter()
    probabilities, uncertainty = predict(result.model, tomo.image, simulation.recipe)
    info["predict_s"] = round(time.perf_counter() - t0, 1)
    state = State(annotations, result, probabilities, uncertainty, {})
    state.scores = score(tomo.labels, state.predicted)
    labelled = annotations != IGNORE
    info["labelled"] = {n: int((labelled & (annotations == k)).sum()) for k, n in enumerate(NAMES)}
    return state, {**state.scores, **info}


def first_round(rounds: Rounds, tomo: Tomogram, seed: int, simulation: Simulation = Simulation()
                ) -> tuple[State, dict]:
    """"Train" on the tomogram's sparse annotations, predict and score: round 0 of every
    strategy (the same labels, seed and steps give the same model)."""
    return _round(rounds, tomo, tomo.annotations.copy(), seed, simulation, None, "round 0")


def next_round(rounds: Rounds, tomo: Tomogram, state: State, strategy: str, number: int, seed: int,
               simulation: Simulation = Simulation()) -> tuple[State, dict]:
    """Choose spots by ``strategy`` on ``state``'s prediction, paint there, "Train more"
    and score: round ``number`` (1, 2, ...). The draws depend on (seed, number) only, so
    the strategies paint their ``k``-th spot of a round with the same random stream."""
    grid = spots_of(tomo.image.shape, simulation.recipe)
    kind = simulation.kind or default_kind(state.uncertainty)
    ranked = rank_spots(state.uncertainty[kind][None], grid, top=len(grid))
    chosen = choose_spots(strategy, ranked, simulation.spots, np.random.default_rng([seed, number, 0]), grid)
    annotations = state.annotations.copy()
    painted = paint_spots(tomo.labels, annotations, chosen, grid, state.predicted,
                          lambda k: np.random.default_rng([seed, number, 1 + k]), simulation)
    new, info = _round(rounds, tomo, annotations, seed, simulation, state.result, f"{strategy} {number}")
    info.update(kind=kind, spots=[list(s.centre) for s in chosen],
                spot_uncertainty=round(float(np.mean([s.score for s in chosen])), 5) if chosen else None,
                painted=[sum(f for f, _ in painted), sum(b for _, b in painted)])
    return new, info


def iter_loop(folder: str | Path, tomo: Tomogram, strategies, rounds: int, seed: int,
              simulation: Simulation = Simulation()) -> Iterator[dict]:
    """Round 0 once, then ``rounds`` rounds of each strategy, interleaved round by round
    (so a shared machine's load falls on all alike); yields one record per (strategy,
    round), round 0 once per strategy. The rounds are recorded in ``folder``."""
    store = Rounds.open(Path(folder) / "labels.rounds", tomo.image.shape, image="tomogram")
    state, info = first_round(store, tomo, seed, simulation)
    states = dict.fromkeys(strategies, state)
    for strategy in strategies:
        yield {"strategy": strategy, "seed": seed, "round": 0, **info}
    for number in range(1, rounds + 1):
        for strategy in strategies:
            states[strategy], info = next_round(store, tomo, states[strategy], strategy, number, seed, simulation)
            yield {"strategy": strategy, "seed": seed, "round": number, **info}
