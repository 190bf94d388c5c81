"""Training pairs from sparse labels: cut image and labels together, mark each label
window's border band as unobserved, and keep only windows with enough labels.

Which windows to keep is decided before anything is cut: every labelled voxel knows,
per axis, the contiguous range of windows whose inside holds it, so the labelled count
of every window is one ``bincount`` over the (few) labelled voxels. Only kept windows
are then read, so a sparse export costs what it keeps, not the whole grid.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .grid import Grid, band_profile
from .labels import IGNORE, LabelConvention, warn_if_dense
from .tiles import check_indices, extract, extract_lazy

#: labelled voxels handled per vectorised step (bounds memory on densely labelled volumes)
COORD_BLOCK = 1 << 18


@dataclass(frozen=True)
class PairStatistics:
    """The figures of the paper's Table 2 for one export."""

    total_windows: int
    kept_windows: int
    labelled_voxels: dict[int, int]
    """Labelled voxels per class in the whole volume."""
    labelled_in_kept: int
    """Labelled voxels summed over the kept windows (a voxel counts once per window)."""
    most_in_a_window: int = 0
    """The most labelled voxels any one window holds (outside its border band)."""
    voxels: int = 0
    """Voxels in the volume."""

    @property
    def total_labelled(self) -> int:
        return sum(self.labelled_voxels.values())

    @property
    def duplication(self) -> float:
        """How many kept windows see a labelled voxel, on average."""
        return self.labelled_in_kept / self.total_labelled if self.total_labelled else 0.0

    def table(self) -> str:
        rows = [
            ("windows in the grid", f"{self.total_windows}"),
            ("windows kept", f"{self.kept_windows}"),
            *[(f"labelled voxels, class {c}", f"{n}") for c, n in sorted(self.labelled_voxels.items())],
            ("labelled voxels in kept windows", f"{self.labelled_in_kept}"),
            ("duplication rate", f"{self.duplication:.2f}"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{name:<{width}}  {value:>10}" for name, value in rows)


@dataclass
class TrainingPairs:
    images: torch.Tensor
    """(K, C, *window) image windows."""
    labels: torch.Tensor
    """(K, *window) label windows, ``ignore_label`` where unobserved."""
    indices: np.ndarray
    """(K,) flat window indices (``n * len(grid) + position``)."""
    origins: np.ndarray
    """(K, ndim) window origins."""
    stats: PairStatistics
    ignore_label: int | float = IGNORE
    grid: Grid | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def n(self) -> np.ndarray:
        """(K,) image index of each pair."""
        assert self.grid is not None
        return self.indices // len(self.grid)


def band_mask(grid: Grid, position: int) -> torch.Tensor:
    """True in the border band of window ``position`` (per image), except on volume edges."""
    k = np.unravel_index(position, grid.counts)
    inside = np.ones(())
    for axis, (w, b) in enumerate(zip(grid.window, grid.border)):
        line = band_profile(w, b, k[axis] == 0, k[axis] == grid.counts[axis] - 1)
        inside = np.multiply.outer(inside, line)
    return torch.from_numpy(inside == 0)


def labelled_coordinates(labels, ignore_label) -> tuple[np.ndarray, np.ndarray]:
    """(P, 1 + ndim) coordinates (n first) and (P,) values of labelled voxels.

    Lazy arrays (zarr, dask) are read one image slab at a time.
    """
    coords, values = [], []
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    for n in range(labels.shape[0]):
        rows = labels.shape[1]
        step = max(1, (1 << 24) // max(1, math.prod(labels.shape[2:])))
        for r0 in range(0, rows, step):
            block = np.asarray(labels[n, r0 : r0 + step])
            hit = block != ignore_label
            if isinstance(ignore_label, float) and math.isnan(ignore_label):
                hit = ~np.isnan(block)
            c = np.argwhere(hit)
            if len(c):
                values.append(block[hit])
                c[:, 0] += r0
                coords.append(np.concatenate([np.full((len(c), 1), n), c], axis=1))
    if not coords:
        dtype = labels.dtype if isinstance(labels.dtype, np.dtype) else np.dtype(str(labels.dtype))
        return np.zeros((0, labels.ndim), dtype=np.int64), np.zeros(0, dtype=dtype)
    return np.concatenate(coords).astype(np.int64), np.concatenate(values)


def labelled_per_window(
    grid: Grid, coords: np.ndarray, n_images: int, *, band_on_edges: bool = False
) -> np.ndarray:
    """(n_images * len(grid),) labelled voxels inside each window's band-free span.

    ``coords`` are (P, 1 + ndim), image index first; ``band_on_edges`` as in
    :meth:`Grid.inside_spans`.
    """
    bounds = grid.inside_spans(band_on_edges=band_on_edges)
    counts = np.zeros(n_images * len(grid), dtype=np.int64)
    strides = np.array([int(np.prod(grid.counts[a + 1 :])) for a in range(grid.ndim)])
    # at most this many windows hold a voxel along each axis
    reach = [int(math.ceil(w / s)) + 1 for w, s in zip(grid.window, grid.step)]
    for p0 in range(0, len(coords), COORD_BLOCK):
        block = coords[p0 : p0 + COORD_BLOCK]
        first, number = [], []
        for axis, (lo, hi) in enumerate(bounds):
            x = block[:, 1 + axis]
            k_min = np.searchsorted(hi, x, side="right")
            k_max = np.searchsorted(lo, x, side="right") - 1
            first.append(k_min)
            number.append(np.maximum(k_max - k_min + 1, 0))
        for offsets in itertools.product(*(range(r) for r in reach)):
            valid = np.ones(len(block), dtype=bool)
            flat = block[:, 0] * len(grid)
            for axis, off in enumerate(offsets):
                valid &= off < number[axis]
                flat = flat + (first[axis] + off) * strides[axis]
            counts += np.bincount(flat[valid], minlength=len(counts))
    return counts


def clean_pairs(
    image,
    labels,
    grid: Grid,
    *,
    ignore_label: int | float = IGNORE,
    min_labelled: int = 1,
) -> TrainingPairs:
    """Cut ``image`` (N, C, *shape) and ``labels`` (N, *shape) into informative pairs.

    Label windows get ``ignore_label`` in their border band (``grid.border``; not on
    faces that lie on the volume's edge), and windows with fewer than ``min_labelled``
    labelled voxels left are dropped. ``image`` and ``labels`` may be tensors, numpy
    arrays or lazy arrays (zarr, dask): only kept windows are read.
    """
    labels = as_label_volume(labels, grid)
    if tuple(image.shape[:1]) != tuple(labels.shape[:1]):
        raise ValueError(f"image has {image.shape[0]} images but labels have {labels.shape[0]}")
    kept, stats = select_windows(labels, grid, ignore_label=ignore_label, min_labelled=min_labelled)
    images, label_windows = cut_pairs(image, labels, grid, kept, ignore_label=ignore_label)
    return TrainingPairs(
        images=images,
        labels=label_windows,
        indices=kept,
        origins=grid.origins()[kept % len(grid)] if len(kept) else np.zeros((0, grid.ndim), np.int64),
        stats=stats,
        ignore_label=ignore_label,
        grid=grid,
    )


def as_label_volume(labels, grid: Grid):
    """Labels as (N, *spatial): a channel axis of 1 is dropped (lazily for lazy arrays)."""
    lshape = tuple(labels.shape)
    if len(lshape) == 2 + grid.ndim and lshape[1] == 1:
        labels = labels[:, 0] if isinstance(labels, (torch.Tensor, np.ndarray)) else _Squeezed(labels)
        lshape = lshape[:1] + lshape[2:]
    if len(lshape) != 1 + grid.ndim:
        raise ValueError(
            f"labels must be (N, {grid.ndim} spatial) or (N, 1, {grid.ndim} spatial), got shape "
            f"{tuple(labels.shape)}"
        )
    grid.check_image_shape(lshape[1:], "labels")
    return labels


def select_windows(
    labels, grid: Grid, *, ignore_label: int | float = IGNORE, min_labelled: int = 1
) -> tuple[np.ndarray, PairStatistics]:
    """Flat indices of the windows with at least ``min_labelled`` labels, and the statistics.

    Reads the labels once (slab by slab for lazy arrays); cuts nothing.
    """
    if isinstance(min_labelled, bool) or int(min_labelled) != min_labelled or min_labelled < 1:
        raise ValueError(f"min_labelled must be an int >= 1, got {min_labelled}")
    labels = as_label_volume(labels, grid)
    coords, values = labelled_coordinates(labels, ignore_label)
    per_window = labelled_per_window(grid, coords, labels.shape[0])
    kept = np.nonzero(per_window >= min_labelled)[0]
    classes, class_counts = np.unique(values, return_counts=True)
    voxels = int(np.prod(labels.shape, dtype=np.int64))
    stats = PairStatistics(
        total_windows=len(per_window),
        kept_windows=len(kept),
        labelled_voxels={_py(c): int(n) for c, n in zip(classes, class_counts)},
        labelled_in_kept=int(per_window[kept].sum()),
        most_in_a_window=int(per_window.max()) if len(per_window) else 0,
        voxels=voxels,
    )
    convention = getattr(labels, "convention", None) or LabelConvention(ignore_label if isinstance(ignore_label, int) else IGNORE)
    warn_if_dense(len(values), voxels, convention)
    return kept, stats


def validation_split(count: int, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions of ``count`` pairs, reproducible from ``seed``.

    At least one pair is held out when there are two or more; one pair trains alone.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(count)
    n_val = max(1, int(round(count * fraction))) if count > 1 else 0
    return order[n_val:], order[:n_val]


def cut_pairs(
    image, labels, grid: Grid, indices: np.ndarray, *, ignore_label: int | float = IGNORE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image windows (K, C, *window) and label windows (K, *window) with the band marked."""
    labels = as_label_volume(labels, grid)
    images = _cut(image, grid, indices)
    label_windows = _cut(_with_channel(labels), grid, indices)[:, 0]
    for axis, (size, padded) in enumerate(zip(grid.shape, grid.padded_shape)):
        if padded > size:  # padding was never observed
            label_windows[(slice(None),) * (1 + axis) + (slice(size, None),)] = ignore_label
    if any(grid.border):
        masks: dict[int, torch.Tensor] = {}
        for j, index in enumerate(indices):
            position = int(index) % len(grid)
            if position not in masks:
                masks[position] = band_mask(grid, position)
            label_windows[j][masks[position]] = ignore_label
    return images, label_windows


def _py(value):
    return value.item() if hasattr(value, "item") else value


def _cut(volume, grid: Grid, indices: np.ndarray) -> torch.Tensor:
    check_indices(indices, volume.shape[0] * len(grid))
    if isinstance(volume, (torch.Tensor, np.ndarray)):
        return extract(volume, grid, indices)
    return extract_lazy(volume, grid, indices)


class _WithChannel:
    """A lazy (N, *spatial) array seen as (N, 1, *spatial)."""

    def __init__(self, array):
        self.array = array
        self.shape = (array.shape[0], 1, *array.shape[1:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        n, _c, *rest = key
        return np.asarray(self.array[(n, *rest)])[None]


def _with_channel(labels):
    if isinstance(labels, torch.Tensor):
        return labels.unsqueeze(1)
    if isinstance(labels, np.ndarray):
        return labels[:, None]
    return _WithChannel(labels)


class _Squeezed:
    """A lazy (N, 1, *spatial) array seen as (N, *spatial)."""

    def __init__(self, array):
        self.array = array
        self.shape = (array.shape[0], *array.shape[2:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        return np.asarray(self.array[(key[0], 0, *key[1:])])
