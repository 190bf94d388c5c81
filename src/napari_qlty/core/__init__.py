"""Pure maths on tensors: where windows sit, how they weigh, cutting and blending.

Nothing here reads or writes files; :mod:`napari_qlty.io` and :mod:`napari_qlty.run`
build on it, never the other way round.
"""

from .blend import Accumulator, stitch
from .grid import Grid, Window
from .inference import infer
from .pairs import IGNORE, PairStatistics, TrainingPairs, clean_pairs, select_windows
from .speed import Speed
from .tiles import extract, extract_lazy
from .weights import Weighting, WindowWeights

__all__ = [
    "IGNORE",
    "Accumulator",
    "Grid",
    "PairStatistics",
    "Speed",
    "TrainingPairs",
    "Weighting",
    "Window",
    "WindowWeights",
    "clean_pairs",
    "extract",
    "extract_lazy",
    "infer",
    "select_windows",
    "stitch",
]
