"""OME-Zarr 0.5 (NGFF) metadata for what we write: axes, multiscales, labels.

The engine thinks in (N, C, *tiled) arrays; an NGFF image has 2 to 5 axes ordered time,
channel (or one custom axis), then 2 or 3 space axes. :class:`Dims` maps one onto the
other: the image axis is dropped for a single image, becomes time for a time-lapse run
time point by time point, and is the custom axis ``n`` otherwise; one tiled space axis
gets a length-1 partner so that there are two. Layouts NGFF cannot hold (six axes, no
space axis) get no ``ome`` metadata, only ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VERSION = "0.5"

SPACE = "zyx"

#: spellings of units seen in files, as NGFF (UDUNITS-2) names them
UNIT_NAMES = {
    "a": "angstrom", "å": "angstrom", "\u212b": "angstrom", "angstroms": "angstrom",
    "nm": "nanometer", "nanometre": "nanometer", "nanometers": "nanometer",
    "um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "micron": "micrometer",
    "microns": "micrometer", "micrometre": "micrometer", "micrometers": "micrometer", "\\u00b5m": "micrometer",
    "mm": "millimeter", "millimetre": "millimeter", "cm": "centimeter", "m": "meter",
    "pm": "picometer",
    "s": "second", "sec": "second", "seconds": "second", "ms": "millisecond", "us": "microsecond",
    "µs": "microsecond", "min": "minute", "h": "hour", "hr": "hour",
}


def unit_name(unit: str | None) -> str | None:
    """A unit as NGFF names it (``"µm"`` -> ``"micrometer"``); unknown ones as given."""
    if unit is None or not str(unit).strip() or str(unit).strip().lower() in ("pixel", "pixels", "px"):
        return None
    text = str(unit).strip()
    return UNIT_NAMES.get(text.lower(), UNIT_NAMES.get(text, text.lower()))


def geometry(source, axes: Sequence[str], scale=None, translation=None, units=None) -> dict:
    """Physical scale, translation and units per tiled axis: as given (one value, or one
    per axis), else the source's (an MRC's voxel size, an OME-Zarr's transforms, a
    TIFF's resolution), else 1, 0 and none."""
    n = len(axes)

    def per_axis(name, given, default):
        if given is None:
            return list(default) if default is not None else None
        values = [given] * n if isinstance(given, (int, float, str)) else list(given)
        if len(values) != n:
            raise ValueError(f"{name} must have one value per tiled axis ({', '.join(axes)}), got {given!r}")
        return values

    scale = per_axis("scale", scale, getattr(source, "spacing", None)) or [1.0] * n
    if any(not isinstance(s, (int, float)) or not s > 0 for s in scale):
        raise ValueError(f"scale must be > 0 along every axis, got {scale}")
    translation = per_axis("translation", translation, getattr(source, "offset", None)) or [0.0] * n
    units = per_axis("units", units, getattr(source, "units", None)) or [None] * n
    return {"scale": [float(s) for s in scale], "translation": [float(t) for t in translation],
            "units": [unit_name(u) for u in units]}


@dataclass(frozen=True)
class Dims:
    """Where the logical (N, C, *tiled) axes of a result lie in its arrays.

    ``names`` and ``types`` are the arrays' axes in NGFF order; ``source[i]`` is the
    logical axis stored along array axis ``i`` (0 the image, 1 the channel, 2.. the
    tiled axes), or None for a length-1 axis added for NGFF's sake. A logical axis
    missing from ``source`` has length 1 (the image axis of a single image).
    """

    names: tuple[str, ...]
    types: tuple[str | None, ...]
    source: tuple[int | None, ...]
    ome: bool = True

    @classmethod
    def plan(cls, n_images: int, tiled: Sequence[str], *, image_axis: str = "n",
             channel: bool = True) -> Dims:
        """The arrays' axes for ``n_images`` images tiled along ``tiled`` (letters of
        ``tzyx``); ``image_axis`` "t" when the images are the time points of one
        time-lapse. Without ``channel`` (labels) there is no channel axis."""
        tiled = list(tiled)
        entries: list[tuple[str, str | None, int | None]] = []
        if "t" in tiled:
            entries.append(("t", "time", 2 + tiled.index("t")))
        if image_axis == "t" and "t" not in tiled:
            entries.insert(0, ("t", "time", 0))
        elif n_images > 1:
            entries.append(("n", None, 0))
        if channel:
            entries.append(("c", "channel", 1))
        space = [(a, "space", 2 + i) for i, a in enumerate(tiled) if a != "t"]
        if len(space) == 1:
            extra = "y" if space[0][0] != "y" else "x"
            space.append((extra, "space", None))
            space.sort(key=lambda e: SPACE.index(e[0]) if e[0] in SPACE else -1)
        entries += space
        names = [e[0] for e in entries]
        ome = (2 <= len(space) <= 3 and len(entries) <= 5 and all(a in SPACE for a, _, _ in space)
               and len(set(names)) == len(names))
        if not ome:  # keep the engine's own order; only our metadata describes it
            entries = [("n", None, 0)] + ([("c", "channel", 1)] if channel else [])
            entries += [(a, "time" if a == "t" else "space", 2 + i) for i, a in enumerate(tiled)]
        return cls(tuple(e[0] for e in entries), tuple(e[1] for e in entries), tuple(e[2] for e in entries), ome)

    def to_json(self) -> dict:
        return {"names": list(self.names), "types": list(self.types), "source": list(self.source), "ome": self.ome}

    @classmethod
    def from_json(cls, d: dict) -> Dims:
        return cls(tuple(d["names"]), tuple(d["types"]), tuple(d["source"]), bool(d["ome"]))

    # -- shapes and keys ----------------------------------------------------------------
    def shape(self, logical: Sequence[int]) -> tuple[int, ...]:
        """The array shape of a logical (N, C, *tiled) shape."""
        return tuple(1 if s is None else int(logical[s]) for s in self.source)

    def key(self, logical_key: Sequence) -> tuple:
        """The array index of a logical index (one int or slice per logical axis)."""
        return tuple(slice(None) if s is None else logical_key[s] for s in self.source)

    def to_array(self, block: np.ndarray, n_logical: int) -> np.ndarray:
        """A logical block (every logical axis present) in the arrays' axis order."""
        kept = [s for s in self.source if s is not None]
        if any(block.shape[a] != 1 for a in range(n_logical) if a not in kept):
            raise ValueError(f"a logical axis the arrays do not store must have length 1, got {block.shape}")
        present = sorted(kept)
        out = block.reshape([block.shape[a] for a in present])
        out = np.transpose(out, [present.index(s) for s in kept])
        return out.reshape([1 if s is None else block.shape[s] for s in self.source])

    def to_logical(self, block: np.ndarray, n_logical: int) -> np.ndarray:
        """An array block (every array axis present) in logical (N, C, *tiled) order."""
        kept = [i for i, s in enumerate(self.source) if s is not None]
        block = block.reshape([block.shape[i] for i in kept])
        order = [self.source[i] for i in kept]
        block = np.transpose(block, np.argsort(order))
        for a in range(n_logical):
            if a not in order:
                block = np.expand_dims(block, a)
        return block


class LogicalView:
    """A zarr array read in logical (N, C, *tiled) order: ``view[n, c, z]`` whatever the
    arrays' axes. ``drop`` is a logical axis of length 1 left out of the view (the
    channel of labels). Basic indexing only (ints and slices), as napari and the tests need."""

    def __init__(self, array, dims: Dims, n_logical: int, drop: int | None = None) -> None:
        self.array, self.dims, self.n_logical, self.drop = array, dims, n_logical, drop
        shape = [1] * n_logical
        for s, length in zip(dims.source, array.shape):
            if s is not None:
                shape[s] = int(length)
        if drop is not None:
            del shape[drop]
        self.shape = tuple(shape)
        self.dtype = np.dtype(str(array.dtype))
        self.ndim = len(shape)
        self.size = int(np.prod(shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = tuple(int(k) if isinstance(k, np.integer) else k for k in key) + (slice(None),) * (self.ndim - len(key))
        if self.drop is not None:
            key = key[:self.drop] + (0,) + key[self.drop:]
        full = tuple(k if isinstance(k, slice) else slice(k, k + 1 if k != -1 else None) for k in key)
        block = np.asarray(self.array[self.dims.key(full)])
        block = self.dims.to_logical(block, self.n_logical)
        return block[tuple(0 if not isinstance(k, slice) else slice(None) for k in key)]

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out.astype(dtype) if dtype is not None else out


# -- metadata -----------------------------------------------------------------------------
def axes_json(dims: Dims, units: dict[str, str | None]) -> list[dict]:
    out = []
    for name, kind in zip(dims.names, dims.types):
        axis: dict = {"name": name}
        if kind is not None:
            axis["type"] = kind
        if units.get(name):
            axis["unit"] = units[name]
        out.append(axis)
    return out


def multiscales(name: str, dims: Dims, paths: Sequence[str], scales: Sequence[Sequence[float]],
                translations: Sequence[Sequence[float]], units: dict[str, str | None],
                method: str) -> dict:
    """The ``multiscales`` entry of an image (or label image)."""
    datasets = []
    for path, scale, translation in zip(paths, scales, translations):
        transforms = [{"type": "scale", "scale": [float(s) for s in scale]}]
        if any(t != 0 for t in translation):
            transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    return {"name": name, "axes": axes_json(dims, units), "datasets": datasets,
            "type": method, "metadata": {"method": method, "package": "napari-qlty"}}


def image_label(classes: Sequence[str], colors: Sequence[Sequence[int]]) -> dict:
    """``image-label`` metadata: one colour and one class name per label value."""
    return {
        "colors": [{"label-value": v, "rgba": [int(c) for c in rgba]} for v, rgba in enumerate(colors)],
        "properties": [{"label-value": v, "class": str(name)} for v, name in enumerate(classes)],
        "source": {"image": "../../"},
    }


#: label colours: 0 transparent, then distinct hues (tab10 without its grey)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)]


def label_colors(count: int) -> list[tuple[int, int, int, int]]:
    return [(0, 0, 0, 0)] + [(*PALETTE[(v - 1) % len(PALETTE)], 255) for v in range(1, count)]
