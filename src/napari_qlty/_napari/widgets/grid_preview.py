"""Grid preview: see where the windows and their seams fall before anything is run.

The widget reads only the image layer's shape, scale and translation (never its data),
builds a :class:`napari_qlty.Grid`, and draws two Shapes layers: the outlines of the
windows that cross the current slice (boxes in the 3D view) and the seams, where
neighbouring windows hand over (``Grid.seams()``, purple as in the paper's Figure 2).
With a labels layer chosen it also says which windows an export would keep
(:func:`napari_qlty.core.pairs.select_windows`), computed off the GUI thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, Container, FloatSpinBox, SpinBox
from napari.layers import Labels
from napari.utils.colormaps.standardize_color import transform_color

from ...core.grid import Grid
from ...core.labels import OURS, LabelView
from ...core.pairs import select_windows
from ...core.weights import Weighting, WindowWeights
from ...io.labels_store import class_names
from .._common import (
    DROPPED_COLOR,
    SEAM_COLOR,
    WINDOW_COLORS,
    Failed,
    error_text,
    join_counts,
    level0,
    spatial_shape,
    thousands,
)
from .._qt.base import ViewerWidget, form, monospace, set_status, status_label
from ..fields import GridFields

if TYPE_CHECKING:
    import napari

#: above this many outlines the preview draws none (napari gets slow) and says so
MAX_SHAPES = 4000

AXIS_NAMES = {1: "x", 2: "yx", 3: "zyx", 4: "tzyx"}


class GridPreviewWidget(ViewerWidget):
    """Preview the tiling of an image layer: window outlines, seams and a summary."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        self.fields = GridFields(self, copy=False, image_tip="The volume to tile (only its shape is used)")
        self.image_combo = self.fields.image_combo
        self.window_edit, self.step_edit, self.border_edit = self.fields.edits
        self.border_weight_spin = FloatSpinBox(
            value=1.0, min=0.0, max=1.0, step=0.05, label="border weight",
            tooltip="Weight of the border band when windows are blended (0: ignored, 1: full)",
        )
        self.labels_combo = self.layer_combo(
            Labels, "labels", optional=True,
            tooltip="Sparse labels (0 = unlabelled): shows which windows an export keeps",
        )
        self.min_labelled_spin = SpinBox(
            value=1, min=1, max=1_000_000_000, label="min labelled",
            tooltip="An export keeps windows with at least this many labelled voxels",
        )
        self.show_windows_check = CheckBox(value=True, text="show windows")
        self.show_seams_check = CheckBox(value=True, text="show seams")
        toggles = Container(widgets=[self.show_windows_check, self.show_seams_check], layout="horizontal", labels=False)
        toggles.margins = (0, 0, 0, 0)
        self.summary_label = status_label()
        monospace(self.summary_label)
        self.extend([
            form(*self.fields.widgets, self.border_weight_spin, self.labels_combo, self.min_labelled_spin),
            toggles, self.summary_label,
        ])

        #: the grid currently shown (None when the fields are invalid)
        self.grid: Grid | None = None
        #: flat indices of the windows an export keeps, and the statistics (with labels)
        self.kept: np.ndarray | None = None
        self.stats = None
        self.windows_layer = None
        self.seams_layer = None
        self.crossing: np.ndarray = np.zeros(0, dtype=np.int64)
        self._selection_key = None
        self._selection_worker = None
        self._labels_version = 0
        self._watched_labels = None
        self._message = ""
        self._warning = ""
        self._draw_key = None

        self._timer = self.timer(25, self.refresh)
        for w in (self.image_combo, self.window_edit, self.step_edit, self.border_edit,
                  self.border_weight_spin, self.labels_combo, self.min_labelled_spin,
                  self.show_windows_check, self.show_seams_check):
            w.changed.connect(self._schedule)
        dims = viewer.dims.events
        self.connect_to(dims.current_step, self._schedule)
        self.connect_to(dims.ndisplay, self._schedule)
        self.connect_to(dims.order, self._schedule)
        self.connect_to(viewer.layers.events.removed, self._on_layer_removed)
        self._schedule()

    # -- scheduling -------------------------------------------------------------------
    def _schedule(self, *_) -> None:
        try:
            self._timer.start()
        except RuntimeError:  # Qt object deleted while the viewer closes
            pass

    def _on_layer_removed(self, event) -> None:
        if event.value is self.windows_layer:
            self.windows_layer = None
        if event.value is self.seams_layer:
            self.seams_layer = None

    # -- the update -------------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the grid from the fields and redraw (called on every change)."""
        self._timer.stop()
        image = self.image_combo.value
        self._watch_labels(self.labels_combo.value)
        if image is None:
            self.grid = None
            self._clear_shapes()
            set_status(self.summary_label, "Choose an image layer to preview its grid.")
            return
        try:
            grid = self.fields.grid(image)
            if self.fields.each_time_point(image):  # drawn on the layer's axes: one time point deep
                grid = Grid((spatial_shape(image)[0], *grid.shape), (1, *grid.window), (1, *grid.step),
                            (0, *grid.border), axes="t" + grid.axes, pad_advice=None)
        except (ValueError, TypeError) as e:
            self.grid = None
            self._clear_shapes()
            set_status(self.summary_label, error_text(e), error=True)
            return
        try:
            WindowWeights(grid, Weighting("border", border_weight=float(self.border_weight_spin.value)))
            self._warning = ""
        except ValueError as e:
            self._warning = "Warning: " + error_text(e)
        if grid != self.grid:
            self.kept, self.stats = None, None
        self.grid = grid
        self.fields.remember()
        self._start_selection(grid)
        try:
            self._draw(image, grid)
        except Exception as e:  # drawing must never take the summary (or the viewer) down
            self._clear_shapes()
            self._message = f"could not draw the windows: {error_text(e)}"
        self._write_summary(image, grid)

    def _draw(self, image, grid: Grid) -> None:
        viewer = self._viewer
        if grid.ndim < 2:
            self._clear_shapes()
            self._message = "(1D: nothing to draw)"
            return
        if image.ndim < viewer.dims.ndisplay:  # napari cannot add 2D shapes in a 3D view
            self._clear_shapes()
            self._message = "(a 2D image: its windows are drawn in the 2D view)"
            return
        offset = viewer.dims.ndim - image.ndim
        displayed = [d - offset for d in viewer.dims.displayed if d - offset >= 0]
        point = np.asarray(image.world_to_data(np.asarray(viewer.dims.point)[offset:]), dtype=float)
        index = np.clip(np.round(point).astype(np.int64), 0, np.asarray(grid.shape) - 1)
        origins = grid.origins()
        window = np.asarray(grid.window)
        hidden = [a for a in range(grid.ndim) if a not in displayed]
        crossing = np.ones(len(origins), dtype=bool)
        for a in hidden:
            crossing &= (origins[:, a] <= index[a]) & (index[a] < origins[:, a] + window[a])
        self.crossing = np.nonzero(crossing)[0]
        # shapes are drawn at 0 on the hidden axes and moved onto the slice by the layers'
        # translation: moving through slices inside the same windows redraws nothing
        shift = np.asarray(image.translate, dtype=float).copy()
        for a in hidden:
            shift[a] += index[a] * float(image.scale[a])
        key = (
            grid, tuple(displayed), self.crossing.tobytes(), image.name,
            None if self.kept is None else self.kept.tobytes(),
            bool(self.show_windows_check.value), bool(self.show_seams_check.value),
            tuple(image.scale), tuple(image.translate),
        )
        layers_alive = all(
            layer is not None and layer in viewer.layers for layer in (self.windows_layer, self.seams_layer)
        )
        if layers_alive and key == self._draw_key:
            for layer in (self.windows_layer, self.seams_layer):
                layer.translate = shift
            return
        self._draw_key = key
        zero = np.zeros(grid.ndim, dtype=np.int64)
        three_d = len(displayed) == 3
        extent = max(grid.shape[a] for a in displayed)
        width = max(0.4, extent / 300)

        windows, window_colors = [], []
        self._message = ""
        if self.show_windows_check.value:
            if len(self.crossing) > MAX_SHAPES:
                self._message = f"{thousands(len(self.crossing))} windows: too many to draw"
            else:
                for i in self.crossing:
                    lo = origins[i] - 0.5
                    hi = origins[i] + window - 0.5
                    windows.append(_box(lo, hi, zero, displayed) if three_d else _rectangle(lo, hi, zero, displayed))
                    window_colors.append(self._window_color(int(i)))
        seams = []
        if self.show_seams_check.value:
            seam_values = grid.seams()
            for a in displayed:
                others = [b for b in displayed if b != a]
                for m in seam_values[a]:
                    if three_d:
                        seams.append(_plane(a, m - 0.5, others, grid.shape, zero))
                    else:
                        seams.append(_line(a, m - 0.5, others[0], grid.shape, zero))
        # outlines lie on the voxels' edges, but never outside the image's own extent (a
        # shape past it would widen the viewer's ranges and shift the sliders by half a voxel)
        top = np.asarray(grid.shape, dtype=float) - 1
        windows = [np.clip(w, 0, top) for w in windows]
        seams = [np.clip(w, 0, top) for w in seams]
        self.windows_layer = self._set_shapes(
            self.windows_layer, f"{image.name} · windows", image, shift, windows,
            "path" if three_d else "rectangle", window_colors, width,
        )
        self.seams_layer = self._set_shapes(
            self.seams_layer, f"{image.name} · seams", image, shift, seams,
            "path" if three_d else "line", [to_rgba(SEAM_COLOR)] * len(seams), width * 1.6,
        )

    def _window_color(self, i: int):
        if self.kept is not None:
            if not np.isin(i, self.kept):
                return DROPPED_COLOR
        return to_rgba(WINDOW_COLORS[_checker(self.grid, i) % len(WINDOW_COLORS)])

    def _set_shapes(self, layer, name, image, shift, data, shape_type, colors, width):
        from napari.layers import Shapes

        if layer is not None and layer in self._viewer.layers and layer.ndim != image.ndim:
            self._viewer.layers.remove(layer)  # another image's axes: a new layer, not a reshaped one
            layer = None
        if layer is None or layer not in self._viewer.layers:
            layer = Shapes(
                ndim=image.ndim, name=name, scale=image.scale, translate=shift,
                face_color="transparent", edge_color="white", opacity=1.0, blending="translucent_no_depth",
            )
            layer.editable = False
            active = self._viewer.layers.selection.active
            self._viewer.add_layer(layer)
            self._viewer.layers.selection.active = active if active is not None else image
        else:
            layer.name = name
            layer.scale = image.scale
            layer.translate = shift
            layers = self._viewer.layers
            if layers.index(layer) < layers.index(image):  # an image opened later would hide it
                layers.move(layers.index(layer), len(layers))
        layer.data = []
        if data:
            layer.add(
                data, shape_type=shape_type, edge_width=width, edge_color=np.asarray(colors, dtype=float),
                face_color="transparent",
            )
        return layer

    def _clear_shapes(self) -> None:
        self._draw_key = None
        self.crossing = np.zeros(0, dtype=np.int64)
        for layer in (self.windows_layer, self.seams_layer):
            if layer is not None and layer in self._viewer.layers and len(layer.data):
                layer.data = []

    # -- summary ------------------------------------------------------------------------
    def _write_summary(self, image, grid: Grid) -> None:
        names = grid.axes or AXIS_NAMES.get(grid.ndim, "")
        lines = [
            f"windows  {join_counts(grid.counts)} = {thousands(len(grid))}"
            + (f"  ({' × '.join(names)})" if names else ""),
            f"window   {join_counts(grid.window)}, step {join_counts(grid.step)}, border {join_counts(grid.border)}",
            f"duplication {grid.duplication:.2f}×  (windows' voxels / image voxels)",
        ]
        if grid.ndim >= 2:
            hidden = len(grid.shape) - len(
                [d for d in self._viewer.dims.displayed if d - (self._viewer.dims.ndim - image.ndim) >= 0]
            )
            if hidden > 0:
                lines.append(f"this slice: {thousands(len(self.crossing))} windows cross it")
            lines.append("seams    " + join_counts(len(s) for s in grid.seams()) + "  (purple lines)")
        labels = self.labels_combo.value
        if labels is not None:
            if tuple(level0(labels).shape) != tuple(grid.shape):
                lines.append(f"labels {tuple(level0(labels).shape)} do not match the image {grid.shape}")
            elif self.stats is None:
                lines.append("export: counting labelled voxels…")
            else:
                s = self.stats
                names_of = class_names(labels)
                per_class = " · ".join(
                    f"{names_of.get(int(c) + 1, f'class {int(c) + 1}')} {thousands(n)}"
                    for c, n in sorted(s.labelled_voxels.items())
                )
                lines.append(
                    f"export keeps {thousands(s.kept_windows)} of {thousands(s.total_windows)} windows"
                    f" (≥ {int(self.min_labelled_spin.value)} labelled voxel"
                    f"{'s' if self.min_labelled_spin.value != 1 else ''}; grey: dropped)"
                )
                lines.append(f"labelled {thousands(s.total_labelled)} voxels: {per_class or 'none'}")
        if self._message:
            lines.append(self._message)
        if self._warning:
            lines.append(self._warning)
        set_status(self.summary_label, "\n".join(lines), error=bool(self._warning))

    # -- which windows an export keeps ----------------------------------------------------------
    def _watch_labels(self, layer) -> None:
        if layer is self._watched_labels:
            return
        if self._watched_labels is not None:
            for ev in (self._watched_labels.events.paint, self._watched_labels.events.reload):
                try:
                    ev.disconnect(self._on_labels_edited)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self._watched_labels = layer
        if layer is not None:
            self.connect_to(layer.events.paint, self._on_labels_edited)
            self.connect_to(layer.events.reload, self._on_labels_edited)

    def _on_labels_edited(self, event=None) -> None:
        self._labels_version += 1
        self._schedule()

    def _start_selection(self, grid: Grid) -> None:
        from napari.qt.threading import create_worker

        labels = self.labels_combo.value
        if labels is None:
            self.kept, self.stats, self._selection_key = None, None, None
            return
        data = level0(labels)
        if tuple(data.shape) != tuple(grid.shape):
            self.kept, self.stats, self._selection_key = None, None, None
            return
        key = (id(labels), grid, int(self.min_labelled_spin.value), self._labels_version)
        if key == self._selection_key:
            return
        self._selection_key = key
        self.kept, self.stats = None, None
        min_labelled = int(self.min_labelled_spin.value)

        def run():
            try:
                kept, stats = select_windows(LabelView(data, OURS, add_image_axis=True), grid, min_labelled=min_labelled)
            except Exception as e:  # shown by the widget
                return key, Failed(e), None
            return key, kept, stats

        worker = create_worker(run, _start_thread=False)
        worker.returned.connect(self._selection_done)
        worker.errored.connect(self._selection_failed)
        self._selection_worker = worker
        worker.start()

    def _selection_done(self, result) -> None:
        key, kept, stats = result
        if key != self._selection_key:
            return  # parameters changed meanwhile; a newer count is running
        if isinstance(kept, Failed):
            self._selection_failed(kept.error)
            return
        self.kept, self.stats = kept, stats
        image = self.image_combo.value
        if image is not None and self.grid is not None:
            self._draw(image, self.grid)
            self._write_summary(image, self.grid)

    def _selection_failed(self, exc) -> None:
        self._selection_key = None
        set_status(self.summary_label, f"Could not count labelled voxels: {error_text(exc)}", error=True)

    @property
    def selection_running(self) -> bool:
        w = self._selection_worker
        return w is not None and w.is_running


def to_rgba(color) -> tuple[float, float, float, float]:
    return tuple(float(c) for c in transform_color(color)[0])


def _checker(grid: Grid, i: int) -> int:
    """A colour index that differs between neighbouring windows."""
    position = np.unravel_index(i % len(grid), grid.counts)
    return int(sum(int(p) * (k + 1) for k, p in enumerate(position)))


def _vertex(index, displayed, values) -> np.ndarray:
    v = np.asarray(index, dtype=float).copy()
    for a, x in zip(displayed, values):
        v[a] = x
    return v


def _rectangle(lo, hi, index, displayed) -> np.ndarray:
    a, b = displayed
    corners = [(lo[a], lo[b]), (lo[a], hi[b]), (hi[a], hi[b]), (hi[a], lo[b])]
    return np.stack([_vertex(index, (a, b), c) for c in corners])


def _box(lo, hi, index, displayed) -> np.ndarray:
    """The 12 edges of a box as one path (three vertical edges are drawn twice, never
    straight back, which would give the 3D path zero-length tangents)."""
    a, b, c = displayed
    corner = {
        k: (hi[a] if k[0] else lo[a], hi[b] if k[1] else lo[b], hi[c] if k[2] else lo[c])
        for k in ((i, j, m) for i in (0, 1) for j in (0, 1) for m in (0, 1))
    }
    order = [(0, 0, 0), (1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1),
             (1, 0, 1), (1, 0, 0), (1, 1, 0), (1, 1, 1), (0, 1, 1), (0, 1, 0), (0, 0, 0), (0, 0, 1)]
    return np.stack([_vertex(index, displayed, corner[k]) for k in order])


def _line(axis, value, other, shape, index) -> np.ndarray:
    return np.stack([
        _vertex(index, (axis, other), (value, -0.5)),
        _vertex(index, (axis, other), (value, shape[other] - 0.5)),
    ])


def _plane(axis, value, others, shape, index) -> np.ndarray:
    b, c = others
    lo_b, hi_b, lo_c, hi_c = -0.5, shape[b] - 0.5, -0.5, shape[c] - 0.5
    corners = [(lo_b, lo_c), (lo_b, hi_c), (hi_b, hi_c), (hi_b, lo_c), (lo_b, lo_c)]
    return np.stack([_vertex(index, (axis, b, c), (value, y, x)) for y, x in corners])
