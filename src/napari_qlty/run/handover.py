"""Blending region by region: a region sums its own windows, hands what falls past its far
faces to the neighbours that own it, and is finished once its lower neighbours have
handed theirs over.

Used by the out-of-core runner (one task per region, spills in the output store) and by
qlty's Large quilts (windows arriving one at a time, spills in memory or on disk).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core.blend import Accumulator, normalise_
from ..core.weights import WindowWeights
from .regions import Regions


def spill_key(n: int, sender: Sequence[int], receiver: Sequence[int]) -> str:
    """The name of the sums region ``sender`` of image ``n`` hands to ``receiver``."""
    return f"n{n}_" + "_".join(map(str, sender)) + "_to_" + "_".join(map(str, receiver))


def _box_slices(a: Sequence[int], b: Sequence[int], origin: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(lo - o, hi - o) for lo, hi, o in zip(a, b, origin))


class RegionSums:
    """The weighted sums of the windows that region ``r`` of image ``n`` owns, over its box.

    A window belongs to the region holding its origin (:meth:`Regions.owned`), so the box
    is the region grown at its far faces by the windows that start inside it.
    """

    def __init__(self, regions: Regions, weights: WindowWeights, n: int, r: Sequence[int], channels: int,
                 *, device=None, dtype: torch.dtype = torch.float32) -> None:
        self.regions, self.n, self.r = regions, int(n), tuple(int(i) for i in r)
        self.start, self.stop = regions.bounds(self.r)
        self.box_start, box_stop = regions.box(self.r)
        self.acc = Accumulator(weights, 1, channels, start=self.box_start, stop=box_stop,
                               device=device, dtype=dtype)

    def add(self, outputs: torch.Tensor, positions: Sequence[int] | np.ndarray, *, fused: bool = False) -> None:
        """Add window outputs (B, C, *window) at per-image grid ``positions`` (all inside the
        box: a region's own windows are), in a fixed number of operators when ``fused``."""
        self.acc.add_batch(outputs, positions, fused=fused)

    def hand_over(self, spills, *, keep_core: bool = False) -> torch.Tensor:
        """Write the sums that fall in higher regions to ``spills``; return the region's own.

        With ``keep_core`` the region's own sums are spilled too (to itself), and added
        to what is already there, so windows may arrive over several hand-overs.
        """
        sums = self.acc.sum[0]
        for receiver in self.regions.receivers(self.r):
            a, b = self.regions.overlap(self.r, receiver)
            part = sums[(slice(None), *_box_slices(a, b, self.box_start))]
            spills.write(spill_key(self.n, self.r, receiver), part, add=keep_core)
        core = sums[(slice(None), *_box_slices(self.start, self.stop, self.box_start))]
        if keep_core:
            spills.write(spill_key(self.n, self.r, self.r), core, add=True)
        return core


def finish(regions: Regions, weights: WindowWeights, spills, n: int, r: Sequence[int],
           core: torch.Tensor) -> torch.Tensor:
    """Region ``r``'s blended values (C, *region), cropped to the volume.

    ``core`` (its own sums, added to in place) receives the spills of its lower
    neighbours, which must all have handed over (a neighbour that ran no window has
    none); it is then divided by the total weight, known in closed form.
    """
    start, stop = regions.bounds(r)
    for sender in regions.senders(r):
        key = spill_key(n, sender, r)
        if key in spills:
            a, b = regions.overlap(sender, r)
            target = core[(slice(None), *_box_slices(a, b, start))]
            target += spills.read(key).to(device=core.device, dtype=core.dtype)
    final = normalise_(core.unsqueeze(0), weights, start)[0]
    keep = tuple(slice(0, max(0, min(b, s) - a)) for a, b, s in zip(start, stop, weights.grid.shape))
    return final[(slice(None), *keep)]


def release(regions: Regions, spills, n: int, r: Sequence[int]) -> None:
    """Delete the spills region ``r`` received (once its values are safely written)."""
    for sender in regions.senders(r):
        spills.delete(spill_key(n, sender, r))
