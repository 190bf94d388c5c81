"""Blending window outputs back into a volume: a weighted sum, divided by the total weight.

The accumulator lives on the patches' device and covers a region (by default the whole
volume), so the same code stitches a small image in memory and one chunk-aligned region
of a volume far larger than RAM. The total weight is never accumulated: it is known in
closed form (see :mod:`napari_qlty.weights`), so only the weighted sum is summed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .grid import Grid
from .weights import Weighting, WindowWeights

#: voxels divided at a time when normalising (keeps the norm block small and cache-warm)
NORMALISE_BLOCK = 1 << 18


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

    def add_one(self, patch: torch.Tensor, index: int) -> None:
        """Add one window's output (C, *window); the part outside the region is ignored."""
        n, k = divmod(index, len(self.grid))
        if not 0 <= n < self.n_images:
            raise IndexError(f"window index {index} is for image {n}, outside [0, {self.n_images})")
        src, dst = [], []
        for o, w, a, b in zip(self._origins[k].tolist(), self.grid.window, self.start, self.stop):
            lo, hi = max(o, a), min(o + w, b)
            if lo >= hi:
                return
            src.append(slice(lo - o, hi - o))
            dst.append(slice(lo - a, hi - a))
        target = self.sum[(n, slice(None), *dst)]
        part = patch[(slice(None), *src)]
        if self.weights.uniform:
            target.add_(part)
        else:
            w = self.weights.for_window(k, device=patch.device, dtype=self.sum.dtype)
            target.addcmul_(part, w[tuple(src)])

    def result(self, crop: bool = True) -> torch.Tensor:
        """The weighted mean over the region (in place: the accumulator is consumed).

        Raises ``ValueError`` if any value is NaN or infinite (a model output went wrong).
        """
        out = self.sum
        normalise_(out, self.weights, self.start)
        if crop:
            keep = tuple(slice(0, max(0, min(b, s) - a)) for a, b, s in zip(self.start, self.stop, self.grid.shape))
            out = out[(slice(None), slice(None), *keep)]
        self.sum = None  # type: ignore[assignment]
        return out


def normalise_(sums: torch.Tensor, weights: WindowWeights, start: Sequence[int]) -> torch.Tensor:
    """Divide weighted sums (N, C, *box), box at ``start``, by the total weight, in place.

    Works in row blocks so the weight block stays small. Raises ``ValueError`` if any
    value is NaN or infinite (a model output went wrong).
    """
    size = sums.shape[2:]
    rows = max(1, NORMALISE_BLOCK // max(1, math.prod(size[1:])))
    bad = torch.zeros((), dtype=torch.bool, device=sums.device)
    for r0 in range(0, size[0], rows):
        r1 = min(r0 + rows, size[0])
        block_start = (start[0] + r0, *start[1:])
        block_stop = (start[0] + r1, *(a + s for a, s in zip(start[1:], size[1:])))
        block = sums[:, :, r0:r1]
        block.div_(weights.norm(block_start, block_stop, device=sums.device, dtype=sums.dtype))
        bad |= ~torch.isfinite(block.detach().sum(dtype=torch.float64))
    if bool(bad):
        raise ValueError(
            "stitched result holds NaN or infinite values: the model produced NaN/inf "
            "for at least one window"
        )
    return sums


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
    weights = weighting if isinstance(weighting, WindowWeights) else WindowWeights(grid, weighting)
    acc = Accumulator(
        weights,
        patches.shape[0] // per_image,
        patches.shape[1],
        device=patches.device,
        dtype=accumulation_dtype(patches.dtype),
    )
    # windows of one edge class in a row: each class's weights are built once
    order = sorted(range(patches.shape[0]), key=lambda i: weights.class_of(i % per_image))
    for i in order:
        acc.add_one(patches[i], i)
    out = acc.result()
    if return_weight:
        keep = tuple(slice(0, s) for s in grid.shape)
        return out, weights.norm(device=patches.device, dtype=out.dtype)[keep]
    return out

