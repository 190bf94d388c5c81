"""What every napari-qlty widget shares: layer pickers that follow the viewer, a status
line, and a shared memory of the last grid parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, Label, PushButton

from ._common import ERROR_STYLE, OK_STYLE

if TYPE_CHECKING:
    import napari

#: the grid parameters last shown by the grid preview: {"window": str, "step": str, "border": str}
LAST_GRID: dict[str, str] = {}


def layer_choices(viewer, layer_type, optional: bool = False):
    """A ``choices`` callable for a ComboBox: the viewer's layers of ``layer_type``."""

    def choices(_widget=None):
        out = [("(none)", None)] if optional else []
        out += [(layer.name, layer) for layer in viewer.layers if isinstance(layer, layer_type)]
        return out

    return choices


class ViewerWidget(Container):
    """A magicgui Container bound to a viewer; layer pickers refresh as layers come and go."""

    def __init__(self, viewer: napari.viewer.Viewer, **kwargs) -> None:
        super().__init__(**kwargs)
        self._viewer = viewer
        events = viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.moved.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        events.inserted.connect(self._watch_name)

    @property
    def viewer(self) -> napari.viewer.Viewer:
        return self._viewer

    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self._on_layers_changed)

    def _on_layers_changed(self, event=None) -> None:
        try:
            self.reset_choices()
        except RuntimeError:  # the Qt widget is gone (viewer closing)
            pass

    def layer_combo(self, layer_type, label: str, optional: bool = False, tooltip: str = "") -> ComboBox:
        combo = ComboBox(
            label=label, choices=layer_choices(self._viewer, layer_type, optional), tooltip=tooltip
        )
        if optional:
            combo.value = None
        return combo


def status_label() -> Label:
    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setTextInteractionFlags(
        label.native.textInteractionFlags() | _selectable_flag()
    )
    return label


def _selectable_flag():
    from qtpy.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse


def set_status(label: Label, text: str, error: bool = False) -> None:
    label.value = text
    label.native.setStyleSheet(ERROR_STYLE if error else OK_STYLE)
    label.tooltip = text if error else ""


def monospace(widget) -> None:
    from qtpy.QtGui import QFontDatabase

    widget.native.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))


def grid_button(target) -> PushButton:
    """A button copying the grid preview's last window, step and border into ``target``."""
    button = PushButton(text="Use grid preview settings")
    button.tooltip = "Copy window, step and border from the Grid preview widget"

    def copy() -> None:
        for name in ("window", "step", "border"):
            if name in LAST_GRID:
                getattr(target, f"{name}_edit").value = LAST_GRID[name]

    button.changed.connect(copy)
    return button
