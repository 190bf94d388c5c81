"""Weighting windows for stitching: border bands and smooth tapers.

Every built-in weighting is a sum of two separable products of 1D profiles::

    w(x) = bw * prod_a taper_a(x_a)  +  (1 - bw) * prod_a (inside_a(x_a) * taper_a(x_a))

where ``inside_a`` is 0 in the border band of axis ``a`` and 1 elsewhere, ``bw`` is the
border weight and ``taper`` is 1 (``"border"``, qlty's weighting), a gaussian, a Hann or a
linear ramp. Because the windows form a Cartesian grid, the total weight (the
normaliser) is the same two products of per-axis sums, so it is known exactly for any
region without a pass over the windows, and a border that leaves a voxel with no
weight is found per axis before any work is done.

Window faces that lie on the volume's edge are not down-weighted: no other window can
take over there, so the half of the profile on that side is flat at 1.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from .grid import Grid, band_profile

Mode = Literal["border", "gaussian", "hann", "linear", "map"]
MODES = ("border", "gaussian", "hann", "linear", "map")
EdgeClass = tuple[tuple[bool, bool], ...]
TAPER_FLOOR = 1e-6


@dataclass(frozen=True)
class Weighting:
    """How much each voxel of a window counts when windows are blended.

    ``mode``: ``"border"`` (1 inside, ``border_weight`` in the border band: qlty's),
    ``"gaussian"`` (sigma = ``sigma`` x window, as nnU-Net and MONAI), ``"hann"``,
    ``"linear"`` (a ramp over the border band, or half the window without one), or
    ``"map"`` (``weight_map``, one array of the window's shape, used as given).
    The border band (``Grid.border``) multiplies every taper by ``border_weight``.
    """

    mode: Mode = "border"
    border_weight: float = 1.0
    sigma: float = 0.125
    weight_map: torch.Tensor | np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"weighting mode must be one of {MODES}, got {self.mode!r}")
        bw = float(self.border_weight)
        if not (math.isfinite(bw) and 0.0 <= bw <= 1.0):
            raise ValueError(f"border_weight must be in [0, 1], got {self.border_weight}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be > 0 (a fraction of the window), got {self.sigma}")
        if (self.mode == "map") != (self.weight_map is not None):
            raise ValueError("weight_map is required with mode='map' and only then")
        if self.weight_map is not None:
            m = torch.as_tensor(np.asarray(self.weight_map, dtype=np.float64))
            if not torch.isfinite(m).all() or (m < 0).any():
                raise ValueError("weight_map must be finite and >= 0 everywhere")
            if not (m > 0).any():
                raise ValueError("weight_map is zero everywhere: every voxel would get no weight")


def taper(mode: str, size: int, border: int, sigma: float) -> np.ndarray:
    """The 1D taper of one axis, peak 1, strictly positive."""
    i = np.arange(size, dtype=np.float64)
    if mode == "border":
        return np.ones(size)
    if mode == "gaussian":
        centre = (size - 1) / 2
        s = max(sigma * size, 1e-3)
        p = np.exp(-0.5 * ((i - centre) / s) ** 2)
    elif mode == "hann":
        # sampled at voxel centres, so never exactly 0 at the window's edge
        p = np.sin(np.pi * (i + 0.5) / size) ** 2
    elif mode == "linear":
        ramp = border if border > 0 else max(size // 2, 1)
        p = np.minimum(np.minimum(i + 1, size - i) / (ramp + 1), 1.0)
    else:  # pragma: no cover - guarded by Weighting
        raise ValueError(mode)
    p = p / p.max()
    # a floor that survives float32 even as a product over 4 axes (1e-24 > float32's tiny)
    return np.maximum(p, TAPER_FLOOR)


def profiles(
    mode: str, size: int, border: int, sigma: float, low_edge: bool, high_edge: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(taper, inside * taper) for one axis, flattened on faces that lie on the volume edge."""
    t = taper(mode, size, border, sigma)
    if low_edge:
        t[: (size + 1) // 2] = 1.0
    if high_edge:
        t[size // 2 :] = 1.0
    return t, band_profile(size, border, low_edge, high_edge) * t


def outer(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The N-d outer product of 1D tensors."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


def combine_norm(parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
    """The weight block ``[rows, cols, ...]`` from :meth:`WindowWeights.norm_parts`."""
    out = None
    for lead, tail in parts:
        lead = lead[rows]
        term = lead.view((-1,) + (1,) * tail.ndim) * (tail[cols] if tail.ndim else tail)
        out = term if out is None else out + term
    return out


_shared: OrderedDict[tuple, WindowWeights] = OrderedDict()


def window_weights(grid: Grid, weighting: Weighting = Weighting()) -> WindowWeights:
    """The weights of ``grid`` under ``weighting``, shared between calls (built once)."""
    if weighting.mode == "map":  # maps are not compared by value: never shared
        return WindowWeights(grid, weighting)
    key = (grid, weighting)
    hit = _shared.get(key)
    if hit is None:
        hit = _shared[key] = WindowWeights(grid, weighting)
        while len(_shared) > 4:
            _shared.popitem(last=False)
    else:
        _shared.move_to_end(key)
    return hit


class WindowWeights:
    """The weights of every window of one grid, and their sum over the volume.

    Window weights depend only on which faces lie on the volume's edge (at most 4 classes
    per axis), so they are built once per class, kept in a small cache, and every
    weighting costs the same when stitching.
    """

    def __init__(self, grid: Grid, weighting: Weighting = Weighting(), cache_bytes: int = 64 << 20):
        self.grid = grid
        self.weighting = weighting
        self.cache_bytes = cache_bytes
        # shared by the threads of a run: the LRU is guarded, the tail is swapped whole
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._tail: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        bw = float(weighting.border_weight)
        if not any(grid.border):
            bw = 1.0  # no band: both products are the same, use one (exact)
        self.bw = bw
        low, high = grid.edge_flags()
        self.window_classes: list[EdgeClass] = [
            tuple((bool(lo), bool(hi)) for lo, hi in zip(lrow, hrow)) for lrow, hrow in zip(low, high)
        ]
        if weighting.mode == "map":
            m = np.asarray(weighting.weight_map, dtype=np.float64)
            if m.shape != grid.window:
                raise ValueError(
                    f"weight_map has shape {m.shape} but the window is {grid.window}"
                )
            self._map = torch.from_numpy(m)
            self._norm_map = self._accumulate_map_norm()
            return
        # per axis: 1D profiles per edge class, and their sums over the axis
        self._profiles: list[dict[tuple[bool, bool], tuple[np.ndarray, np.ndarray]]] = []
        self._sum_a: list[np.ndarray] = []
        self._sum_b: list[np.ndarray] = []
        for axis, (size, w, b, origins) in enumerate(
            zip(grid.padded_shape, grid.window, grid.border, grid.axis_origins)
        ):
            per_class = {}
            sum_a, sum_b = np.zeros(size), np.zeros(size)
            for k, o in enumerate(origins):
                cls = (k == 0, k == len(origins) - 1)
                if cls not in per_class:
                    per_class[cls] = profiles(weighting.mode, w, b, weighting.sigma, *cls)
                a, bb = per_class[cls]
                sum_a[o : o + w] += a
                sum_b[o : o + w] += bb
            self._profiles.append(per_class)
            self._sum_a.append(sum_a)
            self._sum_b.append(sum_b)
            covered = sum_b if bw == 0.0 else sum_a
            if covered.min() <= 0:
                bad = int(np.argmin(covered))
                B, S, W = (grid.name(p, axis) for p in ("border", "step", "window"))
                where = f"{grid.axes[axis]} = {bad}" if grid.axes else f"axis {axis}, index {bad}"
                raise ValueError(
                    f"{B}={b} with border_weight=0 leaves voxels with no weight "
                    f"({where}): neighbouring windows' border bands meet; "
                    f"need {S} <= {W} - 2*{B} = {w - 2 * b} "
                    f"(got {grid.step[axis]}), or a border_weight > 0"
                )

    def box_of_class(self, cls: EdgeClass) -> tuple[tuple[int, int], ...] | None:
        """Per axis ``(lo, hi)``: where a window of class ``cls`` weighs 1, if it weighs 0
        everywhere else (qlty's border weighting with ``border_weight=0``), else None.

        Such a window is added by copying its box, with no weight to read or multiply.
        """
        if self.weighting.mode != "border" or self.bw != 0.0:
            return None
        box = []
        for axis, edges in enumerate(cls):
            inside = self._profiles[axis][edges][1]
            ones = np.flatnonzero(inside)
            box.append((int(ones[0]), int(ones[-1]) + 1))
        return tuple(box)

    @property
    def uniform(self) -> bool:
        """True when every window weighs 1 everywhere (nothing to multiply)."""
        return self.weighting.mode == "border" and self.bw == 1.0

    def class_of(self, position_in_image: int) -> EdgeClass:
        return self.window_classes[position_in_image]

    def for_class(self, cls: EdgeClass, device=None, dtype=torch.float32) -> torch.Tensor:
        """The weight array of one window class, on ``device``."""
        key = (cls, str(device), dtype)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        if self.weighting.mode == "map":
            w = self._map.to(device=device, dtype=dtype)
        else:
            per_axis = [self._profiles[a][c] for a, c in enumerate(cls)]
            w = self._combine([p[0] for p in per_axis], [p[1] for p in per_axis], device, dtype)
        with self._lock:
            self._cache[key] = w
            while len(self._cache) > 2 and sum(
                t.numel() * t.element_size() for t in self._cache.values()
            ) > self.cache_bytes:
                self._cache.popitem(last=False)
        return w

    def batch_weights(self, positions: np.ndarray, device=None, dtype=torch.float32) -> torch.Tensor:
        """(B, W) flat weights of the windows at ``positions``: one gather from a table of the
        edge classes the grid has (built once per device), whatever the batch size."""
        key = (str(device), dtype)
        tables = self.__dict__.setdefault("_tables", {})
        if key not in tables:
            classes = sorted(set(self.window_classes)) if self.weighting.mode != "map" else [self.window_classes[0]]
            row = {c: i for i, c in enumerate(classes)}
            table = torch.stack([self.for_class(c, device, dtype).reshape(-1) for c in classes])
            rows = np.array([row.get(c, 0) for c in self.window_classes], dtype=np.int64)
            tables[key] = (table, rows)
        table, rows = tables[key]
        return table[torch.from_numpy(rows[positions]).to(table.device, non_blocking=True)]

    def for_window(self, position_in_image: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return self.for_class(self.class_of(position_in_image), device, dtype)

    def norm(
        self,
        start: Sequence[int] | None = None,
        stop: Sequence[int] | None = None,
        device=None,
        dtype=torch.float32,
    ) -> torch.Tensor:
        """Total weight over the box ``[start, stop)`` of the (padded) volume."""
        start = tuple(start) if start is not None else (0,) * self.grid.ndim
        stop = tuple(stop) if stop is not None else self.grid.padded_shape
        if self.weighting.mode == "map":
            return self._norm_map[tuple(slice(a, b) for a, b in zip(start, stop))].to(device=device, dtype=dtype)
        return combine_norm(self.norm_parts(start, stop, device, dtype))

    def norm_parts(self, start: Sequence[int], stop: Sequence[int], device=None,
                   dtype=torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The total weight over a box as ``sum(lead[:, None, ...] * tail)`` terms: (lead
        (S0,) with the border weight folded in, tail (*S[1:])) each; None for a user map.

        Normalising slices ``lead`` and ``tail`` per block, so the weight block of any part
        of the box costs one small broadcast; the tails are cached per box.
        """
        if self.weighting.mode == "map":
            return None
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        key = (tuple((sl.start, sl.stop) for sl in box[1:]), str(device), dtype)
        cached = self._tail  # one read: another thread may swap in another box's tail
        if cached is None or cached[0] != key:
            tails = tuple(
                outer([torch.as_tensor(s[sl], dtype=dtype, device=device) for s, sl in zip(sums[1:], box[1:])])
                if self.grid.ndim > 1
                else torch.ones((), dtype=dtype, device=device)
                for sums in (self._sum_a, self._sum_b)
            )
            cached = self._tail = (key, tails)
        tail_a, tail_b = cached[1]

        def lead(sums, coef=None):
            lead = torch.as_tensor(sums[0][box[0]], dtype=dtype, device=device)
            return lead if coef is None else coef * lead

        bw = self.bw
        if bw == 1.0:
            return [(lead(self._sum_a), tail_a)]
        if bw == 0.0:
            return [(lead(self._sum_b), tail_b)]
        return [(lead(self._sum_a, bw), tail_a), (lead(self._sum_b, 1.0 - bw), tail_b)]

    def _combine(self, a_vectors, b_vectors, device, dtype) -> torch.Tensor:
        # combine in float64, then cast: weights are exact to the output's precision
        def tensors(vs):
            return [torch.as_tensor(v, dtype=torch.float64, device=device) for v in vs]

        bw = self.bw
        if bw == 1.0:
            out = outer(tensors(a_vectors))
        elif bw == 0.0:
            out = outer(tensors(b_vectors))
        else:
            out = bw * outer(tensors(a_vectors)) + (1.0 - bw) * outer(tensors(b_vectors))
        return out.to(dtype)

    def _accumulate_map_norm(self) -> torch.Tensor:
        norm = torch.zeros(self.grid.padded_shape, dtype=torch.float64)
        for origin in self.grid.origins():
            sl = tuple(slice(int(o), int(o) + w) for o, w in zip(origin, self.grid.window))
            norm[sl] += self._map
        if norm.min() <= 0:
            where = tuple(int(i) for i in np.unravel_index(int(torch.argmin(norm)), norm.shape))
            raise ValueError(
                f"weight_map leaves voxels with no weight (first at {where}); make the map "
                f"positive near its edges or use a smaller step"
            )
        return norm
