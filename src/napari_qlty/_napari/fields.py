"""The fields every grid widget shows: image (and labels) pickers, window, step, border.

One :class:`GridFields` builds them with the same names, defaults and tooltips in every
widget, turns what was typed into a :class:`~napari_qlty.Grid`, and lets the widget copy
the Grid preview's last settings.
"""

from __future__ import annotations

from magicgui.widgets import LineEdit, PushButton
from napari.layers import Image, Labels

from ..core.grid import Grid
from ._common import parse_per_axis

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
        self.window_edit = LineEdit(value=window, label="window", tooltip=tips["window"])
        self.step_edit = LineEdit(value=step, label="step", tooltip=tips["step"])
        self.border_edit = LineEdit(value=border, label="border", tooltip=tips["border"])

    @property
    def widgets(self) -> list:
        """The fields in the order a form shows them."""
        out = [self.image_combo]
        if self.labels_combo is not None:
            out.append(self.labels_combo)
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

    def values(self, ndim: int) -> tuple:
        """(window, step, border) as typed, each an int or one int per axis."""
        return tuple(parse_per_axis(edit.value, edit.label, ndim) for edit in self.edits)

    def grid(self, shape, **kwargs) -> Grid:
        """The grid these fields describe over ``shape`` (errors name the fields)."""
        return Grid(shape, *self.values(len(shape)), **kwargs)
