"""The record of an interactive loop: every training round, beside the labels store.

Layout of ``<labels>.rounds`` (a zarr group, so :func:`formats.identify` knows it)::

    <labels>.rounds/          {"format": "napari-qlty/rounds/1", "shape": [...], "image": name}
        round-001/            {"format": "napari-qlty/round/1", "round": 1, "parent": null,
                               "kind": "train", parameters, scores, ...}
            labels            the labels the round trained on (a labels store: 0 = unlabelled)
            model.pt          its model (a napari-qlty checkpoint: weights and recipe)
            prediction.zarr   the whole image predicted with it, when it was
        round-002/            {"parent": 1, "kind": "train more", ...}

Each round names the round it continued (``parent``), so going back to an earlier model
and training on from it makes a branch; nothing is ever replaced or deleted. A round is
written as ``round-NNN.partial`` and renamed once its model is saved, so a folder named
``round-NNN`` is always complete; the partial folder of a round that failed is removed
by the run that made it. A later view mode reads the same records: a round's model,
labels and inference settings are all here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

from . import formats, labels_store
from .formats import ATTRS_KEY, StoreError

FORMAT = formats.ROUNDS
ROUND_FORMAT = formats.ROUND
NAME = re.compile(r"^round-(\d{3,})$")
PARTIAL = ".partial"
MODEL = "model.pt"
LABELS = "labels"
PREDICTION = "prediction.zarr"

__all__ = ["PendingRound", "Round", "Rounds", "beside", "now", "store_path"]


def now() -> str:
    """The time, as rounds record it (ISO 8601, UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Round:
    """A finished round: its folder and what it recorded."""

    path: Path
    attrs: dict

    @property
    def number(self) -> int:
        return int(self.attrs["round"])

    @property
    def parent(self) -> int | None:
        p = self.attrs.get("parent")
        return None if p is None else int(p)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def labels_path(self) -> Path:
        return self.path / LABELS

    @property
    def prediction_path(self) -> Path:
        return self.path / PREDICTION

    def update(self, **values) -> Round:
        """Add to what the round recorded (e.g. its prediction once it is written)."""
        group = zarr.open_group(str(self.path), mode="r+")
        attrs = {**self.attrs, **formats.canonical(values)}
        group.attrs[ATTRS_KEY] = attrs
        return Round(self.path, attrs)


class PendingRound:
    """A round being written (``round-NNN.partial``): :meth:`finish` or :meth:`discard` it."""

    def __init__(self, rounds: Rounds, number: int, attrs: dict) -> None:
        self.rounds = rounds
        self.number = number
        self.final = rounds.path / f"round-{number:03d}"
        self.path = self.final.with_name(self.final.name + PARTIAL)
        self.path.mkdir()  # fails if it exists: never write into someone else's folder
        self.attrs = formats.canonical({"format": ROUND_FORMAT, "round": number, "started": now(), **attrs})
        zarr.open_group(str(self.path), mode="w-", attributes={ATTRS_KEY: {**self.attrs, "partial": True}})

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    def snapshot(self, labels, classes: Mapping[int, str], *, scale=None, translate=None) -> zarr.Array:
        """Copy ``labels`` (0 = unlabelled; an array or a lazy one) into the round, slab by
        slab, and return the copy: what the round trains on, whatever is painted meanwhile."""
        shape = tuple(int(s) for s in labels.shape)
        top = max([1, *classes])
        arr = labels_store.create(self.path / LABELS, shape, classes, scale=scale, translate=translate,
                                  dtype="uint8" if top < 256 else "uint16")
        limit = np.iinfo(arr.dtype).max
        plane = int(np.prod(shape[1:], dtype=np.int64)) or 1
        step = max(1, (1 << 24) // plane)
        for r0 in range(0, shape[0], step):
            block = np.asarray(labels[r0 : r0 + step])
            if block.size and (block.min() < 0 or block.max() > limit):
                raise ValueError(f"labels must be in [0, {limit}] (0 = unlabelled), found values from "
                                 f"{block.min()} to {block.max()}")
            arr[r0 : r0 + step] = block.astype(arr.dtype, copy=False)
        return arr

    def finish(self, **attrs) -> Round:
        """Record ``attrs`` and rename the folder to its final name: the round is complete."""
        if not self.model_path.is_file():
            raise StoreError(f"round {self.number} has no model yet; it is not finished")
        final_attrs = formats.canonical({**self.attrs, **attrs, "finished": now()})
        zarr.open_group(str(self.path), mode="r+").attrs[ATTRS_KEY] = final_attrs
        if self.final.exists():
            raise StoreError(f"{self.final} exists already; round {self.number} stays in {self.path}")
        os.rename(self.path, self.final)
        return Round(self.final, final_attrs)

    def discard(self) -> None:
        """Remove this unfinished round (only the folder this object made, still marked partial)."""
        meta = formats.read_meta(self.path, ROUND_FORMAT)
        if meta is not None and meta.get("partial") and meta.get("round") == self.number:
            shutil.rmtree(self.path)


class Rounds:
    """The rounds folder of one image's loop: open or create it with :meth:`open`."""

    def __init__(self, path: Path, attrs: dict) -> None:
        self.path = path
        self.attrs = attrs

    @classmethod
    def open(cls, path: str | os.PathLike, shape: Sequence[int], *, image: str = "",
             create: bool = True) -> Rounds:
        """The rounds at ``path`` (created when nothing, or an empty folder, is there).

        Refuses a path holding anything else (it is left untouched), and rounds of an
        image of another shape.
        """
        p = Path(path)
        shape = [int(s) for s in shape]
        if p.exists() and not formats.is_empty_folder(p):
            meta = formats.read_meta(p, FORMAT)
            if meta is None:
                raise StoreError(f"{p} holds {formats.describe(p)}, not the rounds of a napari-qlty loop; "
                                 "it is left untouched: choose another rounds folder")
            if list(meta.get("shape") or []) != shape:
                stored = " × ".join(map(str, meta.get("shape") or []))
                raise StoreError(f"{p} holds the rounds of an image of {stored}, not "
                                 f"{' × '.join(map(str, shape))}: choose another rounds folder")
            return cls(p, meta)
        if not create:
            raise FileNotFoundError(f"no rounds at {p}")
        attrs = formats.canonical({"format": FORMAT, "shape": shape, "image": image, "created": now()})
        p.parent.mkdir(parents=True, exist_ok=True)
        zarr.open_group(str(p), mode="a", attributes={ATTRS_KEY: attrs})
        return cls(p, attrs)

    def rounds(self) -> list[Round]:
        """The finished rounds, in the order they were made."""
        out = []
        for child in self.path.iterdir() if self.path.is_dir() else ():
            if NAME.match(child.name) and child.is_dir():
                meta = formats.read_meta(child, ROUND_FORMAT)
                if meta is not None and not meta.get("partial"):
                    out.append(Round(child, meta))
        return sorted(out, key=lambda r: r.number)

    def get(self, number: int) -> Round:
        for r in self.rounds():
            if r.number == number:
                return r
        raise KeyError(f"no round {number} in {self.path}")

    def begin(self, **attrs) -> PendingRound:
        """A new round, numbered after every round here (finished or not)."""
        taken = [0]
        for child in self.path.iterdir():
            m = NAME.match(child.name.removesuffix(PARTIAL))
            if m:
                taken.append(int(m.group(1)))
        return PendingRound(self, max(taken) + 1, attrs)


def beside(labels_path: str | os.PathLike) -> Path:
    """The rounds folder of the labels store at ``labels_path``: ``x.zarr`` -> ``x.rounds``."""
    p = Path(labels_path)
    return p.with_name(p.name.removesuffix(".zarr") + ".rounds")


def store_path(array) -> Path | None:
    """The folder of ``array`` when it is one of our labels stores on the local disk."""
    if not isinstance(array, zarr.Array):
        return None
    try:
        root = Path(array.store_path.store.root)
    except AttributeError:  # not a local store
        return None
    path = root / array.store_path.path if array.store_path.path else root
    return path if labels_store.is_labels_store(path) else None
