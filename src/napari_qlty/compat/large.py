"""qlty's Large quilts: windows handed out one at a time, outputs blended on disk."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import torch
import zarr

from ..core.blend import accumulation_dtype
from ..core.grid import Grid
from ..core.pairs import labelled_per_window
from ..core.tiles import extract
from ..core.weights import WindowWeights
from ..io.spills import MemorySpills, ZarrSpills
from ..run.handover import RegionSums, finish, spill_key
from ..run.regions import Regions
from .quilts import QuiltBase, as_tensor, observed

#: default RAM (or device memory) a Large quilt may use for one accumulator store
DEFAULT_MEMORY_LIMIT = 1 << 30


#: regions of a Large quilt that does not fit its memory limit grow from the window up to about this
BLOCK_BYTES = 1 << 21


# -- accumulation for the Large quilts ----------------------------------------------------
def _block_shape(grid: Grid, channels: int, itemsize: int) -> tuple[int, ...]:
    """Region (and saved chunk) shape: the window, doubled until about BLOCK_BYTES."""
    block = list(min(w, s) for w, s in zip(grid.window, grid.shape))
    while channels * math.prod(block) * itemsize < BLOCK_BYTES:
        grown = [min(2 * b, s) for b, s in zip(block, grid.shape)]
        if grown == block:
            break
        block = grown
    return tuple(block)


class _SumStore:
    """The blended windows of ``N`` images, region by region through the engine's hand-over.

    The volume is cut into regions (:class:`~napari_qlty.run.regions.Regions`); a window
    belongs to the region holding its origin and is added to that region's sums
    (:class:`~napari_qlty.run.handover.RegionSums`). Once all of a region's windows are in,
    the region hands its sums over (the parts past its far faces to its neighbours, its own
    part to itself) and its memory is freed; :meth:`read` finishes a region from what it
    was handed. The total weight is known in closed form, so only weighted sums are kept.

    If the sums of the whole volume fit ``memory_limit`` bytes there is one region and the
    hand-over stays in memory; otherwise regions are blocks of about ``BLOCK_BYTES`` and
    the hand-over goes to a zarr group at ``path``. Windows may arrive in any order and
    more than once a region (hand-overs add up).
    """

    def __init__(self, weights: WindowWeights, n_images: int, channels: int, *, dtype: torch.dtype,
                 device, path: str, memory_limit: int) -> None:
        grid = weights.grid
        self.weights, self.grid = weights, grid
        self.n_images, self.channels, self.dtype, self.device = n_images, channels, dtype, device
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.in_memory = n_images * channels * math.prod(grid.shape) * itemsize <= memory_limit
        if self.in_memory:
            self.regions = Regions(grid, grid.padded_shape)
            self.spills = MemorySpills()
        else:
            self.regions = Regions(grid, _block_shape(grid, channels, itemsize))
            self.spills = ZarrSpills(zarr.open_group(path, mode="w"))
        self.path = path
        self.open: dict[tuple[int, ...], RegionSums] = {}
        origins = grid.origins()
        size = np.asarray(self.regions.size)
        #: region of every window (per image), and how many windows each region owns
        self._region_of = [tuple(int(i) for i in row) for row in origins // size]
        self._owned = {}
        for r in self._region_of:
            self._owned[r] = self._owned.get(r, 0) + 1
        self._added: dict[tuple[int, ...], int] = {}

    def add(self, patch: torch.Tensor, index: int) -> None:
        """Add one window's output (C, *window) with flat index ``index``."""
        n, k = divmod(int(index), len(self.grid))
        r = self._region_of[k]
        key = (n, *r)
        sums = self.open.get(key)
        if sums is None:
            sums = self.open[key] = RegionSums(self.regions, self.weights, n, r, self.channels,
                                               device=patch.device, dtype=self.dtype)
        sums.add(patch.unsqueeze(0), [k])
        self._added[key] = self._added.get(key, 0) + 1
        if self._added[key] >= self._owned[r]:  # every window of the region is in
            self._hand_over(key)

    def _hand_over(self, key) -> None:
        self.open.pop(key).hand_over(self.spills, keep_core=True)
        self._added[key] = 0

    def flush(self) -> None:
        """Hand over the regions still open (some of their windows were never stitched)."""
        for key in list(self.open):
            self._hand_over(key)

    def boxes(self):
        """Regions in the order they can be finished: (region, start, stop)."""
        counts = self.regions.counts
        for r in itertools.product(*(range(c) for c in counts)):
            start, stop = self.regions.bounds(r)
            stop = tuple(min(b, s) for b, s in zip(stop, self.grid.shape))
            yield r, start, stop

    def read(self, n: int, r) -> torch.Tensor:
        """The blended (C, *region) values of region ``r`` of image ``n`` (call :meth:`flush` first).

        The hand-over is read, not consumed, so this can be asked again.
        """
        key = spill_key(n, r, r)
        start, stop = self.regions.bounds(r)
        if key in self.spills:
            core = self.spills.read(key).to(device=self.device, dtype=self.dtype).clone()
        else:
            core = torch.zeros((self.channels, *(b - a for a, b in zip(start, stop))),
                               dtype=self.dtype, device=self.device)
        return finish(self.regions, self.weights, self.spills, n, r, core)


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
        coords = torch.nonzero(present).cpu().numpy()
        counts = labelled_per_window(self.grid, coords, present.shape[0], band_on_edges=True)
        keep = np.nonzero(counts > 0)[0]
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
        (same shape, or one channel broadcast over the patch's, as qlty allows) is a
        variance, blended the same way for ``return_mean(std=True)``.
        """
        patch = as_tensor(patch, "patch").detach()
        indices = np.atleast_1d(np.asarray(index_flat, dtype=np.int64)).reshape(-1)
        patch = self._batch(patch, len(indices), "patch")
        var = None
        if patch_var is not None:
            var = as_tensor(patch_var, "patch_var").detach()
            if var.ndim == patch.ndim - 1:
                var = var.unsqueeze(0)
            try:  # qlty broadcasts a one-channel variance over the patch's channels
                var = torch.broadcast_to(var, patch.shape)
            except RuntimeError:
                raise ValueError(
                    f"patch_var {tuple(var.shape)} must match patch {tuple(patch.shape)} or broadcast to it"
                ) from None
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
        for r, start, stop in self.mean.boxes():
            box = tuple(slice(a, b) for a, b in zip(start, stop))
            for n in range(self.N):
                m = self.mean.read(n, r)
                v = self.std.read(n, r).abs().sqrt() if std else None
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


class LargeNCYXQuilt(_LargeQuilt):
    """Window-by-window tiling of (N, C, Y, X) data with disk-backed blending (qlty API).

    ``unstitch_next(tensor)`` / ``unstitch(tensor, index)`` hand out one window at a time
    (``tensor`` may be any sliceable array: torch, numpy, zarr, dask); ``stitch(patch,
    index)`` adds the model's output; ``return_mean()`` returns the blended numpy array
    and writes it to ``filename + "_mean.zarr"``. Accumulation is in RAM when the result
    fits ``memory_limit`` bytes (keyword, default 1 GiB), else region by region, the
    partial sums handed over through ``filename + "_mean_cache.zarr"`` (see
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

    See :class:`LargeNCYXQuilt`; ``memory_limit`` (keyword, bytes) chooses between one
    region in RAM and regions handed over through zarr.
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
