"""Out of core: a volume through a model into a store, region by region, resumably."""

from .runner import Event, iter_predict, predict
from .task import Cancelled
from .view import View

__all__ = ["Cancelled", "Event", "View", "iter_predict", "predict"]
