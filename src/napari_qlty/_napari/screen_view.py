"""The part of an image that is on screen, as the engine's :class:`~napari_qlty.run.view.View`.

A prediction in "current view" mode runs first the regions on screen
(:func:`napari_qlty.iter_predict` with ``view=``). The engine asks for the view after
every region, in its worker thread, where no napari object may be touched; so the view
is computed here on the GUI thread whenever the camera, the dims or the canvas change,
and stored, and the engine's callable returns the stored value.

In 2D the view is the current slice of the axes not displayed (a thick slice if the dims
have margins) and the canvas's extent along the displayed ones; in 3D, the whole extent
of the displayed axes at the current point of the others. Both go through the layer's
world-to-data transform (scale, translate, affine), then to the voxels of the grid the
prediction runs on (a coarser level of a multiscale image, time points as images).
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import TYPE_CHECKING

import numpy as np

from ..run.regions import Regions
from ..run.view import View, ViewOrder
from ._common import source_axes, spatial_shape

if TYPE_CHECKING:
    import napari


def visible_box(viewer: napari.viewer.Viewer, layer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(start, stop)``: the voxels of ``layer``'s full-resolution data on screen, per data
    axis (empty, ``stop <= start`` somewhere, when the canvas shows none of it)."""
    dims = viewer.dims
    ndim = dims.ndim
    point = np.asarray(dims.point, dtype=np.float64)
    lo = point - np.asarray(dims.margin_left, dtype=np.float64)
    hi = point + np.asarray(dims.margin_right, dtype=np.float64)
    displayed = list(dims.displayed)
    shape = np.asarray(spatial_shape(layer), dtype=np.int64)
    if dims.ndisplay == 2:
        camera = viewer.scene.camera
        size = np.asarray(viewer.canvas.viewbox_size(viewer.layers), dtype=np.float64)  # (rows, columns)
        half = size / (2.0 * max(float(camera.zoom), 1e-12))
        centre = np.asarray(camera.center, dtype=np.float64)[-2:]
        lo[displayed] = centre - half
        hi[displayed] = centre + half
    corners = []
    for pick in np.ndindex(*(2,) * ndim):  # every corner of the world box, into the layer's data
        world = np.where(np.asarray(pick, dtype=bool), hi, lo)
        corners.append(np.asarray(layer.world_to_data(world), dtype=np.float64))
    corners = np.stack(corners)
    first, last = corners.min(0), corners.max(0)
    # voxel i covers [i - 0.5, i + 0.5): the voxels the box meets, at least one per axis
    start = np.floor(first + 0.5).astype(np.int64)
    stop = np.maximum(np.ceil(last + 0.5).astype(np.int64), start + 1)
    if dims.ndisplay == 3:  # the whole volume along the displayed axes
        shown = [a - (ndim - layer.ndim) for a in displayed if a >= ndim - layer.ndim]
        start[shown], stop[shown] = 0, shape[shown]
    start, stop = np.clip(start, 0, shape), np.clip(stop, 0, shape)
    return tuple(int(s) for s in start), tuple(int(s) for s in stop)


def grid_view(start, stop, axes: str, tiled: str, factor, grid_shape) -> View:
    """The voxel box ``[start, stop)`` of an image's data (axes ``axes``) as a
    :class:`View` of a grid over the axes ``tiled`` of level ``factor`` (how much coarser
    that level is per data axis); a time axis not tiled picks the images (time points)."""
    images = None
    if "t" in axes and "t" not in tiled:
        t = axes.index("t")
        images = tuple(range(start[t], stop[t]))
    out_start, out_stop = [], []
    for axis, n in zip(tiled, grid_shape):
        i = axes.index(axis)
        f = float(factor[i])
        out_start.append(min(int(n), int(math.floor(start[i] / f))))
        out_stop.append(min(int(n), int(math.ceil(stop[i] / f))))
    return View(tuple(out_start), tuple(out_stop), images)


class ScreenView:
    """The :class:`View` on screen of a run over ``layer``: kept current on the GUI thread,
    read from any thread by calling it.

    ``tiled``: the axes the grid tiles; ``factor``: the level the run reads, per data axis
    (1 at full resolution); ``grid_shape``: the grid's shape.
    """

    def __init__(self, viewer: napari.viewer.Viewer, layer, tiled: str, factor, grid_shape) -> None:
        self.viewer, self.layer = viewer, layer
        self.axes = source_axes(layer).replace("c", "")
        self.tiled, self.factor, self.grid_shape = tiled, tuple(factor), tuple(grid_shape)
        self._lock = threading.Lock()
        self._view = self.compute()
        self._emitters = [viewer.scene.camera.events.center, viewer.scene.camera.events.zoom,
                          viewer.dims.events.point, viewer.dims.events.ndisplay, viewer.dims.events.order,
                          viewer.dims.events.margin_left, viewer.dims.events.margin_right,
                          viewer.canvas.events.size]
        for emitter in self._emitters:
            emitter.connect(self.update)

    def compute(self) -> View:
        start, stop = visible_box(self.viewer, self.layer)
        return grid_view(start, stop, self.axes, self.tiled, self.factor, self.grid_shape)

    def update(self, *_) -> None:
        """Recompute the view (GUI thread: connected to the camera, dims and canvas)."""
        view = self.compute()
        with self._lock:
            self._view = view

    def __call__(self) -> View:
        with self._lock:
            return self._view

    def close(self) -> None:
        """Stop following the viewer (the last view stays)."""
        for emitter in self._emitters:
            try:
                emitter.disconnect(self.update)
            except Exception:  # noqa: BLE001 - the viewer may be gone
                pass
        self._emitters = []


def view_is_empty(view: View) -> bool:
    return any(b <= a for a, b in zip(view.start, view.stop)) or view.images == ()


class ViewProgress:
    """Whether the regions a view needs are final yet, as a run's region events come in."""

    def __init__(self, grid, region_size, n_images: int, finished=()) -> None:
        regions = Regions(grid, tuple(region_size))
        tasks = [(n, *r) for n in range(n_images) for r in itertools.product(*(range(c) for c in regions.counts))]
        self._order = ViewOrder(regions, tasks)
        self.finished = {tuple(t) for t in finished}

    def add(self, task) -> None:
        self.finished.add(tuple(task))

    def covered(self, view: View | None) -> bool:
        """Every region meeting ``view`` is final (False for a view of nothing)."""
        if view is None or view_is_empty(view):
            return False
        needed = self._order.in_view(view)
        return bool(needed) and all(t in self.finished for t in needed)


def view_region(grid) -> tuple[int, ...]:
    """Region (and chunk) size for a run in view mode: half a window per axis, as a power of
    two, so the regions on screen and the windows they wait for stay close to the view
    (whole-window regions would drag in a window's width of neighbours on each side)."""
    out = []
    for w, n in zip(grid.window, grid.shape):
        half = max(1, int(w) // 2)
        out.append(min(int(n), 1 << (half.bit_length() - 1)))
    return tuple(out)
