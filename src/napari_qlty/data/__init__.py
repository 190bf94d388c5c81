"""Built-in sample data: the synthetic filament tomogram with sparse annotations."""

from .tomogram import DEFAULT_SHAPE, PAPER_SHAPE, Tomogram, make_tomogram

__all__ = ["DEFAULT_SHAPE", "PAPER_SHAPE", "Tomogram", "make_tomogram"]
