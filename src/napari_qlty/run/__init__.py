"""Out of core: a volume through a model into a store, region by region, resumably."""

from .runner import Cancelled, Event, iter_predict, predict

__all__ = ["Cancelled", "Event", "iter_predict", "predict"]
