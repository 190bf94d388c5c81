"""Reader: zarr folders (plain, OME-Zarr multiscale, napari-qlty outputs) and MRC files.

Nothing is loaded up front: zarr data become dask arrays (one task per chunk), a
multiscale OME-Zarr image becomes a multiscale layer (napari reads the level it shows),
and MRC files are memory-mapped. napari-qlty's own folders open as what they hold:

* a prediction (``napari-qlty/prediction/2``, an OME-Zarr image): the probability map
  of each class as a multiscale Image layer (napari reads the level it shows, so a
  huge result opens at once), and the predicted labels as a multiscale Labels layer,
  both at the physical scale the run recorded; one in the earlier flat layout
  (``napari-qlty/prediction/1``) opens as it was written, at full resolution;
* sparse labels made by the labelling widget (``napari-qlty/labels/1``): a Labels layer
  that keeps saving as you paint, with its class names;
* exported training pairs (``napari-qlty/training-pairs/1``): the image windows and
  their labels (0 = unobserved), stacked along a first axis.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io import formats, labels_store
from ..io.sources import MRC_SUFFIXES
from ..io.sources.zarr_store import looks_like_zarr_dir


def get_reader(path) -> Callable | None:
    """napari's reader hook: a function for a path we can read, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = os.fspath(path)
    name = path.rstrip("/\\").lower()
    if name.endswith(MRC_SUFFIXES) and os.path.isfile(path):
        return read_mrc
    if name.endswith(".zarr") or looks_like_zarr_dir(path):
        if os.path.isdir(path):
            return read_zarr
    return None


# -- zarr ------------------------------------------------------------------------------------
def read_zarr(path) -> list[tuple]:
    import zarr

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    node = zarr.open(path, mode="r")
    name = Path(path.rstrip("/\\")).stem
    if isinstance(node, zarr.Array):
        if labels_store.is_labels_store(path):
            return [_qlty_labels(path, name)]
        return [_plain_array(node, path, name)]
    attrs = dict(node.attrs)
    fmt = formats.identify(path)
    if fmt == formats.PREDICTION:
        return _prediction(path, name)
    if fmt == formats.PREDICTION_FLAT:
        return _flat_prediction(node, path, name)
    if fmt == formats.PAIRS:
        return _pairs(node, path, name)
    if _multiscales(attrs):
        layers = [_ome_multiscale(node, path, name, attrs)]
        if "labels" in node:
            layers += _ome_labels(node, path)
        return layers
    layers = []
    for key, child in sorted(node.arrays()):
        layers.append(_plain_array(child, path, f"{name}/{key}", component=key))
    if not layers:
        raise ValueError(f"{path} is a zarr group without arrays or multiscale images")
    return layers


def _dask(path: str, component: str | None = None):
    import dask.array as da

    return da.from_zarr(path, component=component or None)


def _plain_array(arr, path: str, name: str, component: str | None = None) -> tuple:
    data = _dask(path, component)
    dims = getattr(arr.metadata, "dimension_names", None) or ()
    kwargs: dict = {"name": name}
    dims = [str(d).lower() if d is not None else "" for d in dims]
    if "c" in dims and len(dims) == data.ndim and data.ndim >= 3:
        kwargs["channel_axis"] = dims.index("c")
    kind = "labels" if np.dtype(str(arr.dtype)).kind in "ui" and arr.attrs.get("image-label") else "image"
    return data, kwargs, kind


def _qlty_labels(path: str, name: str) -> tuple:
    """Our labels folder, opened for writing: painting keeps saving to it."""
    meta = labels_store.read_meta(path) or {}
    arr = labels_store.open_existing(path)
    kwargs: dict = {"name": name, "features": labels_store.features_table(labels_store.stored_classes(meta))}
    if meta.get("scale") and len(meta["scale"]) == arr.ndim:
        kwargs["scale"] = tuple(meta["scale"])
    if meta.get("translate") and len(meta["translate"]) == arr.ndim:
        kwargs["translate"] = tuple(meta["translate"])
    return arr, kwargs, "labels"


def _prediction(path: str, name: str) -> list[tuple]:
    """Our OME-Zarr prediction: multiscale layers at the scale the run recorded."""
    from ..io.prediction import Prediction, class_names

    store = Prediction(path)
    layout = store.layout
    layers = []
    if layout["probabilities"]:
        dims = store.dims("probabilities")
        levels = [_dask(path, store.array_path("probabilities", i)) for i in range(store.levels)]
        c = dims.names.index("c")
        kwargs = {**_placement(store, dims, skip="c"), "multiscale": len(levels) > 1, "colormap": "magma"}
        limits = (0.0, 1.0) if _bounded(store) else _limits(levels[-1])
        channels = layout["channels"]
        if channels == 1:
            levels = [level[(slice(None),) * c + (0,)] for level in levels]
            layers.append((_one(levels), {**kwargs, "name": f"{name} · P", "contrast_limits": limits}, "image"))
        else:
            names = class_names(layout)
            layers.append((_one(levels), {
                **kwargs, "name": [f"{name} · P({names[k]})" for k in range(channels)], "channel_axis": c,
                "blending": "additive", "visible": [k == 1 for k in range(channels)], "contrast_limits": limits,
            }, "image"))
    if layout["labels"]:
        dims = store.dims("labels")
        levels = [_dask(path, store.array_path("labels", i)) for i in range(store.levels)]
        layers.append((_one(levels), {**_placement(store, dims), "multiscale": len(levels) > 1,
                                      "name": f"{name} · labels", "opacity": 0.5}, "labels"))
    if not layers:
        raise ValueError(f"{path} is a napari-qlty prediction without probabilities or labels")
    return layers


def _one(levels: list):
    return levels if len(levels) > 1 else levels[0]


def _bounded(store) -> bool:
    """Values in [0, 1]: the run ended in a softmax or sigmoid."""
    return (store.meta.get("params") or {}).get("postprocess") in ("softmax", "sigmoid")


def _limits(level) -> tuple[float, float]:
    """Contrast limits from the middle plane of a (coarse) level, where the first view
    looks (only that plane's chunks are read)."""
    key = tuple(s // 2 for s in level.shape[:-2]) + tuple(slice(None, None, max(1, s // 256)) for s in level.shape[-2:])
    sample = np.asarray(level[key], dtype=np.float64)
    lo, hi = float(np.nanmin(sample)), float(np.nanmax(sample))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _placement(store, dims, skip: str | None = None) -> dict:
    """scale and translate of level 0 over the arrays' axes (1 and 0 off the tiled axes)."""
    axes = store.layout["axes"]
    scale = dict(zip(axes, store.scale(0)))
    translate = dict(zip(axes, store.translation(0)))
    kept = [(name, src) for name, src in zip(dims.names, dims.source) if name != skip]
    return {"scale": tuple(scale[n] if s is not None and s >= 2 else 1.0 for n, s in kept),
            "translate": tuple(translate[n] if s is not None and s >= 2 else 0.0 for n, s in kept)}


def _flat_prediction(group, path: str, name: str) -> list[tuple]:
    """The earlier layout (``napari-qlty/prediction/1``): full resolution only, (N, C, *tiled)."""
    import dask.array as da

    layers = []
    if "probabilities" in group:
        probs = da.from_zarr(path, component="probabilities")
        if probs.shape[0] == 1:
            probs = probs[0]
            channels = probs.shape[0]
            if channels == 1:
                layers.append((probs[0], {"name": f"{name} · P", "colormap": "magma", "contrast_limits": (0, 1)}, "image"))
            else:
                layers.append((probs, {
                    "name": [f"{name} · P(class {c})" for c in range(channels)],
                    "channel_axis": 0, "colormap": "magma", "blending": "additive",
                    "visible": [c == 1 for c in range(channels)],
                }, "image"))
        else:  # several images: (N, C, ...) with the class as channel
            layers.append((probs, {"name": f"{name} · P", "channel_axis": 1, "colormap": "magma"}, "image"))
    if "labels" in group:
        labels = da.from_zarr(path, component="labels")
        if labels.shape[0] == 1:
            labels = labels[0]
        layers.append((labels, {"name": f"{name} · labels", "opacity": 0.5}, "labels"))
    if not layers:
        raise ValueError(f"{path} is a napari-qlty prediction without probabilities or labels")
    return layers


def _pairs(group, path: str, name: str) -> list[tuple]:
    """Training pairs: images (K, C, *w) and labels (K, *w) with -1 shown as 0 (unobserved)."""
    images = _dask(path, "images")
    labels = _dask(path, "labels")
    kwargs: dict = {"name": f"{name} · windows"}
    if images.shape[1] > 1:
        kwargs["channel_axis"] = 1
    else:
        images = images[:, 0]
    return [
        (images, kwargs, "image"),
        ((labels.astype("int16") + 1).astype("uint16"), {"name": f"{name} · labels (0 = unobserved)"}, "labels"),
    ]


# -- OME-Zarr ---------------------------------------------------------------------------------
def _multiscales(attrs: dict) -> dict | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and ome.get("multiscales"):
        return ome["multiscales"][0]
    if attrs.get("multiscales"):
        return attrs["multiscales"][0]
    return None


def _ome_multiscale(group, path: str, name: str, attrs: dict, kind: str = "image") -> tuple:
    """One multiscale layer; scale and translation of level 0 from the engine's reading."""
    from ..io.sources import open_source

    ms = _multiscales(attrs)
    datasets = [d["path"] for d in ms["datasets"]]
    levels = [_dask(path, p if not group.path else f"{group.path}/{p}") for p in datasets]
    source = open_source(path if not group.path else os.path.join(path, group.path), level=0)
    stored = source.stored_axes
    spatial = [a for a in "tzyx" if a in stored]
    scale, translate = [], []
    for a in stored:
        if a == "c":
            continue
        if a in spatial and source.spacing is not None:
            scale.append(source.spacing[spatial.index(a)])
        else:
            scale.append(1.0)
        if a in spatial and source.offset is not None:
            translate.append(source.offset[spatial.index(a)])
        else:
            translate.append(0.0)
    kwargs: dict = {
        "name": ms.get("name") or name,
        "multiscale": len(levels) > 1,
        "scale": tuple(scale),
        "translate": tuple(translate),
    }
    data = levels if len(levels) > 1 else levels[0]
    if "c" in stored and kind == "image":
        kwargs["channel_axis"] = stored.index("c")
    return data, kwargs, kind


def _ome_labels(group, path: str) -> list[tuple]:
    labels_group = group["labels"]
    attrs = dict(labels_group.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}
    names = ome.get("labels") or attrs.get("labels") or []
    out = []
    for label_name in names:
        try:
            child = labels_group[label_name]
            out.append(_ome_multiscale(child, path, label_name, dict(child.attrs), kind="labels"))
        except Exception:  # noqa: BLE001 - a broken label image does not hide the image
            continue
    return out


# -- MRC --------------------------------------------------------------------------------------
def read_mrc(path) -> list[tuple]:
    """An MRC volume, memory-mapped (only the planes shown are read), voxel size in Å."""
    import mrcfile

    from ..io.sources import open_source

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = os.fspath(path)
    with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
        dtype = mrc.data.dtype
        shape = mrc.data.shape
        offset = mrc.header.nbytes + mrc.extended_header.nbytes
    data = np.memmap(path, dtype=dtype, mode="r", offset=int(offset), shape=shape)
    source = open_source(path)
    kwargs: dict = {"name": Path(path).stem}
    if source.spacing is not None and len(source.spacing) == data.ndim:
        kwargs["scale"] = tuple(source.spacing)
        kwargs["metadata"] = {"unit": "angstrom"}
    return [(data, kwargs, "image")]
