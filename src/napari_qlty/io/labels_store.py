"""Labels on disk: a zarr v3 array that napari paints into, with its class names.

Layout of ``LABELS.zarr`` (one zarr array, not a group)::

    (*spatial) uint8 (uint16 above 255 classes), 0 = unlabelled, 1.. = classes

Attributes ``napari_qlty``: ``{"format": "napari-qlty/labels/1", "classes": {"1": name,
...}, "scale": [...], "translate": [...]}``. napari writes every brush stroke straight
into the array's chunks, so the labels are saved as they are painted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import zarr

from ..core.labels import OURS
from . import formats
from .formats import ATTRS_KEY

FORMAT = formats.LABELS
#: what the values of our labels stores mean (and napari's Labels layers)
CONVENTION = OURS
DEFAULT_CHUNK = 64


def parse_class_names(text: str) -> list[str]:
    """``"background, filament"`` -> ["background", "filament"] (class 1, 2, ...)."""
    names = [n.strip() for n in str(text).split(",")]
    names = [n for n in names if n]
    if not names:
        raise ValueError("classes: give at least one class name, e.g. 'background, filament'")
    return names


def classes_dict(names: Sequence[str]) -> dict[int, str]:
    return {i + 1: n for i, n in enumerate(names)}


def is_labels_store(path: str | Path) -> bool:
    return read_meta(path) is not None


def read_meta(path: str | Path) -> dict | None:
    """The attributes of our labels store at ``path``, or None if it holds none."""
    return formats.read_meta(path, FORMAT)


def create(
    path: str | Path,
    shape: Sequence[int],
    classes: Mapping[int, str],
    *,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    dtype=None,
) -> zarr.Array:
    """A new empty labels array at ``path`` (0 everywhere), opened for writing."""
    shape = tuple(int(s) for s in shape)
    if dtype is None:
        dtype = "uint8" if max(classes, default=1) < 256 else "uint16"
    chunks = tuple(min(int(c), s) for c, s in zip(chunks or (DEFAULT_CHUNK,) * len(shape), shape))
    arr = zarr.create_array(
        str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
        zarr_format=3, overwrite=overwrite, attributes={ATTRS_KEY: {"format": FORMAT}},  # ours at once
        dimension_names=list("tzyx"[-len(shape):]) if len(shape) <= 4 else None,
    )
    write_meta(arr, classes, scale=scale, translate=translate)
    return zarr.open_array(str(path), mode="r+")


def open_existing(path: str | Path) -> zarr.Array:
    return zarr.open_array(str(path), mode="r+")


def write_meta(arr: zarr.Array, classes: Mapping[int, str], *, scale=None, translate=None) -> None:
    meta = dict(arr.attrs.get(ATTRS_KEY) or {})
    meta["format"] = FORMAT
    meta["classes"] = {str(int(k)): str(v) for k, v in sorted(classes.items())}
    if scale is not None:
        meta["scale"] = [float(s) for s in scale]
    if translate is not None:
        meta["translate"] = [float(t) for t in translate]
    arr.attrs[ATTRS_KEY] = meta


def stored_classes(meta: Mapping) -> dict[int, str]:
    return {int(k): str(v) for k, v in (meta.get("classes") or {}).items()}


def features_table(classes: Mapping[int, str]):
    """A napari Labels ``features`` table: the status bar then shows the class name."""
    import pandas as pd

    values = [0, *sorted(classes)]
    return pd.DataFrame({"index": values, "class": ["unlabelled", *(classes[v] for v in values[1:])]})


def class_names(layer) -> dict[int, str]:
    """{label value: name} from a labels layer's features (empty if it has none)."""
    try:
        features = layer.features
    except AttributeError:
        return {}
    if "index" not in features or "class" not in features:
        return {}
    return {int(i): str(n) for i, n in zip(features["index"], features["class"]) if int(i) != 0}


def count_labels(data, block_voxels: int = 1 << 24) -> np.ndarray:
    """Voxels per label value (index = value), reading ``data`` slab by slab."""
    shape = tuple(int(s) for s in data.shape)
    counts = np.zeros(1, dtype=np.int64)
    if not shape:
        return counts
    plane = int(np.prod(shape[1:], dtype=np.int64)) or 1
    step = max(1, block_voxels // plane)
    for r0 in range(0, shape[0], step):
        block = np.asarray(data[r0 : r0 + step]).ravel()
        if block.size == 0:
            continue
        if block.dtype.kind not in "ui":
            block = block.astype(np.int64)
        if block.dtype.kind == "i" and block.min() < 0:
            block = block[block >= 0]
        c = np.bincount(block)
        if len(c) > len(counts):
            counts = np.pad(counts, (0, len(c) - len(counts)))
        counts[: len(c)] += c
    return counts
