"""Synthetic cryo-ET-like tomograms with filaments, ground truth and sparse annotations.

Why this exists: the plugin's demos, tests and benchmarks need a volume that looks like
the paper's filament tomogram (thin curvy tubes in a noisy, blurred background), comes
with a full ground truth to score against, and with *sparse* hand-like annotations (a few
painted slices, ~0.06 % of voxels) to train from -- at any size, reproducibly, and
without downloading anything.

Only numpy and torch are used (no scipy, napari or Qt), so importing this module is cheap
and works headless.  Large arrays are built with vectorised torch ops; Python loops run
per filament, per slice or per stroke, never per voxel.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_SHAPE",
    "IGNORE",
    "PAPER_SHAPE",
    "Tomogram",
    "make_tomogram",
    "paint_spot",
]

PAPER_SHAPE: tuple[int, int, int] = (236, 720, 510)
"""(Z, Y, X) of the paper's tomogram (86.7 M voxels)."""

DEFAULT_SHAPE: tuple[int, int, int] = (64, 192, 160)
"""Small default (2 M voxels) that builds in under a second on 2 CPU cores."""

IGNORE: int = -1
"""Annotation value for "unlabelled" voxels."""

MIN_SIDE = 16
"""Smallest allowed extent along any axis (room for a tube plus background)."""

# Target share of filament voxels when ``n_filaments`` is None.  The paper's tomogram has
# ~3.4 % filament among its labelled voxels; we aim a little above that.
_TARGET_FILAMENT_FRACTION = 0.035
# Background : filament ratio of the annotations (paper: 51,505 : 1,809 ~ 28.5 : 1).
_BG_PER_FILAMENT = 28.0
# Annotated slices per orientation.
_SLICES_PER_ORIENTATION = 2
# Background strokes keep clear of filament: no filament voxel within this Chebyshev
# distance in 3-D (so every stroke voxel is >= 3 voxels from the nearest filament).
_STROKE_CLEARANCE = 2
# Amplitude of the smooth background relative to the filament contrast.
_BACKGROUND_AMPLITUDE = 0.25
# Per-filament contrast is drawn from this range (relative units, background = 0).
_CONTRAST_RANGE = (0.6, 1.0)


@dataclass(frozen=True)
class Tomogram:
    """A synthetic tomogram with its ground truth and sparse annotations.

    Attributes
    ----------
    image
        float32 (Z, Y, X), roughly zero mean and unit std; filaments are bright.
    labels
        uint8 (Z, Y, X) ground truth: 0 background, 1 filament.
    annotations
        int8 (Z, Y, X): ``IGNORE`` (-1) unlabelled, 0 background, 1 filament; non-IGNORE
        voxels only on the slices in ``annotated_slices`` and always agreeing with ``labels``.
    annotated_slices
        Which planes were painted: ``{"xy": [z, ...], "xz": [y, ...], "yz": [x, ...]}``.
    """

    image: np.ndarray
    labels: np.ndarray
    annotations: np.ndarray
    annotated_slices: dict[str, list[int]]


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_shape(shape: Any) -> tuple[int, int, int]:
    """Return ``shape`` as a tuple of 3 ints >= MIN_SIDE or raise ValueError saying why."""
    try:
        items = tuple(shape)
    except TypeError:
        items = None
    if items is None or len(items) != 3 or not all(_is_int(s) for s in items):
        raise ValueError(
            f"shape must be a sequence of 3 integers (Z, Y, X), each >= {MIN_SIDE}; "
            f"got {shape!r}"
        )
    if any(int(s) < MIN_SIDE for s in items):
        raise ValueError(
            f"shape must have every axis >= {MIN_SIDE} (valid range: {MIN_SIDE} or more "
            f"voxels per axis); got {tuple(int(s) for s in items)}"
        )
    return int(items[0]), int(items[1]), int(items[2])


def _check_number(name: str, value: Any, *, low: float, low_inclusive: bool,
                  high: float | None = None) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    v = float(value)
    ok_low = v >= low if low_inclusive else v > low
    ok_high = high is None or v < high
    if not (ok_low and ok_high and math.isfinite(v)):
        rng = f"{'[' if low_inclusive else '('}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be in {rng}; got {value!r}")
    return v


# --------------------------------------------------------------------------------------
# filaments
# --------------------------------------------------------------------------------------


def _random_chord(rng: np.random.Generator,
                  shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """End points of a straight line through a random interior point, clipped to the box.

    The z component of the direction is damped because filaments in a tomogram mostly lie
    in the plane of the (thin) ice layer; the chord is re-drawn if it is very short (a
    corner clip would give a blob, not a filament).
    """
    hi = np.asarray(shape, dtype=np.float64) - 1.0
    best = None
    for _ in range(20):
        c = rng.uniform(0.0, 1.0, 3) * hi
        d = rng.normal(size=3)
        d[0] *= 0.5
        norm = np.linalg.norm(d)
        if norm < 1e-6:
            continue
        d /= norm
        # slab clipping of c + t d to [0, hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = np.where(d != 0, (0.0 - c) / d, -np.inf)
            t2 = np.where(d != 0, (hi - c) / d, np.inf)
        t_min = float(np.max(np.minimum(t1, t2)))
        t_max = float(np.min(np.maximum(t1, t2)))
        a, b = c + t_min * d, c + t_max * d
        length = t_max - t_min
        if best is None or length > best[2]:
            best = (a, b, length)
        if length >= 0.5 * min(shape):
            break
    assert best is not None
    return best[0], best[1]


def _centerline(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth random curve crossing the volume, sampled at <= 0.5 voxel spacing.

    Straight chord between two points on the box surface plus 1-3 low-frequency sine
    wiggles (sin(pi k t) vanishes at both ends, so the curve still starts/ends on faces).
    Returns float64 (P, 3) points in (z, y, x) voxel coordinates.
    """
    a, b = _random_chord(rng, shape)
    chord = b - a
    length = float(np.linalg.norm(chord))
    u = chord / max(length, 1e-9)
    n_modes = int(rng.integers(1, 4))
    modes = []
    speed_bound = length
    for _ in range(n_modes):
        k = int(rng.integers(1, 5))
        amp = float(rng.uniform(0.03, 0.10)) * length / k
        v = rng.normal(size=3)
        v -= v.dot(u) * u                      # perpendicular to the chord
        v /= max(np.linalg.norm(v), 1e-9)
        w = np.cross(u, v)
        twist = float(rng.uniform(0.0, math.pi))    # any direction in the normal plane
        direction = math.cos(twist) * v + math.sin(twist) * w
        modes.append((k, amp, direction))
        speed_bound += math.pi * k * amp
    # |c'(t)| <= speed_bound, so this many intervals give spacing <= 0.5 voxel.
    n_points = int(math.ceil(2.0 * speed_bound)) + 1
    t = np.linspace(0.0, 1.0, n_points)
    pts = a[None, :] + t[:, None] * chord[None, :]
    for k, amp, direction in modes:
        pts += (amp * np.sin(math.pi * k * t))[:, None] * direction[None, :]
    return pts


def _ball_offsets(radius: float) -> np.ndarray:
    """Integer offsets (B, 3) that can be within ``radius`` of a point rounded to the grid."""
    r = int(math.ceil(radius + 0.5))
    ax = np.arange(-r, r + 1)
    off = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    # a voxel centre is within radius of p only if within radius + sqrt(3)/2 of round(p)
    keep = (off.astype(np.float64) ** 2).sum(-1) <= (radius + math.sqrt(3) / 2) ** 2
    return off[keep].astype(np.int64)


def _paint_tube(volume_flat: np.ndarray, shape: tuple[int, int, int], pts: np.ndarray,
                offsets: np.ndarray, radius: float, value: float,
                chunk: int = 2048) -> None:
    """Set every voxel within ``radius`` of the polyline points to max(current, value).

    Vectorised: centerline points (P, 3) + ball offsets (B, 3) -> flat indices -> scatter.
    Repeated indices are harmless (they all write the same value), so no ``unique`` pass.
    The per-filament arrays are small, so this runs in numpy: torch's per-op thread
    start-up costs more than the work here (~10x slower on a busy 2-core machine).
    """
    _, Y, X = shape
    dims = np.asarray(shape, dtype=np.int64)
    reach = int(np.abs(offsets).max())
    off_f = offsets.astype(np.float32)
    off_flat = (offsets[:, 0] * Y + offsets[:, 1]) * X + offsets[:, 2]         # (B,)
    r2 = np.float32(radius * radius)
    for s in range(0, len(pts), chunk):
        p = pts[s:s + chunk]
        base = np.rint(p).astype(np.int64)
        frac = (p - base).astype(np.float32)                     # (P, 3) in [-0.5, 0.5]
        d2 = (frac[:, None, 0] - off_f[None, :, 0]) ** 2         # (P, B)
        d2 += (frac[:, None, 1] - off_f[None, :, 1]) ** 2
        d2 += (frac[:, None, 2] - off_f[None, :, 2]) ** 2
        keep = d2 <= r2
        # only points near a face can reach outside the volume; check just those rows
        edge = ((base < reach) | (base >= dims - reach)).any(1)
        if edge.any():
            e = np.flatnonzero(edge)
            c = base[e][:, None, :] + offsets[None, :, :]         # (E, B, 3)
            keep[e] &= ((c >= 0) & (c < dims)).all(-1)
        pi, bi = np.nonzero(keep)
        if pi.size == 0:
            continue
        base_flat = (base[:, 0] * Y + base[:, 1]) * X + base[:, 2]
        idx = base_flat[pi] + off_flat[bi]
        volume_flat[idx] = np.maximum(volume_flat[idx], np.float32(value))


def _add_filament(rng: np.random.Generator, volume_flat: np.ndarray,
                  shape: tuple[int, int, int], offsets: np.ndarray, radius: float) -> None:
    """Draw one random filament (centerline + contrast) and paint it."""
    pts = _centerline(rng, shape)
    contrast = float(rng.uniform(*_CONTRAST_RANGE))
    _paint_tube(volume_flat, shape, pts, offsets, radius, contrast)


# --------------------------------------------------------------------------------------
# image formation
# --------------------------------------------------------------------------------------


def _gaussian_kernel(sigma: float) -> list[float]:
    r = max(1, int(math.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).tolist()


def _blur_axis(x: torch.Tensor, out: torch.Tensor, kernel: list[float], axis: int) -> torch.Tensor:
    """1-D convolution of ``x`` along ``axis`` into ``out`` (edge-replicate padding).

    Written as a sum of shifted in-place adds rather than ``F.conv1d``/``conv3d``: on the
    paper-sized volume this is ~10x faster on CPU and needs no padded/permuted copies.
    """
    r = (len(kernel) - 1) // 2
    n = x.shape[axis]
    torch.mul(x, kernel[r], out=out)
    first, last = x.narrow(axis, 0, 1), x.narrow(axis, n - 1, 1)
    for d in range(1, r + 1):
        w = kernel[r + d]
        if d >= n:
            out.add_(first, alpha=w)
            out.add_(last, alpha=w)
            continue
        out.narrow(axis, d, n - d).add_(x.narrow(axis, 0, n - d), alpha=w)  # x[i - d]
        out.narrow(axis, 0, d).add_(first, alpha=w)
        out.narrow(axis, 0, n - d).add_(x.narrow(axis, d, n - d), alpha=w)  # x[i + d]
        out.narrow(axis, n - d, d).add_(last, alpha=w)
    return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 3-D float32 tensor (returns a tensor, maybe ``x``'s buffer)."""
    if sigma <= 0:
        return x
    kernel = _gaussian_kernel(sigma)
    a, b = x, torch.empty_like(x)
    for axis in range(3):
        _blur_axis(a, b, kernel, axis)
        a, b = b, a
    return a


def _smooth_background(shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """Low-frequency variation (ice thickness, uneven illumination), unit-ish std."""
    coarse_shape = tuple(max(2, int(round(s / 40.0)) + 1) for s in shape)
    coarse = torch.randn((1, 1) + coarse_shape, generator=gen, dtype=torch.float32)
    full = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return full[0, 0]


# --------------------------------------------------------------------------------------
# annotations
# --------------------------------------------------------------------------------------


def _choose_slices(rng: np.random.Generator, n: int, per_slice_filament: np.ndarray,
                   count: int) -> list[int]:
    """``count`` slice indices spread along an axis of length ``n``, preferring ones with filament.

    The axis (minus a small margin) is cut into ``count`` equal bands and one index is drawn
    in each band, among those whose plane contains filament voxels when there are any.
    """
    margin = max(1, int(round(0.1 * n)))
    lo_all, hi_all = margin, n - margin
    if hi_all - lo_all < count:
        lo_all, hi_all = 0, n
    edges = np.linspace(lo_all, hi_all, count + 1).round().astype(int)
    chosen: list[int] = []
    for i in range(count):
        lo, hi = int(edges[i]), max(int(edges[i + 1]), int(edges[i]) + 1)
        band = np.arange(lo, hi)
        band = band[~np.isin(band, chosen)]
        if band.size == 0:
            band = np.setdiff1d(np.arange(n), chosen)
        with_filament = band[per_slice_filament[band] > 0]
        pool = with_filament if with_filament.size else band
        chosen.append(int(rng.choice(pool)))
    return sorted(chosen)


def _stroke_pixels(rng: np.random.Generator, hw: tuple[int, int], start: np.ndarray,
                   brush: np.ndarray) -> np.ndarray:
    """Flat pixel indices (in painting order, no repeats) of one random polyline stroke."""
    h, w = hw
    n_segments = int(rng.integers(1, 4))
    seg_len = 0.25 * min(h, w)
    vertices = [start.astype(np.float64)]
    for _ in range(n_segments):
        angle = rng.uniform(0.0, 2.0 * math.pi)
        length = rng.uniform(0.5, 1.5) * seg_len
        nxt = vertices[-1] + length * np.array([math.sin(angle), math.cos(angle)])
        vertices.append(np.clip(nxt, 0.0, [h - 1.0, w - 1.0]))
    pts = []
    for p, q in zip(vertices[:-1], vertices[1:]):
        n = int(math.ceil(2.0 * np.linalg.norm(q - p))) + 1   # <= 0.5 px spacing
        t = np.linspace(0.0, 1.0, n)[:, None]
        pts.append(p[None, :] + t * (q - p)[None, :])
    centre = np.rint(np.concatenate(pts)).astype(np.int64)
    pix = (centre[:, None, :] + brush[None, :, :]).reshape(-1, 2)
    ok = (pix[:, 0] >= 0) & (pix[:, 0] < h) & (pix[:, 1] >= 0) & (pix[:, 1] < w)
    flat = pix[ok, 0] * w + pix[ok, 1]
    _, first = np.unique(flat, return_index=True)
    return flat[np.sort(first)]


def _paint_background(rng: np.random.Generator, ann2d: np.ndarray, allowed: np.ndarray,
                      budget: int) -> int:
    """Scribble background (0) strokes on ``ann2d`` only where ``allowed``; return count painted."""
    if budget <= 0:
        return 0
    h, w = ann2d.shape
    allowed_flat = np.flatnonzero(allowed)
    if allowed_flat.size == 0:
        return 0
    brush = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.int64)  # 3 px wide
    painted = 0
    for _ in range(200):
        if painted >= budget:
            break
        s = int(allowed_flat[rng.integers(allowed_flat.size)])
        flat = _stroke_pixels(rng, (h, w), np.array([s // w, s % w]), brush)
        rows, cols = flat // w, flat % w
        good = allowed[rows, cols] & (ann2d[rows, cols] == IGNORE)
        rows, cols = rows[good], cols[good]
        take = min(rows.size, budget - painted)
        ann2d[rows[:take], cols[:take]] = 0
        painted += take
    return painted


def _paint_filament(rng: np.random.Generator, ann2d: np.ndarray, truth2d: np.ndarray,
                    budget: int) -> int:
    """Paint 1 on filament pixels near 1-3 seed points (a brush dabbed on filaments)."""
    if budget <= 0:
        return 0
    rows, cols = np.nonzero((truth2d == 1) & (ann2d == IGNORE))
    if rows.size == 0:
        return 0
    n_seeds = int(min(rng.integers(1, 4), budget, rows.size))
    per_seed = [budget // n_seeds + (1 if i < budget % n_seeds else 0) for i in range(n_seeds)]
    painted = 0
    free = np.ones(rows.size, dtype=bool)
    for quota in per_seed:
        cand = np.flatnonzero(free)
        if cand.size == 0:
            break
        seed = int(cand[rng.integers(cand.size)])
        d2 = (rows[cand] - rows[seed]) ** 2 + (cols[cand] - cols[seed]) ** 2
        nearest = cand[np.argsort(d2, kind="stable")[:quota]]
        ann2d[rows[nearest], cols[nearest]] = 1
        free[nearest] = False
        painted += int(nearest.size)
    return painted


def _max_filter_1d(a: np.ndarray, half: int, axis: int) -> np.ndarray:
    """Running max over a window of 2*half+1 along ``axis`` (edges: window is cut)."""
    out = a.copy()
    n = a.shape[axis]
    for d in range(1, min(half, n - 1) + 1):
        lo = [slice(None)] * a.ndim
        hi = [slice(None)] * a.ndim
        lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
        np.maximum(out[tuple(lo)], a[tuple(hi)], out=out[tuple(lo)])
        np.maximum(out[tuple(hi)], a[tuple(lo)], out=out[tuple(hi)])
    return out


def _near_filament(labels: np.ndarray, axis: int, index: int, clearance: int) -> np.ndarray:
    """Boolean 2-D map of the plane's pixels within ``clearance`` (Chebyshev, 3-D) of filament."""
    n = labels.shape[axis]
    lo, hi = max(0, index - clearance), min(n, index + clearance + 1)
    slab = np.take(labels, np.arange(lo, hi), axis=axis).max(axis=axis)
    for ax in (0, 1):
        slab = _max_filter_1d(slab, clearance, ax)
    return slab > 0


def _annotate(rng: np.random.Generator, labels: np.ndarray,
              annotated_fraction: float) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Simulate a person painting a few slices per orientation (see ``make_tomogram``)."""
    shape = labels.shape
    annotations = np.full(shape, IGNORE, dtype=np.int8)
    total = max(2, int(round(annotated_fraction * labels.size)))
    n_fil = max(1, int(round(total / (1.0 + _BG_PER_FILAMENT))))
    n_bg = max(1, total - n_fil)

    # per-slice filament counts along each axis (two reductions of the uint8 labels)
    zy = labels.sum(axis=2, dtype=np.int64)
    zx = labels.sum(axis=1, dtype=np.int64)
    counts = {0: zy.sum(1), 1: zy.sum(0), 2: zx.sum(0)}
    names = {0: "xy", 1: "xz", 2: "yz"}
    chosen = {
        names[ax]: _choose_slices(rng, shape[ax], counts[ax], _SLICES_PER_ORIENTATION)
        for ax in (0, 1, 2)
    }
    # interleave orientations so any shortfall is carried over to a different plane
    order = [(ax, chosen[names[ax]][i])
             for i in range(_SLICES_PER_ORIENTATION) for ax in (0, 1, 2)]

    fil_left, bg_left = n_fil, n_bg
    for k, (ax, idx) in enumerate(order):
        remaining_slices = len(order) - k
        ann2d = np.take(annotations, idx, axis=ax)  # copy; written back below
        truth2d = np.take(labels, idx, axis=ax)
        fil_quota = int(math.ceil(fil_left / remaining_slices))
        bg_quota = int(math.ceil(bg_left / remaining_slices))
        fil_left -= _paint_filament(rng, ann2d, truth2d, fil_quota)
        allowed = ~_near_filament(labels, ax, idx, _STROKE_CLEARANCE)
        bg_left -= _paint_background(rng, ann2d, allowed, bg_quota)
        sl = [slice(None)] * 3
        sl[ax] = idx
        annotations[tuple(sl)] = ann2d
    return annotations, chosen


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


def make_tomogram(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    *,
    n_filaments: int | None = None,
    radius: float = 2.5,
    blur_sigma: float = 1.0,
    noise: float = 0.6,
    annotated_fraction: float = 6e-4,
) -> Tomogram:
    """Build a deterministic synthetic filament tomogram of any size (Z, Y, X >= 16).

    Why: a stand-in for the paper's cryo-ET tomogram with known ground truth, so the
    tiling/training/stitching pipeline can be exercised and scored reproducibly.

    Parameters
    ----------
    shape
        (Z, Y, X) voxels, each >= 16.  ``PAPER_SHAPE`` reproduces the paper's extent.
    seed
        Non-negative int; the same ``(shape, seed, params)`` gives bitwise-identical arrays
        (on the same machine and torch build).
    n_filaments
        Number of filaments; None adds filaments until ~3.5 % of voxels are filament
        (the paper's share), so the count scales with the volume.
    radius
        Tube radius in voxels.
    blur_sigma
        Gaussian blur (voxels) applied to contrast + background; 0 disables it.
    noise
        Std of white Gaussian noise added after the blur, relative to the std of the
        noise-free image (1 / amplitude SNR).  With the default 0.6 the best per-voxel
        threshold reaches F1 ~0.6-0.75 (filament contrast varies 0.6-1.0 per filament and
        the smooth background shifts it), while a small 3-D CNN gets ~0.9+.
    annotated_fraction
        Share of all voxels that get an annotation (paper: 6e-4).  About 1 in 29 of them
        is filament, the rest background, as in the paper (1,809 : 51,505).

    Returns
    -------
    Tomogram
        image (float32, zero-mean unit-std), labels (uint8), annotations (int8 with
        ``IGNORE``) and the annotated slice indices.
    """
    shape = _check_shape(shape)
    if not _is_int(seed):
        raise TypeError(f"seed must be an int; got {seed!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0; got {seed!r}")
    if n_filaments is not None and (not _is_int(n_filaments) or int(n_filaments) < 1):
        raise ValueError(f"n_filaments must be None or an int >= 1; got {n_filaments!r}")
    radius = _check_number("radius", radius, low=0.5, low_inclusive=True,
                           high=min(shape) / 2.0)
    blur_sigma = _check_number("blur_sigma", blur_sigma, low=0.0, low_inclusive=True, high=16.0)
    noise = _check_number("noise", noise, low=0.0, low_inclusive=True, high=1e6)
    annotated_fraction = _check_number("annotated_fraction", annotated_fraction, low=0.0,
                                       low_inclusive=False, high=0.5)

    seed = int(seed)
    rng = np.random.default_rng([seed, 0x51A7])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 12345)

    n_vox = shape[0] * shape[1] * shape[2]
    # 1. filament contrast painted straight into the image buffer
    volume = torch.zeros(shape, dtype=torch.float32)
    flat = volume.numpy().reshape(-1)      # shares memory with ``volume``
    offsets = _ball_offsets(radius)
    target = _TARGET_FILAMENT_FRACTION * n_vox
    if n_filaments is not None:
        for _ in range(n_filaments):
            _add_filament(rng, flat, shape, offsets, radius)
    else:
        # Paint in batches sized from the average coverage so far and recount (a full
        # count is ~50 ms at paper size): ~log2(n) recounts, overshoot <= 1 filament.
        count, covered, batch = 0, 0, 1
        while covered < target:
            for _ in range(batch):
                _add_filament(rng, flat, shape, offsets, radius)
            count += batch
            covered = int(np.count_nonzero(flat))
            per_filament = max(covered / count, 1.0)
            batch = max(1, int(0.5 * (target - covered) / per_filament))
    labels = (volume > 0).to(torch.uint8).numpy()  # ground truth, before anything is added

    # 2. smooth background, blur, noise, normalise
    volume.add_(_smooth_background(shape, gen), alpha=_BACKGROUND_AMPLITUDE)
    volume = _gaussian_blur(volume, blur_sigma)
    if noise > 0:
        # relative to the std of the noise-free image (1 / amplitude SNR), so ``noise``
        # means the same at any size or blur
        noise_std = noise * float(torch.std(volume))
        step = max(1, (1 << 22) // (shape[1] * shape[2]))  # ~4 M voxels per noise chunk
        for z0 in range(0, shape[0], step):
            z1 = min(shape[0], z0 + step)
            chunk = torch.randn((z1 - z0, shape[1], shape[2]), generator=gen,
                                dtype=torch.float32)
            volume[z0:z1].add_(chunk, alpha=noise_std)
    std, mean = torch.std_mean(volume)
    volume.sub_(mean).div_(std if float(std) > 0 else 1.0)
    image = volume.numpy()

    # 3. sparse, hand-like annotations
    annotations, chosen = _annotate(rng, labels, annotated_fraction)
    return Tomogram(image=image, labels=labels, annotations=annotations,
                    annotated_slices=chosen)



def paint_spot(
    labels: np.ndarray,
    annotations: np.ndarray,
    centre,
    half: int,
    rng: np.random.Generator,
    *,
    filament: int = 12,
    background: int = 60,
    predicted: np.ndarray | None = None,
    clearance: int = _STROKE_CLEARANCE,
) -> tuple[int, int]:
    """Simulate a person adding strokes at one spot, in place; returns (filament,
    background) voxels painted.

    On the XY slice through ``centre`` (z, y, x), within ``half`` voxels of it in y and x,
    up to ``filament`` voxels are dabbed on filament and up to ``background`` voxels of
    background are scribbled clear of it, as :func:`make_tomogram`'s annotator paints
    (only on unlabelled voxels). With ``predicted`` labels (0/1, the model's), the person
    corrects what is wrong first: filament strokes start on missed filament, background
    strokes on false filament, where there is any in the box. Background strokes keep
    ``clearance`` voxels (Chebyshev, in 3-D) between them and any filament, as the sample's
    annotator does (2); 0 lets them run along the filaments' edges.
    """
    z, y, x = (int(c) for c in centre)
    if annotations.shape != labels.shape or not all(0 <= c < n for c, n in zip((z, y, x), labels.shape)):
        raise ValueError(f"centre {tuple(centre)} must lie in the volume {labels.shape} (annotations alike)")
    box = (z, slice(max(0, y - half), y + half), slice(max(0, x - half), x + half))
    ann2d = annotations[box].copy()
    truth2d = labels[box]
    if not _is_int(clearance) or clearance < 0:
        raise ValueError(f"clearance must be an integer >= 0; got {clearance!r}")
    allowed = ~_near_filament(labels, 0, z, int(clearance))[box[1:]]
    fil = bg = 0
    if predicted is not None:  # what is wrong first, then the rest of the budget anywhere
        missed = (truth2d == 1) & (predicted[box] == 0)
        fil = _paint_filament(rng, ann2d, missed.astype(truth2d.dtype), filament)
        bg = _paint_background(rng, ann2d, allowed & (predicted[box] == 1), background)
    fil += _paint_filament(rng, ann2d, truth2d, filament - fil)
    bg += _paint_background(rng, ann2d, allowed, background - bg)
    annotations[box] = ann2d
    return fil, bg
