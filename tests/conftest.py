"""Shared hypothesis strategies and brute-force references for the engine tests.

Everything here is deliberately naive: loops over windows and voxels, written from the
documented behaviour, never from the engine's closed forms. The engine tests compare the
engine against these references.
"""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting

# Test modules import these helpers as ``from engine_testing import ...``: the name
# ``conftest`` is ambiguous once another test folder has its own conftest.py.
sys.modules.setdefault("engine_testing", sys.modules[__name__])

MODES = ("border", "gaussian", "hann", "linear", "map")
TAPER_MODES = ("border", "gaussian", "hann", "linear")


def fast(max_examples: int):
    """Hypothesis settings for this suite: small example counts, no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )


# ---------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------
@st.composite
def grid_specs(
    draw,
    *,
    min_ndim: int = 1,
    max_ndim: int = 4,
    max_sizes: tuple[int, ...] = (40, 40, 40, 40),
    max_windows: int | None = None,
    band_safe: bool = False,
    pad: bool | None = False,
    force_pad: bool = False,
):
    """Keyword arguments for :class:`Grid`.

    ``max_sizes[ndim - 1]`` caps every axis of an ``ndim``-axis grid (keeps data small);
    ``max_windows`` caps the windows per image (per axis ``max_windows ** (1 / ndim)``);
    ``band_safe`` keeps ``step <= window - 2 * border`` so a ``border_weight`` of 0
    leaves every voxel some weight; ``pad`` (True: pad mode drawn, None: maybe) lets
    windows exceed the volume; ``force_pad`` makes axis 0 smaller than its window.
    """
    ndim = draw(st.integers(min_ndim, max_ndim))
    cap = max_sizes[ndim - 1]
    per_axis = None if max_windows is None else max(2, int(max_windows ** (1.0 / ndim)))
    if pad is None:
        pad = draw(st.booleans())
    padding = force_pad or pad
    shape, window, step, border = [], [], [], []
    for axis in range(ndim):
        if force_pad and axis == 0:
            size = draw(st.integers(1, cap - 1))
            w = draw(st.integers(size + 1, cap))
        else:
            size = draw(st.integers(1, cap))
            lo = 1 if per_axis is None else max(1, math.ceil(size / per_axis))
            hi = max(size, cap) if padding else size
            w = draw(st.integers(lo, hi))
        padded = max(size, w)
        step_lo = 1
        if per_axis is not None and padded > w:
            step_lo = max(1, math.ceil((padded - w) / (per_axis - 1)))
        b_hi = (w - 1) // 2
        if band_safe:
            b_hi = min(b_hi, (w - step_lo) // 2)
        b = draw(st.integers(0, b_hi))
        st_hi = w - 2 * b if band_safe else w
        s = draw(st.integers(step_lo, st_hi))
        shape.append(size)
        window.append(w)
        step.append(s)
        border.append(b)
    spec = dict(shape=tuple(shape), window=tuple(window), step=tuple(step), border=tuple(border))
    if padding:
        spec["pad"] = draw(st.sampled_from(["reflect", "constant"]))
    return spec


@st.composite
def weightings(draw, window: tuple[int, ...], modes=MODES):
    """A Weighting for windows of shape ``window``; maps are random and positive."""
    mode = draw(st.sampled_from(modes))
    if mode == "map":
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        return Weighting("map", weight_map=rng.uniform(0.05, 1.0, size=window))
    bw = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
    sigma = draw(st.sampled_from([0.125, 0.2, 0.5]))
    return Weighting(mode, border_weight=bw, sigma=sigma)


seeds = st.integers(0, 2**32 - 1)


def random_volume(seed: int, shape, dtype=torch.float32) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if dtype == torch.bool:
        return torch.from_numpy(rng.random(shape) < 0.5)
    if dtype in (torch.uint8, torch.int32, torch.int64):
        return torch.from_numpy(rng.integers(0, 200, size=shape)).to(dtype)
    return torch.from_numpy(rng.standard_normal(shape) * 3 + 1).to(dtype)


# ---------------------------------------------------------------------------------------
# brute-force references
# ---------------------------------------------------------------------------------------
def brute_axis_origins(size: int, window: int, step: int) -> list[int]:
    """``o = min(k * step, size - window)`` for k = 0, 1, ... until a window ends at ``size``."""
    out = []
    k = 0
    while True:
        o = min(k * step, size - window)
        out.append(o)
        if o + window >= size:
            return out
        k += 1


def brute_origins(grid: Grid) -> list[tuple[int, ...]]:
    """All origins, C order over the axes."""
    per_axis = [
        brute_axis_origins(s, w, st_) for s, w, st_ in zip(grid.padded_shape, grid.window, grid.step)
    ]
    return list(itertools.product(*per_axis))


def brute_pad(x: np.ndarray, grid: Grid) -> np.ndarray:
    """Pad the spatial axes' far ends up to the grid's padded shape (numpy's own padding)."""
    if not grid.needs_padding:
        return x
    widths = [(0, 0), (0, 0)] + [(0, p - s) for s, p in zip(grid.shape, grid.padded_shape)]
    if grid.pad == "reflect":
        return np.pad(x, widths, mode="reflect")
    return np.pad(x, widths, mode="constant", constant_values=0)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def brute_extract(x, grid: Grid, indices=None) -> np.ndarray:
    """Windows by plain slicing, n-major then C order over the axes."""
    x = brute_pad(to_numpy(x), grid)
    origins = brute_origins(grid)
    if indices is None:
        indices = range(x.shape[0] * len(origins))
    out = []
    for index in indices:
        n, k = divmod(int(index), len(origins))
        sl = tuple(slice(o, o + w) for o, w in zip(origins[k], grid.window))
        out.append(x[(n, slice(None), *sl)])
    if not out:
        return np.zeros((0, x.shape[1], *grid.window), dtype=x.dtype)
    return np.stack(out)


def ref_taper(mode: str, size: int, border: int, sigma: float) -> np.ndarray:
    """The documented 1D tapers, peak 1, voxel by voxel from their definitions.

    gaussian: exp(-d^2 / 2 s^2) with d the distance to the window's centre and
    s = sigma * size; hann: 1/2 - 1/2 cos(2 pi (i + 1/2) / size), sampled at voxel
    centres; linear: a ramp of ``border`` voxels (half the window without a band) up
    to 1, the first voxel at 1 / (ramp + 1). Every value is at least 1e-6, so products
    over 4 axes stay positive in float32.
    """
    values = []
    for i in range(size):
        if mode == "border":
            v = 1.0
        elif mode == "gaussian":
            s = max(sigma * size, 1e-3)
            d = i - (size - 1) / 2
            v = math.exp(-(d * d) / (2 * s * s))
        elif mode == "hann":
            v = 0.5 - 0.5 * math.cos(2 * math.pi * (i + 0.5) / size)
        elif mode == "linear":
            ramp = border if border > 0 else max(size // 2, 1)
            from_edge = min(i, size - 1 - i) + 1  # 1 at the window's first and last voxel
            v = min(1.0, from_edge / (ramp + 1))
        else:
            raise AssertionError(mode)
        values.append(v)
    peak = max(values)
    return np.array([max(v / peak, 1e-6) for v in values])


def ref_inside(size: int, border: int, low_edge: bool, high_edge: bool) -> np.ndarray:
    """1 outside the border band; a face on the volume edge has no band."""
    inside = np.ones(size)
    if border:
        if not low_edge:
            inside[:border] = 0
        if not high_edge:
            inside[size - border :] = 0
    return inside


def outer_np(vectors) -> np.ndarray:
    out = np.ones(())
    for v in vectors:
        out = np.multiply.outer(out, v)
    return out


def ref_window_weight(grid: Grid, weighting: Weighting, position: int) -> np.ndarray:
    """The documented weight of window ``position`` (per image), float64."""
    if weighting.mode == "map":
        return np.asarray(weighting.weight_map, dtype=np.float64)
    k = np.unravel_index(position, grid.counts)
    tapers, insides = [], []
    for axis, (w, b) in enumerate(zip(grid.window, grid.border)):
        low, high = k[axis] == 0, k[axis] == grid.counts[axis] - 1
        t = ref_taper(weighting.mode, w, b, weighting.sigma)
        # a face on the volume edge: that half of the profile is flat at 1
        if low:
            t[: (w + 1) // 2] = 1
        if high:
            t[w // 2 :] = 1
        inside = ref_inside(w, b, low, high)
        tapers.append(t)
        insides.append(inside * t)
    bw = float(weighting.border_weight)
    return bw * outer_np(tapers) + (1 - bw) * outer_np(insides)


def qlty_window_weight(grid: Grid, border_weight: float, position: int) -> np.ndarray:
    """qlty's weight: 1 inside, ``border_weight`` in the band of every interior face."""
    k = np.unravel_index(position, grid.counts)
    inside = np.ones(grid.window, dtype=bool)
    for axis, (w, b) in enumerate(zip(grid.window, grid.border)):
        line = ref_inside(w, b, k[axis] == 0, k[axis] == grid.counts[axis] - 1).astype(bool)
        shape = [1] * grid.ndim
        shape[axis] = w
        inside = inside & line.reshape(shape)
    return np.where(inside, 1.0, float(border_weight))


def brute_norm(grid: Grid, weight_of) -> np.ndarray:
    """Sum of ``weight_of(position)`` over all windows, on the padded volume."""
    norm = np.zeros(grid.padded_shape)
    for k, origin in enumerate(brute_origins(grid)):
        sl = tuple(slice(o, o + w) for o, w in zip(origin, grid.window))
        norm[sl] += weight_of(k)
    return norm


def brute_band_mask(grid: Grid, position: int) -> np.ndarray:
    """True in the border band of window ``position``, except on faces on the volume edge."""
    return ~qlty_window_weight(grid, 0.0, position).astype(bool)
