"""Training samples from sparse pairs: crops that hold labels, with cheap augmentations.

A pair is an image window ``(C, *w)`` and its labels ``(*w)`` (``ignore_label`` where
nothing was painted), as :func:`napari_qlty.io.pairs_store.export_pairs` writes them and
:class:`napari_qlty.io.pairs_store.PairsDataset` / :class:`napari_qlty.core.pairs.TrainingPairs`
give them back. Labels are sparse (0.06 % of voxels in the paper), so a random crop
would mostly hold none: every sample is centred near a labelled voxel instead.

Two kinds of samples:

* **planar** (2.5D, for :class:`napari_qlty.train.networks.Planar`): one slice through
  a labelled voxel, with ``context`` neighbouring slices on either side as channels.
  The slice's orientation is drawn in proportion to the labels it holds, so the painted
  planes are the ones mostly seen.
* **volume** (3D or 2D networks): a crop of ``patch`` voxels per axis.

Augmentations (``augment=True``) are the ones that keep a tomogram a tomogram: flips
along any axis, 90-degree rotations in the XY plane only (the Z axis of a tomogram is
different: missing wedge, elongation), and a small random contrast and brightness change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..core.intensity import IDENTITY, Fitted
from ..core.pairs import IGNORE
from .networks import reflect_index, stack_slices

__all__ = ["Batch", "InMemoryPairs", "PlanarSampler", "VolumeSampler", "as_pairs"]


class InMemoryPairs:
    """Pairs held as two tensors: images (K, C, *w) float32, labels (K, *w) int16 or int32.

    ``intensity`` maps the images as the model will see them (statistics of the whole
    volume the pairs were cut from, never of one pair). Samples come out with int64
    labels (what the loss takes); int16 keeps the paper's 256 windows of 64^3 at 134 MB
    of labels instead of 537 MB, int32 is used when a label value needs it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, ignore_label: int = IGNORE,
                 intensity: Fitted = IDENTITY) -> None:
        if images.shape[0] != labels.shape[0] or tuple(images.shape[2:]) != tuple(labels.shape[1:]):
            raise ValueError(
                f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not pair up: "
                "expected (K, C, *window) and (K, *window)"
            )
        small = not labels.numel() or (int(labels.min()) >= -(1 << 15) and int(labels.max()) < (1 << 15))
        self.images = intensity.apply(images.to(torch.float32, copy=True))
        self.labels = labels.to(torch.int16 if small else torch.int32)
        self.ignore_label = int(ignore_label)
        self.intensity = intensity

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i].long()


def as_pairs(data, ignore_label: int | None = None, max_bytes: int = 2 << 30,
             intensity: Fitted | None = None) -> InMemoryPairs:
    """``PairsDataset``, ``TrainingPairs``, ``(images, labels)`` or a sequence of pairs, in memory.

    ``intensity`` (default: the one the data carries, e.g. an export's, else none) maps
    the images. Sparse training sets are small (the paper's: 256 windows of 64^3, 268
    MB); anything over ``max_bytes`` is refused rather than swapped.
    """
    if isinstance(data, InMemoryPairs):
        return data
    if intensity is None:
        intensity = getattr(data, "intensity", None) or IDENTITY
    if hasattr(data, "images") and hasattr(data, "labels") and isinstance(data.images, torch.Tensor):
        ignore = data.ignore_label if ignore_label is None else ignore_label
        return InMemoryPairs(data.images, data.labels, int(ignore), intensity)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return InMemoryPairs(data[0], data[1], IGNORE if ignore_label is None else ignore_label, intensity)
    n = len(data)
    if n == 0:
        raise ValueError("no training pairs: the export kept no window (are there any labels?)")
    image, labels = data[0]
    need = n * (image.numel() * 4 + labels.numel() * 4)
    if need > max_bytes:
        raise MemoryError(
            f"{n} pairs need {need / 2**30:.1f} GiB in memory (limit {max_bytes / 2**30:.1f} GiB); "
            "train on a subset (PairsDataset(path, indices))"
        )
    images = torch.empty((n, *image.shape), dtype=image.dtype)
    label_arr = torch.empty((n, *labels.shape), dtype=torch.int32)
    for i in range(n):
        im, lab = data[i]
        images[i] = torch.as_tensor(im)
        label_arr[i] = torch.as_tensor(np.asarray(lab).astype(np.int32))
    ignore = getattr(data, "ignore_label", IGNORE) if ignore_label is None else ignore_label
    return InMemoryPairs(images, label_arr, int(ignore), intensity)


@dataclass
class Batch:
    """Network input and labels of one batch (labels: ``ignore_label`` where unlabelled)."""

    x: torch.Tensor
    y: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


class _Sampler:
    def __init__(self, pairs, patch: int | Sequence[int], *, augment: bool = True,
                 intensity: float = 0.1, balance: float = 0.0, seed: int = 0) -> None:
        self.pairs = as_pairs(pairs)
        self.ignore_label = self.pairs.ignore_label
        labels = self.pairs.labels
        self.window = tuple(labels.shape[1:])
        self.ndim = len(self.window)
        labelled = labels != self.ignore_label
        coords = torch.nonzero(labelled).numpy()  # (P, 1 + ndim): pair, then voxel
        if len(coords) == 0:
            raise ValueError("the training pairs hold no labelled voxel")
        self.coords = coords
        self.classes_at = labels[labelled].numpy()
        self.augment = augment
        self.intensity = float(intensity)
        if not 0.0 <= balance <= 1.0:
            raise ValueError(f"balance must be in [0, 1], got {balance}")
        self.balance = float(balance)
        self.by_class = {int(c): np.nonzero(self.classes_at == c)[0] for c in np.unique(self.classes_at)}
        self.rng = np.random.default_rng(seed)
        self._patch = patch

    def class_counts(self, classes: int) -> np.ndarray:
        """Labelled voxels per class over all pairs (a voxel counts once per pair)."""
        return np.bincount(self.classes_at.astype(np.int64), minlength=classes)[:classes]

    def _centre(self) -> np.ndarray:
        """A labelled (pair, voxel): uniform over labels, or with probability ``balance``
        uniform over classes first (so rare classes are seen as often as common ones)."""
        if self.balance and self.rng.random() < self.balance:
            keys = list(self.by_class)
            members = self.by_class[keys[int(self.rng.integers(len(keys)))]]
            return self.coords[members[int(self.rng.integers(len(members)))]]
        return self.coords[int(self.rng.integers(len(self.coords)))]

    def _origin(self, centre: Sequence[int], size: Sequence[int], extent: Sequence[int], jitter: bool) -> list[int]:
        out = []
        for c, s, e in zip(centre, size, extent):
            lo = c - s // 2
            if jitter:
                lo += int(self.rng.integers(-(s // 4), s // 4 + 1))
            out.append(int(np.clip(lo, 0, max(0, e - s))))
        return out

    def _jitter_intensity(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.augment and self.intensity):
            return x
        a = 1.0 + self.intensity * float(self.rng.uniform(-1, 1))
        b = self.intensity * float(self.rng.uniform(-1, 1))
        return x * a + b

    def batch(self, size: int) -> Batch:
        xs, ys = zip(*(self.sample() for _ in range(size)))
        return Batch(torch.stack(xs).contiguous(), torch.stack(ys).contiguous())

    def fixed_batches(self, samples: int, batch_size: int, seed: int = 1) -> list[Batch]:
        """Deterministic, unaugmented batches (validation)."""
        saved = (self.rng, self.augment)
        self.rng, self.augment = np.random.default_rng(seed), False
        try:
            out = []
            for i in range(0, samples, batch_size):
                out.append(self.batch(min(batch_size, samples - i)))
            return out
        finally:
            self.rng, self.augment = saved


class PlanarSampler(_Sampler):
    """2.5D samples ``(C * (2 context + 1), p, p)`` with labels ``(p, p)`` from 3D pairs.

    The in-plane crop is ``patch`` squared (at most the window's smallest side); the slice's orientation is
    drawn in proportion to the labelled voxels of the three planes through the centre.
    ``axes`` limits the orientations (0: XY slices, 1: XZ, 2: YZ).
    """

    def __init__(self, pairs, patch: int = 48, context: int = 2, *, axes: Sequence[int] = (0, 1, 2),
                 augment: bool = True, intensity: float = 0.1, balance: float = 0.0, seed: int = 0) -> None:
        super().__init__(pairs, patch, augment=augment, intensity=intensity, balance=balance, seed=seed)
        if self.ndim != 3:
            raise ValueError(f"planar samples need 3D pairs, got windows of {self.window}")
        self.context = int(context)
        self.axes = tuple(int(a) for a in axes)
        # one square size for every orientation, so samples stack into batches
        self.patch = min(int(patch), *self.window)
        labelled = (self.pairs.labels != self.ignore_label).to(torch.int32)
        # labelled voxels per plane, per pair and axis: (K, w_axis)
        self.plane_counts = [
            labelled.sum(dim=tuple(1 + d for d in range(3) if d != axis)).numpy() for axis in range(3)
        ]

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        j, *v = (int(c) for c in self._centre())
        weights = np.array([self.plane_counts[a][j, v[a]] if a in self.axes else 0 for a in range(3)], float)
        axis = int(self.rng.choice(3, p=weights / weights.sum()))
        others = [d for d in range(3) if d != axis]
        size = [self.patch, self.patch]
        o = self._origin([v[d] for d in others], size, [self.window[d] for d in others], self.augment)
        image, labels = self.pairs.images[j], self.pairs.labels[j]
        n, k = self.window[axis], self.context
        index = reflect_index(torch.arange(v[axis] - k, v[axis] + k + 1), n)
        crop = [slice(None)] * 3
        for d, a, s in zip(others, o, size):
            crop[d] = slice(a, a + s)
        slab = image[(slice(None), *crop)].index_select(1 + axis, index)
        x = stack_slices(slab[None], axis, k)[0]  # (C * (2k+1), h, w)
        crop[axis] = v[axis]
        y = labels[tuple(crop)].long()
        if self.augment:
            x, y = self._augment(x, y, axis)
        return self._jitter_intensity(x), y

    def _augment(self, x: torch.Tensor, y: torch.Tensor, axis: int):
        rng, t = self.rng, 2 * self.context + 1
        if rng.random() < 0.5:  # reverse the slab (a flip along the slice normal)
            x = x.reshape(-1, t, *x.shape[1:]).flip(1).reshape(x.shape)
        if axis == 0:  # XY plane: any of the 8 symmetries of the square
            k = int(rng.integers(4))
            if k and x.shape[-1] == x.shape[-2]:
                x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
        for d in (-2, -1):  # flips (one of them flips Z for XZ/YZ slices)
            if rng.random() < 0.5:
                x, y = x.flip(d), y.flip(d)
        return x, y


class VolumeSampler(_Sampler):
    """Crops ``(C, *patch)`` with labels ``(*patch)`` for 2D or 3D networks."""

    def __init__(self, pairs, patch: int | Sequence[int] = 32, *, augment: bool = True,
                 intensity: float = 0.1, balance: float = 0.0, seed: int = 0) -> None:
        super().__init__(pairs, patch, augment=augment, intensity=intensity, balance=balance, seed=seed)
        p = (int(patch),) * self.ndim if isinstance(patch, (int, np.integer)) else tuple(int(q) for q in patch)
        if len(p) != self.ndim:
            raise ValueError(f"patch must have {self.ndim} values, got {patch!r}")
        self.patch = tuple(min(a, b) for a, b in zip(p, self.window))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        j, *v = (int(c) for c in self._centre())
        o = self._origin(v, self.patch, self.window, self.augment)
        crop = tuple(slice(a, a + s) for a, s in zip(o, self.patch))
        image, labels = self.pairs.images[j], self.pairs.labels[j]
        x, y = image[(slice(None), *crop)], labels[crop].long()
        if self.augment:
            rng = self.rng
            if self.ndim >= 2:  # rotations in the last two axes (YX)
                k = int(rng.integers(4))
                if k and x.shape[-1] == x.shape[-2]:
                    x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
            for d in range(self.ndim):
                if rng.random() < 0.5:
                    x, y = x.flip(1 + d), y.flip(d)
        return self._jitter_intensity(x), y
