"""Train a network on an image and its sparse labels, in this napari session.

A thin front end to :func:`napari_qlty.core.pairs.clean_pairs` (training pairs are cut in
memory) and :func:`napari_qlty.train.trainer.iter_train` (run in a background thread;
loss and validation F1 are shown as they arrive). Stop ends the run after the current
step. The trained model is registered with :func:`napari_qlty._napari.register_model`,
so the Tiled inference widget offers it at once. napari's labels (0 = unlabelled,
1.. = classes) become the engine's classes 0.. with -1 = unlabelled.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from magicgui.widgets import Container, FloatSpinBox, LineEdit, ProgressBar, PushButton

from .._common import (
    TrainingLabels,
    error_text,
    format_duration,
    level0,
    notify_error,
    spatial_shape,
    thousands,
)
from .._qt.base import form, set_status, status_label
from .._qt.tasks import BackgroundTask, TaskWidget
from .._registry import register_model
from ..fields import GridFields

if TYPE_CHECKING:
    import napari


class TrainWidget(TaskWidget):
    """Train a U-Net on sparse labels for a time budget; the result goes to Tiled inference."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        self.fields = GridFields(
            self, window="64", step="32", border="0", labels="required", image_tip="The image to learn from",
            tips={"border": "Labels in this band at each window's edge are ignored"},
        )
        f = self.fields
        self.image_combo, self.labels_combo = f.image_combo, f.labels_combo
        self.window_edit, self.step_edit, self.border_edit = f.edits
        self.seconds_spin = FloatSpinBox(
            value=60.0, min=1.0, max=7 * 24 * 3600.0, step=10.0, label="time budget (s)",
            tooltip="Training stops after this many seconds",
        )
        self.name_edit = LineEdit(value="", label="model name", tooltip="Name in the inference widget (empty: from the image)")
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        buttons = Container(widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=1000, label="progress")
        self.metrics = status_label()
        self.status = status_label()
        self.extend([
            form(*f.widgets, self.seconds_spin, self.name_edit),
            buttons, self.progress, self.metrics, self.status,
        ])

        self.task = BackgroundTask(
            self, self.train_button, self.stop_button,
            on_yield=self._on_event, on_return=self._on_returned, on_error=self._fail,
        )
        #: Stop ends training early and keeps the model (a cancel, as when the dock closes, drops it)
        self._stop = threading.Event()
        #: options passed to TrainConfig on top of the widget's (tests use a tiny network)
        self.config_overrides: dict = {}
        self.model = None
        self.model_name: str | None = None
        self.last_event = None
        self.events_seen: list[str] = []
        self._budget = 60.0
        self._loss = None
        self._f1 = None

        self.train_button.changed.connect(self.run)
        self.stop_button.changed.connect(self.stop)

    @property
    def outcome(self) -> str | None:
        """"done", "stopped" (Stop ended training early; the model is kept), "error" or None."""
        outcome = self.task.outcome
        return "stopped" if outcome == "done" and self._stop.is_set() else outcome

    # -- running --------------------------------------------------------------------------
    def _starting(self) -> None:
        self.model, self.last_event = None, None
        self.events_seen = []
        self._loss = self._f1 = None
        self._stop.clear()
        self.progress.value = 0
        self.metrics.value = ""
        set_status(self.status, "Cutting training pairs…")

    def _prepare(self):
        import numpy as np

        from ...train.trainer import TrainConfig

        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and a labels layer")
        if getattr(image, "rgb", False):
            raise ValueError("training on RGB images is not supported; choose a single-channel image")
        shape = spatial_shape(image)
        label_data = level0(labels)
        if tuple(label_data.shape) != shape:
            raise ValueError(f"labels {tuple(label_data.shape)} and image {shape} differ in shape")
        if len(shape) not in (2, 3):
            raise ValueError(f"the image has {len(shape)} axes; training takes 2D or 3D images")
        window, _step, _border = self.fields.values(len(shape))
        windows = (window,) * len(shape) if isinstance(window, int) else window
        if any(w > s for w, s in zip(windows, shape)):
            raise ValueError(f"window {windows} is larger than the image {shape}")
        grid = self.fields.grid(shape)
        classes = int(np.asarray(label_data).max())
        if classes < 1:
            raise ValueError(f"labels layer {labels.name!r} has no labels (paint some with values 1, 2, …)")
        self._budget = float(self.seconds_spin.value)
        options = {
            "arch": "unet", "net": {"channels": 8}, "classes": max(2, classes),
            "planar": len(shape) == 3, "patch": min(48, *windows),
            "epochs": 100_000, "steps_per_epoch": 10, "max_seconds": self._budget, "val_samples": 16,
        }
        options.update(self.config_overrides)
        config = TrainConfig(**options)
        name = self.name_edit.value.strip() or f"{image.name} (trained)"
        return self._work, (level0(image), TrainingLabels(label_data), grid, config, name), {}

    def _work(self, image_data, labels, grid, config, name):
        import numpy as np
        import torch

        from ...core.pairs import clean_pairs, validation_split
        from ...train.trainer import build_model, iter_train

        image = torch.from_numpy(np.asarray(image_data, dtype=np.float32))[None, None]
        label_arr = torch.from_numpy(np.asarray(labels[:]))
        pairs = clean_pairs(image, label_arr, grid)
        n = len(pairs)
        if n == 0:
            raise ValueError("no window holds labels: paint some, or use a smaller window")
        yield ("pairs", n)
        train_idx, val_idx = validation_split(n, 0.2, config.seed)
        train = (pairs.images[train_idx], pairs.labels[train_idx])
        val = (pairs.images[val_idx], pairs.labels[val_idx]) if len(val_idx) else None
        model = build_model(config, grid.ndim)
        last = None
        cancel = self.task.cancel_requested
        for event in iter_train(config, train, val, model=model,
                                stop=lambda: self._stop.is_set() or cancel.is_set()):
            last = event
            yield ("event", event)
        return model.eval(), last, name

    def stop(self, *_) -> None:
        """End training after the current step; the model trained so far is kept."""
        if self.running:
            self._stop.set()
            set_status(self.status, "Stopping after the current step…")

    # -- results ----------------------------------------------------------------------------
    def _on_event(self, item) -> None:
        what, value = item
        if what == "pairs":
            set_status(self.status, f"Training on {thousands(value)} pairs…")
            return
        event = value
        self.last_event = event
        self.events_seen.append(event.kind)
        if event.loss is not None and event.kind == "step":
            self._loss = event.loss
        if event.val_f1 is not None:
            self._f1 = event.val_f1
        self.progress.value = int(1000 * min(1.0, event.elapsed / max(self._budget, 1e-9)))
        parts = [f"step {thousands(event.step)}", f"epoch {event.epoch}"]
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        if self._f1 is not None:
            parts.append(f"val F1 {self._f1:.3f}")
        parts.append(f"{format_duration(event.elapsed)} of {format_duration(self._budget)}")
        self.metrics.value = " · ".join(parts)
        if event.kind == "start":
            set_status(self.status, f"Training: {event.message}")

    def _on_returned(self, result) -> None:
        model, last, name = result
        stopped = self._stop.is_set()
        try:
            register_model(name, model)
        except Exception as e:
            self.task.fail(e)
            return
        self.model, self.model_name = model, name
        self.progress.value = self.progress.max
        how = "stopped" if stopped else (last.message or "done") if last else "done"
        set_status(self.status, f"Training {how}: model '{name}' is ready in Tiled inference")

    def _fail(self, exc) -> None:
        set_status(self.status, f"Training failed: {error_text(exc)}", error=True)
        notify_error(exc)
