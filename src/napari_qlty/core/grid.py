"""Window geometry: where every window sits, pure arithmetic, no data.

A grid tiles the spatial axes of an (N, C, *spatial) tensor with overlapping windows.
Along each axis the origins are ``0, step, 2*step, ...`` and the last window is pulled
back so that it ends exactly on the far edge (the *step-back*), so every voxel is covered
and no window is ever short. Windows are numbered in the paper's order: image ``n`` first,
then the spatial axes in order (C order), so window ``i`` of image ``n`` has the flat
index ``n * len(grid) + i``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

PadMode = Literal["reflect", "constant"]
IntOrSeq = int | Sequence[int]

MAX_TILED_AXES = 4


def per_axis(value: IntOrSeq, ndim: int, name: str) -> tuple[int, ...]:
    """One int for every axis, or exactly one value per axis."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * ndim
    try:
        values = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of {ndim} ints, got {value!r}") from None
    if len(values) != ndim:
        raise ValueError(
            f"{name} has {len(values)} values but the grid has {ndim} tiled axes; "
            f"give one int or {ndim} values"
        )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must hold ints, got {values!r}")
    return tuple(int(v) for v in values)


def parse_per_axis(text: str, name: str, ndim: int | None = None) -> int | tuple[int, ...]:
    """Typed text as :func:`per_axis` takes it: ``"64"`` -> 64, ``"32, 64, 64"`` (or
    ``32 x 64 x 64``) -> (32, 64, 64).

    Raises ValueError naming ``name`` (a field or a flag), for the person typing.
    """
    parts = [p for p in re.split(r"[,\s;xX×]+", str(text).strip()) if p]
    if not parts:
        raise ValueError(f"{name}: enter a number, or one number per axis separated by commas")
    values = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ValueError(f"{name}: {p!r} is not a number") from None
        if not v.is_integer():
            raise ValueError(f"{name}: {p!r} must be a whole number of voxels")
        values.append(int(v))
    if len(values) == 1:
        return values[0]
    if ndim is not None and len(values) != ndim:
        raise ValueError(
            f"{name}: {len(values)} values given but the image has {ndim} axes; "
            f"give one value for all axes or {ndim} values"
        )
    return tuple(values)


def axis_origins(size: int, window: int, step: int) -> np.ndarray:
    """Origins along one axis: multiples of ``step``, the last one stepped back."""
    count = math.ceil((size - window) / step) + 1
    return np.minimum(np.arange(count, dtype=np.int64) * step, size - window)


def band_profile(size: int, border: int, low_edge: bool = False, high_edge: bool = False) -> np.ndarray:
    """One axis of a window: 1 outside its border band, 0 in the band.

    A face that lies on the volume's edge has no band: no other window covers its voxels.
    """
    inside = np.ones(size)
    if border:
        if not low_edge:
            inside[:border] = 0.0
        if not high_edge:
            inside[size - border :] = 0.0
    return inside


@dataclass(frozen=True)
class Window:
    """One window: where it sits, and which of its faces lie on the volume's edge."""

    index: int
    """Flat index over all images: ``n * windows_per_image + position in the image``."""
    n: int
    origin: tuple[int, ...]
    size: tuple[int, ...]
    position: tuple[int, ...]
    """Grid coordinates (k per axis)."""
    at_low_edge: tuple[bool, ...]
    at_high_edge: tuple[bool, ...]
    spacing: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None

    @property
    def stop(self) -> tuple[int, ...]:
        return tuple(o + s for o, s in zip(self.origin, self.size))

    @property
    def slices(self) -> tuple[slice, ...]:
        """Spatial slices of this window in the (padded) volume."""
        return tuple(slice(o, o + s) for o, s in zip(self.origin, self.size))

    @property
    def physical_origin(self) -> tuple[float, ...] | None:
        """Origin in physical units (``offset + origin * spacing``), if a spacing was given."""
        if self.spacing is None:
            return None
        offset = self.offset or (0.0,) * len(self.origin)
        return tuple(t + o * s for t, o, s in zip(offset, self.origin, self.spacing))


class Grid:
    """Overlapping windows over the spatial axes of a volume.

    Parameters
    ----------
    shape
        Spatial shape (1 to 4 axes: 2D, 3D, 2D+time, 3D+time).
    window, step, border
        Per axis, or one int for all. ``1 <= step <= window``; ``0 <= border``
        and ``2 * border < window``. The border is the band of each window whose
        outputs are trusted less (see :mod:`napari_qlty.core.weights`).
    pad
        What to do on an axis smaller than the window: ``None`` raises, ``"reflect"``
        or ``"constant"`` pads the far end up to the window size; stitching crops it away.
    spacing, offset
        Voxel size and origin in physical units, for windows' physical origins.
    axes, pad_advice
        Only for messages: the axes' names (``"zyx"``: "window along z" instead of
        "window[0]"), and how to ask for padding where the caller offers it (None where
        it does not, as in the plugin).
    """

    def __init__(
        self,
        shape: Sequence[int],
        window: IntOrSeq,
        step: IntOrSeq,
        border: IntOrSeq = 0,
        *,
        pad: PadMode | None = None,
        spacing: Sequence[float] | None = None,
        offset: Sequence[float] | None = None,
        axes: str | None = None,
        pad_advice: str | None = "pass pad='reflect' or 'constant'",
    ) -> None:
        shape = tuple(int(s) for s in shape)
        ndim = len(shape)
        self.axes = axes if axes is not None and len(axes) == ndim else None
        if not 1 <= ndim <= MAX_TILED_AXES:
            raise ValueError(
                f"shape must have 1 to {MAX_TILED_AXES} tiled axes, got {ndim} ({shape})"
            )
        if min(shape) < 1:
            raise ValueError(f"shape must be positive on every axis, got {shape}")
        window = per_axis(window, ndim, "window")
        step = per_axis(step, ndim, "step")
        border = per_axis(border, ndim, "border")
        if pad not in (None, "reflect", "constant"):
            raise ValueError(f"pad must be None, 'reflect' or 'constant', got {pad!r}")
        for axis, (s, w, st, b) in enumerate(zip(shape, window, step, border)):
            W, S, B = (self.name(p, axis) for p in ("window", "step", "border"))
            where = f"along {self.axes[axis]}" if self.axes else f"along axis {axis}"
            if w < 1:
                raise ValueError(f"{W} must be >= 1, got {w}")
            if w > s and pad is None:
                raise ValueError(
                    f"{W}{'=' if not self.axes else ' = '}{w} is larger than the volume {where} "
                    f"(size {s}); choose {W} in [1, {s}]" + (f" or {pad_advice}" if pad_advice else "")
                )
            if not 1 <= st <= w:
                raise ValueError(
                    f"{S} must be in [1, {W}={w}] so windows leave no gaps, got {st}"
                )
            if b < 0 or 2 * b >= w:
                raise ValueError(
                    f"{B} must be in [0, {(w - 1) // 2}] (less than half of {W}={w}), got {b}"
                )
        self.shape = shape
        self.padded_shape = tuple(max(s, w) for s, w in zip(shape, window))
        self.window = window
        self.step = step
        self.border = border
        self.pad = pad
        self.spacing = _positive_floats(spacing, ndim, "spacing")
        self.offset = None if offset is None else tuple(float(o) for o in per_axis_float(offset, ndim))
        self.axis_origins = tuple(
            axis_origins(s, w, st) for s, w, st in zip(self.padded_shape, window, step)
        )
        self.counts = tuple(len(o) for o in self.axis_origins)
        self._origins: np.ndarray | None = None

    def name(self, parameter: str, axis: int) -> str:
        """How messages name one axis of a parameter: ``window[0]``, or ``window along z``."""
        return f"{parameter} along {self.axes[axis]}" if self.axes else f"{parameter}[{axis}]"

    # -- sizes -----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def needs_padding(self) -> bool:
        return self.padded_shape != self.shape

    def __len__(self) -> int:
        """Windows per image."""
        return math.prod(self.counts)

    def __repr__(self) -> str:
        return (
            f"Grid(shape={self.shape}, window={self.window}, step={self.step}, "
            f"border={self.border}, counts={self.counts})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grid) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self.shape, self.window, self.step, self.border, self.pad, self.spacing, self.offset)

    @property
    def duplication(self) -> float:
        """Voxels in all windows / voxels in the volume (how often a voxel is seen)."""
        return len(self) * math.prod(self.window) / math.prod(self.shape)

    # -- windows -----------------------------------------------------------------------
    def origins(self) -> np.ndarray:
        """(windows per image, ndim) int64 origins in window order (read-only, cached)."""
        if self._origins is None:
            mesh = np.meshgrid(*self.axis_origins, indexing="ij")
            origins = np.stack([m.reshape(-1) for m in mesh], axis=1)
            origins.setflags(write=False)
            self._origins = origins
        return self._origins

    def positions(self) -> np.ndarray:
        """(windows per image, ndim) grid coordinates in window order."""
        return np.stack(np.unravel_index(np.arange(len(self)), self.counts), axis=1)

    def edge_flags(self) -> tuple[np.ndarray, np.ndarray]:
        """Which faces of each window lie on the volume's edge: two (windows, ndim) bool arrays."""
        pos = self.positions()
        counts = np.asarray(self.counts)
        return pos == 0, pos == counts - 1

    def window_at(self, index: int) -> Window:
        """The window with flat index ``index`` (over all images)."""
        if index < 0:
            raise IndexError(f"window index must be >= 0, got {index}")
        n, i = divmod(int(index), len(self))
        position = tuple(int(p) for p in np.unravel_index(i, self.counts))
        origin = tuple(int(o[p]) for o, p in zip(self.axis_origins, position))
        return Window(
            index=int(index),
            n=n,
            origin=origin,
            size=self.window,
            position=position,
            at_low_edge=tuple(p == 0 for p in position),
            at_high_edge=tuple(p == c - 1 for p, c in zip(position, self.counts)),
            spacing=self.spacing,
            offset=self.offset,
        )

    def windows(self, n_images: int = 1) -> Iterator[Window]:
        for index in range(n_images * len(self)):
            yield self.window_at(index)

    def inside_spans(self, *, band_on_edges: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per axis, the ``[lo, hi)`` span of every window outside its border band.

        The same band as :func:`band_profile`, in volume coordinates; with
        ``band_on_edges`` (qlty's convention) faces on the volume's edge keep theirs.
        """
        spans = []
        for origins, w, b in zip(self.axis_origins, self.window, self.border):
            lo, hi = origins + b, origins + w - b
            if not band_on_edges:
                lo[0], hi[-1] = origins[0], origins[-1] + w
            spans.append((lo, hi))
        return spans

    def touching(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """Per-image indices of the windows that overlap the box ``[start, stop)``."""
        per_axis_hits = []
        for origins, w, a, b in zip(self.axis_origins, self.window, start, stop):
            per_axis_hits.append(np.nonzero((origins < b) & (origins + w > a))[0])
        mesh = np.meshgrid(*per_axis_hits, indexing="ij")
        if any(m.size == 0 for m in mesh):
            return np.zeros(0, dtype=np.int64)
        return np.ravel_multi_index([m.reshape(-1) for m in mesh], self.counts)

    def seams(self) -> tuple[np.ndarray, ...]:
        """Per axis, where neighbouring windows hand over: the middle of each overlap.

        Symmetric weightings weigh both neighbours equally there, so these are the
        lines where a stitching artefact would show (the paper's Figure 2).
        """
        out = []
        for origins, w, size in zip(self.axis_origins, self.window, self.shape):
            mids = (origins[:-1] + w + origins[1:]) / 2.0
            out.append(mids[mids < size])
        return tuple(out)

    def check_image_shape(self, spatial: Sequence[int], what: str = "tensor") -> None:
        if tuple(spatial) != self.shape:
            raise ValueError(
                f"{what} has spatial shape {tuple(spatial)} but the grid was made for {self.shape}"
            )


def per_axis_float(value: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    if isinstance(value, (int, float, np.number)):
        return (float(value),) * ndim
    values = tuple(float(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"expected {ndim} values, got {len(values)}")
    return values


def _positive_floats(value, ndim: int, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = per_axis_float(value, ndim)
    except ValueError:
        raise ValueError(f"{name} must have {ndim} values, got {value!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} must be finite and > 0 on every axis, got {values}")
    return values
