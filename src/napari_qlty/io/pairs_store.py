"""Training pairs on disk: a zarr dataset, and the torch ``Dataset`` that reads it lazily.

Layout of ``PAIRS.zarr`` (zarr v3)::

    images      (K, C, *window) in the image's own dtype, one window a chunk
    labels      (K, *window) int16 (int32 when a class value needs it), ``ignore_label``
                where unobserved
    positions   (K, 1 + ndim) int64: image index n, then the window's origin

Attributes ``napari_qlty``: the format, the parameters (grid, ignore label, minimum
labels), the intensity normalisation measured over the whole image, the Table-2
statistics and the class counts. The dataset is written under a temporary name (marked
as ours from its first byte) and renamed when complete, so a path never holds a
half-written export, and a path holding anything else is never replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import zarr

from ..core.grid import Grid
from ..core.intensity import IDENTITY, Fitted, Normalisation
from ..core.labels import numpy_dtype
from ..core.pairs import (
    IGNORE,
    PairStatistics,
    as_label_volume,
    cut_pairs,
    select_windows,
    validation_split,
)
from . import formats
from .formats import ATTRS_KEY, FAST_CODEC, canonical, check_replaceable, remove_ours

FORMAT = formats.PAIRS
#: label dtypes whose every class value fits int16 once cut
SMALL_LABELS = {np.dtype(t) for t in ("int8", "uint8", "int16")}


def export_pairs(
    image,
    labels,
    grid: Grid,
    path: str | Path,
    *,
    ignore_label: int = IGNORE,
    min_labelled: int = 1,
    batch_size: int = 16,
    overwrite: bool = False,
    normalise: Normalisation | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[tuple[int, int, PairStatistics]]:
    """Write the cleaned pairs of ``image``/``labels`` to ``path``, batch by batch.

    Images keep their stored dtype; labels are the engine's (``ignore_label`` where
    unobserved; see :mod:`napari_qlty.core.labels`). ``normalise`` is measured over the
    whole image and recorded, for the trainer to apply. Yields ``(written, total,
    stats)`` after each batch (progress for the CLI and the widget). Memory: one batch
    of windows. Only an export of ours (or an empty folder) is ever replaced, and only
    with ``overwrite``; an export that would hold no pair is refused before anything is
    written.
    """
    path = Path(path)
    replace = check_replaceable(path, FORMAT, overwrite=overwrite)
    labels = as_label_volume(labels, grid)
    kept, stats = select_windows(labels, grid, ignore_label=ignore_label, min_labelled=min_labelled)
    if not len(kept):
        raise ValueError(no_pairs_message(stats, min_labelled))
    label_dtype = np.dtype("int16" if np.dtype(numpy_dtype(labels)) in SMALL_LABELS else "int32")
    if not np.iinfo(label_dtype).min <= int(ignore_label) <= np.iinfo(label_dtype).max:
        raise ValueError(f"ignore_label must fit {label_dtype}, got {ignore_label}")
    intensity = (normalise or Normalisation()).fit(image)
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        remove_ours(partial, FORMAT)  # a run of ours that stopped: never anything else
    group = zarr.open_group(str(partial), mode="w-", zarr_format=3)
    group.attrs[ATTRS_KEY] = {"format": FORMAT, "partial": True}  # ours from the first byte
    channels = image.shape[1]
    image_dtype = numpy_dtype(image)
    # named axes (zarr v3 dimension_names, as NGFF arrays carry them): k is the pair
    axes = list(getattr(image, "axes", "")[2:]) or [f"d{i}" for i in range(grid.ndim)]
    images = group.create_array(
        "images", shape=(len(kept), channels, *grid.window), chunks=(1, channels, *grid.window),
        dtype=image_dtype, compressors=FAST_CODEC, dimension_names=["k", "c", *axes],
    )
    label_arr = group.create_array(
        "labels", shape=(len(kept), *grid.window), chunks=(1, *grid.window), dtype=label_dtype,
        compressors=FAST_CODEC, fill_value=int(ignore_label), dimension_names=["k", *axes],
    )
    origins = grid.origins()
    positions = np.concatenate([(kept // len(grid))[:, None], origins[kept % len(grid)]], axis=1)
    group.create_array("positions", data=positions.astype(np.int64))
    for i in range(0, len(kept), batch_size):
        if cancelled is not None and cancelled():
            remove_ours(partial, FORMAT)
            return
        idx = kept[i : i + batch_size]
        img, lab = cut_pairs(image, labels, grid, idx, ignore_label=ignore_label)
        images[i : i + len(idx)] = img.numpy()
        label_arr[i : i + len(idx)] = lab.numpy().astype(label_dtype)
        yield i + len(idx), len(kept), stats
    group.attrs[ATTRS_KEY] = canonical({
        "format": FORMAT,
        "grid": {"shape": grid.shape, "window": grid.window, "step": grid.step, "border": grid.border},
        "ignore_label": int(ignore_label),
        "min_labelled": int(min_labelled),
        "normalisation": intensity.to_json(),
        "statistics": {
            "total_windows": stats.total_windows,
            "kept_windows": stats.kept_windows,
            "labelled_voxels": {str(k): v for k, v in stats.labelled_voxels.items()},
            "labelled_in_kept": stats.labelled_in_kept,
            "duplication": stats.duplication,
        },
    })
    if replace:
        remove_ours(path, FORMAT)
    partial.rename(path)
    yield len(kept), len(kept), stats


def no_pairs_message(stats: PairStatistics, min_labelled: int) -> str:
    """Why an export keeps no window, and what would help."""
    if not stats.total_labelled:
        return "the labels hold no labelled voxel: paint some labels first"
    return (
        f"no window holds at least {min_labelled} labelled voxels outside its border band (the most "
        f"any window holds is {stats.most_in_a_window}): label more voxels, keep windows with fewer "
        "(min labelled), or use larger windows or a narrower border"
    )


class PairsDataset(torch.utils.data.Dataset):
    """Reads an exported pairs dataset lazily: ``(image float32 (C, *w), labels int64 (*w))``.

    Opens the store on first use in each process, so it works with ``num_workers > 0``.
    """

    def __init__(self, path: str | Path, indices: np.ndarray | None = None) -> None:
        self.path = str(path)
        meta = zarr.open_group(self.path, mode="r").attrs.get(ATTRS_KEY)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a napari-qlty training-pairs dataset")
        self.meta = meta
        self.ignore_label = int(meta["ignore_label"])
        #: the normalisation measured over the whole image at export, for the trainer
        self.intensity = Fitted.from_json(meta["normalisation"]) if meta.get("normalisation") else IDENTITY
        total = meta["statistics"]["kept_windows"]
        self.indices = np.arange(total) if indices is None else np.asarray(indices)
        self._group = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r")
        j = int(self.indices[i])
        image = torch.from_numpy(np.asarray(self._group["images"][j]))  # the stored dtype
        labels = torch.from_numpy(np.asarray(self._group["labels"][j]).astype(np.int64))
        return image, labels

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_group"] = None
        return state

    @property
    def positions(self) -> np.ndarray:
        return np.asarray(zarr.open_group(self.path, mode="r")["positions"][...])[self.indices]

    def split(self, fraction: float = 0.2, seed: int = 0) -> tuple[PairsDataset, PairsDataset]:
        """A (train, validation) split of the pairs (:func:`~napari_qlty.core.pairs.validation_split`)."""
        train, val = validation_split(len(self.indices), fraction, seed)
        return PairsDataset(self.path, self.indices[train]), PairsDataset(self.path, self.indices[val])


def read_statistics(path: str | Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs[ATTRS_KEY]["statistics"])


__all__ = ["PairsDataset", "export_pairs", "read_statistics"]
