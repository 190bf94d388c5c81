"""``.npy`` files, memory-mapped (never unpickled)."""

from __future__ import annotations

import numpy as np

from .axes import resolve_axes
from .base import NumpyReader, Opener, Source, digest, file_stamp


class _NpyOpener(Opener):
    kind = "npy"

    def __init__(self, path: str):
        self.location = path

    def open(self):
        return NumpyReader(np.load(self.location, mmap_mode="r", allow_pickle=False)), None


def open_npy(path: str, *, axes) -> Source:
    opener = _NpyOpener(path)
    reader, handle = opener.open()
    shape = reader.shape
    stored_axes, guessed = resolve_axes(axes, None, shape)
    fp = digest("file", path, shape, str(reader.array.dtype), file_stamp(path))
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
