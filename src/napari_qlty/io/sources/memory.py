"""Arrays in memory (numpy, torch, dask, array-likes) and numpy memmaps reopened from their file."""

from __future__ import annotations

import os

import numpy as np

from .axes import resolve_axes
from .base import (
    DaskReader,
    NumpyReader,
    Opener,
    Source,
    TorchReader,
    digest,
    file_stamp,
    sample_hash,
)


class _MemoryOpener(Opener):
    """Data that lives in memory: numpy, torch, dask, a zarr array on a non-file store."""

    in_memory = True

    def __init__(self, obj, kind: str, location: str = "<memory>"):
        self.obj = obj
        self.kind = kind
        self.location = location

    def open(self):
        obj = self.obj
        if self.kind == "torch":
            return TorchReader(obj), None
        if self.kind == "dask":
            return DaskReader(obj), None
        return NumpyReader(obj), None


class _MemmapOpener(Opener):
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
        return NumpyReader(arr), None


def open_memory(obj, kind: str, axes: str | None) -> Source:
    shape = tuple(int(s) for s in obj.shape)
    stored_axes, guessed = resolve_axes(axes, None, shape)
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
        fp = digest("torch", shape, str(obj.dtype), sample_hash(reader, shape))
        extra = f"on {obj.device}" if str(obj.device) != "cpu" else ""
    elif kind == "dask":
        dtype = obj.dtype
        chunks = tuple(max(c) if c else 0 for c in obj.chunks)
        fp = digest("dask", shape, str(dtype), obj.name)
        extra = ""
    else:
        dtype = obj.dtype
        fp = digest(kind, shape, str(np.dtype(dtype)), sample_hash(reader, shape))
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


def open_memmap(obj: np.memmap, order: str, axes: str | None) -> Source:
    # a memmap whose base is the mmap itself (np.load(mmap_mode=...), np.memmap(...)) starts
    # at ``obj.offset`` in its file; views of it are treated as plain arrays
    shape = tuple(obj.shape)
    stored_axes, guessed = resolve_axes(axes, None, shape)
    opener = _MemmapOpener(os.path.abspath(obj.filename), obj.dtype, shape, obj.offset, order)
    fp = digest(
        "file", opener.location, shape, str(obj.dtype), obj.offset, file_stamp(opener.location)
    )
    return Source(
        opener,
        stored_shape=shape,
        dtype=obj.dtype,
        stored_axes=stored_axes,
        axes_guessed=guessed,
        fingerprint=fp,
        reader=NumpyReader(obj),
    )
