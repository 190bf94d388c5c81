"""Out of core: a volume through a model into a store, region by region, resumably."""

from .runner import Event, iter_predict, predict
from .task import Cancelled

__all__ = ["Cancelled", "Event", "iter_predict", "predict"]
