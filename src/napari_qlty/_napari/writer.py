"""Writer: a Labels layer to a zarr folder (the labelling widget's format, read back by
the reader with its class names, scale and translation).

napari does not ask before it overwrites, so the writer refuses any target that is not a
labels store of ours (an empty folder is fine), naming what is there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..io import formats
from ..io import labels_store as store
from ..io.formats import check_replaceable, remove_ours


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """napari's writer hook for one Labels layer: ``path`` becomes a ``.zarr`` folder."""
    path = os.fspath(path)
    if not path.endswith(".zarr"):
        path += ".zarr"
    if isinstance(data, list):  # multiscale labels: write level 0
        data = data[0]
    classes = _classes(meta)
    scale = meta.get("scale")
    translate = meta.get("translate")
    if isinstance(data, zarr.Array) and _same_store(data, path):
        # the layer already lives in this folder (painted by the labelling widget): update
        # its metadata only
        store.write_meta(data, classes, scale=scale, translate=translate)
        return [path]
    dtype = np.dtype(str(data.dtype))
    if dtype.kind not in "ui":
        raise ValueError(f"labels must be integers to be saved, got {dtype}")
    dtype = np.dtype(f"uint{dtype.itemsize * 8}")
    target = Path(path)
    # napari asks nobody before overwriting: replace only a labels store of ours
    replace = check_replaceable(target, formats.LABELS, overwrite=True)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        remove_ours(partial, formats.LABELS)
    arr = store.create(partial, data.shape, classes, scale=scale, translate=translate, dtype=dtype)
    step = arr.chunks[0]
    for r0 in range(0, data.shape[0], step):
        block = np.asarray(data[r0 : r0 + step])
        if block.size and block.min() < 0:
            remove_ours(partial, formats.LABELS)
            raise ValueError("labels must be >= 0 (0 = unlabelled) to be saved by napari-qlty")
        arr[r0 : r0 + step] = block.astype(dtype)
    if replace:
        remove_ours(target, formats.LABELS)
    partial.rename(target)
    return [path]


def _classes(meta: dict) -> dict[int, str]:
    features = meta.get("features")
    try:
        if features is not None and "index" in features and "class" in features:
            return {int(i): str(n) for i, n in zip(features["index"], features["class"]) if int(i) != 0}
    except TypeError:
        pass
    return {}


def _same_store(arr: zarr.Array, path: str) -> bool:
    root = getattr(arr.store, "root", None)
    if root is None:
        return False
    here = os.path.abspath(os.path.join(str(root), arr.path or ""))
    return here == os.path.abspath(path)
