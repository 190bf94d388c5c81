"""Export training pairs: an image and its sparse labels -> cleaned windows in a zarr folder.

A thin front end to :func:`napari_qlty.io.pairs_store.export_pairs`: the export runs in a
background thread (the viewer stays usable), a progress bar follows it, Cancel stops it
between batches (nothing half-written is left behind), and the paper's Table-2 summary
is shown when it is done. napari's labels (0 = unlabelled, 1.. = classes) become the
engine's classes 0.. with -1 = unlabelled.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ...io.labels_store import class_names
from ...io.pairs_store import export_pairs
from .._common import (
    default_path,
    error_text,
    format_duration,
    notify_error,
    resolve_path,
    thousands,
)
from .._qt.base import (
    form,
    hint_label,
    report_box,
    set_status,
    status_label,
)
from .._qt.tasks import BackgroundTask, TaskWidget
from ..fields import GridFields

if TYPE_CHECKING:
    import napari


class ExportWidget(TaskWidget):
    """Write cleaned training pairs (image windows + label windows) to a zarr folder."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        self.fields = GridFields(
            self, labels="required", image_tip="The image to cut into windows",
            tips={"border": "Labels in this band at each window's edge are marked unobserved"},
        )
        f = self.fields
        self.image_combo, self.labels_combo = f.image_combo, f.labels_combo
        self.window_edit, self.step_edit, self.border_edit = f.edits
        self.min_labelled_spin = SpinBox(
            value=1, min=1, max=1_000_000_000, label="min labelled",
            tooltip="Keep windows with at least this many labelled voxels (outside the border band)",
        )
        self.path_edit = FileEdit(mode="w", label="save to", filter="*.zarr", tooltip="Output folder (.zarr)")
        self.path_hint = hint_label()
        self.overwrite_check = CheckBox(value=False, text="replace an existing export at this path")
        self.run_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = status_label()
        self.summary = report_box()
        self.extend([
            form(*f.widgets, self.min_labelled_spin, self.path_edit, self.path_hint),
            self.overwrite_check, buttons, self.progress, self.status, self.summary,
        ])

        self.task = BackgroundTask(
            self, self.run_button, self.cancel_button,
            on_yield=self._on_progress, on_return=self._on_returned, on_error=self._fail,
            on_cancel=self._on_cancelled,
        )
        #: the last export's statistics and path (None until one completes)
        self.stats = None
        self.path = None
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


    # -- running --------------------------------------------------------------------------
    def _starting(self) -> None:
        self.summary.value = ""
        self.progress.max, self.progress.value = 1, 0
        set_status(self.status, "Selecting windows with labels…")

    def _prepare(self):
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and a labels layer")
        label_view = self.fields.labels(image, labels)
        grid = self.fields.grid(image)
        path = resolve_path(self.path_edit.value, image.name, "pairs")
        self._names = class_names(labels)
        job = (self.fields.source(image), label_view, grid, path, int(self.min_labelled_spin.value),
               bool(self.overwrite_check.value))
        return self._work, job, {}

    def _work(self, source, labels, grid, path, min_labelled, overwrite):
        t0 = time.perf_counter()
        last = None
        for written, total, stats in export_pairs(
            source, labels, grid, path, min_labelled=min_labelled, overwrite=overwrite,
            cancelled=self.task.cancel_requested.is_set,
        ):
            last = (written, total, stats)
            yield written, total, stats, time.perf_counter() - t0
        complete = last is not None and last[0] == last[1] and path.exists()
        return complete, (last[2] if last else None), path, time.perf_counter() - t0

    def cancel(self, *_) -> None:
        """Stop after the current batch; the partial export is removed."""
        if self.running:
            self.task.cancel_requested.set()
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

    def _on_cancelled(self) -> None:
        set_status(self.status, "Cancelled: nothing was written (the partial export was removed).")

    def _on_returned(self, result) -> None:
        complete, stats, path, elapsed = result
        if not complete:  # export_pairs stopped early: only a cancel does that
            self._on_cancelled()
            return
        self.stats, self.path = stats, path
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
        set_status(self.status, f"Export failed: {error_text(exc, self.overwrite_check.text)}", error=True)
        notify_error(exc)
