"""The Source interface: an (N, C, *spatial) read-only view read box by box, the readers
behind it, and the fingerprints that say whether an input changed."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .axes import expand_key, normalised_axes


class NumpyReader:
    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)

    def __getitem__(self, key):
        return np.asarray(self.array[key])


class TorchReader:
    def __init__(self, tensor):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)

    def __getitem__(self, key):
        import torch

        block = self.tensor[key].detach()
        if block.dtype == torch.bfloat16:
            block = block.float()
        return block.cpu().numpy()


class DaskReader:
    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)

    def __getitem__(self, key):
        return np.asarray(self.array[key].compute())


class Opener:
    kind = "array"
    location = "<memory>"
    in_memory = False

    def open(self):  # -> reader, handle to close (or None)
        raise NotImplementedError


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
    image_axis
        What the image axis ``n`` is: ``"n"`` (separate images), or ``"t"`` when it holds
        the time points of one time-lapse (:meth:`time_as_images`).
    kind, location
        What was opened ("zarr v3", "tiff (memmap)", "numpy", ...) and from where.
    """

    def __init__(
        self,
        opener: Opener,
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
        image_axis: str = "n",
    ) -> None:
        stored_shape = tuple(int(s) for s in stored_shape)
        if len(stored_axes) != len(stored_shape):
            raise ValueError(f"axes {stored_axes!r} do not match shape {stored_shape}")
        self._opener = opener
        self.stored_shape = stored_shape
        self.stored_axes = stored_axes
        self.axes = normalised_axes(stored_axes)
        self.axes_guessed = axes_guessed
        self.dtype = native(np.dtype(dtype))  # big-endian files (NIfTI, DICOM) read as native numbers
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
        self.image_axis = image_axis
        self.kind = kind or opener.kind
        self.location = location if location is not None else opener.location
        self._extra = extra
        self._lock = threading.Lock()
        self._reader = reader
        self._handle = handle
        self._stored_chunks = None if stored_chunks is None else tuple(stored_chunks)

    def time_as_images(self) -> Source:
        """This data with its time axis as the image axis: each time point is tiled (and
        run through a model) on its own, and results keep the time axis first."""
        if "t" not in self.stored_axes:
            return self
        if "n" in self.stored_axes:
            raise ValueError(
                f"the data has both an image axis (n) and a time axis (t) ({self.stored_axes}); "
                "give its axes with n for the one to run image by image"
            )
        keep = [i for i, a in enumerate(self.spatial_axes) if a != "t"]

        def drop_t(values):
            return None if values is None else tuple(values[i] for i in keep)

        return Source(
            self._opener, stored_shape=self.stored_shape, dtype=self.dtype,
            stored_axes=self.stored_axes.replace("t", "n"), axes_guessed=self.axes_guessed,
            spacing=drop_t(self.spacing), offset=drop_t(self.offset), units=drop_t(self.units),
            stored_chunks=self._stored_chunks, fingerprint=self.fingerprint + ":t-as-n",
            kind=self.kind, location=self.location, extra=self._extra, reader=self._reader,
            image_axis="t",
        )

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
        key = expand_key(key, self.ndim)
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


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order (torch takes nothing else)."""
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _close(handle) -> None:
    try:
        handle.close()
    except Exception:  # pragma: no cover - closing is best effort
        pass


def digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def file_stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def sample_hash(reader, shape: Sequence[int], samples: int = 256) -> str:
    """A hash of the first row and a few values spread over the array (not a checksum)."""
    size = int(np.prod(shape, dtype=np.int64))
    if size == 0 or not shape:
        return "empty"
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(reader[(0,) * (len(shape) - 1) + (slice(0, 64),)]).tobytes())
    flat = np.unique(np.linspace(0, size - 1, num=min(samples, size)).astype(np.int64))
    idx = np.unravel_index(flat, tuple(shape))
    try:
        if isinstance(reader, TorchReader):
            import torch

            values = reader.tensor.detach()[tuple(torch.from_numpy(i) for i in idx)].cpu()
            values = (values.float() if values.dtype == torch.bfloat16 else values).numpy()
        else:
            values = np.asarray(reader.array[idx])
        h.update(np.ascontiguousarray(values).tobytes())
    except Exception:  # an array type without fancy indexing: the first row only
        pass
    return h.hexdigest()[:16]
