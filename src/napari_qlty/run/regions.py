"""The output cut into chunk-aligned regions, who hands partial sums to whom, and how
large a region may be within a memory budget."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.grid import Grid
from ..core.pyramid import granule

#: default chunk edge per number of spatial axes (about a million voxels a chunk)
DEFAULT_CHUNK = {1: 1 << 20, 2: 1024, 3: 128, 4: 32}
#: the smallest chunk edge coarse pyramid levels are cut into when the budget allows
#: (chunks of 32-256 KiB: a first view of a coarse level reads few files)
LEVEL_CHUNK_FLOOR = {1: 1 << 16, 2: 256, 3: 32, 4: 16}


# -- regions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Regions:
    """The output cut into chunk-aligned regions, and who hands partial sums to whom."""

    grid: Grid
    size: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(p / s) for p, s in zip(self.grid.padded_shape, self.size))

    def bounds(self, r: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        start = tuple(int(i) * s for i, s in zip(r, self.size))
        stop = tuple(min(a + s, p) for a, s, p in zip(start, self.size, self.grid.padded_shape))
        return start, stop

    def owned(self, r: Sequence[int]) -> np.ndarray:
        """Per-image positions of the windows whose origin lies in region ``r``."""
        start, stop = self.bounds(r)
        hits = [np.nonzero((o >= a) & (o < b))[0] for o, a, b in zip(self.grid.axis_origins, start, stop)]
        if any(h.size == 0 for h in hits):
            return np.zeros(0, dtype=np.int64)
        mesh = np.meshgrid(*hits, indexing="ij")
        return np.ravel_multi_index([m.reshape(-1) for m in mesh], self.grid.counts)

    def box(self, r: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The span of region ``r``'s own windows (the region, grown at its far faces)."""
        start, stop = self.bounds(r)
        grown = []
        for o, w, a, b in zip(self.grid.axis_origins, self.grid.window, start, stop):
            inside = o[(o >= a) & (o < b)]
            grown.append(max(b, int(inside.max()) + w) if inside.size else b)
        return start, tuple(grown)

    def receivers(self, r: Sequence[int]) -> list[tuple[int, ...]]:
        """Regions other than ``r`` that ``r``'s windows reach."""
        _, box_stop = self.box(r)
        ranges = [range(i, min(c, math.ceil(b / s))) for i, b, s, c in zip(r, box_stop, self.size, self.counts)]
        return [q for q in itertools.product(*ranges) if q != tuple(r)]

    def senders(self, r: Sequence[int]) -> list[tuple[int, ...]]:
        """Lower regions whose windows reach region ``r`` (it waits for them)."""
        reach = [math.ceil(w / s) + 1 for w, s in zip(self.grid.window, self.size)]
        ranges = [range(max(0, i - k), i + 1) for i, k in zip(r, reach)]
        r = tuple(r)
        return [q for q in itertools.product(*ranges) if q != r and r in self.receivers(q)]

    def overlap(self, sender: Sequence[int], receiver: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        s_start, s_stop = self.box(sender)
        r_start, r_stop = self.bounds(receiver)
        return (
            tuple(max(a, b) for a, b in zip(s_start, r_start)),
            tuple(min(a, b) for a, b in zip(s_stop, r_stop)),
        )


def format_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps a number >= 1 (``1.5 GiB``, ``240 KiB``)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    edge = DEFAULT_CHUNK[len(shape)]
    return tuple(min(edge, s) for s in shape)


def region_cost(grid: Grid, size: Sequence[int], channels_in: int, channels_out: int,
                in_itemsize: int = 4, pyramid: bool = False, regions_held: int = 1) -> int:
    """Bytes a run holds besides its batches: per region, the input box in its stored
    dtype (read, then copied into a tensor), the float32 weighted sums over the box, and
    the final values and labels; with a ``pyramid``, its coarser levels' sums, means and
    class counts too (at most a half of the values' size, in 2D); ``regions_held``
    regions at a time (2 where one is read ahead or written behind while another
    computes)."""
    box = math.prod(min(s + w, p) for s, w, p in zip(size, grid.window, grid.padded_shape))
    core = math.prod(min(s, p) for s, p in zip(size, grid.padded_shape))
    extra = core * (3 * channels_out + 5) if pyramid else 0
    return regions_held * (box * (2 * in_itemsize * channels_in + 4 * channels_out)
                           + core * (8 * channels_out + 9) + extra)


def plan_region_size(
    grid: Grid,
    chunks: Sequence[int],
    channels_in: int,
    channels_out: int,
    batch_bytes: int,
    budget_bytes: int,
    cap: Sequence[int] | None = None,
    in_itemsize: int = 4,
    pyramid: bool = False,
    regions_held: int = 1,
) -> tuple[int, ...]:
    """The largest chunk-aligned region whose working set fits ``budget_bytes``.

    ``batch_bytes`` is what one batch costs inside the model (measured); ``cap`` bounds
    the region shape (rounded down to whole chunks). Raises a clear error when even a
    one-chunk region does not fit.
    """
    size = [math.ceil(p / c) * c for p, c in zip(grid.padded_shape, chunks)]
    if cap is not None:
        if len(cap) != grid.ndim or min(cap) < 1:
            raise ValueError(f"region must be {grid.ndim} positive ints, got {tuple(cap)}")
        size = [min(s, max(c, m // c * c)) for s, c, m in zip(size, chunks, cap)]
    def cost(size) -> int:
        return region_cost(grid, size, channels_in, channels_out, in_itemsize, pyramid, regions_held) + batch_bytes

    while cost(size) > budget_bytes:
        shrinkable = [a for a in range(grid.ndim) if size[a] > chunks[a]]
        if not shrinkable:
            need = cost(size)
            raise ValueError(
                f"memory budget {format_bytes(budget_bytes)} is too small for windows "
                f"{'x'.join(map(str, grid.window))} (one region and one batch need about "
                f"{format_bytes(need)}, of which {format_bytes(batch_bytes)} for the batch); "
                f"raise the budget, or lower the batch size or the chunk size"
                + (" (or ask for fewer pyramid levels)" if pyramid else "")
            )
        axis = max(shrinkable, key=lambda a: (size[a] / chunks[a], -a))
        size[axis] = max(chunks[axis], (size[axis] // 2) // chunks[axis] * chunks[axis])
    return tuple(size)


def plan_pyramid_regions(
    grid: Grid,
    chunks: Sequence[int],
    factors: Sequence[Sequence[int]],
    channels_in: int,
    channels_out: int,
    batch_bytes: int,
    budget_bytes: int,
    cap: Sequence[int] | None = None,
    in_itemsize: int = 4,
    regions_held: int = 1,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(region size, coarse-level chunk floor) for a pyramid of cumulative ``factors``.

    Regions must be whole chunks at every level, so that no two ever write one chunk:
    their size is a multiple of :func:`~napari_qlty.core.pyramid.granule`. The floor
    starts at :data:`LEVEL_CHUNK_FLOOR` (few files at coarse levels) and is halved while
    a region of one granule does not fit the budget.
    """
    floor = [min(c, LEVEL_CHUNK_FLOOR[grid.ndim]) for c in chunks]
    pyramid = len(factors) > 1
    while True:
        unit = granule(chunks, factors, floor)
        try:
            size = plan_region_size(grid, unit, channels_in, channels_out, batch_bytes, budget_bytes, cap,
                                    in_itemsize=in_itemsize, pyramid=pyramid, regions_held=regions_held)
            return size, tuple(floor)
        except ValueError:
            if max(floor) <= 1:
                raise
            floor = [max(1, f // 2) for f in floor]
