"""The synthetic tomogram as napari sample data (File > Open Sample)."""

from __future__ import annotations

import numpy as np

from ..data.tomogram import DEFAULT_SHAPE, PAPER_SHAPE, Tomogram, make_tomogram
from ..io.labels_store import features_table


def _layer_data(tomo: Tomogram) -> list[tuple]:
    """napari LayerData tuples (napari's labels convention: 0 means unlabelled)."""
    sparse = (tomo.annotations.astype(np.int16) + 1).astype(np.uint8)
    classes = features_table({1: "background", 2: "filament"})  # the status bar and the widgets name them
    return [
        (tomo.image, {"name": "tomogram"}, "image"),
        (sparse, {"name": "sparse labels", "features": classes}, "labels"),
        (tomo.labels.astype(np.uint8, copy=False),
         {"name": "ground truth", "visible": False}, "labels"),
    ]


def napari_sample_small() -> list[tuple]:
    """napari sample-data hook: a ``DEFAULT_SHAPE`` tomogram (fast, for trying things out)."""
    return _layer_data(make_tomogram(DEFAULT_SHAPE, seed=0))


def napari_sample_paper() -> list[tuple]:
    """napari sample-data hook: a ``PAPER_SHAPE`` tomogram (paper-sized; takes a while)."""
    return _layer_data(make_tomogram(PAPER_SHAPE, seed=0))
