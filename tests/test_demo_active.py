"""Where to label next, simulated (napari_qlty.demo.active): one tiny round of each strategy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import zarr

from napari_qlty.core.grid import Grid
from napari_qlty.core.uncertainty import Spot
from napari_qlty.data.tomogram import IGNORE, make_tomogram
from napari_qlty.demo.active import Simulation, choose_spots, first_round, next_round, spots_of
from napari_qlty.io.rounds import Rounds
from napari_qlty.train.metrics import confusion_matrix, f1_scores
from napari_qlty.train.recipe import DEFAULT_RECIPE

SHAPE = (24, 48, 48)
TINY = {"nets": {"unet": {"channels": 4, "levels": 1, "norm": "batch"}, "msdnet": {"layers": 3, "max_dilation": 2}},
        "patch": 16, "batch_size": 2, "val_samples": 4}
SIMULATION = Simulation(spots=3, filament=6, background=20, epochs=2, steps_per_epoch=3,
                        recipe=replace(DEFAULT_RECIPE, window=32, step=16), overrides=TINY)
SEED = 3


@pytest.fixture(scope="module")
def tomogram():
    return make_tomogram(SHAPE, seed=1, annotated_fraction=5e-3)


def brute_top(score: np.ndarray, grid, count: int) -> list[list[int]]:
    """Centres of the ``count`` windows of ``grid`` with the highest mean ``score``, by loops."""
    means = []
    for origin in grid.origins():
        box = tuple(slice(int(o), int(o) + w) for o, w in zip(origin, grid.window))
        means.append((float(score[box].mean()), [int(o) + w // 2 for o, w in zip(origin, grid.window)]))
    return [c for _, c in sorted(means, key=lambda m: -m[0])[:count]]


def test_one_round_of_each_strategy_paints_the_same_budget_at_its_spots(tmp_path, tomogram):
    rounds = Rounds.open(tmp_path / "labels.rounds", SHAPE, image="tomogram")
    start, first = first_round(rounds, tomogram, SEED, SIMULATION)
    assert first["steps"] == {"unet": 6, "msdnet": 6}
    f1 = f1_scores(confusion_matrix(tomogram.labels, start.probabilities.argmax(0), 2))
    assert first["macro"] == pytest.approx(f1.mean(), abs=1e-4) and first["filament"] == pytest.approx(f1[1], abs=1e-4)
    assert set(start.uncertainty) == {"windows", "members", "entropy"}  # an ensemble: its networks can disagree

    grid = spots_of(SHAPE, SIMULATION.recipe)
    assert grid.window == (12, 16, 16)  # half the training windows (clipped to the image)
    half = 8
    spots = {}
    for strategy in ("suggested", "random"):
        new, info = next_round(rounds, tomogram, start, strategy, 1, SEED, SIMULATION)
        before, after = start.annotations, new.annotations
        np.testing.assert_array_equal(before, tomogram.annotations)  # the state a round starts from is kept
        changed = before != after
        assert (before[changed] == IGNORE).all()  # strokes only where nothing was labelled
        np.testing.assert_array_equal(after[changed], tomogram.labels[changed])  # and true
        fil, bg = info["painted"]
        assert fil + bg == changed.sum() and fil == (after[changed] == 1).sum()
        assert fil <= 3 * 6 and bg == 3 * 20  # every strategy: the same strokes per spot
        assert len(info["spots"]) == 3 and info["kind"] == "members"  # the widget's default for an ensemble
        centres = np.asarray(info["spots"])
        for z, y, x in zip(*np.nonzero(changed)):  # on the XY slice through a spot's centre, within the spot
            assert any(z == c[0] and abs(y - c[1]) <= half and abs(x - c[2]) <= half for c in centres)
        # the round trained on the labels as painted, continuing round 0's model
        r = new.result.round
        assert r.parent == start.result.round.number and r.attrs["kind"] == "train more"
        assert info["steps"] == {"unet": 3, "msdnet": 3}
        np.testing.assert_array_equal(zarr.open_array(str(r.labels_path))[...], after + 1)
        f1 = f1_scores(confusion_matrix(tomogram.labels, new.predicted, 2))
        assert 0 <= info["macro"] <= 1 and info["macro"] == pytest.approx(f1.mean(), abs=1e-4)
        assert info["filament"] == pytest.approx(f1[1], abs=1e-4)
        spots[strategy] = info["spots"]

    assert spots["suggested"] == brute_top(start.uncertainty["members"], grid, 3)  # the most unsure first
    every = {tuple(int(o) + w // 2 for o, w in zip(origin, grid.window)) for origin in grid.origins()}
    assert len({tuple(c) for c in spots["random"]}) == 3 and {tuple(c) for c in spots["random"]} <= every
    assert spots["random"] != spots["suggested"]


def test_choosing_spots():
    grid = Grid((8, 36), window=8, step=4)
    ranked = [Spot(1.0 - k / 10, 0, (0, 4 * k), (4, 4 * k + 4)) for k in range(8)]  # its windows, in a row
    assert choose_spots("suggested", ranked, 3, np.random.default_rng(0)) == ranked[:3]
    assert choose_spots("apart", ranked, 3, np.random.default_rng(0), grid) == [ranked[0], ranked[2], ranked[4]]
    other_image = [ranked[0], ranked[0]._replace(image=1), ranked[1]]
    assert choose_spots("apart", other_image, 2, np.random.default_rng(0), grid) == other_image[:2]
    assert choose_spots("none", ranked, 3, np.random.default_rng(0)) == []
    picks = choose_spots("random", ranked, 4, np.random.default_rng(5))
    assert len(set(picks)) == 4 and set(picks) <= set(ranked)
    assert picks == choose_spots("random", ranked, 4, np.random.default_rng(5))  # the seed decides
    assert len(choose_spots("random", ranked, 20, np.random.default_rng(0))) == 8
    with pytest.raises(ValueError, match="strategy must be one of"):
        choose_spots("best", ranked, 3, np.random.default_rng(0))
