"""The output store of a prediction: a zarr v3 group that knows how it was made.

Layout of ``OUTPUT.zarr``::

    probabilities   (N, C_out, *spatial) float32|float16   blended class probabilities
    labels          (N, *spatial) uint8                     argmax over classes
    progress        (N, *regions) uint8, one chunk each     1 where a region is final
    spills/...      partial sums a region hands to its higher neighbours (deleted at the end)

Attributes ``napari_qlty``: the format, the parameters that define the result (input,
model, grid, weighting, normalisation with its statistics, outputs), the region layout,
and ``complete``. A rerun with the same parameters resumes (finished regions are
skipped); a prediction of ours made with other parameters is replaced only with
``overwrite``, and a path holding anything else never (the store is marked as ours from
its first byte). A lock file stops two runs writing one store. Every region is a whole
number of chunks and is written by one task only, so writers never share a chunk.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import zarr

from ..core.speed import Speed
from . import formats
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
from .spills import ZarrSpills

FORMAT = formats.PREDICTION


class OutputStore:
    """Open (or create) the store at ``path`` for a run with ``params``."""

    def __init__(self, path: str | Path, lock: StoreLock | None = None) -> None:
        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.meta = dict(self.group.attrs[ATTRS_KEY])
        self.spills = ZarrSpills(self.group.require_group("spills"))
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
        chunks, regions) is taken from the store when resuming.
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
        n, c_out = layout["n_images"], layout["channels"]
        spatial, chunks = tuple(layout["shape"]), tuple(layout["chunks"])
        axes = layout.get("axes") or [f"d{i}" for i in range(len(spatial))]
        if layout["probabilities"]:
            group.create_array(
                "probabilities",
                shape=(n, c_out, *spatial),
                chunks=(1, c_out, *chunks),
                dtype=layout["dtype"],
                compressors=FAST_CODEC,
                fill_value=0,
                dimension_names=["n", "c", *axes],
            )
        if layout["labels"]:
            group.create_array(
                "labels",
                shape=(n, *spatial),
                chunks=(1, *chunks),
                dtype="uint8",
                compressors=FAST_CODEC,
                fill_value=0,
                dimension_names=["n", *axes],
            )
        group.create_array(
            "progress",
            shape=(n, *layout["region_counts"]),
            chunks=(1,) * (1 + len(spatial)),
            dtype="uint8",
            fill_value=0,
        )
        group.require_group("spills")
        # the attributes go last: a store without them is never taken for a finished one
        group.attrs[ATTRS_KEY] = {"format": FORMAT, "params": params, "layout": layout, "complete": False}
        return cls(path)

    # -- state -------------------------------------------------------------------------
    @property
    def layout(self) -> dict:
        return self.meta["layout"]

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def finished_regions(self) -> set[tuple[int, ...]]:
        done = np.asarray(self.group["progress"][...])
        return {tuple(int(i) for i in idx) for idx in np.argwhere(done == 1)}

    def mark_finished(self, region: Sequence[int]) -> None:
        self.group["progress"][tuple(region)] = 1

    def mark_complete(self) -> None:
        self.meta["complete"] = True
        self.group.attrs[ATTRS_KEY] = self.meta
        spills = self.path / "spills"
        if spills.exists():
            shutil.rmtree(spills, ignore_errors=True)

    # -- data ------------------------------------------------------------------------
    def write_region(self, n: int, start: Sequence[int], probabilities: torch.Tensor) -> int:
        """Write the final (C_out, *box) values of one region of image ``n``.

        Labels are the argmax over classes, or for one channel ``value >= threshold``
        (after a sigmoid, unless the values already are probabilities). A float16 store
        saturates values beyond its range at +-65504 (never inf); returns how many were.
        """
        box = tuple(slice(a, a + s) for a, s in zip(start, probabilities.shape[1:]))
        saturated = 0
        if "probabilities" in self.group:
            arr = self.group["probabilities"]
            values = probabilities
            if np.dtype(str(arr.dtype)) == np.float16:
                limit = float(np.finfo(np.float16).max)
                saturated = int((values.abs() > limit).sum())
                values = values.clamp(-limit, limit)
            arr[(n, slice(None), *box)] = values.to(dtype=_torch_dtype(arr.dtype)).cpu().numpy()
        if "labels" in self.group:
            self.group["labels"][(n, *box)] = self.labels_of(probabilities).cpu().numpy()
        return saturated

    def labels_of(self, values: torch.Tensor) -> torch.Tensor:
        """(*box) uint8 labels of (C_out, *box) blended values, by the store's rule."""
        rule = self.layout.get("labels_rule") or {"kind": "argmax"}
        if rule["kind"] == "threshold":
            p = values[0] if rule.get("probabilities") else torch.sigmoid(values[0])
            return (p >= float(rule["threshold"])).to(torch.uint8)
        return values.argmax(dim=0).to(torch.uint8)

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
        else:
            out.append(f"{leaf.replace('_', ' ')}: stored {_plain(old)}, now {_plain(new)}")
    return list(dict.fromkeys(out))


def _plain(text: str) -> str:
    """``[64, 64, 64]`` -> ``64``; ``'gaussian'`` -> ``gaussian``."""
    try:
        value = json.loads(text.replace("'", '"').replace("None", "null").replace("True", "true")
                           .replace("False", "false"))
    except ValueError:
        return text
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]
    return str(value).lower() if isinstance(value, bool) else str(value)


def _torch_dtype(dtype) -> torch.dtype:
    return {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32}.get(
        np.dtype(str(dtype)), torch.float32
    )
