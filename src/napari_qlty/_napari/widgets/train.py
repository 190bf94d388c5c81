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

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
)

from ...core.intensity import Normalisation
from ...io.labels_store import class_names
from .._common import (
    error_text,
    format_duration,
    level0,
    notify_error,
    thousands,
)
from .._qt.base import form, set_status, status_label
from .._qt.tasks import BackgroundTask, TaskWidget
from .._registry import register_model, registered_models
from ..fields import GridFields

if TYPE_CHECKING:
    import napari


NORMALISATIONS = {
    "percentile 1-99.8": Normalisation("percentile"),
    "mean-std": Normalisation("mean-std"),
    "none": Normalisation(),
}


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
        self.normalisation_combo = ComboBox(
            choices=list(NORMALISATIONS), value="percentile 1-99.8", label="normalisation",
            tooltip="How intensities are mapped before the network, with statistics of the whole image "
                    "(never per window); the saved model applies it by itself on any image",
        )
        self.name_edit = LineEdit(value="", label="model name", tooltip="Name in the inference widget (empty: from the image)")
        self.save_path = FileEdit(mode="w", label="save model to", filter="*.pt",
                                  tooltip="A napari-qlty model file: weights, window, classes, normalisation")
        self.save_button = PushButton(text="Save model", enabled=False)
        self.save_button.tooltip = "Save the trained model (for Tiled inference, the command line or a cluster)"
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(text="Stop", enabled=False)
        buttons = Container(widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=1000, label="progress")
        self.metrics = status_label()
        self.status = status_label()
        self.extend([
            form(*f.widgets, self.normalisation_combo, self.seconds_spin, self.name_edit),
            buttons, self.progress, self.metrics, self.status,
            form(self.save_path), self.save_button,
        ])
        self._add_package_export()

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
        #: what Save model writes beside the weights (factory, window, classes, normalisation)
        self.recipe: dict | None = None
        self.saved_to = None
        self.last_event = None
        self.events_seen: list[str] = []
        self._budget = 60.0
        self._loss = None
        self._f1 = None

        self.train_button.changed.connect(self.run)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self.save)

    @property
    def outcome(self) -> str | None:
        """"done", "stopped" (Stop ended training early; the model is kept), "error" or None."""
        outcome = self.task.outcome
        return "stopped" if outcome == "done" and self._stop.is_set() else outcome

    # -- running --------------------------------------------------------------------------
    def _starting(self) -> None:
        self.model, self.last_event, self.recipe = None, None, None
        self.save_button.enabled = False
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
        label_view = self.fields.labels(image, labels)
        grid = self.fields.grid(image)
        if grid.ndim not in (2, 3):
            raise ValueError(f"the windows tile {grid.ndim} axes ({grid.axes}); training takes 2D or 3D windows")
        names = class_names(labels)
        top = int(np.max(np.asarray(level0(labels)))) if level0(labels).size else 0
        if top < 1:
            raise ValueError(f"labels layer {labels.name!r} holds no labels: paint some (1, 2, ... are classes)")
        classes = max([2, top, *names])
        self._budget = float(self.seconds_spin.value)
        options = {
            "arch": "unet", "net": {"channels": 8}, "classes": classes,
            "planar": grid.ndim == 3, "patch": min(48, *grid.window),
            "epochs": 100_000, "steps_per_epoch": 10, "max_seconds": self._budget, "val_samples": 16,
        }
        options.update(self.config_overrides)
        config = TrainConfig(**options)
        name = self.name_edit.value.strip() or f"{image.name} (trained)"
        class_list = [names.get(k, f"class {k}") for k in range(1, config.classes + 1)]
        job = (self.fields.source(image), label_view, grid, config, name, class_list,
               NORMALISATIONS[self.normalisation_combo.value])
        return self._work, job, {}

    def _work(self, source, labels, grid, config, name, class_list, normalisation):
        from ...core.pairs import clean_pairs, validation_split
        from ...train.trainer import build_model, iter_train, saved_factory

        intensity = normalisation.fit(source)  # the whole image, never one window
        pairs = clean_pairs(source, labels, grid)  # only kept windows are read, in their own dtype
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
        for event in iter_train(config, train, val, model=model, intensity=intensity, class_names=class_list,
                                stop=lambda: self._stop.is_set() or cancel.is_set()):
            last = event
            yield ("event", event)
        factory, kwargs = saved_factory(config, grid.ndim)
        recipe = {"factory": factory, "factory_kwargs": kwargs, "window": list(grid.window), "axes": grid.axes,
                  "classes": class_list, "normalisation": normalisation.to_json(), "name": name,
                  "config": config.to_json()}
        return model.eval(), last, name, recipe

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
        model, last, name, recipe = result
        stopped = self._stop.is_set()
        taken = registered_models()
        unique, k = name, 2
        while unique in taken:  # a second run never replaces the first model
            unique, k = f"{name} ({k})", k + 1
        try:
            register_model(unique, model)
        except Exception as e:
            self.task.fail(e)
            return
        self.model, self.model_name, self.recipe = model, unique, {**recipe, "name": unique}
        self.progress.value = self.progress.max
        self.save_button.enabled = True
        how = "stopped" if stopped else (last.message or "done") if last else "done"
        renamed = f" (a model named '{name}' exists already)" if unique != name else ""
        set_status(self.status, f"Training {how}: model '{unique}' is ready in Tiled inference{renamed}")

    def save(self, *_) -> None:
        """Write the trained model to the chosen file (only a napari-qlty model file is replaced)."""
        try:
            path = self._save()
        except Exception as e:
            set_status(self.status, f"Could not save the model: {error_text(e)}", error=True)
            notify_error(e)
            return
        self.saved_to = path
        set_status(self.status, f"Saved '{self.model_name}' to {path}: Tiled inference, the command line "
                                f"(--model {path.name}) and a cluster can load it")

    def _save(self):
        from pathlib import Path

        from ...models.checkpoints import checkpoint_recipe
        from ...train.trainer import save_checkpoint

        if self.model is None or self.recipe is None:
            raise ValueError("train a model first")
        text = str(self.save_path.value).strip()
        if text in ("", "."):
            raise ValueError("choose where to save the model (save model to)")
        path = Path(text).expanduser()
        if path.suffix != ".pt":
            path = path.with_name(path.name + ".pt")
        if path.exists() and (path.is_dir() or checkpoint_recipe(path) is None):
            raise ValueError(f"{path} holds something that is not a napari-qlty model; it is left untouched")
        r = self.recipe
        extra = {k: v for k, v in r.items() if k not in ("factory", "factory_kwargs")}
        return save_checkpoint(self.model, path, r["factory"], r["factory_kwargs"], extra)

    def _fail(self, exc) -> None:
        set_status(self.status, f"Training failed: {error_text(exc)}", error=True)
        notify_error(exc)

    # -- bioimage.io --------------------------------------------------------------------------
    def _add_package_export(self) -> None:
        self.package_button = PushButton(text="Export for bioimage.io")
        self.package_button.tooltip = ("Write the trained model as a bioimage.io package (.zip beside 'save model "
                                       "to'): deepImageJ, ilastik and the Model Zoo's tools run it")
        self.append(self.package_button)
        self.package_button.changed.connect(self.export_package)

    def export_package(self, *_):
        """Write the trained model as a bioimage.io package beside "save model to" (only a
        package napari-qlty exported is replaced); its test input is cut from the image."""
        from pathlib import Path

        from ...models.bioimageio import export_package

        try:
            if self.model is None or self.recipe is None:
                raise ValueError("train a model first")
            text = str(self.save_path.value).strip()
            if text in ("", "."):
                raise ValueError("choose where to save the model (save model to): the package goes beside it")
            image = self.image_combo.value
            if image is None:
                raise ValueError("choose the image the model was trained on: the package's test input comes from it")
            path = Path(text).expanduser().with_suffix(".zip")
            set_status(self.status, f"Exporting '{self.model_name}' to {path}…")
            export_package(self.model, path, self.fields.source(image), recipe=self.recipe, name=self.model_name,
                           overwrite=True)
        except Exception as e:
            set_status(self.status, f"Could not export the model: {error_text(e)}", error=True)
            notify_error(e)
            return None
        set_status(self.status, f"Exported '{self.model_name}' to {path}: a bioimage.io package (validated)")
        return path
