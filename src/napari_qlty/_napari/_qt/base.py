"""What every napari-qlty widget shares: layer pickers that follow the viewer, timers
that die with the widget, and a status line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, Label, TextEdit

from .._common import ERROR_STYLE, OK_STYLE

if TYPE_CHECKING:
    import napari

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
        super().__init__(scrollable=True, **kwargs)
        self._fit_width = _FitWidth(self.root_native_widget)
        # fields stay at the top of a tall dock (the widgets added later go before it)
        self.root_native_widget.widget().layout().addStretch(1)
        self._viewer = viewer
        self._connections: list[tuple] = []
        events = viewer.layers.events
        self.connect_to(events.inserted, self._on_layers_changed)
        self.connect_to(events.removed, self._on_layers_changed)
        self.connect_to(events.moved, self._on_layers_changed)
        self.connect_to(events.inserted, self._watch_name)
        for layer in viewer.layers:
            self.connect_to(layer.events.name, self._on_layers_changed)
        connections = self._connections
        self.native.destroyed.connect(lambda *_: _disconnect_all(connections))

    def connect_to(self, emitter, callback) -> None:
        """Connect ``callback`` to a viewer or layer event; undone when the widget is destroyed."""
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def timer(self, interval_ms: int, callback):
        """A single-shot QTimer owned by this widget (it dies with the widget)."""
        from qtpy.QtCore import QTimer

        t = QTimer(self.native)
        t.setSingleShot(True)
        t.setInterval(interval_ms)
        t.timeout.connect(callback)
        return t

    @property
    def native(self):
        """The scroll area around the fields. napari docks ``.native``: a widget taller
        than its share of the dock column then scrolls, instead of stretching the
        window past the bottom of the screen when several widgets are open."""
        return self.root_native_widget

    @property
    def viewer(self) -> napari.viewer.Viewer:
        return self._viewer

    def _watch_name(self, event) -> None:
        self.connect_to(event.value.events.name, self._on_layers_changed)

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


def form(*widgets) -> Container:
    """Labelled fields, one per row (the widget around them spans the full width)."""
    box = Container(labels=True)
    box.margins = (0, 0, 0, 0)
    box.extend(widgets)  # (inserting aligns the labels' column)
    return box


def _FitWidth(scroll):
    """Keep ``scroll`` (a vertical QScrollArea) as wide as its content's minimum plus the
    scroll bar, whatever style napari applies later: a scroll area never scrolls
    sideways here, so anything narrower would cut the fields' right edge off."""
    from qtpy.QtCore import QEvent, QObject

    class Filter(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
                bar = scroll.verticalScrollBar().sizeHint().width()
                scroll.setMinimumWidth(obj.minimumSizeHint().width() + bar + 2 * scroll.frameWidth())
            return False

    f = Filter(scroll)
    scroll.widget().installEventFilter(f)
    return f


def _disconnect_all(connections: list[tuple]) -> None:
    for emitter, callback in connections:
        try:
            emitter.disconnect(callback)
        except Exception:  # noqa: BLE001 - the emitter may be gone already
            pass
    connections.clear()


def status_label(selectable: bool = True) -> Label:
    """A multi-line text that takes the widget's full width and wraps inside it."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value="")
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
    label.native.setMinimumWidth(120)
    if selectable:
        label.native.setTextInteractionFlags(label.native.textInteractionFlags() | _selectable_flag())
    return label


def _selectable_flag():
    from qtpy.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse


def set_status(label: Label, text: str, error: bool = False) -> None:
    label.value = text
    label.native.setStyleSheet(ERROR_STYLE if error else OK_STYLE)
    label.tooltip = text if error else ""


def hint_label() -> Label:
    """A small wrapping line under a field (e.g. the default path it will use)."""
    label = Label(value="")
    label.native.setWordWrap(True)
    return label


def report_box(min_height: int = 190) -> TextEdit:
    """A read-only, unwrapped, monospace text box for tables (copyable)."""
    box = TextEdit(value="")
    box.native.setReadOnly(True)
    box.native.setLineWrapMode(box.native.LineWrapMode.NoWrap)
    box.native.setMinimumHeight(min_height)
    monospace(box)
    return box


def monospace(widget) -> None:
    from qtpy.QtGui import QFontDatabase

    widget.native.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))


def collapsible(title: str, content: Container, expanded: bool = False) -> Container:
    """``content`` under a header that folds it away: rarely changed settings stay out of
    sight, so the widget fits a laptop screen."""
    from superqt import QCollapsible

    box = QCollapsible(title)
    box.addWidget(content.native)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    holder = Container(labels=False)
    holder.margins = (0, 0, 0, 0)
    holder.native.layout().addWidget(box)
    holder.collapsible = box
    return holder
