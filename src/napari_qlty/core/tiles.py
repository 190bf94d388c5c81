"""Cutting windows out of a volume: from tensors in memory, or region by region from
lazy arrays (numpy memmaps, dask, zarr) without loading the whole array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .grid import Grid


def check_volume(x, grid: Grid, what: str = "tensor") -> None:
    """A volume must be (N, C, *spatial) with the grid's spatial shape."""
    shape = tuple(x.shape)
    expected = 2 + grid.ndim
    if len(shape) != expected:
        raise ValueError(
            f"{what} must have {expected} dimensions (N, C, {grid.ndim} spatial) for this grid, "
            f"got {len(shape)} with shape {shape}"
        )
    grid.check_image_shape(shape[2:], what)


def reflect_indices(length: int, size: int) -> torch.Tensor:
    """Indices 0..length-1 folded into 0..size-1 by mirror reflection (no edge repeat)."""
    if size == 1:
        return torch.zeros(length, dtype=torch.long)
    period = 2 * (size - 1)
    i = torch.arange(length) % period
    return torch.where(i >= size, period - i, i)


def pad_far_end(x: torch.Tensor, target: Sequence[int], mode: str) -> torch.Tensor:
    """Pad the trailing spatial axes of ``x`` at their far end up to ``target``."""
    spatial = tuple(x.shape[-len(target) :])
    if spatial == tuple(target):
        return x
    if mode == "constant":
        pads: list[int] = []
        for s, t in zip(reversed(spatial), reversed(tuple(target))):
            pads += [0, t - s]
        return F.pad(x, pads, mode="constant", value=0.0)
    if mode != "reflect":
        raise ValueError(f"pad mode must be 'reflect' or 'constant', got {mode!r}")
    offset = x.ndim - len(target)
    for axis, (s, t) in enumerate(zip(spatial, target)):
        if t != s:
            x = x.index_select(offset + axis, reflect_indices(t, s).to(x.device))
    return x


def window_slices(grid: Grid, indices: Sequence[int] | np.ndarray) -> list[tuple[int, tuple[slice, ...]]]:
    """(image n, spatial slices) for each flat window index."""
    per_image = len(grid)
    origins = grid.origins()
    out = []
    for index in np.asarray(indices, dtype=np.int64).reshape(-1):
        n, k = divmod(int(index), per_image)
        out.append((n, tuple(slice(int(o), int(o) + w) for o, w in zip(origins[k], grid.window))))
    return out


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A tensor view of an in-memory array (copied only for negative strides or another byte order)."""
    if isinstance(x, torch.Tensor):
        return x
    if not x.dtype.isnative:  # big-endian data (NIfTI, DICOM, some TIFFs): torch takes native only
        x = x.astype(x.dtype.newbyteorder("="))
    if any(s < 0 for s in x.strides):
        x = np.ascontiguousarray(x)
    return torch.from_numpy(x)


def extract(x: torch.Tensor | np.ndarray, grid: Grid, indices=None) -> torch.Tensor:
    """Windows of an in-memory (N, C, *spatial) tensor: (M, C, *window), dtype and device kept.

    ``indices`` selects flat window indices (default: all, in grid order). Gradients flow.
    """
    x = as_tensor(x)
    check_volume(x, grid)
    if indices is None:
        indices = np.arange(x.shape[0] * len(grid))
    check_indices(indices, x.shape[0] * len(grid))
    if grid.needs_padding:
        x = pad_far_end(x, grid.padded_shape, grid.pad)
    views = [x[(n, slice(None), *sl)] for n, sl in window_slices(grid, indices)]
    if not views:
        return x.new_empty((0, x.shape[1], *grid.window))
    return torch.stack(views)


def check_indices(indices, total: int) -> None:
    idx = np.asarray(indices)
    if idx.size and (idx.min() < 0 or idx.max() >= total):
        raise IndexError(f"window indices must be in [0, {total}), got {idx.min()}..{idx.max()}")


def read_region(source, n: int, start: Sequence[int], stop: Sequence[int], grid: Grid) -> torch.Tensor:
    """Read (C, *box) of image ``n`` from a lazy array, padding past its far edge if needed."""
    clipped_stop = [min(b, s) for b, s in zip(stop, grid.shape)]
    key = (n, slice(None), *(slice(a, b) for a, b in zip(start, clipped_stop)))
    data = np.asarray(source[key])
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    # a memory-mapped or read-only box is copied once: torch tensors must own writable memory
    block = torch.from_numpy(np.array(data) if not data.flags.writeable else np.ascontiguousarray(data))
    if list(clipped_stop) != list(stop):
        # only axes smaller than the window are padded, and then the box spans the whole axis
        block = pad_far_end(block, [b - a for a, b in zip(start, stop)], grid.pad or "constant")
    return block


def extract_lazy(source, grid: Grid, indices, max_overread: float = 2.0) -> torch.Tensor:
    """Windows of a lazy (N, C, *spatial) array, reading one box per image in the batch.

    A box is read once for the windows of one image when it holds at most
    ``max_overread`` times their voxels; otherwise each window is read on its own.
    """
    check_volume(source, grid, "source")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    check_indices(indices, source.shape[0] * len(grid))
    origins = grid.origins()
    window = np.asarray(grid.window)
    per_image = len(grid)
    out: list[torch.Tensor | None] = [None] * len(indices)
    by_image: dict[int, list[int]] = {}
    for j, index in enumerate(indices):
        by_image.setdefault(int(index) // per_image, []).append(j)
    for n, js in by_image.items():
        starts = origins[indices[js] % per_image]
        lo, hi = starts.min(axis=0), (starts + window).max(axis=0)
        if np.prod(hi - lo) <= max_overread * len(js) * np.prod(window):
            block = read_region(source, n, lo, hi, grid)
            for j, s in zip(js, starts):
                rel = tuple(slice(int(a), int(a) + int(w)) for a, w in zip(s - lo, window))
                out[j] = block[(slice(None), *rel)]
        else:
            for j, s in zip(js, starts):
                out[j] = read_region(source, n, s, s + window, grid)
    if not out:
        return torch.empty((0, source.shape[1], *grid.window))
    return torch.stack(out)  # type: ignore[arg-type]
