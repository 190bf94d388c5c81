"""Export training pairs: an image and its sparse labels -> cleaned windows in a zarr folder.

A thin front end to :func:`napari_qlty.io.pairs_store.export_pairs`: the export runs in a
background thread (the viewer stays usable), a progress bar follows it, Cancel stops it
between batches (nothing half-written is left behind), and the paper's Table-2 summary
is shown when it is done. napari's labels (0 = unlabelled, 1.. = classes) become the
engine's classes 0.. with -1 = unlabelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton, SpinBox, TextEdit
from napari.layers import Image, Labels

from ...io.pairs_store import export_pairs
from ...core.grid import Grid
from ...io.sources import open_source
from .._qt.base import ViewerWidget, form, grid_button, monospace, set_status, status_label
from .._common import (
    Failed,
    TrainingLabels,
    default_path,
    error_text,
    format_duration,
    level0,
    notify_error,
    parse_per_axis,
    resolve_path,
    source_axes,
    spatial_shape,
    thousands,
)
from ...io.labels_store import class_names

if TYPE_CHECKING:
    import napari


class ExportWidget(ViewerWidget):
    """Write cleaned training pairs (image windows + label windows) to a zarr folder."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        self.image_combo = self.layer_combo(Image, "image", tooltip="The image to cut into windows")
        self.labels_combo = self.layer_combo(
            Labels, "labels", tooltip="Sparse labels of the image (0 = unlabelled, 1.. = classes)"
        )
        self.window_edit = LineEdit(value="64", label="window", tooltip="Window size: one number, or one per axis")
        self.step_edit = LineEdit(value="48", label="step", tooltip="Distance between windows: one number, or one per axis")
        self.border_edit = LineEdit(
            value="8", label="border",
            tooltip="Labels in this band at each window's edge are marked unobserved (-1)",
        )
        self.copy_grid = grid_button(self)
        self.min_labelled_spin = SpinBox(
            value=1, min=1, max=1_000_000_000, label="min labelled",
            tooltip="Keep windows with at least this many labelled voxels (outside the border band)",
        )
        self.path_edit = FileEdit(mode="w", label="save to", filter="*.zarr", tooltip="Output folder (.zarr)")
        self.path_hint = Label(value="")
        self.path_hint.native.setWordWrap(True)
        self.overwrite_check = CheckBox(value=False, text="replace an existing export at this path")
        self.run_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = status_label()
        self.summary = TextEdit(value="")
        self.summary.native.setReadOnly(True)
        self.summary.native.setLineWrapMode(self.summary.native.LineWrapMode.NoWrap)
        self.summary.native.setMinimumHeight(190)
        monospace(self.summary)
        self.extend([
            form(self.image_combo, self.labels_combo, self.copy_grid, self.window_edit, self.step_edit,
                 self.border_edit, self.min_labelled_spin, self.path_edit, self.path_hint),
            self.overwrite_check, buttons, self.progress, self.status, self.summary,
        ])

        self.worker = None
        #: the last export's statistics and path (None until one completes)
        self.stats = None
        self.path = None
        #: "done", "cancelled", "error" or None
        self.outcome: str | None = None
        self._cancel_requested = False
        self._names: dict[int, str] = {}

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.image_combo.changed.connect(self._update_hint)
        self.path_edit.changed.connect(self._update_hint)
        self._update_hint()

    def _update_hint(self, *_) -> None:
        image = self.image_combo.value
        if str(self.path_edit.value).strip() in ("", "."):
            self.path_hint.value = f"(default: {default_path(image.name if image else 'image', 'pairs')})"
        else:
            self.path_hint.value = ""

    @property
    def running(self) -> bool:
        return self.worker is not None

    # -- running --------------------------------------------------------------------------
    def run(self, *_) -> None:
        """Start the export in a background thread."""
        if self.running:
            return
        try:
            job = self._prepare()
        except Exception as e:
            self._fail(e)
            return
        from napari.qt.threading import create_worker

        self.outcome = None
        self._cancel_requested = False
        self.summary.value = ""
        self.progress.max, self.progress.value = 1, 0
        set_status(self.status, "Selecting windows with labels…")
        self.worker = create_worker(self._work, *job, _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._fail)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.worker.start()

    def _prepare(self):
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and a labels layer")
        shape = spatial_shape(image)
        label_data = level0(labels)
        if tuple(label_data.shape) != shape:
            raise ValueError(f"labels {tuple(label_data.shape)} and image {shape} differ in shape")
        grid = Grid(
            shape,
            parse_per_axis(self.window_edit.value, "window", len(shape)),
            parse_per_axis(self.step_edit.value, "step", len(shape)),
            parse_per_axis(self.border_edit.value, "border", len(shape)),
        )
        path = resolve_path(self.path_edit.value, image.name, "pairs")
        source = open_source(level0(image), axes=source_axes(image))
        self._names = class_names(labels)
        return source, TrainingLabels(label_data), grid, path, int(self.min_labelled_spin.value), bool(self.overwrite_check.value)

    def _work(self, source, labels, grid, path, min_labelled, overwrite):
        import time

        t0 = time.perf_counter()
        last = None
        try:
            for written, total, stats in export_pairs(
                source, labels, grid, path, min_labelled=min_labelled, overwrite=overwrite,
                cancelled=lambda: self._cancel_requested,
            ):
                last = (written, total, stats)
                yield written, total, stats, time.perf_counter() - t0
        except Exception as e:  # handed to the GUI thread, shown there
            return Failed(e)
        complete = last is not None and last[0] == last[1] and path.exists()
        return complete, (last[2] if last else None), path, time.perf_counter() - t0

    def cancel(self, *_) -> None:
        """Stop after the current batch; the partial export is removed."""
        if self.running:
            self._cancel_requested = True
            set_status(self.status, "Cancelling after the current batch…")

    # -- results ----------------------------------------------------------------------------
    def _on_progress(self, item) -> None:
        written, total, _stats, elapsed = item
        self.progress.max = max(1, total)
        self.progress.value = written
        left = elapsed / written * (total - written) if written else None
        set_status(
            self.status,
            f"Writing windows: {thousands(written)} of {thousands(total)} · {format_duration(elapsed)} elapsed"
            + (f" · about {format_duration(left)} left" if written < total else ""),
        )

    def _on_returned(self, result) -> None:
        if isinstance(result, Failed):
            self._fail(result.error)
            return
        complete, stats, path, elapsed = result
        if not complete:
            self.outcome = "cancelled"
            set_status(self.status, "Cancelled: nothing was written (the partial export was removed).")
            return
        self.outcome, self.stats, self.path = "done", stats, path
        self.progress.max = max(1, stats.kept_windows)
        self.progress.value = stats.kept_windows
        set_status(
            self.status,
            f"Done ({format_duration(elapsed)}): {thousands(stats.kept_windows)} training pairs written to {path}",
        )
        mapping = "\n".join(
            f"class {c} = napari label {c + 1}" + (f" ({self._names[c + 1]})" if c + 1 in self._names else "")
            for c in sorted(int(k) for k in stats.labelled_voxels)
        )
        self.summary.value = stats.table() + ("\n\n" + mapping if mapping else "")

    def _fail(self, exc) -> None:
        self.outcome = "error"
        set_status(self.status, f"Export failed: {error_text(exc)}", error=True)
        notify_error(exc)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
