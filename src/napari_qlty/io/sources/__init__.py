"""One reading interface over many inputs: arrays in memory and files on disk or a server.

:func:`open_source` turns a numpy array, a torch tensor, a dask array, a zarr array or
group (v2 or v3, OME-Zarr 0.4 / 0.5 multiscales), or a path / URL (``*.zarr``,
``*.tif``/``*.tiff``, ``*.mrc``/``*.rec``/``*.map``, ``*.npy``, ``http(s)://`` or
``s3://`` zarr stores) into a :class:`Source`: an (N, C, *spatial) view with a
``shape``, a ``dtype`` and ``__getitem__`` returning numpy, which is what
:func:`napari_qlty.core.tiles.extract_lazy` and :func:`~napari_qlty.core.tiles.read_region` read
windows from.

Nothing is read until a box is asked for, and then only that box (the chunks, strips or
pages under it). The data's own axes (from metadata, from ``axes=``, or guessed from the
number of dimensions) are normalised lazily: a missing batch axis ``n`` or channel axis
``c`` becomes a length-1 axis, and the tiled axes are put in ``t, z, y, x`` order by
mapping the index and transposing the small box that was read.

A Source pickles cheaply: only its location and options travel (never the data, except
for arrays that live in memory, which have no other location); it reopens the file or
store on its first read in the new process.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from .axes import AXIS_LETTERS, SPATIAL_AXES
from .base import Source
from .memory import open_memmap, open_memory
from .mrc import open_mrc
from .npy import open_npy
from .tiff import open_tiff
from .zarr_store import is_url, looks_like_zarr_dir, open_zarr_location, open_zarr_object

__all__ = ["AXIS_LETTERS", "SPATIAL_AXES", "Source", "open_source"]


ZARR_SUFFIXES = (".zarr",)


TIFF_SUFFIXES = (".tif", ".tiff")


MRC_SUFFIXES = (".mrc", ".rec", ".map", ".mrcs", ".st", ".ali")


NPY_SUFFIXES = (".npy",)


def open_source(
    obj: Any,
    *,
    axes: str | None = None,
    level: int | None = 0,
    array: str | None = None,
    storage_options: dict | None = None,
) -> Source:
    """Open ``obj`` as an (N, C, *spatial) :class:`Source`, reading nothing but metadata.

    Parameters
    ----------
    obj
        A :class:`Source` (returned as is), a numpy array (memmaps are reopened from their
        file after pickling), a torch tensor, a dask array, a zarr array or group, or a
        path / URL: a zarr store (a directory ``*.zarr``, or any directory holding
        ``zarr.json`` / ``.zarray`` / ``.zgroup``; ``http://``, ``https://``, ``s3://``
        and other fsspec URLs), ``*.tif``/``*.tiff``, ``*.mrc``/``*.rec``/``*.map``
        (also ``.mrcs``, ``.st``, ``.ali``) or ``*.npy``.
    axes
        The data's own axes, one letter per dimension from ``n, t, c, z, y, x`` (e.g.
        ``"zcyx"``); overrides metadata. Without it, metadata (OME-Zarr axes, TIFF
        series axes) is used, else the axes are guessed from the number of dimensions
        (2: ``yx``, 3: ``zyx``, 4: ``czyx``, 5: ``nczyx``) and ``describe()`` says so.
    level
        For multiscale inputs (OME-Zarr groups, pyramidal TIFF): which level, 0 the
        finest, negative counting from the coarsest (-1). ``None`` means 0.
    array
        For a zarr group: the path of the array inside it (overrides ``level``).
    storage_options
        Passed to fsspec for URLs (e.g. ``{"anon": True}`` for public S3 buckets).
    """
    if isinstance(obj, Source):
        if axes is not None or array is not None or level not in (0, None):
            raise ValueError("obj is already a Source; axes, level and array cannot be changed")
        return obj
    if isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    if isinstance(obj, bytes):
        obj = obj.decode()
    if isinstance(obj, str):
        return _open_location(
            obj, axes=axes, level=level, array=array, storage_options=storage_options
        )

    module = type(obj).__module__.split(".")[0]
    if module == "torch":
        _only_plain(level, array, "a torch tensor")
        return open_memory(obj, "torch", axes)
    if module == "dask":
        _only_plain(level, array, "a dask array")
        return open_memory(obj, "dask", axes)
    if module == "zarr":
        return open_zarr_object(obj, axes=axes, level=level, array=array)
    if isinstance(obj, np.ndarray):
        _only_plain(level, array, "a numpy array")
        if isinstance(obj, np.memmap) and isinstance(obj.base, mmap.mmap) and obj.filename:
            order = "C" if obj.flags.c_contiguous else ("F" if obj.flags.f_contiguous else None)
            if order is not None and obj.ndim:
                return open_memmap(obj, order, axes)
        return open_memory(obj, "numpy", axes)
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "__getitem__"):
        _only_plain(level, array, f"a {type(obj).__name__}")
        return open_memory(obj, type(obj).__name__, axes)
    raise TypeError(
        f"cannot open {type(obj).__name__} as a source; give a numpy array, torch tensor, "
        f"dask array, zarr array or group, or a path / URL (.zarr, .tif, .tiff, .mrc, "
        f".rec, .map, .npy, http(s)://, s3://)"
    )


def _only_plain(level, array, what: str) -> None:
    if level not in (0, None):
        raise ValueError(f"level={level!r} applies to multiscale inputs only, not to {what}")
    if array is not None:
        raise ValueError(f"array={array!r} applies to zarr groups only, not to {what}")


def _suffix(location: str) -> str:
    name = location.rstrip("/").rsplit("/", 1)[-1].lower()
    return os.path.splitext(name)[1]


def _open_location(location: str, *, axes, level, array, storage_options) -> Source:
    if is_url(location):
        return open_zarr_location(
            location.rstrip("/"),
            axes=axes,
            level=level,
            array=array,
            storage_options=storage_options,
        )
    location = location.removeprefix("file://")
    path = os.path.abspath(os.path.expanduser(location))
    suffix = _suffix(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {location}")
    if suffix in ZARR_SUFFIXES or looks_like_zarr_dir(path):
        return open_zarr_location(path, axes=axes, level=level, array=array, storage_options=None)
    if array is not None:
        raise ValueError(f"array={array!r} applies to zarr stores only, not to {location}")
    if suffix in TIFF_SUFFIXES:
        return open_tiff(path, axes=axes, level=level)
    if level not in (0, None):
        raise ValueError(f"level={level!r} applies to multiscale inputs only, not to {location}")
    if suffix in MRC_SUFFIXES:
        return open_mrc(path, axes=axes)
    if suffix in NPY_SUFFIXES:
        return open_npy(path, axes=axes)
    raise ValueError(
        f"cannot tell how to read {location}: supported are zarr directories (.zarr, or any "
        f"directory with zarr.json/.zarray/.zgroup), "
        f"{', '.join(TIFF_SUFFIXES + MRC_SUFFIXES + NPY_SUFFIXES)}, "
        f"and http(s):// or s3:// zarr URLs"
    )
