"""Sparse labelling: a Labels layer saved on disk as you paint, with named classes.

The layer's data is a zarr array in a folder you choose (by default in the temporary
folder), matching the image's shape, scale and translation. napari writes each brush
stroke into the array's chunks, so nothing needs saving. Label 0 means "unlabelled";
1, 2, ... are the classes you name ("background, filament"). The widget shows how many
voxels of each class are labelled, refreshed after every stroke.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import FileEdit, LineEdit, PushButton
from napari.layers import Image, Labels

from ...io import labels_store as store
from .._common import (
    Failed,
    default_path,
    error_text,
    join_counts,
    level0,
    notify_error,
    resolve_path,
    spatial_shape,
    thousands,
)
from .._qt.base import ViewerWidget, form, hint_label, monospace, set_status, status_label

if TYPE_CHECKING:
    import napari


class LabellingWidget(ViewerWidget):
    """Create (or reopen) a zarr-backed Labels layer for an image and count its labels."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        self.image_combo = self.layer_combo(Image, "image", tooltip="The image to label")
        self.classes_edit = LineEdit(
            value="background, filament", label="classes",
            tooltip="Class names, comma separated: the first is label 1, the next label 2, ... "
                    "(0 is always 'unlabelled'). Can be renamed at any time.",
        )
        self.start_combo = self.layer_combo(
            Labels, "start from", optional=True,
            tooltip="Copy an existing labels layer (0 = unlabelled) into the new one",
        )
        self.path_edit = FileEdit(
            mode="w", label="save to", filter="*.zarr",
            tooltip="Folder (.zarr) where the labels are saved as you paint. "
                    "An existing napari-qlty labels folder is reopened.",
        )
        self.path_hint = hint_label()
        self.create_button = PushButton(text="Create labels layer")
        self.recount_button = PushButton(text="Recount")
        self.counts_label = status_label()
        monospace(self.counts_label)
        self.status = status_label()
        self.extend([
            form(self.image_combo, self.classes_edit, self.start_combo, self.path_edit, self.path_hint),
            self.create_button, self.counts_label, self.recount_button, self.status,
        ])

        #: the layer this widget made (None before "Create")
        self.labels_layer: Labels | None = None
        self.array = None
        self.path: Path | None = None
        #: voxels per label value, as last counted
        self.counts: np.ndarray | None = None
        self._count_worker = None
        self._count_again = False

        self._count_timer = self.timer(250, self.recount)
        self._names_timer = self.timer(400, self._apply_class_names)

        self.create_button.changed.connect(self.create)
        self.recount_button.changed.connect(self.recount)
        self.classes_edit.changed.connect(lambda *_: self._names_timer.start())
        self.image_combo.changed.connect(self._update_hint)
        self.path_edit.changed.connect(self._update_hint)
        self.connect_to(viewer.layers.events.removed, self._on_layer_removed)
        self._update_hint()

    # -- creating -------------------------------------------------------------------------
    def _update_hint(self, *_) -> None:
        image = self.image_combo.value
        if str(self.path_edit.value).strip() in ("", "."):
            name = image.name if image is not None else "image"
            self.path_hint.value = f"(default: {default_path(name, 'labels')})"
        else:
            self.path_hint.value = ""

    def create(self, *_) -> Labels | None:
        """Create the zarr array and its Labels layer (or reopen the array if it exists)."""
        try:
            return self._create()
        except Exception as e:  # shown to the user, never swallowed silently
            set_status(self.status, f"Could not create the labels: {error_text(e)}", error=True)
            notify_error(e)
            return None

    def _create(self) -> Labels:
        image = self.image_combo.value
        if image is None:
            raise ValueError("choose an image layer first")
        if getattr(image, "rgb", False):
            raise ValueError("RGB images are not supported for labelling; convert to greyscale first")
        shape = spatial_shape(image)
        names = store.parse_class_names(self.classes_edit.value)
        classes = store.classes_dict(names)
        path = resolve_path(self.path_edit.value, image.name, "labels")
        start = self.start_combo.value
        if start is not None and tuple(level0(start).shape) != shape:
            raise ValueError(
                f"'start from' layer {start.name!r} is {join_counts(level0(start).shape)} but the image is "
                f"{join_counts(shape)}: choose labels drawn on this image"
            )
        reopened = False
        if path.exists():
            meta = store.read_meta(path)
            if meta is None:
                raise ValueError(
                    f"{path} exists and is not a napari-qlty labels folder; it is left untouched "
                    f"(choose another path)"
                )
            array = store.open_existing(path)
            if tuple(array.shape) != shape:
                raise ValueError(
                    f"{path} holds labels of shape {tuple(array.shape)}, but the image is {shape} "
                    f"(choose another path)"
                )
            stored = store.stored_classes(meta)
            if stored:
                classes = stored
                self.classes_edit.value = ", ".join(stored[k] for k in sorted(stored))
            reopened = True
        else:
            array = store.create(path, shape, classes, scale=image.scale, translate=image.translate)
            if start is not None:
                self._copy_from(start, array)
        self._release_layer()
        self.array, self.path = array, path
        layer = self._viewer.add_labels(
            array, name=f"{image.name} labels", scale=image.scale, translate=image.translate,
            features=store.features_table(classes), opacity=0.8,
        )
        layer.selected_label = 1
        layer.brush_size = max(3, int(round(max(shape[-2:]) / 60)))
        self.connect_to(layer.events.paint, self._schedule_count)
        self.connect_to(layer.events.reload, self._schedule_count)
        self.labels_layer = layer
        self._viewer.layers.selection.active = layer
        what = "Reopened" if reopened else "Created"
        ignored = (
            f"\n'start from' ({start.name}) was not copied: {path} already holds labels, which were "
            "reopened; choose another path to start from it."
            if reopened and start is not None else ""
        )
        set_status(
            self.status,
            f"{what} {path}\nPaint with label 1 ({classes.get(1, '')})"
            + (f", 2 ({classes[2]})" if 2 in classes else "")
            + "… Strokes are saved to disk as you paint." + ignored,
        )
        self.recount()
        return layer

    def _copy_from(self, source_layer, array) -> None:
        data = level0(source_layer)
        if tuple(data.shape) != tuple(array.shape):
            raise ValueError(
                f"'start from' layer {source_layer.name!r} has shape {tuple(data.shape)} but the image "
                f"is {tuple(array.shape)}"
            )
        step = array.chunks[0]
        for r0 in range(0, array.shape[0], step):
            block = np.asarray(data[r0 : r0 + step])
            if block.min(initial=0) < 0:
                raise ValueError(f"'start from' layer {source_layer.name!r} holds negative labels")
            array[r0 : r0 + step] = block.astype(array.dtype)

    def _release_layer(self) -> None:
        layer = self.labels_layer
        if layer is not None:
            for ev in (layer.events.paint, layer.events.reload):
                try:
                    ev.disconnect(self._schedule_count)
                except (TypeError, ValueError, RuntimeError):
                    pass
        self.labels_layer = None

    def _on_layer_removed(self, event) -> None:
        if event.value is self.labels_layer:
            self._release_layer()
            self.counts_label.value = ""

    # -- class names ------------------------------------------------------------------------
    def _apply_class_names(self) -> None:
        layer = self.labels_layer
        if layer is None or self.array is None:
            return
        try:
            classes = store.classes_dict(store.parse_class_names(self.classes_edit.value))
        except ValueError as e:
            set_status(self.status, error_text(e), error=True)
            return
        layer.features = store.features_table(classes)
        store.write_meta(store.open_existing(self.path), classes)
        self._show_counts()

    # -- counting ---------------------------------------------------------------------------
    def _schedule_count(self, *_) -> None:
        try:
            self._count_timer.start()
        except RuntimeError:
            pass

    def recount(self, *_) -> None:
        """Count labelled voxels per class off the GUI thread; the label updates when done."""
        from napari.qt.threading import create_worker

        layer = self.labels_layer
        if layer is None:
            return
        if self._count_worker is not None and self._count_worker.is_running:
            self._count_again = True
            return
        data = level0(layer)
        worker = create_worker(_count, data, _start_thread=False)
        worker.returned.connect(self._counted)
        worker.errored.connect(lambda e: set_status(self.status, f"Counting failed: {error_text(e)}", error=True))
        worker.finished.connect(self._count_finished)
        self._count_worker = worker
        worker.start()

    def _counted(self, counts) -> None:
        if isinstance(counts, Failed):
            set_status(self.status, f"Counting failed: {error_text(counts.error)}", error=True)
            return
        self.counts = counts
        self._show_counts()

    def _count_finished(self) -> None:
        self._count_worker = None
        if self._count_again:
            self._count_again = False
            self.recount()

    @property
    def counting(self) -> bool:
        return self._count_worker is not None

    def _show_counts(self) -> None:
        if self.counts is None or self.labels_layer is None:
            return
        counts = self.counts
        names = store.class_names(self.labels_layer)
        total_voxels = int(np.prod(self.labels_layer.data.shape, dtype=np.int64))
        values = sorted(set(names) | {i for i in range(1, len(counts)) if counts[i]})
        width = max([len(names.get(v, f"label {v}")) for v in values] + [14])
        rows = [f"{'class':<{width + 3}} {'voxels':>12}"]
        for v in values:
            n = int(counts[v]) if v < len(counts) else 0
            rows.append(f"{v:>2} {names.get(v, f'label {v}'):<{width}} {thousands(n):>12}")
        labelled = int(counts[1:].sum())
        share = 100.0 * labelled / total_voxels if total_voxels else 0.0
        rows.append(f"{'labelled':<{width + 3}} {thousands(labelled):>12}  ({share:.3f} %)")
        self.counts_label.value = "\n".join(rows)


def _count(data):
    try:
        return store.count_labels(data)
    except Exception as e:  # shown by the widget
        return Failed(e)
