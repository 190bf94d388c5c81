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

import hashlib
import mmap
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["AXIS_LETTERS", "SPATIAL_AXES", "Source", "open_source"]

SPATIAL_AXES = "tzyx"
"""Tiled axes, in the order a Source presents them."""
AXIS_LETTERS = "ntczyx"
"""Letters an ``axes`` string may use: batch n, time t, channel c, space z, y, x."""
MAX_SPATIAL = 4
GUESSED_AXES = {1: "x", 2: "yx", 3: "zyx", 4: "czyx", 5: "nczyx"}

ZARR_SUFFIXES = (".zarr",)
TIFF_SUFFIXES = (".tif", ".tiff")
MRC_SUFFIXES = (".mrc", ".rec", ".map", ".mrcs", ".st", ".ali")
NPY_SUFFIXES = (".npy",)

# ---------------------------------------------------------------------------------------
# axes


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


def _expand_key(key: Any, ndim: int) -> tuple:
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


# ---------------------------------------------------------------------------------------
# readers: what an opener returns, with __getitem__(stored key) -> numpy and .shape


class _NumpyReader:
    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)

    def __getitem__(self, key):
        return np.asarray(self.array[key])


class _TorchReader:
    def __init__(self, tensor):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)

    def __getitem__(self, key):
        import torch

        block = self.tensor[key].detach()
        if block.dtype == torch.bfloat16:
            block = block.float()
        return block.cpu().numpy()


class _DaskReader:
    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)

    def __getitem__(self, key):
        return np.asarray(self.array[key].compute())


# ---------------------------------------------------------------------------------------
# openers: picklable recipes that (re)open the data; __getstate__ of Source drops handles


class _Opener:
    kind = "array"
    location = "<memory>"
    in_memory = False

    def open(self):  # -> reader, handle to close (or None)
        raise NotImplementedError


class _MemoryOpener(_Opener):
    """Data that lives in memory: numpy, torch, dask, a zarr array on a non-file store."""

    in_memory = True

    def __init__(self, obj, kind: str, location: str = "<memory>"):
        self.obj = obj
        self.kind = kind
        self.location = location

    def open(self):
        obj = self.obj
        if self.kind == "torch":
            return _TorchReader(obj), None
        if self.kind == "dask":
            return _DaskReader(obj), None
        return _NumpyReader(obj), None


class _MemmapOpener(_Opener):
    """A file-backed numpy memmap given as an object: reopened from its file."""

    kind = "memmap"

    def __init__(self, filename: str, dtype, shape, offset: int, order: str):
        self.location = filename
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.offset = int(offset)
        self.order = order

    def open(self):
        arr = np.memmap(
            self.location,
            dtype=self.dtype,
            mode="r",
            offset=self.offset,
            shape=self.shape,
            order=self.order,
        )
        return _NumpyReader(arr), None


class _NpyOpener(_Opener):
    kind = "npy"

    def __init__(self, path: str):
        self.location = path

    def open(self):
        return _NumpyReader(np.load(self.location, mmap_mode="r", allow_pickle=False)), None


class _MrcOpener(_Opener):
    kind = "mrc"

    def __init__(self, path: str):
        self.location = path

    def open(self):
        import mrcfile

        handle = mrcfile.mmap(self.location, permissive=True, mode="r")
        if handle.data is None:
            handle.close()
            raise ValueError(f"MRC file {self.location} holds no data")
        return _NumpyReader(handle.data), handle


class _TiffOpener(_Opener):
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
            return _NumpyReader(arr), None
        import zarr

        store = tifffile.imread(self.location, aszarr=True, series=self.series, level=self.level)
        arr = zarr.open_array(store=store, mode="r")
        return _NumpyReader(arr), store


class _ZarrOpener(_Opener):
    """A zarr array at ``array_path`` inside the store at ``location`` (a dir or a URL)."""

    def __init__(self, location: str, array_path: str | None, storage_options: dict | None = None):
        self.location = location
        self.array_path = array_path or None
        self.storage_options = storage_options

    kind = "zarr"

    def open(self):
        return _NumpyReader(
            _open_zarr_array(self.location, self.array_path, self.storage_options)
        ), None


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _zarr_store(location: str, storage_options: dict | None):
    import zarr.storage

    if _is_url(location):
        try:
            return zarr.storage.FsspecStore.from_url(
                location, storage_options=storage_options, read_only=True
            )
        except ImportError as e:
            raise ImportError(
                f"reading {location} needs fsspec (and aiohttp for http(s)://, s3fs for s3://): {e}"
            ) from e
    location = location.removeprefix("file://")
    return zarr.storage.LocalStore(location, read_only=True)


def _open_zarr_node(location: str, path: str | None, storage_options: dict | None):
    import zarr

    return zarr.open(store=_zarr_store(location, storage_options), path=path or "", mode="r")


def _open_zarr_array(location: str, path: str | None, storage_options: dict | None):
    import zarr

    return zarr.open_array(store=_zarr_store(location, storage_options), path=path or "", mode="r")


# ---------------------------------------------------------------------------------------
# the interface


class Source:
    """An (N, C, *spatial) read-only view of some data, read box by box.

    Attributes
    ----------
    shape, dtype
        Of the normalised (N, C, *spatial) view.
    axes
        Its axes, ``"nc"`` followed by the tiled axes in ``t, z, y, x`` order, e.g. ``"nczyx"``.
    stored_axes
        The data's own axes, in its own order (e.g. ``"zcyx"``).
    axes_guessed
        True when ``stored_axes`` were guessed from the number of dimensions.
    spacing, offset, units
        Physical voxel size, origin and unit per tiled axis (``None`` when unknown).
    chunks
        Chunk (or strip / tile) shape on the normalised axes, ``None`` when not chunked.
    fingerprint
        A stable id of the input: its location, shape and dtype (plus the modification
        time and size of files, or a hash of a few samples of data in memory).
    kind, location
        What was opened ("zarr v3", "tiff (memmap)", "numpy", ...) and from where.
    """

    def __init__(
        self,
        opener: _Opener,
        *,
        stored_shape: Sequence[int],
        dtype,
        stored_axes: str,
        axes_guessed: bool = False,
        spacing: Sequence[float] | None = None,
        offset: Sequence[float] | None = None,
        units: Sequence[str | None] | None = None,
        stored_chunks: Sequence[int] | None = None,
        fingerprint: str,
        kind: str | None = None,
        location: str | None = None,
        extra: str = "",
        reader=None,
        handle=None,
    ) -> None:
        stored_shape = tuple(int(s) for s in stored_shape)
        if len(stored_axes) != len(stored_shape):
            raise ValueError(f"axes {stored_axes!r} do not match shape {stored_shape}")
        self._opener = opener
        self.stored_shape = stored_shape
        self.stored_axes = stored_axes
        self.axes = normalised_axes(stored_axes)
        self.axes_guessed = axes_guessed
        self.dtype = np.dtype(dtype)
        # for each normalised axis, its position in the stored data (None: added, length 1)
        self._source_axis = tuple(
            stored_axes.index(a) if a in stored_axes else None for a in self.axes
        )
        self.shape = tuple(1 if j is None else stored_shape[j] for j in self._source_axis)
        nsp = len(self.axes) - 2
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.offset = None if offset is None else tuple(float(o) for o in offset)
        self.units = None if units is None else tuple(units)
        for name, value in (
            ("spacing", self.spacing),
            ("offset", self.offset),
            ("units", self.units),
        ):
            if value is not None and len(value) != nsp:
                raise ValueError(f"{name} {value} must have one value per tiled axis ({nsp})")
        self.chunks = (
            None
            if stored_chunks is None
            else tuple(
                1 if j is None else max(1, min(int(stored_chunks[j]), stored_shape[j]))
                for j in self._source_axis
            )
        )
        self.fingerprint = fingerprint
        self.kind = kind or opener.kind
        self.location = location if location is not None else opener.location
        self._extra = extra
        self._lock = threading.Lock()
        self._reader = reader
        self._handle = handle

    # -- geometry ------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[2:]

    @property
    def spatial_axes(self) -> str:
        return self.axes[2:]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<Source {self.describe()}>"

    # -- reading -------------------------------------------------------------------------
    def _get_reader(self):
        reader = self._reader
        if reader is None:
            with self._lock:
                if self._reader is None:
                    reader, handle = self._opener.open()
                    if tuple(reader.shape) != self.stored_shape:
                        if handle is not None:
                            _close(handle)
                        raise RuntimeError(
                            f"{self.location} changed since it was opened: its shape is now "
                            f"{tuple(reader.shape)}, was {self.stored_shape}"
                        )
                    self._handle = handle
                    self._reader = reader
                reader = self._reader
        return reader

    def __getitem__(self, key) -> np.ndarray:
        """Basic indexing (ints and slices) on the (N, C, *spatial) view, returns numpy."""
        key = _expand_key(key, self.ndim)
        stored_key: list[Any] = [None] * len(self.stored_shape)
        for k, j in zip(key, self._source_axis):
            if j is None:
                if not isinstance(k, slice) and k not in (0, -1):
                    raise IndexError(f"index {k} is out of bounds for an axis of size 1")
            else:
                stored_key[j] = k
        block = self._get_reader()[tuple(stored_key)]
        block = np.asarray(block)
        if block.dtype != self.dtype:
            block = block.astype(self.dtype, copy=False)
        # axes the stored block kept (sliced, not indexed), in stored order
        kept = [a for a, k in zip(self.stored_axes, stored_key) if isinstance(k, slice)]
        wanted = [
            a
            for a, k, j in zip(self.axes, key, self._source_axis)
            if isinstance(k, slice) and j is not None
        ]
        if kept != wanted:
            block = np.transpose(block, [kept.index(a) for a in wanted])
        pos = 0
        for k, j in zip(key, self._source_axis):
            if not isinstance(k, slice):
                continue
            if j is None:
                block = np.expand_dims(block, pos)
                if len(range(*k.indices(1))) == 0:
                    block = block[(slice(None),) * pos + (slice(0, 0),)]
            pos += 1
        return block

    def read(self, n: int, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """(C, *box) of image ``n``, the box from ``start`` (inclusive) to ``stop`` (exclusive)."""
        start, stop = tuple(start), tuple(stop)
        nsp = self.ndim - 2
        if len(start) != nsp or len(stop) != nsp:
            raise ValueError(
                f"start and stop must have one value per tiled axis ({nsp}: {self.spatial_axes}), "
                f"got {start} and {stop}"
            )
        return self[(int(n), slice(None), *(slice(int(a), int(b)) for a, b in zip(start, stop)))]

    def close(self) -> None:
        """Drop open file handles; the next read reopens."""
        with self._lock:
            handle, self._handle = self._handle, None
            if not self._opener.in_memory:
                self._reader = None
        if handle is not None:
            _close(handle)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pickling: the recipe, not the data ---------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_handle"] = None
        if not self._opener.in_memory:
            state["_reader"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- description -----------------------------------------------------------------------
    def describe(self) -> str:
        """One line for logs: kind, location, shape, dtype, axes, chunks, spacing, offset."""
        parts = [
            self.kind,
            str(self.location),
            str(self.shape),
            str(self.dtype),
            f"axes {self.axes}",
        ]
        if self.axes_guessed:
            parts.append(
                f"(stored {self.stored_axes}, guessed from {len(self.stored_shape)} dims; "
                "pass axes= to set)"
            )
        elif self.stored_axes != self.axes:
            parts.append(f"(stored {self.stored_axes})")
        if self.chunks is not None:
            parts.append(f"chunks {self.chunks}")
        if self.spacing is not None:
            unit = ""
            if self.units and any(self.units):
                distinct = set(self.units)
                unit = " " + (
                    self.units[0] if len(distinct) == 1 else "/".join(u or "?" for u in self.units)
                )
            parts.append(f"spacing {_fmt(self.spacing)}{unit}")
        if self.offset is not None and any(self.offset):
            parts.append(f"offset {_fmt(self.offset)}")
        if self._extra:
            parts.append(self._extra)
        return " ".join(parts)


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _close(handle) -> None:
    try:
        handle.close()
    except Exception:  # pragma: no cover - closing is best effort
        pass


# ---------------------------------------------------------------------------------------
# fingerprints


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _file_stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _sample_hash(reader, shape: Sequence[int], samples: int = 256) -> str:
    """A hash of the first row and a few values spread over the array (not a checksum)."""
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0 or not shape:
        return "empty"
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(reader[(0,) * (len(shape) - 1) + (slice(0, 64),)]).tobytes())
    flat = np.unique(np.linspace(0, size - 1, num=min(samples, size)).astype(np.int64))
    idx = np.unravel_index(flat, tuple(shape))
    try:
        if isinstance(reader, _TorchReader):
            import torch

            values = reader.tensor.detach()[tuple(torch.from_numpy(i) for i in idx)].cpu()
            values = (values.float() if values.dtype == torch.bfloat16 else values).numpy()
        else:
            values = np.asarray(reader.array[idx])
        h.update(np.ascontiguousarray(values).tobytes())
    except Exception:  # an array type without fancy indexing: the first row only
        pass
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# OME metadata

_OME_TYPES = {"time": "t", "channel": "c"}


def _ome_multiscale(attrs: dict) -> dict | None:
    """The first ``multiscales`` entry of OME-Zarr 0.4 (attrs) or 0.5 (attrs['ome'])."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):
        ms = ome["multiscales"][0]
        return {**ms, "version": ms.get("version", ome.get("version"))}
    if attrs.get("multiscales"):
        return attrs["multiscales"][0]
    return None


def _ome_axes(ms: dict, ndim: int) -> tuple[str | None, tuple[str | None, ...] | None]:
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


def _ome_dataset_transform(ms: dict, index: int, ndim: int):
    """(scale, translation) per stored axis of dataset ``index`` (dataset's, then global)."""
    scale, trans = np.ones(ndim), np.zeros(ndim)
    scale, trans = _compose_transforms(
        ms["datasets"][index].get("coordinateTransformations"), ndim, scale, trans
    )
    if scale is None:
        return None, None
    scale, trans = _compose_transforms(ms.get("coordinateTransformations"), ndim, scale, trans)
    return scale, trans


# ---------------------------------------------------------------------------------------
# open_source


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
        return _open_memory(obj, "torch", axes)
    if module == "dask":
        _only_plain(level, array, "a dask array")
        return _open_memory(obj, "dask", axes)
    if module == "zarr":
        return _open_zarr_object(obj, axes=axes, level=level, array=array)
    if isinstance(obj, np.ndarray):
        _only_plain(level, array, "a numpy array")
        if isinstance(obj, np.memmap) and isinstance(obj.base, mmap.mmap) and obj.filename:
            order = "C" if obj.flags.c_contiguous else ("F" if obj.flags.f_contiguous else None)
            if order is not None and obj.ndim:
                return _open_memmap(obj, order, axes)
        return _open_memory(obj, "numpy", axes)
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and hasattr(obj, "__getitem__"):
        _only_plain(level, array, f"a {type(obj).__name__}")
        return _open_memory(obj, type(obj).__name__, axes)
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


def _resolve_axes(
    axes: str | None, meta_axes: str | None, shape: Sequence[int]
) -> tuple[str, bool]:
    ndim = len(shape)
    if axes is not None:
        return _check_axes(axes, ndim, shape), False
    if meta_axes is not None:
        return _check_axes(meta_axes, ndim, shape), False
    return _guess_axes(ndim, shape), True


def _spatial_values(values, stored_axes: str):
    """Per-stored-axis values -> per tiled axis in t, z, y, x order."""
    if values is None:
        return None
    return tuple(values[stored_axes.index(a)] for a in SPATIAL_AXES if a in stored_axes)


def _open_memory(obj, kind: str, axes: str | None) -> Source:
    shape = tuple(int(s) for s in obj.shape)
    stored_axes, guessed = _resolve_axes(axes, None, shape)
    opener = _MemoryOpener(obj, kind)
    reader, handle = opener.open()
    chunks = None
    if kind == "torch":
        import torch

        dtype = (
            np.float32
            if obj.dtype == torch.bfloat16
            else torch.empty(0, dtype=obj.dtype).numpy().dtype
        )
        fp = _digest("torch", shape, str(obj.dtype), _sample_hash(reader, shape))
        extra = f"on {obj.device}" if str(obj.device) != "cpu" else ""
    elif kind == "dask":
        dtype = obj.dtype
        chunks = tuple(max(c) if c else 0 for c in obj.chunks)
        fp = _digest("dask", shape, str(dtype), obj.name)
        extra = ""
    else:
        dtype = obj.dtype
        fp = _digest(kind, shape, str(np.dtype(dtype)), _sample_hash(reader, shape))
        extra = ""
    return Source(
        opener,
        stored_shape=shape,
        dtype=dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        stored_chunks=chunks,
        fingerprint=fp,
        kind=kind,
        extra=extra,
        reader=reader,
        handle=handle,
    )


def _open_memmap(obj: np.memmap, order: str, axes: str | None) -> Source:
    # a memmap whose base is the mmap itself (np.load(mmap_mode=...), np.memmap(...)) starts
    # at ``obj.offset`` in its file; views of it are treated as plain arrays
    shape = tuple(obj.shape)
    stored_axes, guessed = _resolve_axes(axes, None, shape)
    opener = _MemmapOpener(os.path.abspath(obj.filename), obj.dtype, shape, obj.offset, order)
    fp = _digest(
        "file", opener.location, shape, str(obj.dtype), obj.offset, _file_stamp(opener.location)
    )
    return Source(
        opener,
        stored_shape=shape,
        dtype=obj.dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        fingerprint=fp,
        reader=_NumpyReader(obj),
    )


def _suffix(location: str) -> str:
    name = location.rstrip("/").rsplit("/", 1)[-1].lower()
    return os.path.splitext(name)[1]


def _looks_like_zarr_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zarray", ".zgroup")
    )


def _open_location(location: str, *, axes, level, array, storage_options) -> Source:
    if _is_url(location):
        return _open_zarr_location(
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
    if suffix in ZARR_SUFFIXES or _looks_like_zarr_dir(path):
        return _open_zarr_location(path, axes=axes, level=level, array=array, storage_options=None)
    if array is not None:
        raise ValueError(f"array={array!r} applies to zarr stores only, not to {location}")
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path, axes=axes, level=level)
    if level not in (0, None):
        raise ValueError(f"level={level!r} applies to multiscale inputs only, not to {location}")
    if suffix in MRC_SUFFIXES:
        return _open_mrc(path, axes=axes)
    if suffix in NPY_SUFFIXES:
        return _open_npy(path, axes=axes)
    raise ValueError(
        f"cannot tell how to read {location}: supported are zarr directories (.zarr, or any "
        f"directory with zarr.json/.zarray/.zgroup), "
        f"{', '.join(TIFF_SUFFIXES + MRC_SUFFIXES + NPY_SUFFIXES)}, "
        f"and http(s):// or s3:// zarr URLs"
    )


def _open_npy(path: str, *, axes) -> Source:
    opener = _NpyOpener(path)
    reader, handle = opener.open()
    shape = reader.shape
    stored_axes, guessed = _resolve_axes(axes, None, shape)
    fp = _digest("file", path, shape, str(reader.array.dtype), _file_stamp(path))
    return Source(
        opener,
        stored_shape=shape,
        dtype=reader.array.dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        fingerprint=fp,
        reader=reader,
        handle=handle,
    )


def _open_mrc(path: str, *, axes) -> Source:
    opener = _MrcOpener(path)
    reader, mrc = opener.open()
    shape = reader.shape
    # 3D is a volume even when the header says image stack (IMOD writes ispg 0 for volumes);
    # pass axes="nyx" to tile a stack of images one by one
    meta_axes = {2: "yx", 3: "zyx", 4: "nzyx"}.get(len(shape)) if axes is None else None
    stored_axes, guessed = _resolve_axes(axes, meta_axes, shape)
    spatial = [a for a in SPATIAL_AXES if a in stored_axes]
    vs = mrc.voxel_size
    xyz = {"x": float(vs.x), "y": float(vs.y), "z": float(vs.z)}
    spacing = units = None
    if any(xyz[a] > 0 for a in spatial if a in xyz):
        spacing = tuple(xyz[a] if xyz.get(a, 0.0) > 0 else 1.0 for a in spatial)
        units = tuple(None if a == "t" else "angstrom" for a in spatial)
    fp = _digest("file", path, shape, str(reader.array.dtype), _file_stamp(path))
    return Source(
        opener,
        stored_shape=shape,
        dtype=reader.array.dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        spacing=spacing,
        units=units,
        fingerprint=fp,
        reader=reader,
        handle=mrc,
    )


_TIFF_AXES = {"T": "t", "Z": "z", "Y": "y", "X": "x", "C": "c", "S": "c"}


def _tiff_axes(series_axes: str) -> str | None:
    letters = [_TIFF_AXES.get(a) for a in series_axes.upper()]
    if any(a is None for a in letters) or len(set(letters)) != len(letters):
        return None
    return "".join(letters)  # type: ignore[arg-type]


def _tiff_spacing(tif, stored_axes: str, level_factor: Sequence[float]) -> tuple | None:
    """Voxel size per tiled axis from OME-XML, ImageJ metadata or resolution tags."""
    size: dict[str, float] = {}
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
    if not size:
        return None
    spatial = [a for a in SPATIAL_AXES if a in stored_axes]
    factors = dict(zip(stored_axes, level_factor))
    return tuple(size.get(a, 1.0) * factors.get(a, 1.0) for a in spatial)


def _open_tiff(path: str, *, axes, level) -> Source:
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
        stored_axes, guessed = _resolve_axes(axes, _tiff_axes(chosen.axes), shape)
        factor = [a / b if b else 1.0 for a, b in zip(levels[0].shape, shape)]
        spacing = _tiff_spacing(tif, stored_axes, factor)
        contiguous = chosen.dataoffset is not None
    opener = _TiffOpener(path, 0, level, memmap=contiguous)
    try:
        reader, handle = opener.open()
    except ValueError:  # not memory-mappable after all
        opener = _TiffOpener(path, 0, level, memmap=False)
        reader, handle = opener.open()
    chunks = None if opener.memmap else _array_chunks(reader.array)
    fp = _digest("file", path, shape, str(dtype), level, _file_stamp(path))
    extra = f"level {level}/{len(levels)}" if len(levels) > 1 else ""
    return Source(
        opener,
        stored_shape=shape,
        dtype=dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        spacing=spacing,
        stored_chunks=chunks,
        fingerprint=fp,
        extra=extra,
        reader=reader,
        handle=handle,
    )


# -- zarr ------------------------------------------------------------------------------------


def _array_chunks(arr) -> tuple[int, ...] | None:
    try:
        return tuple(int(c) for c in arr.chunks)
    except Exception:  # irregular chunks, or none
        return None


def _metadata_stamp(location: str, array_path: str | None):
    """mtime and size of a local array's metadata file (None for URLs)."""
    if _is_url(location):
        return None
    base = os.path.join(location, array_path) if array_path else location
    for name in ("zarr.json", ".zarray"):
        f = os.path.join(base, name)
        if os.path.exists(f):
            return _file_stamp(f)
    return None


def _open_zarr_location(location: str, *, axes, level, array, storage_options) -> Source:
    try:
        node = _open_zarr_node(location, array, storage_options)
    except (FileNotFoundError, KeyError) as e:
        what = f"array {array!r} in " if array else ""
        raise FileNotFoundError(f"no zarr {what}store found at {location} ({e})") from e
    return _from_zarr_node(
        node,
        location,
        array or "",
        axes=axes,
        level=level,
        make_opener=lambda p: _ZarrOpener(location, p, storage_options),
        stamp=lambda p: _metadata_stamp(location, p),
        parent=lambda p: _parent_multiscale(location, p, storage_options),
    )


def _open_zarr_object(obj, *, axes, level, array) -> Source:
    import zarr
    import zarr.storage

    if array is not None:
        if not isinstance(obj, zarr.Group):
            raise ValueError(f"array={array!r} applies to zarr groups, not to a zarr array")
        node = obj[array]
    else:
        node = obj
    store = node.store
    node_path = node.path or ""
    root = None
    if isinstance(store, zarr.storage.LocalStore):
        root = os.path.abspath(str(store.root))
    if root is not None:  # a directory: reopen it by its path
        return _from_zarr_node(
            node,
            root,
            node_path,
            axes=axes,
            level=level,
            make_opener=lambda p: _ZarrOpener(root, p, None),
            stamp=lambda p: _metadata_stamp(root, p),
            parent=lambda p: _parent_multiscale(root, p, None),
        )
    # any other store (remote fsspec, memory, zip, a wrapper): the opener pickles the store
    # object itself, which for fsspec is its URL and options, for a memory store its data
    name = (
        str(store) if isinstance(store, zarr.storage.FsspecStore) else f"<{type(store).__name__}>"
    )
    return _from_zarr_node(
        node,
        name,
        node_path,
        axes=axes,
        level=level,
        make_opener=lambda p: _ZarrStoreOpener(store, p, name),
        stamp=lambda p: str(store),
        parent=lambda p: _parent_multiscale_in(lambda: zarr.open_group(store=store, mode="r"), p),
    )


class _ZarrStoreOpener(_Opener):
    """A zarr array in a store object that is not a local directory (pickled as is)."""

    kind = "zarr"

    def __init__(self, store, array_path: str, name: str):
        self.store = store
        self.array_path = array_path
        self.location = name

    def open(self):
        import zarr

        return _NumpyReader(zarr.open_array(store=self.store, path=self.array_path, mode="r")), None


def _from_zarr_node(
    node, location: str, node_path: str, *, axes, level, make_opener, stamp, parent
) -> Source:
    """A Source for a zarr array, or the chosen array of a group, at ``node_path``."""
    import zarr

    ms = ms_index = None
    if isinstance(node, zarr.Group):
        ms = _ome_multiscale(dict(node.attrs))
        if ms is not None:
            datasets = ms.get("datasets") or []
            paths = [d.get("path") for d in datasets]
            lv = 0 if level is None else level
            if not -len(datasets) <= lv < len(datasets):
                raise ValueError(
                    f"level={level} is out of range for {location}: its multiscales have "
                    f"{len(datasets)} level(s) (paths {paths}); valid are 0..{len(datasets) - 1} "
                    f"(0 the finest), or negative counting from the coarsest"
                )
            ms_index = lv % len(datasets)
            sub = paths[ms_index]
        else:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                raise ValueError(
                    f"{location} is a zarr group without OME multiscales metadata; name the "
                    f"array with array=, one of {arrays}"
                    if arrays
                    else f"{location} is a zarr group with no arrays and no OME multiscales"
                )
            if level not in (0, None):
                raise ValueError(f"level={level!r} applies to OME multiscales; {location} has none")
            sub = arrays[0]
        arr = node[sub]
        if not isinstance(arr, zarr.Array):
            raise ValueError(f"{sub!r} in {location} is a group, not an array")
        array_path = "/".join(p for p in (node_path, sub) if p)
    else:
        arr, array_path = node, node_path
        if level not in (0, None):
            raise ValueError(
                f"level={level!r} applies to multiscale groups; {location}"
                f"{' [' + array_path + ']' if array_path else ''} is a single array "
                "(open its group)"
            )
        ms, ms_index = parent(array_path)  # an array inside an OME group: use its metadata
    shape = tuple(int(s) for s in arr.shape)
    meta_axes = units = scale = trans = None
    if ms is not None:
        meta_axes, units = _ome_axes(ms, len(shape))
        scale, trans = _ome_dataset_transform(ms, ms_index, len(shape))
    if meta_axes is None:
        meta_axes = _dimension_names_axes(arr)
    stored_axes, guessed = _resolve_axes(axes, meta_axes, shape)
    spacing = _spatial_values(None if scale is None else scale.tolist(), stored_axes)
    offset = _spatial_values(None if trans is None else trans.tolist(), stored_axes)
    units = _spatial_values(units, stored_axes)
    if units is not None and not any(units):
        units = None
    dtype = np.dtype(arr.dtype)
    kind = f"zarr v{arr.metadata.zarr_format}"
    if ms is not None:
        kind += f" OME {ms.get('version', '?')}"
    opener = make_opener(array_path)
    chunks = _array_chunks(arr)
    fp = _digest("zarr", location, array_path, shape, str(dtype), chunks, stamp(array_path))
    extra = []
    if ms is not None:
        extra.append(f"level {ms_index}/{len(ms.get('datasets') or [])}")
    shards = getattr(arr, "shards", None)
    if shards:
        extra.append(f"shards {tuple(shards)}")
    return Source(
        opener,
        stored_shape=shape,
        dtype=dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        spacing=spacing,
        offset=offset,
        units=units,
        stored_chunks=chunks,
        fingerprint=fp,
        kind=kind,
        extra=" ".join(extra),
        location=location + (f" [{array_path}]" if array_path else ""),
        reader=_NumpyReader(arr),
    )


def _dimension_names_axes(arr) -> str | None:
    """Axes from zarr v3 ``dimension_names`` or xarray's ``_ARRAY_DIMENSIONS``, if understood."""
    try:
        names = getattr(arr.metadata, "dimension_names", None) or dict(arr.attrs).get(
            "_ARRAY_DIMENSIONS"
        )
    except Exception:  # pragma: no cover - unusual metadata
        return None
    if not names or any(not isinstance(n, str) for n in names):
        return None
    letters = "".join(n.lower() for n in names)
    if len(letters) != len(names) or any(a not in AXIS_LETTERS for a in letters):
        return None
    if len(set(letters)) != len(letters):
        return None
    return letters


def _parent_multiscale_in(root_group, array_path: str):
    """The OME multiscales entry, and level, of the group that holds ``array_path``
    (``root_group``: the store's root group, or a function returning it)."""
    import zarr

    if not array_path:
        return None, None
    try:
        if callable(root_group):
            root_group = root_group()
        parent_path, _, name = array_path.rpartition("/")
        parent = root_group[parent_path] if parent_path else root_group
        if not isinstance(parent, zarr.Group):
            return None, None
        ms = _ome_multiscale(dict(parent.attrs))
        paths = [d.get("path") for d in (ms or {}).get("datasets") or []]
        if name in paths:
            return ms, paths.index(name)
    except Exception:
        pass
    return None, None


def _parent_multiscale(location: str, array_path: str, storage_options):
    """Like :func:`_parent_multiscale_in` for a store given by location; also looks one
    directory up when the location itself is an array (``image.zarr/0``)."""
    try:
        if array_path:
            return _parent_multiscale_in(
                lambda: _open_zarr_node(location, "", storage_options), array_path
            )
        parent_loc, _, name = location.rstrip("/").rpartition("/")
        if not parent_loc or (not _is_url(location) and not _looks_like_zarr_dir(parent_loc)):
            return None, None
        if _is_url(location) and "://" not in parent_loc:
            return None, None
        import zarr

        parent = _open_zarr_node(parent_loc, "", storage_options)
        if isinstance(parent, zarr.Group):
            return _parent_multiscale_in(parent, name)
    except Exception:
        pass
    return None, None
