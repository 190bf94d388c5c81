"""The fields every grid widget shows: image (and labels) pickers, window, step, border,
and for a time-lapse whether time points run one by one.

One :class:`GridFields` builds them with the same names, defaults and tooltips in every
widget, turns what was typed into a :class:`~napari_qlty.Grid` (messages name the fields
and the image's axes: "window along z"), opens the image as the engine reads it, and
lets the widget copy the Grid preview's last settings.
"""

from __future__ import annotations

from magicgui.widgets import ComboBox, LineEdit, PushButton
from napari.layers import Image, Labels

from ..core.grid import Grid
from ..core.labels import OURS, LabelView
from ..io.sources import Source, open_source
from ._common import join_counts, level0, parse_per_axis, source_axes, spatial_shape

EACH_TIME_POINT = "each on its own"
ACROSS_TIME = "windows span time"

#: the grid parameters last shown by the grid preview: {"window": str, "step": str, "border": str}
LAST_GRID: dict[str, str] = {}

TIPS = {
    "window": "Window size in voxels: one number for all axes, or one per axis",
    "step": "Distance between neighbouring windows, one number or one per axis; "
            "step < window makes them overlap",
    "border": "Band at each window's edge whose predictions are trusted less",
}


class GridFields:
    """Image and labels pickers and window/step/border fields, owned by ``widget``.

    ``labels``: None (no labels picker), ``"required"`` or ``"optional"``. ``copy``: add
    the "Use grid preview settings" button. ``tips`` override the default tooltips.
    """

    def __init__(
        self,
        widget,
        *,
        window: str = "64",
        step: str = "48",
        border: str = "8",
        labels: str | None = None,
        copy: bool = True,
        image_tip: str = "The image",
        labels_tip: str = "Sparse labels of the image (0 = unlabelled, 1.. = classes)",
        tips: dict[str, str] | None = None,
    ) -> None:
        tips = {**TIPS, **(tips or {})}
        self.image_combo = widget.layer_combo(Image, "image", tooltip=image_tip)
        self.labels_combo = (
            widget.layer_combo(Labels, "labels", optional=labels == "optional", tooltip=labels_tip)
            if labels else None
        )
        self.copy_button = None
        if copy:
            self.copy_button = PushButton(text="Use grid preview settings")
            self.copy_button.tooltip = "Copy window, step and border from the Grid preview widget"
            self.copy_button.changed.connect(self.copy_from_preview)
        self.time_combo = ComboBox(
            label="time points", choices=[EACH_TIME_POINT, ACROSS_TIME], value=EACH_TIME_POINT, visible=False,
            tooltip="For a time-lapse: run a 2D or 3D model on every time point, or tile time too (4D windows)",
        )
        self.window_edit = LineEdit(value=window, label="window", tooltip=tips["window"])
        self.step_edit = LineEdit(value=step, label="step", tooltip=tips["step"])
        self.border_edit = LineEdit(value=border, label="border", tooltip=tips["border"])
        self.image_combo.changed.connect(self._show_time)
        self._show_time()

    @property
    def widgets(self) -> list:
        """The fields in the order a form shows them."""
        out = [self.image_combo]
        if self.labels_combo is not None:
            out.append(self.labels_combo)
        out.append(self.time_combo)
        if self.copy_button is not None:
            out.append(self.copy_button)
        return out + [self.window_edit, self.step_edit, self.border_edit]

    @property
    def edits(self) -> tuple:
        return self.window_edit, self.step_edit, self.border_edit

    def copy_from_preview(self, *_) -> None:
        for name, edit in zip(("window", "step", "border"), self.edits):
            if name in LAST_GRID:
                edit.value = LAST_GRID[name]

    def remember(self) -> None:
        """Make these settings the ones other widgets copy."""
        LAST_GRID.update(window=self.window_edit.value, step=self.step_edit.value, border=self.border_edit.value)

    def _show_time(self, *_) -> None:
        layer = self.image_combo.value
        try:
            self.time_combo.visible = layer is not None and "t" in source_axes(layer)
        except (ValueError, RuntimeError):
            self.time_combo.visible = False

    def each_time_point(self, layer) -> bool:
        """True when the image has a time axis and its time points run one by one."""
        return "t" in source_axes(layer) and self.time_combo.value == EACH_TIME_POINT

    def tiled_axes(self, layer) -> str:
        """The axes the windows tile, in the image's order (t left out when each time point runs alone)."""
        axes = source_axes(layer).replace("c", "")
        return axes.replace("t", "") if self.each_time_point(layer) else axes

    def tiled_shape(self, layer, level: int = 0) -> tuple[int, ...]:
        axes = source_axes(layer).replace("c", "")
        shape = spatial_shape(layer, level)
        return tuple(s for a, s in zip(axes, shape) if a in self.tiled_axes(layer))

    def values(self, ndim: int) -> tuple:
        """(window, step, border) as typed, each an int or one int per axis."""
        return tuple(parse_per_axis(edit.value, edit.label, ndim) for edit in self.edits)

    def grid(self, layer, level: int = 0, **kwargs) -> Grid:
        """The grid these fields describe over ``layer``'s tiled axes, at resolution
        ``level`` of a multiscale layer (errors name the fields and the axes)."""
        shape, axes = self.tiled_shape(layer, level), self.tiled_axes(layer)
        return Grid(shape, *self.values(len(shape)), axes=axes, pad_advice=None, **kwargs)

    def labels(self, image, labels) -> LabelView:
        """``labels`` (a Labels layer: 0 = unlabelled, 1.. = classes) as the engine reads
        them, beside ``image``; their shapes must agree."""
        data = level0(labels)
        shape = spatial_shape(image)
        if tuple(data.shape) != shape:
            raise ValueError(
                f"labels layer {labels.name!r} is {join_counts(data.shape)} but image {image.name!r} is "
                f"{join_counts(shape)}: choose labels drawn on this image"
            )
        return LabelView(data, OURS, add_image_axis=not self.each_time_point(image))

    def source(self, layer, level: int = 0) -> Source:
        """The layer's data (at ``level`` of a multiscale layer) as the engine reads it
        (time points as images when they run alone)."""
        src = open_source(level0(layer, level), axes=source_axes(layer))
        return src.time_as_images() if self.each_time_point(layer) else src
