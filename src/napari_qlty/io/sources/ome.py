"""Reading OME-Zarr (NGFF) multiscales metadata: axes, units, scale and translation."""

from __future__ import annotations

import numpy as np

_OME_TYPES = {"time": "t", "channel": "c"}


def ome_multiscale(attrs: dict) -> dict | None:
    """The first ``multiscales`` entry of OME-Zarr 0.4 (attrs) or 0.5 (attrs['ome'])."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):
        ms = ome["multiscales"][0]
        return {**ms, "version": ms.get("version", ome.get("version"))}
    if attrs.get("multiscales"):
        return attrs["multiscales"][0]
    return None


def ome_axes(ms: dict, ndim: int) -> tuple[str | None, tuple[str | None, ...] | None]:
    """(axes letters, units) from OME axes metadata; letters None when not understood."""
    axes = ms.get("axes")
    if axes is None:  # OME-Zarr 0.1 / 0.2: always tczyx
        return ("tczyx" if ndim == 5 else None), None
    letters, units = [], []
    for ax in axes:
        if isinstance(ax, str):
            name, typ, unit = ax, None, None
        else:
            name, typ, unit = ax.get("name", ""), ax.get("type"), ax.get("unit")
        name = str(name).lower()
        if typ in _OME_TYPES and name not in ("z", "y", "x"):
            letter = _OME_TYPES[typ]
        elif name in ("t", "c", "z", "y", "x"):
            letter = name
        elif name in ("time",):
            letter = "t"
        elif name in ("channel", "channels"):
            letter = "c"
        else:
            return None, None
        letters.append(letter)
        units.append(unit)
    result = "".join(letters)
    if len(result) != ndim or len(set(result)) != len(result):
        return None, None
    return result, tuple(units)


def _compose_transforms(transforms: list | None, ndim: int, scale, trans):
    for t in transforms or ():
        kind = t.get("type")
        if kind == "scale" and "scale" in t:
            s = np.asarray(t["scale"], dtype=float)
            if s.size != ndim:
                return None, None
            scale, trans = scale * s, trans * s
        elif kind == "translation" and "translation" in t:
            v = np.asarray(t["translation"], dtype=float)
            if v.size != ndim:
                return None, None
            trans = trans + v
        elif kind in ("scale", "translation"):  # given by a path to binary data: not read
            return None, None
    return scale, trans


def ome_dataset_transform(ms: dict, index: int, ndim: int):
    """(scale, translation) per stored axis of dataset ``index`` (dataset's, then global)."""
    scale, trans = np.ones(ndim), np.zeros(ndim)
    scale, trans = _compose_transforms(
        ms["datasets"][index].get("coordinateTransformations"), ndim, scale, trans
    )
    if scale is None:
        return None, None
    scale, trans = _compose_transforms(ms.get("coordinateTransformations"), ndim, scale, trans)
    return scale, trans
