"""napari-qlty: tile, clean and stitch volumes larger than a GPU.

Cut an (N, C, *spatial) tensor into overlapping windows, run any model on them, and
blend the outputs back::

    import torch
    from napari_qlty import Grid, Weighting, extract, stitch, infer

    x = torch.randn(1, 1, 236, 720, 510)                   # (N, C, Z, Y, X)
    grid = Grid(x.shape[2:], window=128, step=108, border=10)
    patches = extract(x, grid)                              # (70, 1, 128, 128, 128)
    y = stitch(model(patches), grid, Weighting("border", border_weight=0.0))

    # or in bounded memory, batch by batch, on a GPU:
    y = infer(model, x, grid, Weighting("gaussian"), batch_size=8, device="cuda")

Sparse labels become training pairs with :func:`clean_pairs`; qlty users switch with
``from napari_qlty.compat import NCZYXQuilt``.
"""

from .core import (
    IGNORE,
    Accumulator,
    Grid,
    PairStatistics,
    Speed,
    TrainingPairs,
    Weighting,
    Window,
    WindowWeights,
    clean_pairs,
    extract,
    extract_lazy,
    infer,
    stitch,
)
from .io.sources import Source, open_source
from .run import iter_predict, predict

__version__ = "0.1.0"

__all__ = [
    "IGNORE",
    "Accumulator",
    "Grid",
    "PairStatistics",
    "Source",
    "Speed",
    "TrainingPairs",
    "Weighting",
    "Window",
    "WindowWeights",
    "clean_pairs",
    "extract",
    "extract_lazy",
    "infer",
    "iter_predict",
    "open_source",
    "predict",
    "stitch",
]
