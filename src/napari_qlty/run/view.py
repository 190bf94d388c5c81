"""What to run next: the regions on screen first, then the rest.

A region's values are final once its own windows and those of its lower neighbours (its
senders, :meth:`Regions.senders`) have run, so showing a view needs the regions it
touches and their senders, not the whole volume before it. The order is asked again
after every region, so a view that moves reorders what is still pending.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .regions import Regions


@dataclass(frozen=True)
class View:
    """The part of the volume on screen: a box ``[start, stop)`` of the tiled axes, in the
    images ``images`` (None: all of them)."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    images: tuple[int, ...] | None = None


class ViewOrder:
    """Tasks ``(n, *region)`` to compute, handed out one at a time.

    With ``view`` (a callable giving the current :class:`View`, or None), the regions the
    view touches come first, each after its senders still pending (C order among them);
    the rest follow in C order, unless ``view_only``, which stops once the view's regions
    are handed out.
    """

    def __init__(self, regions: Regions, todo: Sequence[tuple[int, ...]],
                 view: Callable[[], View | None] | None = None, view_only: bool = False) -> None:
        self.regions = regions
        self.todo = sorted(todo)
        self.pending = set(self.todo)
        self.view, self.view_only = view, view_only
        self._next = 0
        self._senders: dict[tuple[int, ...], list[tuple[int, ...]]] = {}

    def senders(self, task: tuple[int, ...]) -> list[tuple[int, ...]]:
        if task not in self._senders:
            self._senders[task] = sorted((task[0], *s) for s in self.regions.senders(task[1:]))
        return self._senders[task]

    def pop(self) -> tuple[int, ...] | None:
        """The next task to compute, or None when there is none (or the view is done)."""
        view = self.view() if self.view is not None else None
        if view is not None:
            for target in self.in_view(view):
                needed = [t for t in (*self.senders(target), target) if t in self.pending]
                if needed:
                    return self._take(needed[0])
            if self.view_only:
                return None
        while self._next < len(self.todo) and self.todo[self._next] not in self.pending:
            self._next += 1
        return self._take(self.todo[self._next]) if self._next < len(self.todo) else None

    def in_view(self, view: View) -> list[tuple[int, ...]]:
        """The tasks whose regions meet the view, in C order."""
        counts, size = self.regions.counts, self.regions.size
        ranges = []
        for a, b, s, c in zip(view.start, view.stop, size, counts):
            lo, hi = max(0, int(a) // s), min(c, math.ceil(int(b) / s))
            if lo >= hi:
                return []
            ranges.append(range(lo, hi))
        images = sorted({t[0] for t in self.todo}) if view.images is None else sorted(view.images)
        return [(n, *r) for n in images for r in itertools.product(*ranges)]

    def _take(self, task: tuple[int, ...]) -> tuple[int, ...]:
        self.pending.discard(task)
        return task
