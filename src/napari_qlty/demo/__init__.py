"""``make demo``: sparse labels -> training pairs -> a small ensemble -> stitched segmentation."""

from .figure import figure2
from .loop import DEMO_SHAPE, main, paper_grid_note, parse_args

__all__ = ["DEMO_SHAPE", "figure2", "main", "paper_grid_note", "parse_args"]
