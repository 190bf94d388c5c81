"""A validation split of training pairs that no training label overlaps.

Training windows overlap (step < window), so holding out a random 20 % of them leaves
most of their labelled voxels in the training windows around them, and the validation
score mostly measures what was learnt by heart. :func:`hold_out` instead picks whole
windows that overlap no other held-out window, and removes every label inside them from
the training windows (the image around them stays: unlabelled context teaches nothing
about the held-out labels). A training window left with no label is dropped.

Pairs are given by their label windows ``(K, *window)`` and their positions
``(K, 1 + ndim)``: the image index, then the window's origin (as
:class:`~napari_qlty.core.pairs.TrainingPairs` and the pairs store keep them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .labels import IGNORE

__all__ = ["HeldOut", "hold_out", "positions_of"]


@dataclass
class HeldOut:
    """A split: positions (into the pairs) of training and validation windows."""

    train: np.ndarray
    """Pairs to train on (the others either validate or had labels only where validation is)."""
    train_labels: torch.Tensor
    """(len(train), *window) their labels, unlabelled wherever a validation window lies."""
    val: np.ndarray
    """Validation pairs: no two overlap, and no training label lies in any of them."""
    val_voxels: int
    """Distinct labelled voxels the validation windows hold."""
    labelled_voxels: int
    """Distinct labelled voxels over all pairs."""


def _overlap(origins: np.ndarray, box: np.ndarray, window: np.ndarray) -> np.ndarray:
    """(K,) True where the window at each of ``origins`` (with image index first) overlaps ``box``."""
    same_image = origins[:, 0] == box[0]
    return same_image & (np.abs(origins[:, 1:] - box[1:]) < window).all(axis=1)


def _inside(coords: np.ndarray, box: np.ndarray, window: np.ndarray) -> np.ndarray:
    """(P,) True for the voxels (image index first) inside the window at ``box``."""
    rel = coords[:, 1:] - box[1:]
    return (coords[:, 0] == box[0]) & ((rel >= 0) & (rel < window)).all(axis=1)


def hold_out(
    labels: torch.Tensor,
    positions: np.ndarray,
    fraction: float = 0.2,
    seed: int = 0,
    *,
    ignore_label: int = IGNORE,
) -> HeldOut:
    """Hold out non-overlapping windows holding at most about ``fraction`` of the labelled voxels.

    Windows are tried in an order drawn from ``seed``; one is taken when it overlaps no
    window taken before and the held-out windows then hold at most ``fraction`` of the
    distinct labelled voxels, and at most ``1.5 * fraction`` of any class's (so a rare
    class keeps most of its labels for training). The first window may hold up to twice
    ``fraction`` (windows are large on a small image). When nothing can be held out (one
    window, or every window holding too much) the validation set is empty and every pair
    trains.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = torch.as_tensor(labels)
    positions = np.asarray(positions, dtype=np.int64)
    count, window = labels.shape[0], np.asarray(labels.shape[1:], dtype=np.int64)
    if positions.shape != (count, 1 + len(window)):
        raise ValueError(f"positions must be ({count}, {1 + len(window)}): image index, then the origin; "
                         f"got {positions.shape}")
    labelled = labels != ignore_label
    local = torch.nonzero(labelled).numpy()  # (P, 1 + ndim): pair, then voxel in the window
    values = labels[labelled].numpy().astype(np.int64)
    coords = np.concatenate([positions[local[:, 0], :1], positions[local[:, 0], 1:] + local[:, 1:]], axis=1)
    coords, first = np.unique(coords, axis=0, return_index=True)  # a voxel counts once, whichever windows see it
    values = values[first]
    classes, totals = np.unique(values, return_counts=True)
    total = dict(zip(classes.tolist(), totals.tolist()))
    held = dict.fromkeys(total, 0)
    per_pair = labelled.reshape(count, -1).sum(1).numpy()
    free = np.ones(len(coords), dtype=bool)  # voxels not yet in a held-out window
    val: list[int] = []
    for j in np.random.default_rng(seed).permutation(count):
        if per_pair[j] == 0 or any(_overlap(positions[val], positions[j], window)):
            continue
        taken = free & _inside(coords, positions[j], window)
        lost = dict(zip(*np.unique(values[taken], return_counts=True)))
        room = fraction if val else 2 * fraction
        if (len(coords) - free.sum() + taken.sum() > room * len(coords)
                or any(held[c] + n > 1.5 * room * total[c] for c, n in lost.items())):
            continue
        val.append(int(j))
        free &= ~taken
        for c, n in lost.items():
            held[c] += int(n)
    val_array = np.asarray(sorted(val), dtype=np.int64)
    train_labels = labels.clone()
    boxes = positions[val_array]
    for j in range(count):
        for box in boxes[_overlap(boxes, positions[j], window)]:
            lo = np.maximum(box[1:] - positions[j, 1:], 0)
            hi = np.minimum(box[1:] + window - positions[j, 1:], window)
            train_labels[(j, *(slice(int(a), int(b)) for a, b in zip(lo, hi)))] = ignore_label
    keep = np.setdiff1d(np.arange(count), val_array)
    keep = keep[(train_labels[keep] != ignore_label).reshape(len(keep), -1).any(1).numpy()] if len(keep) else keep
    return HeldOut(train=keep, train_labels=train_labels[keep], val=val_array,
                   val_voxels=int(len(coords) - free.sum()), labelled_voxels=int(len(coords)))


def positions_of(indices: np.ndarray, origins: np.ndarray, windows_per_image: int) -> np.ndarray:
    """(K, 1 + ndim) positions from flat window indices (``n * len(grid) + i``) and origins."""
    indices = np.asarray(indices, dtype=np.int64)
    return np.concatenate([(indices // windows_per_image)[:, None], np.asarray(origins, dtype=np.int64)], axis=1)

