"""qlty's Large quilts: windows handed out one at a time, outputs blended on disk."""

from __future__ import annotations

import itertools
import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
import zarr

from ..core.blend import Accumulator, accumulation_dtype
from ..core.grid import Grid
from ..core.tiles import extract
from ..core.weights import WindowWeights
from .quilts import QuiltBase, as_tensor, observed

#: default RAM (or device memory) a Large quilt may use for one accumulator store
DEFAULT_MEMORY_LIMIT = 1 << 30


#: zarr chunks (= cache blocks) of the Large quilts grow from the window up to about this
BLOCK_BYTES = 1 << 21


# -- accumulation for the Large quilts ----------------------------------------------------
def _block_shape(grid: Grid, channels: int, itemsize: int) -> tuple[int, ...]:
    """Chunk shape of the zarr stores: the window, doubled until about BLOCK_BYTES."""
    block = list(min(w, s) for w, s in zip(grid.window, grid.shape))
    while channels * math.prod(block) * itemsize < BLOCK_BYTES:
        grown = [min(2 * b, s) for b, s in zip(block, grid.shape)]
        if grown == block:
            break
        block = grown
    return tuple(block)


class _SumStore:
    """The weighted sum of window outputs of ``N`` images, in RAM or in a zarr array.

    Design: the total weight (the normaliser) is never accumulated -- the engine knows it
    in closed form (:meth:`WindowWeights.norm`) -- so only the weighted sum is stored.

    * If ``N * C * Y * X`` (times Z) values fit in ``memory_limit`` bytes, the sum is one
      engine :class:`~napari_qlty.core.blend.Accumulator` on the patches' device: each
      ``stitch`` call is one in-place ``addcmul`` of the window, nothing touches the disk.
    * Otherwise the sum lives in a zarr array (``path``) chunked in blocks, and windows are
      added into an LRU cache of block-sized engine Accumulators (each clips the window to
      its block). A block leaving the cache is added into its zarr chunk (one aligned
      read-modify-write). Windows arrive in raster order, so a block usually collects all
      its windows while cached and is written once; any order stays correct, since
      flushing adds. RAM stays at ``max(memory_limit, 2**ndim blocks)``.

    qlty instead did ``zarr[region] += patch * weight`` per window -- reading, decompressing
    and rewriting every chunk a window overlaps, for every window -- and accumulated a
    normaliser it then biased with ``+ eps``.
    """

    def __init__(
        self,
        weights: WindowWeights,
        n_images: int,
        channels: int,
        *,
        dtype: torch.dtype,
        device,
        path: str,
        memory_limit: int,
    ) -> None:
        grid = weights.grid
        self.weights = weights
        self.grid = grid
        self.n_images = n_images
        self.channels = channels
        self.dtype = dtype
        self.device = device
        self.path = path
        itemsize = torch.empty((), dtype=dtype).element_size()
        total = n_images * channels * math.prod(grid.shape) * itemsize
        self.in_memory = total <= memory_limit
        if self.in_memory:
            self.acc = Accumulator(weights, n_images, channels, device=device, dtype=dtype)
            self.array = None
            return
        self.block = _block_shape(grid, channels, itemsize)
        block_bytes = channels * math.prod(self.block) * itemsize
        self.max_blocks = max(2**grid.ndim, memory_limit // block_bytes)
        self.array = zarr.open_array(
            path,
            mode="w",
            shape=(n_images, channels, *grid.shape),
            chunks=(1, channels, *self.block),
            dtype=np.dtype(str(dtype).replace("torch.", "")),
            fill_value=0,
        )
        self.cache: OrderedDict[tuple, Accumulator] = OrderedDict()
        self._origins = grid.origins()

    def add(self, patch: torch.Tensor, index: int) -> None:
        """Add one window's output (C, *window) with flat index ``index``."""
        if self.in_memory:
            self.acc.add_one(patch.to(device=self.acc.sum.device), index)
            return
        n, k = divmod(index, len(self.grid))
        origin = self._origins[k]
        ranges = [
            range(int(o) // b, (int(o) + w - 1) // b + 1)
            for o, w, b in zip(origin, self.grid.window, self.block)
        ]
        for bidx in itertools.product(*ranges):
            key = (n, bidx)
            acc = self.cache.get(key)
            if acc is None:
                start, stop = self._box(bidx)
                acc = Accumulator(
                    self.weights, 1, self.channels, start=start, stop=stop,
                    device=patch.device, dtype=self.dtype,
                )
                self.cache[key] = acc
                while len(self.cache) > self.max_blocks:
                    self._flush(*self.cache.popitem(last=False))
            else:
                self.cache.move_to_end(key)
            acc.add_one(patch, k)

    def _box(self, bidx) -> tuple[tuple[int, ...], tuple[int, ...]]:
        start = tuple(i * b for i, b in zip(bidx, self.block))
        stop = tuple(min(a + b, s) for a, b, s in zip(start, self.block, self.grid.shape))
        return start, stop

    def _flush(self, key, acc: Accumulator) -> None:
        n, bidx = key
        start, stop = self._box(bidx)
        region = (n, slice(None), *(slice(a, b) for a, b in zip(start, stop)))
        self.array[region] = self.array[region] + acc.sum[0].cpu().numpy()

    def flush(self) -> None:
        if not self.in_memory:
            while self.cache:
                self._flush(*self.cache.popitem(last=False))

    def boxes(self):
        """Regions to normalise one at a time: the zarr chunks, or the whole volume."""
        if self.in_memory:
            return [((0,) * self.grid.ndim, self.grid.shape)]
        counts = [math.ceil(s / b) for s, b in zip(self.grid.shape, self.block)]
        return [self._box(bidx) for bidx in itertools.product(*(range(c) for c in counts))]

    def read(self, n: int, start, stop) -> torch.Tensor:
        """The (C, *box) weighted sum of image ``n`` (call :meth:`flush` first)."""
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        if self.in_memory:
            return self.acc.sum[(n, slice(None), *box)]
        return torch.from_numpy(np.asarray(self.array[(n, slice(None), *box)]))


# -- Large quilts -------------------------------------------------------------------------
class _LargeQuilt(QuiltBase):
    def _setup_large(self, filename, N, spatial, window, step, border, border_weight, memory_limit):
        self.filename = filename
        self.N = int(N)
        if self.N < 1:
            raise ValueError(f"N must be a positive int, got {N}")
        self._setup(spatial, window, step, border, border_weight)
        self.weight = torch.from_numpy(self._weight_np())
        self.N_chunks = self.N * len(self.grid)
        self.memory_limit = int(memory_limit)
        self.mean: _SumStore | None = None
        self.std: _SumStore | None = None
        self.chunkerator = iter(np.arange(self.N_chunks))
        self._stitched = np.zeros(self.N_chunks, dtype=bool)

    @property
    def norma(self) -> np.ndarray:
        """The total weight per voxel (*shape), exact: what every mean is divided by."""
        return self._weights.norm(dtype=torch.float64).numpy()

    def border_tensor(self) -> np.ndarray:
        """1 outside the border band, 0 in it (on every face), as a float64 array."""
        return self._border_np()

    # -- cutting ---------------------------------------------------------------------
    def _window(self, index):
        index = int(index)
        if not 0 <= index < self.N_chunks:
            raise IndexError(f"window index must be in [0, N_chunks={self.N_chunks}), got {index}")
        return self.grid.window_at(index)

    def _unstitch_one(self, tensor, index, return_positions=False, include_n_position=False):
        if tuple(tensor.shape[2:]) != self.grid.shape or len(tensor.shape) != 2 + self.grid.ndim:
            raise ValueError(
                f"tensor must be (N, C, {', '.join(self._axes)}) = (N, C, "
                f"{', '.join(map(str, self.grid.shape))}), got shape {tuple(tensor.shape)}"
            )
        index = int(index)
        total = tensor.shape[0] * len(self.grid)
        if not 0 <= index < total:
            raise IndexError(
                f"window index must be in [0, {total}) for a tensor of {tensor.shape[0]} images, "
                f"got {index}"
            )
        win = self.grid.window_at(index)
        patch = tensor[(win.n, slice(None), *win.slices)]
        if return_positions:
            pos = [win.n, *win.origin] if include_n_position else list(win.origin)
            device = tensor.device if isinstance(tensor, torch.Tensor) else None
            return patch, torch.tensor(pos, dtype=torch.int64, device=device)
        return patch

    def unstitch_and_clean_sparse_data_pair(self, tensor_in, tensor_out, missing_label):
        """Windows of (data, labels) that keep a label outside the border band.

        Labels are (N, *shape) or (N, C, *shape); their band (every face, qlty's
        ``border_tensor``) is set to ``missing_label``, and windows left with no other
        value are dropped. Which windows to keep is found from one summed-volume table of
        the labelled voxels, and only kept windows are cut. With no window kept the 2D
        quilt returns ``([], [])`` as qlty does, the 3D one empty tensors.
        """
        tensor_in, tensor_out, squeezed = self._pair_labels(tensor_in, tensor_out)
        present = observed(tensor_out, missing_label).any(dim=1)
        keep = np.nonzero(_inside_counts(present, self.grid, self.border) > 0)[0]
        if len(keep) == 0:
            if self.grid.ndim == 2:
                return [], []  # qlty's 2D convention (its 3D quilt crashed here)
            return self._empty_pair(tensor_in, tensor_out, squeezed)
        patches_in = extract(tensor_in, self.grid, keep)
        patches_out = extract(tensor_out, self.grid, keep)
        if self.border is not None:
            patches_out[:, :, self._band(patches_out.device)] = missing_label
        if squeezed:
            patches_out = patches_out.squeeze(1)
        return patches_in, patches_out

    def _empty_pair(self, tensor_in, tensor_out, squeezed):
        empty_in = tensor_in.new_empty((0, tensor_in.shape[1], *self.grid.window))
        empty_out = tensor_out.new_empty((0, tensor_out.shape[1], *self.grid.window))
        return empty_in, empty_out.squeeze(1) if squeezed else empty_out

    # -- stitching -------------------------------------------------------------------
    def stitch(self, patch, index_flat, patch_var=None) -> None:
        """Add window ``index_flat``'s output, ``(1, C, *window)`` or ``(C, *window)``.

        A batch ``(B, C, *window)`` with ``B`` indices is accepted too. ``patch_var``
        (same shape) is a variance, blended the same way for ``return_mean(std=True)``.
        """
        patch = as_tensor(patch, "patch").detach()
        indices = np.atleast_1d(np.asarray(index_flat, dtype=np.int64)).reshape(-1)
        patch = self._batch(patch, len(indices), "patch")
        var = None
        if patch_var is not None:
            var = as_tensor(patch_var, "patch_var").detach()
            var = self._batch(var, len(indices), "patch_var")
            if var.shape != patch.shape:
                raise ValueError(
                    f"patch_var {tuple(var.shape)} must match patch {tuple(patch.shape)}"
                )
        for i in indices:
            self._window(i)  # range check before anything is added
        if self.mean is None:
            self.mean = self._store(patch, "_mean_cache.zarr")
        elif patch.shape[1] != self.mean.channels:
            raise ValueError(
                f"patch has {patch.shape[1]} channels, earlier ones had {self.mean.channels}"
            )
        if var is not None and self.std is None:
            self.std = self._store(var, "_std_cache.zarr")
        for j, i in enumerate(indices):
            self.mean.add(patch[j], int(i))
            if var is not None:
                self.std.add(var[j], int(i))
            self._stitched[i] = True

    def _batch(self, patch: torch.Tensor, count: int, what: str) -> torch.Tensor:
        ndim = self.grid.ndim
        if patch.ndim == ndim + 1:
            patch = patch.unsqueeze(0)
        if patch.ndim != ndim + 2 or tuple(patch.shape[2:]) != self.grid.window:
            raise ValueError(
                f"{what} must be (1, C, {', '.join(map(str, self.grid.window))}) or "
                f"(C, {', '.join(map(str, self.grid.window))}), got {tuple(patch.shape)}"
            )
        if patch.shape[0] != count:
            raise ValueError(
                f"{what} holds {patch.shape[0]} windows but {count} indices were given"
            )
        return patch

    def _store(self, patch: torch.Tensor, suffix: str) -> _SumStore:
        return _SumStore(
            self._weights, self.N, patch.shape[1],
            dtype=accumulation_dtype(patch.dtype), device=patch.device,
            path=self.filename + suffix, memory_limit=self.memory_limit,
        )

    def _return_mean(self, std: bool, renormalize: bool):
        if self.mean is None:
            raise ValueError(
                "nothing was stitched yet: call stitch(patch, index) for every window first"
            )
        if std and self.std is None:
            raise ValueError("std=True needs patch_var passed to stitch()")
        missing = int((~self._stitched).sum())
        if missing:
            warnings.warn(
                f"{missing} of {self.N_chunks} windows were never stitched; the mean is divided "
                f"by the weight of all windows, so voxels they cover are too small",
                stacklevel=3,
            )
        stores = [self.mean] + ([self.std] if std else [])
        for store in stores:
            store.flush()
        np_dtype = np.dtype(str(self.mean.dtype).replace("torch.", ""))
        shape = (self.N, self.mean.channels, *self.grid.shape)
        mean_out = np.empty(shape, dtype=np_dtype)
        std_out = np.empty(shape, dtype=np_dtype) if std else None
        for start, stop in self.mean.boxes():
            box = tuple(slice(a, b) for a, b in zip(start, stop))
            for n in range(self.N):
                s = self.mean.read(n, start, stop)
                norm = self._weights.norm(start, stop, device=s.device, dtype=s.dtype)
                m = s / norm
                v = None
                if std:
                    v = (self.std.read(n, start, stop).to(s.device) / norm).abs().sqrt()
                if renormalize:
                    total = m.sum(dim=0, keepdim=True)  # the channel axis (axis 1 overall)
                    m = m / total
                    v = v / total if std else None
                mean_out[(n, slice(None), *box)] = m.cpu().numpy()
                if std:
                    std_out[(n, slice(None), *box)] = v.cpu().numpy()
        self._save(self.filename + "_mean.zarr", mean_out)
        if std:
            self._save(self.filename + "_std.zarr", std_out)
            return mean_out, std_out
        return mean_out

    def _save(self, path: str, array: np.ndarray) -> None:
        chunks = (1, array.shape[1], *_block_shape(self.grid, array.shape[1], array.itemsize))
        z = zarr.open_array(path, mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype)
        z[...] = array


def _inside_counts(present: torch.Tensor, grid: Grid, border) -> np.ndarray:
    """Labelled voxels in each window's band-free part (qlty's all-faces band), (N * len(grid),).

    A summed-volume table of ``present`` (N, *shape) gives every window's count from
    ``2**ndim`` corner lookups, all windows at once.
    """
    n_images = present.shape[0]
    ndim = grid.ndim
    dtype = torch.int32 if math.prod(grid.shape) < 2**31 - 1 else torch.int64
    table = torch.zeros(
        (n_images, *(s + 1 for s in grid.shape)), dtype=dtype, device=present.device
    )
    inner = present.to(dtype)
    for axis in range(1, ndim + 1):
        inner = inner.cumsum(axis, dtype=dtype)
    table[(slice(None), *(slice(1, None),) * ndim)] = inner
    lo, hi = [], []
    for a, (origins, w) in enumerate(zip(grid.axis_origins, grid.window)):
        b = border[a] if border else 0
        lo.append(torch.as_tensor(origins + b, device=present.device))
        hi.append(torch.as_tensor(origins + w - b, device=present.device))
    total = torch.zeros((n_images, *grid.counts), dtype=torch.int64, device=present.device)
    for corner in itertools.product((0, 1), repeat=ndim):
        idx = [hi[a] if c else lo[a] for a, c in enumerate(corner)]
        mesh = torch.meshgrid(*idx, indexing="ij")
        sign = -1 if (ndim - sum(corner)) % 2 else 1
        total += sign * table[(slice(None), *mesh)].to(torch.int64)
    return total.reshape(-1).cpu().numpy()


class LargeNCYXQuilt(_LargeQuilt):
    """Window-by-window tiling of (N, C, Y, X) data with disk-backed blending (qlty API).

    ``unstitch_next(tensor)`` / ``unstitch(tensor, index)`` hand out one window at a time
    (``tensor`` may be any sliceable array: torch, numpy, zarr, dask); ``stitch(patch,
    index)`` adds the model's output; ``return_mean()`` returns the blended numpy array
    and writes it to ``filename + "_mean.zarr"``. Accumulation is in RAM when the result
    fits ``memory_limit`` bytes (keyword, default 1 GiB), else in
    ``filename + "_mean_cache.zarr"`` through a bounded block cache (see
    :class:`_SumStore`).
    """

    _axes = ("Y", "X")

    def __init__(
        self,
        filename: str,
        N: int,
        Y: int,
        X: int,
        window,
        step,
        border,
        border_weight: float = 0.1,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.Y = int(Y)
        self.X = int(X)
        self._setup_large(filename, N, (Y, X), window, step, border, border_weight, memory_limit)

    def unstitch(
        self, tensor, index: int, return_positions: bool = False, include_n_position: bool = False
    ):
        """Window ``index`` (flat over n, y, x) of ``tensor``: a (C, Ysub, Xsub) view, plus its
        origin ``[y, x]`` or ``[n, y, x]`` with ``return_positions``."""
        return self._unstitch_one(tensor, index, return_positions, include_n_position)

    def unstitch_next(
        self, tensor, return_positions: bool = False, include_n_position: bool = False
    ):
        """``(index, patch)`` of the next window (``StopIteration`` after the last, as qlty)."""
        index = int(next(self.chunkerator))
        if return_positions:
            patch, pos = self.unstitch(tensor, index, True, include_n_position)
            return index, patch, pos
        return index, self.unstitch(tensor, index)

    def return_mean(
        self,
        std: bool = False,
        normalize: bool = False,
        eps: float = 1e-8,
        *,
        renormalize_channels: bool = False,
    ):
        """The blended (N, C, Y, X) numpy array (and the std with ``std=True``).

        ``normalize`` (or ``renormalize_channels``) divides by the sum over channels.
        ``eps`` is accepted and unused: the normaliser is exact and never zero. Can be
        called again (after more ``stitch`` calls, too).
        """
        return self._return_mean(std, normalize or renormalize_channels)


class LargeNCZYXQuilt(_LargeQuilt):
    """Window-by-window tiling of (N, C, Z, Y, X) data with disk-backed blending (qlty API).

    See :class:`LargeNCYXQuilt`; ``memory_limit`` (keyword, bytes) chooses between RAM
    and the zarr block cache.
    """

    _axes = ("Z", "Y", "X")

    def __init__(
        self,
        filename: str,
        N: int,
        Z: int,
        Y: int,
        X: int,
        window,
        step,
        border=None,
        border_weight: float = 0.1,
        *,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        self.Z = int(Z)
        self.Y = int(Y)
        self.X = int(X)
        self._setup_large(filename, N, (Z, Y, X), window, step, border, border_weight, memory_limit)

    def unstitch(self, tensor, index: int):
        """Window ``index`` (flat over n, z, y, x) of ``tensor``: a (C, *window) view."""
        return self._unstitch_one(tensor, index)

    def unstitch_next(self, tensor):
        """``(index, patch)`` of the next window (``StopIteration`` after the last, as qlty)."""
        index = int(next(self.chunkerator))
        return index, self.unstitch(tensor, index)

    def return_mean(
        self,
        std: bool = False,
        renormalize_channels: bool = False,
        eps: float = 1e-8,
        *,
        normalize: bool = False,
    ):
        """The blended (N, C, Z, Y, X) numpy array (and the std with ``std=True``).

        ``renormalize_channels`` divides by the sum over channels (axis 1). ``eps`` is
        accepted and unused: the normaliser is exact and never zero.
        """
        return self._return_mean(std, renormalize_channels or normalize)
