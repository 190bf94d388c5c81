"""MRC tomograms (``.mrc``, ``.rec``, ``.map``, ...), memory-mapped, with the header's voxel size."""

from __future__ import annotations

from .axes import SPATIAL_AXES, resolve_axes
from .base import NumpyReader, Opener, Source, digest, file_stamp


class _MrcOpener(Opener):
    kind = "mrc"

    def __init__(self, path: str):
        self.location = path

    def open(self):
        import mrcfile

        handle = mrcfile.mmap(self.location, permissive=True, mode="r")
        if handle.data is None:
            handle.close()
            raise ValueError(f"MRC file {self.location} holds no data")
        return NumpyReader(handle.data), handle


def open_mrc(path: str, *, axes) -> Source:
    opener = _MrcOpener(path)
    reader, mrc = opener.open()
    shape = reader.shape
    # 3D is a volume even when the header says image stack (IMOD writes ispg 0 for volumes);
    # pass axes="nyx" to tile a stack of images one by one
    meta_axes = {2: "yx", 3: "zyx", 4: "nzyx"}.get(len(shape)) if axes is None else None
    stored_axes, guessed = resolve_axes(axes, meta_axes, shape)
    spatial = [a for a in SPATIAL_AXES if a in stored_axes]
    vs = mrc.voxel_size
    xyz = {"x": float(vs.x), "y": float(vs.y), "z": float(vs.z)}
    spacing = units = None
    if any(xyz[a] > 0 for a in spatial if a in xyz):
        spacing = tuple(xyz[a] if xyz.get(a, 0.0) > 0 else 1.0 for a in spatial)
        units = tuple(None if a == "t" else "angstrom" for a in spatial)
    fp = digest("file", path, shape, str(reader.array.dtype), file_stamp(path))
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
