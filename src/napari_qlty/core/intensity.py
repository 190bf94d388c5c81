"""Intensity normalisation with statistics of the whole volume, never of one window.

A window normalised on its own statistics gets a different mapping from its neighbour,
so the model sees a step in intensity at every window edge and the prediction has a
seam there. Here the statistics are measured once, out of core, over the whole volume
(:meth:`Normalisation.fit`), and every batch is mapped the same way on the device
(:meth:`Fitted.apply`): ``x -> (x - offset) * scale``.

How the statistics are measured:

* integers of 16 bits or fewer (and bool): an exact histogram of every voxel, read slab
  by slab, so percentiles equal ``numpy.percentile`` of the whole volume and the mean and
  standard deviation are exact;
* every other type (floats, 32-bit integers): all voxels when the volume holds at most
  ``sample_voxels`` of them (exact), else a deterministic sample of whole blocks spread
  evenly over the volume. The sampled percentile is then an estimate: for ``n`` sampled
  voxels drawn independently, the true rank of the estimate is within
  ``sqrt(ln(40) / (2 n))`` of the requested one with 95 % probability (the DKW bound:
  0.05 percentage points for the default 2^24 voxels); neighbouring voxels of a block
  are correlated, so the effective ``n`` is smaller. The statistics record which method
  was used and how many voxels were read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

MODES = ("none", "percentile", "mean-std", "range")
DEFAULT_PERCENTILES = (1.0, 99.8)
#: voxels read at a time, and the sample of a volume that is not histogrammed
SLAB_VOXELS = 1 << 22
SAMPLE_VOXELS = 1 << 24
EPS = 1e-20


@dataclass(frozen=True)
class Normalisation:
    """How intensities are mapped before the model sees them.

    ``mode``: ``"none"`` (the stored values), ``"percentile"`` (``low`` -> 0 and
    ``high`` -> 1 for the ``low``-th and ``high``-th percentiles of the volume, as
    csbdeep's ``normalize``; default 1 and 99.8), ``"mean-std"`` (zero mean, unit
    standard deviation over the volume) or ``"range"`` (the fixed values ``low`` -> 0,
    ``high`` -> 1).
    """

    mode: str = "none"
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normalisation must be one of {', '.join(MODES)}, got {self.mode!r}")
        low, high = self.low, self.high
        if self.mode == "percentile":
            low = DEFAULT_PERCENTILES[0] if low is None else float(low)
            high = DEFAULT_PERCENTILES[1] if high is None else float(high)
            if not 0.0 <= low < high <= 100.0:
                raise ValueError(
                    f"percentiles must satisfy 0 <= low < high <= 100, got low {low}, high {high}"
                )
        elif self.mode == "range":
            if low is None or high is None:
                raise ValueError("normalisation 'range' needs both low and high (the values mapped to 0 and 1)")
            low, high = float(low), float(high)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"range normalisation needs finite low < high, got low {low}, high {high}")
        elif low is not None or high is not None:
            raise ValueError(f"normalisation {self.mode!r} takes no low or high")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def identity(self) -> bool:
        return self.mode == "none"

    def to_json(self) -> dict:
        return {"mode": self.mode, "low": self.low, "high": self.high}

    @classmethod
    def from_json(cls, data: dict | None) -> Normalisation:
        data = data or {}
        return cls(data.get("mode", "none"), data.get("low"), data.get("high"))

    def fit(self, volume, *, sample_voxels: int = SAMPLE_VOXELS) -> Fitted:
        """Measure what this normalisation needs over the whole ``volume`` (N, C, *spatial)."""
        if self.mode in ("none", "range"):
            low, high = (0.0, 1.0) if self.mode == "none" else (self.low, self.high)
            return Fitted(self, offset=low, scale=1.0 / (high - low), statistics={})
        stats = measure(volume, self, sample_voxels=sample_voxels)
        if self.mode == "percentile":
            lo, hi = stats[f"p{self.low:g}"], stats[f"p{self.high:g}"]
            return Fitted(self, offset=lo, scale=1.0 / (hi - lo + EPS), statistics=stats)
        return Fitted(self, offset=stats["mean"], scale=1.0 / (stats["std"] + EPS), statistics=stats)


@dataclass(frozen=True)
class Fitted:
    """A normalisation with its statistics measured: ``x -> (x - offset) * scale``."""

    normalisation: Normalisation
    offset: float
    scale: float
    statistics: dict = field(default_factory=dict, compare=False)

    @property
    def identity(self) -> bool:
        return self.normalisation.identity

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map a floating batch (in place when it may be: it is a fresh cast)."""
        if self.identity:
            return x
        return x.sub_(self.offset).mul_(self.scale)

    def to_json(self) -> dict:
        return {**self.normalisation.to_json(), "offset": self.offset, "scale": self.scale,
                "statistics": dict(self.statistics)}

    @classmethod
    def from_json(cls, data: dict) -> Fitted:
        return cls(Normalisation.from_json(data), float(data["offset"]), float(data["scale"]),
                   dict(data.get("statistics") or {}))


IDENTITY = Fitted(Normalisation(), 0.0, 1.0)


# -- measuring ---------------------------------------------------------------------------------
def histogrammed(dtype) -> bool:
    """True for the types whose statistics come from an exact histogram."""
    dtype = np.dtype(dtype)
    return dtype.kind == "b" or (dtype.kind in "ui" and dtype.itemsize <= 2)


def measure(volume, normalisation: Normalisation, *, sample_voxels: int = SAMPLE_VOXELS) -> dict:
    """The statistics ``normalisation`` needs, over the whole (N, C, *spatial) ``volume``."""
    percentiles = (normalisation.low, normalisation.high) if normalisation.mode == "percentile" else ()
    return statistics(volume, percentiles, sample_voxels=sample_voxels)


def statistics(volume, percentiles=(), *, sample_voxels: int = SAMPLE_VOXELS) -> dict:
    """Minimum, maximum, mean, standard deviation and the ``percentiles`` (as ``"p<q>"``)
    of the whole (N, C, *spatial) ``volume``, with how they were measured."""
    dtype = _numpy_dtype(volume)
    total = int(np.prod(volume.shape, dtype=np.int64))
    if total == 0:
        raise ValueError("cannot normalise an empty volume")
    if histogrammed(dtype):
        values, counts = _histogram(volume, dtype)
        method, read = "exact histogram", total
    else:
        sample = _sample(volume, sample_voxels)
        read = sample.size
        method = "all voxels" if read == total else f"sample of {read:,} of {total:,} voxels"
        values, counts = np.unique(sample, return_counts=True)
    finite = np.isfinite(values)
    values, counts = values[finite].astype(np.float64), counts[finite].astype(np.int64)
    if counts.sum() == 0:
        raise ValueError("the volume holds no finite value to normalise with")
    stats = {"method": method, "voxels_read": int(read), "voxels": total,
             "min": float(values[0]), "max": float(values[-1])}
    for q in percentiles:
        stats[f"p{q:g}"] = percentile_from_counts(values, counts, q)
    n = counts.sum()
    mean = float((values * counts).sum() / n)
    stats["mean"] = mean
    stats["std"] = float(math.sqrt(max(((values - mean) ** 2 * counts).sum() / n, 0.0)))
    return stats


def percentile_from_counts(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``numpy.percentile(data, q)`` (linear interpolation) of data given as sorted distinct
    ``values`` with their ``counts``."""
    n = int(counts.sum())
    position = q / 100.0 * (n - 1)
    below, frac = int(math.floor(position)), position - math.floor(position)
    ends = np.cumsum(counts)  # value i covers ranks [ends[i-1], ends[i])
    i = int(np.searchsorted(ends, below, side="right"))
    j = int(np.searchsorted(ends, min(below + 1, n - 1), side="right"))
    a, b = float(values[i]), float(values[j])
    # numpy's own lerp: from the nearer end, so the result is bit for bit numpy's
    return a + (b - a) * frac if frac < 0.5 else b - (b - a) * (1 - frac)


def _numpy_dtype(volume) -> np.dtype:
    dtype = volume.dtype
    if isinstance(dtype, torch.dtype):
        return np.dtype("float32") if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
    return np.dtype(dtype)


def _as_numpy(block) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu()
        return (block.float() if block.dtype == torch.bfloat16 else block).numpy()
    return np.asarray(block)


def slabs(volume, voxels: int = SLAB_VOXELS) -> Iterator[np.ndarray]:
    """The volume (N, C, *spatial) read in slabs along its first spatial axis."""
    shape = tuple(volume.shape)
    plane = int(np.prod(shape[3:], dtype=np.int64)) * shape[1]
    rows = max(1, voxels // max(plane, 1))
    for n in range(shape[0]):
        for r0 in range(0, shape[2], rows):
            yield _as_numpy(volume[(n, slice(None), slice(r0, r0 + rows))])


def _histogram(volume, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    if dtype.kind == "b":
        lo, bins = 0, 2
    else:
        info = np.iinfo(dtype)
        lo, bins = int(info.min), int(info.max) - int(info.min) + 1
    counts = np.zeros(bins, dtype=np.int64)
    for block in slabs(volume):
        flat = block.reshape(-1)
        index = flat.astype(np.int32) - lo if lo else flat.astype(np.int32)
        counts += np.bincount(index, minlength=bins)
    present = np.nonzero(counts)[0]
    return (present + lo).astype(np.float64), counts[present]


def _sample(volume, sample_voxels: int) -> np.ndarray:
    """All voxels of a small volume; else whole blocks spread evenly (always the same ones)."""
    shape = tuple(volume.shape)
    total = int(np.prod(shape, dtype=np.int64))
    if total <= sample_voxels:
        return np.concatenate([b.reshape(-1) for b in slabs(volume)]).astype(np.float64)
    spatial = shape[2:]
    # at least 64 blocks, spread evenly, each at most a slab
    per_block = min(SLAB_VOXELS, max(1, sample_voxels // 64)) / max(shape[1], 1)
    edge = max(1, int(per_block ** (1.0 / len(spatial))))
    block = tuple(min(edge, s) for s in spatial)
    counts = [math.ceil(s / b) for s, b in zip(spatial, block)]
    grid_size = shape[0] * math.prod(counts)
    per_block = shape[1] * math.prod(block)
    wanted = min(grid_size, max(1, math.ceil(sample_voxels / per_block)))
    chosen = np.unique(np.linspace(0, grid_size - 1, wanted).round().astype(np.int64))
    parts = []
    for flat in chosen:
        n, *index = np.unravel_index(int(flat), (shape[0], *counts))
        key = (int(n), slice(None), *(slice(i * b, (i + 1) * b) for i, b in zip(index, block)))
        parts.append(_as_numpy(volume[key]).reshape(-1))
    return np.concatenate(parts).astype(np.float64)
