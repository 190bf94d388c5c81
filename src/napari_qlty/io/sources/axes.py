"""Axis letters: checking a user's ``axes``, guessing them, and the (N, C, *tiled) order a Source presents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SPATIAL_AXES = "tzyx"
"""Tiled axes, in the order a Source presents them."""


AXIS_LETTERS = "ntczyx"
"""Letters an ``axes`` string may use: batch n, time t, channel c, space z, y, x."""


MAX_SPATIAL = 4


GUESSED_AXES = {1: "x", 2: "yx", 3: "zyx", 4: "czyx", 5: "nczyx"}


def _check_axes(axes: Any, ndim: int, shape: Sequence[int] | None = None) -> str:
    """Validate a user's ``axes`` string for data of ``ndim`` dimensions; lower-cased."""
    where = f" for data of shape {tuple(shape)}" if shape is not None else ""
    example = GUESSED_AXES.get(ndim, AXIS_LETTERS[-ndim:] if ndim <= len(AXIS_LETTERS) else "")
    valid = (
        f"axes must be a string with one letter per axis of the data ({ndim} here{where}), "
        f"letters from {', '.join(repr(a) for a in AXIS_LETTERS)} "
        f"(n: batch, c: channel, t/z/y/x: tiled axes), each at most once, with 1 to "
        f"{MAX_SPATIAL} of t, z, y, x" + (f", e.g. {example!r}" if example else "")
    )
    if not isinstance(axes, str):
        raise TypeError(f"axes={axes!r} is not a string; {valid}")
    norm = axes.lower()
    if len(norm) != ndim:
        raise ValueError(
            f"axes={axes!r} has {len(norm)} letters but the data has {ndim} axes; {valid}"
        )
    unknown = sorted({a for a in norm if a not in AXIS_LETTERS})
    if unknown:
        raise ValueError(
            f"axes={axes!r} has unknown letter(s) {', '.join(map(repr, unknown))}; {valid}"
        )
    repeated = sorted({a for a in norm if norm.count(a) > 1})
    if repeated:
        raise ValueError(f"axes={axes!r} repeats {', '.join(map(repr, repeated))}; {valid}")
    spatial = [a for a in norm if a in SPATIAL_AXES]
    if not spatial:
        raise ValueError(f"axes={axes!r} has no tiled axis (t, z, y or x); {valid}")
    if len(spatial) > MAX_SPATIAL:
        raise ValueError(
            f"axes={axes!r} has {len(spatial)} tiled axes, at most {MAX_SPATIAL}; {valid}"
        )
    return norm


def _guess_axes(ndim: int, shape: Sequence[int]) -> str:
    if ndim not in GUESSED_AXES:
        raise ValueError(
            f"cannot guess the axes of data with {ndim} dimensions (shape {tuple(shape)}); "
            f"pass axes=, a string of one letter per axis from {AXIS_LETTERS!r}"
        )
    return GUESSED_AXES[ndim]


def normalised_axes(stored: str) -> str:
    """The (N, C, *spatial) axes a Source presents for data stored with ``stored`` axes."""
    return "nc" + "".join(a for a in SPATIAL_AXES if a in stored)


def expand_key(key: Any, ndim: int) -> tuple:
    """A basic-indexing key as exactly ``ndim`` ints and slices."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        if sum(k is Ellipsis for k in key) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = ndim - (len(key) - 1)
        if fill < 0:
            raise IndexError(f"too many indices: {len(key) - 1} for {ndim} dimensions")
        key = key[:i] + (slice(None),) * fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices: {len(key)} for {ndim} dimensions")
    out = []
    for k in key:
        if isinstance(k, slice):
            out.append(k)
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            out.append(int(k))
        else:
            raise TypeError(
                "a Source takes basic indexing only (ints and slices), "
                f"got {type(k).__name__} {k!r}"
            )
    return tuple(out) + (slice(None),) * (ndim - len(out))


def resolve_axes(
    axes: str | None, meta_axes: str | None, shape: Sequence[int]
) -> tuple[str, bool]:
    ndim = len(shape)
    if axes is not None:
        return _check_axes(axes, ndim, shape), False
    if meta_axes is not None:
        return _check_axes(meta_axes, ndim, shape), False
    return _guess_axes(ndim, shape), True


def spatial_values(values, stored_axes: str):
    """Per-stored-axis values -> per tiled axis in t, z, y, x order."""
    if values is None:
        return None
    return tuple(values[stored_axes.index(a)] for a in SPATIAL_AXES if a in stored_axes)
