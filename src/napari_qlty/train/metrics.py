"""Scores: confusion matrices, per-class and macro F1, and where the seams of a grid lie.

Everything takes numpy arrays or torch tensors of class indices; voxels whose true
label is ``ignore_label`` (unlabelled) are left out, so the same functions score a
prediction against sparse validation labels and against a full ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..core.grid import Grid
from ..core.pairs import IGNORE

#: voxels counted per vectorised step
BLOCK = 1 << 22

__all__ = ["confusion_matrix", "f1_scores", "macro_f1", "near_seams", "seam_report"]


def _as_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def confusion_matrix(truth, predicted, classes: int, *, ignore_label: int = IGNORE, mask=None) -> np.ndarray:
    """(classes, classes) int64 counts: row = true class, column = predicted class.

    Voxels whose truth is ``ignore_label``, or outside ``mask`` (a boolean array of the
    same shape) when one is given, are not counted. Predictions outside
    ``[0, classes)`` raise.
    """
    t = _as_numpy(truth).reshape(-1)
    p = _as_numpy(predicted).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"truth has {t.size} voxels but the prediction has {p.size}")
    m = None
    if mask is not None:
        m = _as_numpy(mask).reshape(-1)
        if m.shape != t.shape:
            raise ValueError(f"mask has {m.size} voxels but the truth has {t.size}")
    out = np.zeros(classes * classes, dtype=np.int64)
    for i in range(0, t.size, BLOCK):  # bounded memory on paper-sized volumes
        tb, pb = t[i : i + BLOCK], p[i : i + BLOCK]
        keep = tb != ignore_label
        if m is not None:
            keep &= m[i : i + BLOCK].astype(bool)
        tb = tb[keep].astype(np.int64)
        pb = pb[keep].astype(np.int64)
        if tb.size and (tb.min() < 0 or tb.max() >= classes):
            raise ValueError(f"true labels must be in [0, {classes}) or {ignore_label}")
        if pb.size and (pb.min() < 0 or pb.max() >= classes):
            raise ValueError(f"predicted labels must be in [0, {classes})")
        out += np.bincount(tb * classes + pb, minlength=classes * classes)
    return out.reshape(classes, classes)


def f1_scores(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN); NaN for a class absent from truth and prediction."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    fp = c.sum(axis=0) - tp
    fn = c.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def macro_f1(truth, predicted, classes: int, *, ignore_label: int = IGNORE, mask=None) -> float:
    """The unweighted mean of the per-class F1 scores (classes that occur at all)."""
    scores = f1_scores(confusion_matrix(truth, predicted, classes, ignore_label=ignore_label, mask=mask))
    scores = scores[~np.isnan(scores)]
    return float(scores.mean()) if scores.size else math.nan


def near_seams(grid: Grid, distance: float = 2.0) -> np.ndarray:
    """Boolean array of ``grid.shape``: True where a voxel lies near a seam of the grid.

    Voxel ``i`` spans ``[i, i + 1)``, the coordinates :meth:`Grid.seams` uses, so its
    centre is ``i + 0.5``. A voxel is near a seam when, on any axis, its centre is within
    ``distance`` of a seam position on that axis (``distance=2``: two voxels on either
    side of every seam).
    """
    if distance < 0:
        raise ValueError(f"distance must be >= 0, got {distance}")
    near = np.zeros(grid.shape, dtype=bool)
    for axis, (seams, size) in enumerate(zip(grid.seams(), grid.shape)):
        centres = np.arange(size) + 0.5
        line = np.zeros(size, dtype=bool)
        for s in np.asarray(seams, dtype=np.float64):
            line |= np.abs(centres - s) <= distance
        shape = [1] * grid.ndim
        shape[axis] = size
        near |= line.reshape(shape)
    return near


def seam_report(truth, predicted, grid: Grid, classes: int, *, distance: float = 2.0,
                ignore_label: int = IGNORE) -> dict:
    """Macro F1 near the seams of ``grid``, elsewhere, and over all voxels.

    ``truth`` and ``predicted`` are arrays of ``grid.shape``. A stitching artefact would
    lower the F1 near the seams; the returned ``gap`` is ``elsewhere - near``.
    """
    mask = near_seams(grid, distance)
    t, p = _as_numpy(truth), _as_numpy(predicted)
    if t.shape != grid.shape or p.shape != grid.shape:
        raise ValueError(f"truth {t.shape} and prediction {p.shape} must have the grid's shape {grid.shape}")
    near = macro_f1(t, p, classes, ignore_label=ignore_label, mask=mask)
    far = macro_f1(t, p, classes, ignore_label=ignore_label, mask=~mask)
    return {
        "all": macro_f1(t, p, classes, ignore_label=ignore_label),
        "near": near,
        "elsewhere": far,
        "gap": far - near,
        "voxels_near": int(mask.sum()),
        "voxels_elsewhere": int((~mask).sum()),
        "distance": float(distance),
    }


def per_class_f1(truth, predicted, classes: int, *, ignore_label: int = IGNORE,
                 mask=None) -> Sequence[float]:
    """Per-class F1 as a list of floats (NaN for absent classes)."""
    return [float(v) for v in f1_scores(confusion_matrix(truth, predicted, classes,
                                                          ignore_label=ignore_label, mask=mask))]


__all__ += ["per_class_f1"]
