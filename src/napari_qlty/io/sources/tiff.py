"""TIFF stacks and pyramids: memory-mapped where contiguous, else read through tifffile's zarr view."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from ..ngff import unit_name
from .axes import SPATIAL_AXES, resolve_axes
from .base import NumpyReader, Opener, Source, digest, file_stamp
from .zarr_store import array_chunks


class _TiffOpener(Opener):
    def __init__(self, path: str, series: int, level: int, memmap: bool):
        self.location = path
        self.series = series
        self.level = level
        self.memmap = memmap

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "tiff (memmap)" if self.memmap else "tiff (zarr)"

    def open(self):
        import tifffile

        if self.memmap:
            arr = tifffile.memmap(self.location, series=self.series, level=self.level, mode="r")
            return NumpyReader(arr), None
        import zarr

        store = tifffile.imread(self.location, aszarr=True, series=self.series, level=self.level)
        arr = zarr.open_array(store=store, mode="r")
        return NumpyReader(arr), store


_TIFF_AXES = {"T": "t", "Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c"}


def _tiff_axes(series_axes: str) -> str | None:
    letters = [_TIFF_AXES.get(a) for a in series_axes.upper()]
    if any(a is None for a in letters) or len(set(letters)) != len(letters):
        return None
    return "".join(letters)  # type: ignore[arg-type]


def _tiff_spacing(tif, stored_axes: str, level_factor: Sequence[float]) -> tuple[tuple | None, tuple | None]:
    """(voxel size, unit) per tiled axis from OME-XML, ImageJ metadata or resolution tags."""
    size: dict[str, float] = {}
    unit_of: dict[str, str | None] = {}
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            for a, attr in (
                ("x", "PhysicalSizeX"),
                ("y", "PhysicalSizeY"),
                ("z", "PhysicalSizeZ"),
                ("t", "TimeIncrement"),
            ):
                if pixels.get(attr) is not None:
                    size[a] = float(pixels.get(attr))
                    unit_of[a] = pixels.get(attr.replace("Increment", "") + "Unit", "s" if a == "t" else "µm")
        except (ET.ParseError, StopIteration, ValueError):
            size = {}
    if not size:
        page = tif.pages.first
        xres, yres, unit = (
            page.tags.get("XResolution"),
            page.tags.get("YResolution"),
            page.tags.get("ResolutionUnit"),
        )
        if xres is not None and yres is not None:
            xr, yr = xres.value, yres.value
            xv = xr[0] / xr[1] if xr[1] else 0.0
            yv = yr[0] / yr[1] if yr[1] else 0.0
            unit_value = int(unit.value) if unit is not None else 2
            if xv > 0 and yv > 0 and (unit_value != 1 or (xv, yv) != (1.0, 1.0) or tif.is_imagej):
                size["x"], size["y"] = 1.0 / xv, 1.0 / yv
        ij = tif.imagej_metadata or {}
        if size and ij.get("spacing"):
            size["z"] = float(ij["spacing"])
        if size and ij.get("finterval"):
            size["t"] = float(ij["finterval"])
            unit_of["t"] = "s"
        unit = ij.get("unit") or {2: "inch", 3: "centimeter"}.get(unit_value if size else 0)
        for a in "zyx":
            unit_of[a] = unit
    if not size:
        return None, None
    spatial = [a for a in SPATIAL_AXES if a in stored_axes]
    factors = dict(zip(stored_axes, level_factor))
    units = tuple(unit_name(unit_of.get(a)) if a in size else None for a in spatial)
    return tuple(size.get(a, 1.0) * factors.get(a, 1.0) for a in spatial), (units if any(units) else None)


def open_tiff(path: str, *, axes, level) -> Source:
    import tifffile

    level = 0 if level is None else level
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        levels = series.levels
        if not -len(levels) <= level < len(levels):
            raise ValueError(
                f"level={level} is out of range for {path}: it has {len(levels)} level(s) "
                f"({', '.join(str(lv.shape) for lv in levels)}); valid are 0..{len(levels) - 1}"
            )
        level = level % len(levels)
        chosen = levels[level]
        shape = tuple(chosen.shape)
        dtype = chosen.dtype
        stored_axes, guessed = resolve_axes(axes, _tiff_axes(chosen.axes), shape)
        factor = [a / b if b else 1.0 for a, b in zip(levels[0].shape, shape)]
        spacing, units = _tiff_spacing(tif, stored_axes, factor)
        contiguous = chosen.dataoffset is not None
    opener = _TiffOpener(path, 0, level, memmap=contiguous)
    try:
        reader, handle = opener.open()
    except ValueError:  # not memory-mappable after all
        opener = _TiffOpener(path, 0, level, memmap=False)
        reader, handle = opener.open()
    chunks = None if opener.memmap else array_chunks(reader.array)
    fp = digest("file", path, shape, str(dtype), level, file_stamp(path))
    extra = f"level {level}/{len(levels)}" if len(levels) > 1 else ""
    return Source(
        opener,
        stored_shape=shape,
        dtype=dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        spacing=spacing,
        units=units,
        stored_chunks=chunks,
        fingerprint=fp,
        extra=extra,
        reader=reader,
        handle=handle,
    )
