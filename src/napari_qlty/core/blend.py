"""Blending window outputs back into a volume: a weighted sum, divided by the total weight.

The accumulator lives on the patches' device and covers a region (by default the whole
volume), so the same code stitches a small image in memory and one chunk-aligned region
of a volume far larger than RAM. The total weight is never accumulated: it is known in
closed form (see :mod:`napari_qlty.core.weights`), so only the weighted sum is summed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .grid import Grid
from .weights import Weighting, WindowWeights, combine_norm, window_weights

#: bytes of sums and weights normalised at a time on a CPU: few enough operators that a
#: busy machine's thread hand-offs do not dominate (2 MiB blocks took 1.7 s for the
#: paper's volume on 2 loaded cores, 16 MiB 0.8 s; both about 0.15 s idle), small
#: enough that the finite check after the division reads from the cache
NORMALISE_BYTES = 1 << 24


def fused_for(device: torch.device | str | None) -> bool:
    """Whether a batch is cut and added in a fixed number of operators there: on
    accelerators, where each operator is a kernel launch that costs host microseconds;
    on a CPU a strided copy per window is faster and an operator costs nanoseconds."""
    return torch.device(device).type != "cpu" if device is not None else False


class FlatIndex:
    """Where every voxel of every window lies in a flat (N, C, *box) array: one index
    tensor per batch, ``image * C * V + c * V + origin offset + voxel offset``.

    Built from a per-voxel offset table kept on the device, so cutting a batch and adding
    it back are each one gather or one ``index_add_`` whatever the batch size.
    """

    def __init__(self, grid: Grid, start: Sequence[int], stop: Sequence[int], device) -> None:
        box = tuple(b - a for a, b in zip(start, stop))
        self.volume = math.prod(box)
        self.strides = np.array([math.prod(box[a + 1:]) for a in range(grid.ndim)], dtype=np.int64)
        axes = [torch.arange(w, device=device, dtype=torch.int64) * int(st) for w, st in zip(grid.window, self.strides)]
        offsets = axes[0]
        for a in axes[1:]:
            offsets = (offsets.unsqueeze(-1) + a).reshape(-1)
        self.offsets = offsets  # (W,)
        self.start = np.asarray(start, dtype=np.int64)
        self.stop = np.asarray(stop, dtype=np.int64)
        self.window = np.asarray(grid.window, dtype=np.int64)
        self.origins = grid.origins()
        self.per_image = len(grid)
        self.device = device

    def inside(self, positions: np.ndarray) -> bool:
        rel = self.origins[positions] - self.start
        return bool((rel >= 0).all() and (rel + self.window <= self.stop - self.start).all())

    def index(self, indices: np.ndarray, channels: int) -> torch.Tensor:
        """(B, C, W) int64 flat indices of the windows ``indices`` (flat over images)."""
        n, k = np.divmod(indices, self.per_image)
        base = (n * channels * self.volume + (self.origins[k] - self.start) @ self.strides).astype(np.int64)
        chan = np.arange(channels, dtype=np.int64) * self.volume
        first = torch.from_numpy(base[:, None] + chan[None, :]).to(self.device, non_blocking=True)
        return first.unsqueeze(-1) + self.offsets


def cut_fused(x: torch.Tensor, index: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """The windows ``index`` (see :class:`FlatIndex`) of a contiguous (N, C, *box) tensor:
    one gather, (B, C, *window)."""
    return x.reshape(-1)[index].view(*index.shape[:2], *window)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is summed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Accumulator:
    """Weighted sum of window outputs over one box ``[start, stop)`` of the padded volume."""

    def __init__(
        self,
        weights: WindowWeights,
        n_images: int,
        channels: int,
        *,
        start: Sequence[int] | None = None,
        stop: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        grid = weights.grid
        self.grid = grid
        self.weights = weights
        self.n_images = n_images
        self.channels = channels
        self.start = tuple(start) if start is not None else (0,) * grid.ndim
        self.stop = tuple(stop) if stop is not None else grid.padded_shape
        size = tuple(b - a for a, b in zip(self.start, self.stop))
        if min(size) < 1:
            raise ValueError(f"region [{self.start}, {self.stop}) is empty")
        self.sum = torch.zeros((n_images, channels, *size), dtype=dtype, device=device)
        self._origins = grid.origins()
        self._placement: dict[int, tuple[tuple[slice, ...], tuple[slice, ...], bool] | None] = {}

    def add(self, patches: torch.Tensor, indices: Sequence[int] | np.ndarray) -> None:
        """Add windows ``patches`` (M, C, *window) with flat indices ``indices``."""
        check_patches(patches, self.grid, self.channels)
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) != patches.shape[0]:
            raise ValueError(
                f"got {patches.shape[0]} patches but {len(indices)} window indices"
            )
        for patch, index in zip(patches, indices):
            self.add_one(patch, int(index))

    def add_batch(self, patches: torch.Tensor, indices: Sequence[int] | np.ndarray, *,
                  fused: bool | None = None) -> None:
        """Add a batch of windows, in a fixed number of operators when ``fused`` (default:
        on accelerators, see :func:`fused_for`) and every window lies inside the box;
        else window by window (:meth:`add`)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if fused is None:
            fused = fused_for(patches.device)
        k = indices % len(self.grid)
        if not fused or self.n_images * self.channels * self.sum[0, 0].numel() >= 2**62 or \
                not self._flat(patches.device).inside(k):
            self.add(patches, indices)
            return
        check_patches(patches, self.grid, self.channels)
        if len(indices) != patches.shape[0]:
            raise ValueError(f"got {patches.shape[0]} patches but {len(indices)} window indices")
        flat = self._flat(patches.device)
        self._fused_used = True
        values = patches.reshape(patches.shape[0], patches.shape[1], -1)
        if not self.weights.uniform:
            values = values * self.weights.batch_weights(k, patches.device, self.sum.dtype).unsqueeze(1)
        self.sum.view(-1).index_add_(0, flat.index(indices, self.channels).view(-1),
                                     values.reshape(-1).to(self.sum.dtype))

    def _flat(self, device) -> FlatIndex:
        key = str(device)
        cache = self.__dict__.setdefault("_flat_cache", {})
        if key not in cache:
            cache[key] = FlatIndex(self.grid, self.start, self.stop, device)
        return cache[key]

    def add_one(self, patch: torch.Tensor, index: int) -> None:
        """Add one window's output (C, *window); the part outside the region is ignored."""
        n, k = divmod(index, len(self.grid))
        if not 0 <= n < self.n_images:
            raise IndexError(f"window index {index} is for image {n}, outside [0, {self.n_images})")
        if k not in self._placement:
            self._placement[k] = self._place(k)
        placement = self._placement[k]
        if placement is None:
            return
        src, dst, weighted = placement
        target = self.sum[(n, slice(None), *dst)]
        part = patch[(slice(None), *src)]
        if weighted:
            w = self.weights.for_window(k, device=patch.device, dtype=self.sum.dtype)
            target.addcmul_(part, w[src])
        else:
            target.add_(part)

    def add_grid(self, patches: torch.Tensor) -> None:
        """Add the windows of whole images, (N * len(grid), C, *window), in grid order.

        Windows are added in lattice groups (see :func:`lattice_groups`): one strided
        view of the sums and one of the patches per group, so a 2D image of hundreds of
        windows costs a handful of operations.
        """
        grid = self.grid
        if self.start != (0,) * grid.ndim or self.stop != grid.padded_shape:
            raise ValueError("add_grid needs an accumulator over the whole volume")
        per_image = len(grid)
        check_patches(patches, grid, self.channels)
        if patches.shape[0] != self.n_images * per_image:
            raise ValueError(f"expected {self.n_images * per_image} patches, got {patches.shape[0]}")
        pos_stride = [math.prod(grid.counts[a + 1 :]) for a in range(grid.ndim)]
        acc, ps = self.sum, patches.stride()
        for group in lattice_groups(grid):
            cls = tuple((r.start == 0, r.start == c - 1) for r, c in zip(group, grid.counts))
            lens = [len(r) for r in group]
            origin = [int(o[r.start]) for o, r in zip(grid.axis_origins, group)]
            win_shape = (patches.shape[1], *grid.window)
            w = None if self.weights.uniform else self.weights.for_class(cls, patches.device, acc.dtype)
            for n in range(self.n_images):
                target = acc.as_strided(
                    (*lens, *win_shape),
                    (*(r.step * st * acc.stride(2 + a) for a, (r, st) in enumerate(zip(group, grid.step))),
                     *acc.stride()[1:]),
                    acc.storage_offset() + n * acc.stride(0)
                    + sum(o * acc.stride(2 + a) for a, o in enumerate(origin)),
                )
                part = patches.as_strided(
                    (*lens, *win_shape),
                    (*(r.step * p * ps[0] for r, p in zip(group, pos_stride)), *ps[1:]),
                    patches.storage_offset()
                    + (n * per_image + sum(r.start * p for r, p in zip(group, pos_stride))) * ps[0],
                )
                if w is None:
                    target.add_(part)
                else:
                    target.addcmul_(part, w)

    def _place(self, k: int) -> tuple[tuple[slice, ...], tuple[slice, ...], bool] | None:
        """(slices in the window, slices in the region, whether to multiply by the weights)
        of window ``k``; None if it misses the region. A window whose weights are 1 on a
        box and 0 elsewhere is cut to that box and added as it is."""
        box = None if self.weights.uniform else self.weights.box_of_class(self.weights.class_of(k))
        spans = box or tuple((0, w) for w in self.grid.window)
        src, dst = [], []
        for o, (lo, hi), a, b in zip(self._origins[k].tolist(), spans, self.start, self.stop):
            lo, hi = max(o + lo, a), min(o + hi, b)
            if lo >= hi:
                return None
            src.append(slice(lo - o, hi - o))
            dst.append(slice(lo - a, hi - a))
        return tuple(src), tuple(dst), not (self.weights.uniform or box is not None)

    def result(self, crop: bool = True) -> torch.Tensor:
        """The weighted mean over the region (in place: the accumulator is consumed).

        Raises ``ValueError`` if any value is NaN or infinite (a model output went wrong).
        """
        out = self.sum
        normalise_(out, self.weights, self.start, one_pass=self.__dict__.get("_fused_used") or None)
        if crop:
            keep = tuple(slice(0, max(0, min(b, s) - a)) for a, b, s in zip(self.start, self.stop, self.grid.shape))
            out = out[(slice(None), slice(None), *keep)]
        self.sum = None  # type: ignore[assignment]
        return out


def normalise_(sums: torch.Tensor, weights: WindowWeights, start: Sequence[int],
               one_pass: bool | None = None) -> torch.Tensor:
    """Divide weighted sums (N, C, *box), box at ``start``, by the total weight, in place.

    On a CPU it works in blocks of rows that fit the cache (the sums of every channel and
    their weight block), so dividing and checking read memory once;
    with ``one_pass`` (default: on accelerators, where kernel launches, not memory, are
    the cost) the whole box is one block. Raises ``ValueError`` if any value is NaN or
    infinite (a model output went wrong).
    """
    size = tuple(sums.shape[2:])
    stop = tuple(a + s for a, s in zip(start, size))
    if one_pass is None:
        one_pass = fused_for(sums.device)
    parts = weights.norm_parts(start, stop, sums.device, sums.dtype)
    planes = sums.shape[0] * sums.shape[1] + 1  # the sums of every image and channel, and the weights
    block = math.prod(size) if one_pass else max(1, NORMALISE_BYTES // (sums.element_size() * planes))
    bad = torch.zeros((), dtype=torch.bool, device=sums.device)
    for rows, cols in _blocks(size, block):
        sub = sums[(slice(None), slice(None), rows, cols)[: 2 + len(size)]]
        if parts is None:  # a user map: its total weight is a stored array
            cut = (rows, cols)[: len(size)]
            norm = weights.norm([a + c.start for a, c in zip(start, cut)] + list(start[len(cut):]),
                                [a + c.stop for a, c in zip(start, cut)] + list(stop[len(cut):]),
                                device=sums.device, dtype=sums.dtype)
        else:
            norm = combine_norm(parts, rows, cols)
        sub.div_(norm)
        bad |= ~torch.isfinite(sub.sum())  # NaN and inf survive a sum
    if bool(bad) and not _all_finite(sums):  # a sum of huge finite values may overflow
        raise ValueError(
            "stitched result holds NaN or infinite values: the model produced NaN/inf "
            "for at least one window"
        )
    return sums


def _all_finite(values: torch.Tensor) -> bool:
    """No NaN or inf anywhere (the slow, exact check behind the sums' quick one)."""
    low, high = torch.aminmax(values)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _blocks(size: Sequence[int], block: int) -> Iterator[tuple[slice, slice]]:
    """(rows of axis 0, columns of axis 1) of blocks of at most ``block`` voxels (at least
    one row of axis 1 each); the columns are all of axis 1 (all of one voxel for one axis)
    where whole rows fit."""
    inner = math.prod(size[2:]) if len(size) > 1 else 1
    width = size[1] if len(size) > 1 else 1
    if block >= width * inner:
        rows = max(1, block // (width * inner))
        for r0 in range(0, size[0], rows):
            yield slice(r0, min(r0 + rows, size[0])), slice(0, width)
        return
    cols = max(1, block // inner)
    for r0 in range(size[0]):
        for c0 in range(0, size[1], cols):
            yield slice(r0, r0 + 1), slice(c0, min(c0 + cols, size[1]))


def lattice_groups(grid: Grid) -> list[tuple[range, ...]]:
    """Window positions in groups that share an edge class and never overlap.

    Per axis: the first window, the interior windows split into ``ceil(window / step)``
    colours (same-colour windows lie ``>= window`` apart, at regular origins), and the
    stepped-back last window. The groups are the products of these sets.
    """
    per_axis = []
    for count, w, step in zip(grid.counts, grid.window, grid.step):
        colours = math.ceil(w / step)
        sets = [range(0, 1)]
        sets += [range(1 + c, count - 1, colours) for c in range(min(colours, max(0, count - 2)))]
        if count > 1:
            sets.append(range(count - 1, count))
        per_axis.append(sets)
    return list(itertools.product(*per_axis))


def check_patches(patches: torch.Tensor, grid: Grid, channels: int | None = None) -> None:
    if not isinstance(patches, torch.Tensor):
        raise TypeError(f"patches must be a torch.Tensor, got {type(patches).__name__}")
    expected = 2 + grid.ndim
    if patches.ndim != expected or tuple(patches.shape[2:]) != grid.window:
        raise ValueError(
            f"patches must have shape (M, C, {', '.join(map(str, grid.window))}) for this grid, "
            f"got {tuple(patches.shape)}"
        )
    if channels is not None and patches.shape[1] != channels:
        raise ValueError(f"patches have {patches.shape[1]} channels, expected {channels}")


def stitch(
    patches: torch.Tensor,
    grid: Grid,
    weighting: Weighting | WindowWeights = Weighting(),
    *,
    return_weight: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Blend all windows of ``N`` images, (N * len(grid), C, *window), into (N, C, *shape).

    The output's channels are the patches' channels (a model may change them). Sums
    run on the patches' device in float32 (float64 stays float64); gradients flow.
    With ``return_weight`` the total weight map (*shape) is returned as well.
    """
    check_patches(patches, grid)
    per_image = len(grid)
    if patches.shape[0] == 0 or patches.shape[0] % per_image:
        raise ValueError(
            f"got {patches.shape[0]} patches, but this grid has {per_image} windows per image: "
            f"the count must be a positive multiple of {per_image}"
        )
    weights = weighting if isinstance(weighting, WindowWeights) else window_weights(grid, weighting)
    acc = Accumulator(
        weights,
        patches.shape[0] // per_image,
        patches.shape[1],
        device=patches.device,
        dtype=accumulation_dtype(patches.dtype),
    )
    acc.add_grid(patches)
    out = acc.result()
    if return_weight:
        keep = tuple(slice(0, s) for s in grid.shape)
        return out, weights.norm(device=patches.device, dtype=out.dtype)[keep]
    return out

