"""The validation split: held-out windows that no training label overlaps, against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from engine_testing import fast, grid_specs, seeds
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import IGNORE, Grid, clean_pairs
from napari_qlty.core.holdout import hold_out, positions_of


def labelled_volume(seed: int, shape, density: float, classes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=shape).astype(np.int64)
    labels[rng.random(shape) >= density] = IGNORE
    return labels


def voxels_of(labels: torch.Tensor, positions: np.ndarray) -> dict[tuple, int]:
    """{(image, *global voxel): class} of every labelled voxel of the windows, one by one."""
    out = {}
    for window, pos in zip(labels.numpy(), positions):
        for local in itertools.product(*(range(s) for s in window.shape)):
            if window[local] != IGNORE:
                out[(int(pos[0]), *(int(p) + i for p, i in zip(pos[1:], local)))] = int(window[local])
    return out


def inside(voxel: tuple, position: np.ndarray, window) -> bool:
    return voxel[0] == position[0] and all(0 <= v - p < w for v, p, w in zip(voxel[1:], position[1:], window))


@pytest.mark.filterwarnings("ignore:.*carry a label")
@fast(40)
@given(grid_specs(max_ndim=3, max_sizes=(60, 24, 12), max_windows=40, pad=False), st.integers(1, 2),
       st.sampled_from([0.1, 0.2, 0.35]), st.integers(2, 3), seeds)
def test_held_out_windows_share_no_label_with_training(spec, images, fraction, classes, seed):
    grid = Grid(**spec)
    labels = labelled_volume(seed, (images, *grid.shape), 0.3, classes)
    pairs = clean_pairs(torch.zeros(images, 1, *grid.shape), torch.from_numpy(labels), grid)
    if len(pairs) == 0:
        return
    positions = positions_of(pairs.indices, pairs.origins, len(grid))
    split = hold_out(pairs.labels, positions, fraction, seed)
    window = pairs.labels.shape[1:]
    val_boxes = positions[split.val]
    # validation windows: whole pairs, pairwise disjoint
    for a, b in itertools.combinations(val_boxes, 2):
        assert a[0] != b[0] or any(abs(int(p) - int(q)) >= w for p, q, w in zip(a[1:], b[1:], window))
    assert not set(split.train) & set(split.val)
    # every training label lies outside every validation window, and nothing else was removed
    for j, kept in zip(split.train, split.train_labels.numpy()):
        original = pairs.labels[j].numpy()
        for local in itertools.product(*(range(s) for s in window)):
            voxel = (int(positions[j, 0]), *(int(p) + i for p, i in zip(positions[j, 1:], local)))
            hidden = any(inside(voxel, box, window) for box in val_boxes)
            assert kept[local] == (IGNORE if hidden else original[local])
    # windows dropped from training had labels only inside validation windows
    for j in set(range(len(pairs))) - set(split.train) - set(split.val):
        for voxel in voxels_of(pairs.labels[j : j + 1], positions[j : j + 1]):
            assert any(inside(voxel, box, window) for box in val_boxes)
    # how much is held out: counted voxel by voxel
    every = voxels_of(pairs.labels, positions)
    held = {v: c for v, c in every.items() if any(inside(v, box, window) for box in val_boxes)}
    assert split.labelled_voxels == len(every) and split.val_voxels == len(held)
    room = 2 * fraction if len(split.val) == 1 else fraction
    assert len(held) <= room * len(every) + 1e-9
    for c in set(every.values()):
        assert sum(1 for v in held.values() if v == c) <= 1.5 * room * sum(1 for v in every.values() if v == c)
    # reproducible
    again = hold_out(pairs.labels, positions, fraction, seed)
    assert np.array_equal(again.val, split.val) and torch.equal(again.train_labels, split.train_labels)


def test_two_images_never_mix():
    """Windows at the same origin of two images do not overlap each other."""
    labels = torch.full((2, 8, 8), IGNORE)
    labels[:, 2, 2], labels[:, 5, 5] = 0, 1
    positions = np.array([[0, 0, 0], [1, 0, 0]])
    split = hold_out(labels, positions, fraction=0.5, seed=0)
    assert len(split.val) == 1 and len(split.train) == 1
    assert torch.equal(split.train_labels[0], labels[0])  # the other image's window is untouched


def test_nothing_held_out_when_every_window_holds_too_much():
    labels = torch.full((1, 8, 8), IGNORE)
    labels[0, :2, :2] = 0
    split = hold_out(labels, np.array([[0, 0, 0]]), 0.2)
    assert len(split.val) == 0 and list(split.train) == [0] and torch.equal(split.train_labels, labels)


def test_a_rare_class_keeps_most_of_its_labels():
    """Four disjoint windows; the only window with the rare class is never held out alone."""
    labels = torch.full((4, 4, 4), IGNORE)
    labels[:, 0, :] = 0  # 4 background labels per window
    labels[2, 3, 3] = 1  # the one label of class 1
    positions = np.array([[0, 0, 0], [0, 0, 4], [0, 4, 0], [0, 4, 4]])
    for seed in range(10):
        split = hold_out(labels, positions, 0.3, seed)
        assert 2 not in split.val
        assert len(split.val) == 1


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_fraction_is_checked(bad):
    with pytest.raises(ValueError, match="fraction must be in"):
        hold_out(torch.zeros(1, 2, 2, dtype=torch.int64), np.zeros((1, 3), np.int64), bad)


def test_positions_must_match_the_pairs():
    with pytest.raises(ValueError, match=r"positions must be \(2, 3\)"):
        hold_out(torch.zeros(2, 2, 2, dtype=torch.int64), np.zeros((2, 2), np.int64))
