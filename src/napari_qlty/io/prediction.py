"""The output store of a prediction: an OME-Zarr 0.5 image that knows how it was made.

Layout of ``OUTPUT.zarr`` (zarr v3; axes as :class:`~napari_qlty.io.ngff.Dims` lays
them out, e.g. ``c, z, y, x`` for one volume)::

    zarr.json                 attributes: ome (multiscales "probabilities"), napari_qlty
    0/ 1/ ... L-1/            probabilities, float32|float16: level 0 full resolution,
                              level l the mean over blocks of factor**l voxels
    labels/zarr.json          ome.labels = ["segmentation"]
    labels/segmentation/      ome: multiscales + image-label (colours, class names)
        0/ 1/ ... L-1/        uint8 labels: argmax (or threshold), then majority vote
    uncertainty/              (asked for) ome: multiscales "uncertainty"; float32 channels
        0/ 1/ ... L-1/        as layout["uncertainty"] names them, block means
    napari_qlty/progress      (N, *regions) uint8, 1 where a region is final (all levels)
    napari_qlty/spills/...    partial sums handed between regions (deleted at the end)

Without probabilities the root itself is the label image (``0/``.. with
``image-label``). The ``napari_qlty`` attribute holds the format, the parameters that
define the result (input, model, grid, weighting, normalisation with its statistics,
outputs, pyramid), the layout (shapes, chunks per level, regions, axes, scale,
translation, units, class names) and ``complete``; other readers ignore it and the
``napari_qlty/`` group. A rerun with the same parameters resumes (finished regions are
skipped); a prediction of ours made with other parameters, or in the earlier flat
layout (``napari-qlty/prediction/1``), is replaced only with ``overwrite``, and a path
holding anything else never (the store is marked as ours from its first byte). A lock
file stops two runs writing one store.

Every region is a whole number of chunks at every level (its start is a multiple of
:func:`~napari_qlty.core.pyramid.granule`), and :meth:`OutputStore.write_region`
writes its share of every level, so writers never share a chunk and a killed run
resumes to the same bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from ..core.pyramid import level_chunks, level_shape, mean_levels, mode_levels
from ..core.speed import Speed
from . import formats, ngff
from .formats import (
    ATTRS_KEY,
    FAST_CODEC,
    StoreError,
    canonical,
    check_replaceable,
    differences,
    remove_ours,
)
from .locks import StoreLock
from .ngff import Dims, LogicalView
from .spills import ZarrSpills

FORMAT = formats.PREDICTION
#: our own group inside the store (progress, spills): other readers ignore it
OURS = ATTRS_KEY
LABELS_NAME = "segmentation"
#: what a store may hold: class scores, labels, and where the model is unsure
KINDS = ("probabilities", "labels", "uncertainty")


class Prediction:
    """A prediction store of ours, read in the engine's (N, C, *tiled) order whatever
    the arrays' axes: ``Prediction(path).probabilities()[...]``, ``.labels(level=2)``."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode=mode)
        meta = self.group.attrs.get(ATTRS_KEY)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or "layout" not in meta:
            raise StoreError(f"{self.path} holds {formats.describe(self.path)}, not {formats.DESCRIPTIONS[FORMAT]} "
                             f"({FORMAT}) that has been set up")
        self.meta = dict(meta)

    @property
    def layout(self) -> dict:
        return self.meta["layout"]

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def levels(self) -> int:
        return len(self.layout["levels"])

    def dims(self, kind: str) -> Dims:
        return Dims.from_json(self.layout["label_dims" if kind == "labels" else "dims"])

    def array_path(self, kind: str, level: int = 0) -> str:
        """Where level ``level`` of ``"probabilities"``, ``"labels"`` or ``"uncertainty"``
        lies in the store."""
        return f"{_prefix(self.layout, kind)}{int(level)}"

    def array(self, kind: str, level: int = 0) -> zarr.Array:
        if not self.layout.get(kind):
            raise KeyError(f"{self.path} holds no {kind}")
        if not 0 <= level < self.levels:
            raise IndexError(f"level must be 0..{self.levels - 1}, got {level}")
        return self.group[self.array_path(kind, level)]

    def probabilities(self, level: int = 0) -> LogicalView:
        """(N, C, *tiled) values of level ``level``, read lazily."""
        return LogicalView(self.array("probabilities", level), self.dims("probabilities"), 2 + len(self.layout["shape"]))

    def labels(self, level: int = 0) -> LogicalView:
        """(N, *tiled) labels of level ``level``, read lazily."""
        return LogicalView(self.array("labels", level), self.dims("labels"), 2 + len(self.layout["shape"]), drop=1)

    def uncertainty(self, level: int = 0) -> LogicalView:
        """(N, K, *tiled) uncertainty of level ``level``, its channels named by
        ``layout["uncertainty"]`` (see :mod:`napari_qlty.core.uncertainty`), read lazily."""
        return LogicalView(self.array("uncertainty", level), self.dims("uncertainty"), 2 + len(self.layout["shape"]))

    def finished_regions(self) -> set[tuple[int, ...]]:
        """(image, *region) of every region whose values are final."""
        done = np.asarray(self.group[f"{OURS}/progress"][...])
        return {tuple(int(i) for i in idx) for idx in np.argwhere(done == 1)}

    def scale(self, level: int = 0) -> tuple[float, ...]:
        """Physical voxel size of level ``level`` per tiled axis."""
        return level_scale(self.layout, level)

    def translation(self, level: int = 0) -> tuple[float, ...]:
        """Physical position of the first voxel's centre of level ``level`` per tiled axis."""
        return level_translation(self.layout, level)


class OutputStore(Prediction):
    """Open the store at ``path`` for writing (tasks on workers open it this way too)."""

    def __init__(self, path: str | Path, lock: StoreLock | None = None) -> None:
        super().__init__(path, mode="r+")
        self.spills = ZarrSpills(self.group.require_group(f"{OURS}/spills"))
        #: held by the run that opened the store for writing (tasks on workers hold none)
        self.lock = lock

    def close(self) -> None:
        """Let other runs open the store."""
        if self.lock is not None:
            self.lock.release()

    # -- opening --------------------------------------------------------------------
    @classmethod
    def open_for_run(
        cls,
        path: str | Path,
        params: dict,
        layout: dict,
        *,
        overwrite: bool = False,
    ) -> OutputStore:
        """Create the store, or reopen it to resume the same run.

        ``params`` define the result and must match to resume; ``layout`` (shapes,
        chunks, regions, axes, scale) is taken from the store when resuming.
        """
        path = Path(path)
        params = canonical(params)
        meta = read_meta(path)
        lock = StoreLock(path).acquire() if meta is not None else None  # nobody else writes it now
        try:
            if meta is not None and meta.get("params") == params:
                return cls(path, lock)
            if meta is not None and "params" not in meta:  # a creation of ours that never got far
                overwrite = True
            if meta is not None and not overwrite:
                raise StoreError(
                    f"{path} holds a prediction made with other parameters, so it cannot be resumed "
                    f"({'; '.join(explain(meta.get('params', {}), params)) or 'unknown'}); it is left "
                    "untouched: choose another output path", remedy="overwrite",
                )
            if check_replaceable(path, FORMAT, overwrite=overwrite):  # ours (or an empty folder)
                remove_ours(path, FORMAT)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        store = cls._create(path, params, canonical(layout))
        store.lock = StoreLock(path).acquire()
        return store

    @classmethod
    def _create(cls, path: Path, params: dict, layout: dict) -> OutputStore:
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs[ATTRS_KEY] = {"format": FORMAT}  # ours from the first byte: never taken for another's
        n, c_out, shape = layout["n_images"], layout["channels"], tuple(layout["shape"])
        for kind in KINDS:
            if not layout.get(kind):
                continue
            dims = Dims.from_json(layout["label_dims" if kind == "labels" else "dims"])
            # labels: a channel they never store
            channel = {"probabilities": c_out, "labels": 1, "uncertainty": len(layout.get("uncertainty") or ())}[kind]
            for i, level in enumerate(layout["levels"]):
                logical = (n, channel, *level["shape"])
                chunks = (1, channel, *level["chunks"])
                group.create_array(
                    f"{_prefix(layout, kind)}{i}",
                    shape=dims.shape(logical),
                    chunks=dims.shape(chunks),
                    dtype={"probabilities": layout["dtype"], "labels": "uint8", "uncertainty": "float32"}[kind],
                    compressors=FAST_CODEC,
                    fill_value=0,
                    dimension_names=list(dims.names),
                )
        ours = group.require_group(OURS)
        ours.create_array(
            "progress",
            shape=(n, *layout["region_counts"]),
            chunks=(1,) * (1 + len(shape)),
            dtype="uint8",
            fill_value=0,
        )
        ours.require_group("spills")
        _write_ome(group, layout)
        # our attributes go last: a store without them is never taken for a finished one
        group.attrs[ATTRS_KEY] = {"format": FORMAT, "params": params, "layout": layout, "complete": False}
        return cls(path)

    # -- state -------------------------------------------------------------------------
    def mark_finished(self, region: Sequence[int]) -> None:
        self.group[f"{OURS}/progress"][tuple(region)] = 1

    def mark_complete(self) -> None:
        self.meta["complete"] = True
        self.group.attrs[ATTRS_KEY] = self.meta
        spills = self.path / OURS / "spills"
        if spills.exists():
            shutil.rmtree(spills, ignore_errors=True)

    # -- data ------------------------------------------------------------------------
    def write_region(self, n: int, start: Sequence[int], probabilities: torch.Tensor,
                     uncertainty: torch.Tensor | None = None) -> int:
        """Write the final (C_out, *box) values of one region of image ``n`` (and its
        (K, *box) ``uncertainty``, if the store keeps it), and its share of every coarser
        level (means of the values, majority labels).

        Labels are the argmax over classes, or for one channel ``value >= threshold``
        (after a sigmoid, unless the values already are probabilities). A float16 store
        saturates values beyond its range at +-65504 (never inf); returns how many were.
        """
        factors = [tuple(level["factor"]) for level in self.layout["levels"]]
        saturated = 0
        if self.layout["probabilities"]:
            values = probabilities
            if np.dtype(self.layout["dtype"]) == np.float16:
                limit = float(np.finfo(np.float16).max)
                saturated = int((values.abs() > limit).sum())
                values = values.clamp(-limit, limit)
            self._put("probabilities", 0, n, start, values)
            for i, mean in enumerate(mean_levels(values, factors), 1):
                self._put("probabilities", i, n, start, mean)
        if self.layout["labels"]:
            labels = self.labels_of(probabilities)
            self._put("labels", 0, n, start, labels)
            for i, mode in enumerate(mode_levels(labels, label_count(self.layout), factors), 1):
                self._put("labels", i, n, start, mode)
        if self.layout.get("uncertainty"):
            self._put("uncertainty", 0, n, start, uncertainty)
            for i, mean in enumerate(mean_levels(uncertainty, factors), 1):
                self._put("uncertainty", i, n, start, mean)
        return saturated

    def _put(self, kind: str, level: int, n: int, start: Sequence[int], block: torch.Tensor) -> None:
        """Write ``block`` ((C, *box) values or (*box) labels) of image ``n`` at level ``level``,
        its box starting at level-0 voxel ``start`` (a multiple of the level's factor)."""
        factor = self.layout["levels"][level]["factor"]
        at = tuple(a // f for a, f in zip(start, factor))
        if kind != "labels":
            dtype = _torch_dtype(self.layout["dtype"]) if kind == "probabilities" else torch.float32
            data = block.to(dtype=dtype).cpu().numpy()[None]
        else:  # labels have no channel axis: a logical one of length 1
            data = block.to(dtype=torch.uint8).cpu().numpy()[None, None]
        key = (slice(n, n + 1), slice(None), *(slice(a, a + s) for a, s in zip(at, data.shape[2:])))
        dims = self.dims(kind)
        self.group[self.array_path(kind, level)][dims.key(key)] = dims.to_array(data, data.ndim)

    def labels_of(self, values: torch.Tensor) -> torch.Tensor:
        """(*box) uint8 labels of (C_out, *box) blended values, by the store's rule."""
        rule = self.layout.get("labels_rule") or {"kind": "argmax"}
        if rule["kind"] == "threshold":
            p = values[0] if rule.get("probabilities") else torch.sigmoid(values[0])
            return (p >= float(rule["threshold"])).to(torch.uint8)
        # the argmax, class by class: contiguous passes, 5x torch's strided argmax over dim 0
        # on the CPU; ties keep the lower class, as argmax does (the values hold no NaN)
        best, labels = values[0], torch.zeros(values.shape[1:], dtype=torch.uint8, device=values.device)
        for k in range(1, values.shape[0]):
            labels.masked_fill_(values[k] > best, k)
            best = torch.maximum(best, values[k])
        return labels


def levels_layout(shape: Sequence[int], chunks: Sequence[int], factors: Sequence[Sequence[int]],
                  floor: Sequence[int]) -> list[dict]:
    """Shape, chunks and cumulative factor of every level (see :mod:`napari_qlty.core.pyramid`)."""
    return [{"factor": list(f), "shape": list(level_shape(shape, f)), "chunks": list(level_chunks(chunks, f, floor))}
            for f in factors]


def level_scale(layout: dict, level: int) -> tuple[float, ...]:
    factor = layout["levels"][level]["factor"]
    return tuple(s * f for s, f in zip(layout["scale"], factor))


def level_translation(layout: dict, level: int) -> tuple[float, ...]:
    """A block's mean sits at the block's centre: half a block in from level 0's first voxel."""
    factor = layout["levels"][level]["factor"]
    return tuple(t + s * (f - 1) / 2 for t, s, f in zip(layout["translation"], layout["scale"], factor))


def _prefix(layout: dict, kind: str) -> str:
    """The folder of a kind's levels: the root for probabilities (and for labels alone)."""
    if kind == "uncertainty":
        return "uncertainty/"
    return f"labels/{LABELS_NAME}/" if kind == "labels" and layout["probabilities"] else ""


def label_count(layout: dict) -> int:
    """How many label values the store's rule gives: the classes, or 2 for a threshold."""
    rule = layout.get("labels_rule") or {"kind": "argmax"}
    return 2 if rule["kind"] == "threshold" else int(layout["channels"])


def class_names(layout: dict) -> list[str]:
    """A name per label value: the model's classes where known, else ``class k``."""
    names = list(layout.get("classes") or [])
    count = label_count(layout)
    if (layout.get("labels_rule") or {}).get("kind") == "threshold":
        names = ["background", names[-1] if names else "foreground"]
    return [names[k] if k < len(names) else f"class {k}" for k in range(count)]


def _write_ome(group: zarr.Group, layout: dict) -> None:
    """The NGFF metadata of the image, its labels and their levels (none if NGFF cannot
    hold the layout: then only our metadata describes it)."""
    units = dict(zip(layout["axes"], layout.get("units") or [None] * len(layout["axes"])))
    levels = range(len(layout["levels"]))
    for kind in KINDS:
        if not layout.get(kind):
            continue
        dims = Dims.from_json(layout["label_dims" if kind == "labels" else "dims"])
        if not dims.ome:
            return
        scales, translations = [], []
        for i in levels:
            physical = dict(zip(layout["axes"], zip(level_scale(layout, i), level_translation(layout, i))))
            scales.append([physical[name][0] if s is not None and s >= 2 else 1.0
                           for name, s in zip(dims.names, dims.source)])
            translations.append([physical[name][1] if s is not None and s >= 2 else 0.0
                                 for name, s in zip(dims.names, dims.source)])
        name = LABELS_NAME if kind == "labels" else kind
        ms = ngff.multiscales(name, dims, [str(i) for i in levels], scales, translations, units,
                              "mode" if kind == "labels" else "mean")
        prefix = _prefix(layout, kind)
        target = group[prefix.rstrip("/")] if prefix else group
        ome = {"version": ngff.VERSION, "multiscales": [ms]}
        if kind == "labels":
            names = class_names(layout)
            ome["image-label"] = ngff.image_label(names, ngff.label_colors(len(names)))
            if prefix:
                group["labels"].attrs["ome"] = {"version": ngff.VERSION, "labels": [LABELS_NAME]}
        target.attrs["ome"] = ome


def read_meta(path: str | Path) -> dict | None:
    """The attributes of our prediction at ``path``, or None if it holds none."""
    return formats.read_meta(path, FORMAT)


def explain(stored: dict, now: dict) -> list[str]:
    """What differs between the parameters of a store and of this run, in words:
    ``window: stored 64, now 48`` (one number for equal axes), ``model: another model``."""
    # parameters recorded only when not the default are compared with their defaults
    defaults = {"speed": Speed().to_json()}
    stored, now = {**defaults, **stored}, {**defaults, **now}
    out = []
    for line in differences(stored, now):
        key, _, rest = line.partition(": stored ")
        old, _, new = rest.partition(", now ")
        leaf = key.rsplit(".", 1)[-1]
        if key in ("input", "model"):
            out.append(f"{key}: another {'image' if key == 'input' else 'model'} (or it changed since)")
        elif key.startswith("normalisation."):
            if leaf in ("mode", "low", "high"):
                out.append(f"normalisation {leaf}: stored {old}, now {new}")
        elif leaf == "uncertainty":  # asked for or not (the kinds follow the model)
            out.append(f"uncertainty: stored {_on_off(old)}, now {_on_off(new)}")
        else:
            out.append(f"{leaf.replace('_', ' ')}: stored {_plain(old)}, now {_plain(new)}")
    return list(dict.fromkeys(out))


def _value(text: str):
    """A value as :func:`formats.differences` wrote it (a Python repr), read back."""
    try:
        return json.loads(text.replace("'", '"').replace("None", "null").replace("True", "true")
                          .replace("False", "false"))
    except ValueError:
        return text


def _plain(text: str) -> str:
    """``[64, 64, 64]`` -> ``64``; ``[64, 108, 108]`` -> ``64 × 108 × 108`` (as the
    widgets show sizes); ``'gaussian'`` -> ``gaussian``; ``None`` -> ``none``."""
    value = _value(text)
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]
    if isinstance(value, list):
        numbers = all(isinstance(v, (int, float)) for v in value)
        return (" × " if numbers else ", ").join(_plain(json.dumps(v)) for v in value)
    if value is None or isinstance(value, bool):
        return json.dumps(value).replace("null", "none")
    return str(value)


def _on_off(text: str) -> str:
    return "on" if _value(text) else "off"


def _torch_dtype(dtype) -> torch.dtype:
    return {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32}.get(
        np.dtype(str(dtype)), torch.float32
    )
