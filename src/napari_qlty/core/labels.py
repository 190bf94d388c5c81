"""What label values mean, once for the whole product.

The engine trains on classes 0, 1, ... with :data:`IGNORE` (-1) where nothing was
labelled. Labels on disk or in napari say it their own way:

* **ours** (:data:`OURS`: the sparse-labels store, napari's Labels layers): 0 means
  unlabelled and class k is value k (1 = the first class, 2 = the second, ...);
* anything else: the value that means unlabelled is given explicitly (``ignore``), and
  every other value is its own class (:data:`EXPLICIT`, -1 by default).

:class:`LabelView` shows any labels array as the engine's, lazily, so a zarr- or
dask-backed volume stays on disk. A convention whose "unlabelled" value the labels'
dtype cannot hold is an error: with uint8 labels and -1, every voxel would count as
labelled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

IGNORE = -1
"""The engine's value for "no label"."""


@dataclass(frozen=True)
class LabelConvention:
    """``unlabelled`` marks voxels without a label; class k is the value ``k + first``."""

    unlabelled: int = IGNORE
    first: int = 0

    @property
    def identity(self) -> bool:
        return self.unlabelled == IGNORE and self.first == 0

    def describe(self) -> str:
        if self == OURS:
            return "0 = unlabelled, 1.. = classes"
        return f"{self.unlabelled} = unlabelled, every other value a class"

    def to_json(self) -> dict:
        return {"unlabelled": self.unlabelled, "first": self.first}

    @classmethod
    def from_json(cls, data: dict) -> LabelConvention:
        return cls(int(data["unlabelled"]), int(data["first"]))


OURS = LabelConvention(unlabelled=0, first=1)
EXPLICIT = LabelConvention()


class DenseLabelsWarning(UserWarning):
    """Sparse labels that label most voxels: the "unlabelled" value is probably wrong."""

    def __init__(self, fraction: float, convention: LabelConvention) -> None:
        self.fraction, self.convention = fraction, convention
        super().__init__(
            f"{100 * fraction:.0f} % of the voxels carry a label ({convention.describe()}): "
            "sparse labels usually leave most voxels unlabelled, so check which value means "
            "unlabelled (the ignore label)"
        )


def numpy_dtype(labels) -> np.dtype:
    """The numpy dtype of an array, a tensor or a lazy array."""
    dtype = labels.dtype
    if isinstance(dtype, torch.dtype):
        return torch.empty(0, dtype=dtype).numpy().dtype
    return np.dtype(dtype)


def check_convention(labels, convention: LabelConvention, what: str = "labels") -> None:
    """Refuse a convention whose unlabelled value the labels' dtype cannot hold."""
    dtype = numpy_dtype(labels)
    if dtype.kind == "f":
        return
    if dtype.kind == "b" or dtype.kind not in "ui":
        raise ValueError(f"{what} must hold integers (class values), got {dtype}")
    info = np.iinfo(dtype)
    if not info.min <= convention.unlabelled <= info.max:
        raise ValueError(
            f"{what} are {dtype} ({info.min}..{info.max}), which cannot hold the ignore label "
            f"{convention.unlabelled}: every voxel would count as labelled. Give the value that "
            f"marks unlabelled voxels (0 for napari's labels)"
        )


def view_dtype(labels, convention: LabelConvention) -> np.dtype:
    """int16 when every class value fits, else int32 (uint16 label values survive)."""
    dtype = numpy_dtype(labels)
    if dtype.kind in "ui" and dtype.itemsize <= 2:
        info = np.iinfo(dtype)
        lo, hi = int(info.min) - convention.first, int(info.max) - convention.first
        if lo >= -(1 << 15) and hi < (1 << 15):
            return np.dtype("int16")
    return np.dtype("int32")


class LabelView:
    """A labels array seen as the engine's: class k as k, :data:`IGNORE` where unlabelled.

    ``labels`` is (N, *spatial), or (*spatial) with ``add_image_axis`` (one image).
    Nothing is read until a box is asked for.
    """

    def __init__(self, labels, convention: LabelConvention = OURS, *, add_image_axis: bool = False) -> None:
        check_convention(labels, convention)
        self.labels = labels
        self.convention = convention
        self.add_image_axis = add_image_axis
        shape = tuple(int(s) for s in labels.shape)
        self.shape = (1, *shape) if add_image_axis else shape
        self.dtype = view_dtype(labels, convention)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if self.add_image_axis:
            first, rest = key[0], key[1:]
            if isinstance(first, slice):
                block = np.asarray(self.labels[rest] if rest else self.labels[...])[None][first]
            else:
                if first not in (0, -1):
                    raise IndexError(f"image index {first} is out of range (one image)")
                block = np.asarray(self.labels[rest] if rest else self.labels[...])
        else:
            block = np.asarray(self.labels[key])
        return self.convert(block)

    def convert(self, block: np.ndarray) -> np.ndarray:
        c = self.convention
        if c.identity and block.dtype == self.dtype:
            return block
        out = block.astype(self.dtype) - c.first if c.first else block.astype(self.dtype)
        out[block == c.unlabelled] = IGNORE
        return out


def warn_if_dense(labelled: int, voxels: int, convention: LabelConvention) -> None:
    """Say so when "sparse" labels label more than half of the voxels."""
    if voxels and labelled > voxels / 2:
        warnings.warn(DenseLabelsWarning(labelled / voxels, convention), stacklevel=3)
