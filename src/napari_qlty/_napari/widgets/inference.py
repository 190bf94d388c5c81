"""Inference: run a model over an image layer, window by window, and watch the stitched
result appear.

A thin front end to :func:`napari_qlty.iter_predict`. The run goes to an OME-Zarr
folder on disk in a background thread; multiscale Image and Labels layers reading that
folder (every pyramid level) are added when the run starts and refreshed each time a
region is finished, so the probability map fills in region by region, zoomed out or
in, while the viewer stays usable. A multiscale image can be run at a coarser level
(a quick preview); the result is placed at that level's scale. Cancel stops after the current
region; pressing Run again with the same parameters resumes where it stopped (finished
regions are kept in the output folder).

In "current view" mode the regions on screen (and the windows they wait for) run first,
in regions of half a window, and the order follows the view as it moves; after the
view the run goes on with the rest, or stops (Run again finishes it). With
"uncertainty", where the model is unsure is written too, shown as a layer, and the most
unsure windows are listed as points to jump through (:mod:`napari_qlty._napari.unsure`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ...core.intensity import Normalisation
from ...core.weights import Weighting
from ...io.prediction import Prediction
from ...models import ModelSpec, load_model, model_kind, resolve_device
from ...models.checkpoints import checkpoint_recipe
from ...run import Cancelled, iter_predict
from .._common import (
    default_path,
    error_text,
    format_duration,
    format_per_axis,
    join_counts,
    level_count,
    level_factor,
    notify_error,
    parse_optional_per_axis,
    resolve_path,
    source_axes,
    spatial_shape,
    store_views,
    thousands,
)
from .._qt.base import collapsible, form, hint_label, set_status, status_label
from .._qt.tasks import BackgroundTask, TaskWidget
from .._registry import REGISTRY
from ..fields import GridFields
from ..package_fields import PackageChoice
from ..screen_view import ScreenView, ViewProgress, view_region
from ..unsure import UnsureFields

if TYPE_CHECKING:
    import napari

MODEL_FILE = "model file"
DEVICES = ("auto", "cpu", "cuda", "mps")
WEIGHTINGS = ("border", "gaussian", "hann", "linear")
POSTPROCESS = ("softmax", "sigmoid", "none")
MODEL_OWN = "the model's own"
WHOLE, VIEW = "whole image", "current view first"
CONTINUE, STOP = "continue with the rest", "stop"
NORMALISATIONS = {
    MODEL_OWN: None,
    "none": Normalisation(),
    "percentile 1-99.8": Normalisation("percentile"),
    "mean-std": Normalisation("mean-std"),
}


def foreground_channel(channels: int) -> int:
    """The class shown as "probability": class 1 when there are several, else the only one."""
    return min(1, channels - 1)


class InferenceWidget(TaskWidget):
    """Predict a whole image with a model, tiled and stitched; results stream into the viewer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        self.fields = GridFields(self, window="64", step="48", border="8", image_tip="The image to predict")
        f = self.fields
        self.image_combo = f.image_combo
        self.window_edit, self.step_edit, self.border_edit = f.edits
        self.level_combo = ComboBox(
            label="resolution level", choices=self._level_choices, visible=False,
            tooltip="For a multiscale image: run on a coarser level for a quick preview; the result "
                    "is placed at that level's scale",
        )
        self.model_combo = ComboBox(
            label="model", choices=self._model_choices,
            tooltip="A model file, or a model another widget made in this session",
        )
        self.model_path = FileEdit(
            mode="r", label="load model", filter="*.pt *.pt2 *.pth *.ts *.zip *.yaml",
            tooltip="A model saved by the Train widget, TorchScript (.pt), a torch.export program (.pt2), "
                    "a state dict with a factory, or a bioimage.io package (.zip or its rdf.yaml)",
        )
        self.package = PackageChoice()
        self.model_hint = hint_label()
        self.factory_edit = LineEdit(
            value="", label="factory",
            tooltip="Only for a state dict: the function that builds the network, "
                    "'package.module:function'",
        )
        self.device_combo = ComboBox(choices=DEVICES, value="auto", label="device")
        self.batch_spin = SpinBox(value=4, min=1, max=4096, label="batch size", tooltip="Windows per model call")
        self.weighting_combo = ComboBox(
            choices=WEIGHTINGS, value="border", label="weighting",
            tooltip="How overlapping windows are blended: border (flat, border band down-weighted), "
                    "gaussian, hann or linear tapers",
        )
        self.border_weight_spin = FloatSpinBox(
            value=1.0, min=0.0, max=1.0, step=0.05, label="border weight",
            tooltip="Weight of each window's border band (0: ignored where a neighbour covers it)",
        )
        self.postprocess_combo = ComboBox(
            choices=POSTPROCESS, value="softmax", label="postprocess",
            tooltip="Applied to every window's output before blending",
        )
        self.normalisation_combo = ComboBox(
            choices=list(NORMALISATIONS), value=MODEL_OWN, label="normalisation",
            tooltip="How intensities are mapped before the model, with statistics of the whole image "
                    "(never per window): the one the model was trained with, or another",
        )
        self.threshold_spin = FloatSpinBox(
            value=0.5, min=0.0, max=1.0, step=0.05, label="threshold",
            tooltip="Labels of a one-channel model: probability >= threshold",
        )
        self.probabilities_check = CheckBox(value=True, text="probabilities")
        self.labels_check = CheckBox(value=True, text="labels")
        self.unsure = UnsureFields(viewer, on_jump=self._on_jump)
        outputs = Container(
            widgets=[self.probabilities_check, self.labels_check, self.unsure.check], layout="horizontal",
            labels=False, label="outputs",
        )
        outputs.margins = (0, 0, 0, 0)
        self.order_combo = ComboBox(
            choices=[WHOLE, VIEW], value=WHOLE, label="order",
            tooltip="current view first: the regions on screen run first (in smaller regions), and follow the "
                    "view when you move it; the result is the same",
        )
        self.after_view_combo = ComboBox(
            choices=[CONTINUE, STOP], value=CONTINUE, label="after the view", visible=False,
            tooltip="Go on with the rest of the image once the view is done, or stop there (Run again finishes it)",
        )
        self.output_edit = FileEdit(mode="w", label="save to", filter="*.zarr", tooltip="Output folder (.zarr)")
        self.output_hint = hint_label()
        self.overwrite_check = CheckBox(
            value=False, text="replace a result made with other parameters",
        )
        self.memory_edit = LineEdit(
            value="", label="memory budget",
            tooltip="Bounds the working set, e.g. '2GiB'; smaller budgets run in more, smaller regions. "
                    "Empty: automatic",
        )
        self.chunks_edit = LineEdit(
            value="", label="chunk size",
            tooltip="Chunk edge of the output folder (one number or one per axis); regions are "
                    "whole chunks. Empty: automatic",
        )
        self.region_edit = LineEdit(
            value="", label="region size",
            tooltip="Largest region computed at once (one number or one per axis, whole chunks): "
                    "smaller regions show results sooner. Empty: as large as the budget allows",
        )
        self.levels_edit = LineEdit(
            value="", label="pyramid levels",
            tooltip="Resolution levels written as the run goes (each 2x coarser along space), so a large "
                    "result opens at once zoomed out; 1: none. Empty: until the coarsest fits a screen",
        )
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = status_label()
        self.extend([
            form(self.image_combo, self.level_combo, self.model_combo, self.model_path, self.model_hint,
                 self.package.accept, self.factory_edit,
                 self.normalisation_combo, f.time_combo, f.copy_button, *f.edits, self.weighting_combo,
                 self.border_weight_spin, self.postprocess_combo, self.threshold_spin, outputs,
                 self.unsure.kind_combo, self.order_combo, self.after_view_combo, self.output_edit,
                 self.output_hint),
            collapsible("Performance", form(self.device_combo, self.batch_spin, self.memory_edit,
                                            self.chunks_edit, self.region_edit, self.levels_edit)),
            self.overwrite_check, buttons, self.progress, self.status, self.unsure.next_button,
        ])

        self.task = BackgroundTask(
            self, self.run_button, self.cancel_button,
            on_yield=self._on_event, on_return=self._on_returned, on_error=self._fail,
            on_cancel=self._on_aborted,
        )
        self.last_event = None
        self.events_seen: list = []
        #: the output folder of the current / last run, and the layers reading it
        self.path: Path | None = None
        self.probability_layer = None
        self.labels_layer = None
        self._t_start = None
        self._image = None
        self._each_time_point = False
        #: the layers this run added (removed again if it fails before any result)
        self._added: list = []
        #: the view on screen while a run in view mode goes on, and which regions it needs
        self.screen: ScreenView | None = None
        self._view_progress: ViewProgress | None = None
        self._grid = None
        self._t_run = 0.0
        #: seconds from Run to the moment every region on screen was final (view mode)
        self.view_ready_s: float | None = None

        self.connect_to(REGISTRY.changed, self._on_registry_changed)
        self.model_combo.changed.connect(self._update_model_fields)
        self.model_path.changed.connect(self._describe_model_file)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.order_combo.changed.connect(self._update_order)
        self.image_combo.changed.connect(self._update_hint)
        self.image_combo.changed.connect(self._update_levels)
        self.output_edit.changed.connect(self._update_hint)
        self.connect_to(viewer.layers.events.removed, self._on_layer_removed)
        self._update_model_fields()
        self._update_hint()
        self._update_levels()

    # -- fields -------------------------------------------------------------------------------
    def _model_choices(self, _widget=None):
        return [MODEL_FILE, *REGISTRY.models]

    def _on_registry_changed(self) -> None:
        try:
            self.model_combo.reset_choices()
        except RuntimeError:
            pass

    def _update_model_fields(self, *_) -> None:
        from_file = self.model_combo.value == MODEL_FILE
        self.package.accept.visible = from_file and self.package.needs_code
        self.model_path.visible = from_file
        self.factory_edit.visible = from_file
        self.model_hint.visible = from_file
        if not from_file:
            info = getattr(REGISTRY.models.get(self.model_combo.value), "napari_qlty_info", None)
            self._use_model_window(info)

    def _describe_model_file(self, *_) -> None:
        """Say what the chosen file holds, and use a checkpoint's window."""
        path = str(self.model_path.value).strip()
        self.package.package, self.package.accept.visible = None, False
        if path in ("", ".") or not Path(path).is_file():
            self.model_hint.value = ""
            return
        try:
            kind = model_kind(path)
            if kind == "bioimageio":  # its window, halo and processing; the postprocessing is its own
                self.model_hint.value = self.package.describe(path, self.fields, self.image_combo.value)
                self.border_weight_spin.value, self.postprocess_combo.value = 0.0, "none"
                return
        except Exception as e:  # noqa: BLE001 - said in the hint, and again on Run
            self.model_hint.value = f"not a model file: {error_text(e)}"
            return
        recipe = checkpoint_recipe(path) if kind == "state_dict" else None
        if recipe is None:
            label = {"torchscript": "TorchScript", "export": "torch.export program", "state_dict": "state dict"}[kind]
            needs = " (give its factory)" if kind == "state_dict" else ""
            self.model_hint.value = f"{label}{needs}"
            return
        parts = ["napari-qlty model"]
        if recipe.get("classes"):
            parts.append("classes " + ", ".join(map(str, recipe["classes"])))
        if recipe.get("window"):
            parts.append("window " + join_counts(recipe["window"]))
        norm = (recipe.get("normalisation") or {}).get("mode")
        if norm and norm != "none":
            parts.append(f"normalisation {norm}")
        self.model_hint.value = " · ".join(parts)
        self._use_model_window(recipe)

    def _use_model_window(self, info) -> None:
        """A model runs with the inference settings it carries (a round of the Train
        widget's loop), else on windows the size it was trained on."""
        settings = (info or {}).get("inference")
        window = (settings or info or {}).get("window")
        if window:
            self.window_edit.value = format_per_axis(window)
        if settings:
            self.step_edit.value = format_per_axis(settings["step"])
            self.border_edit.value = format_per_axis(settings["border"])
            self.weighting_combo.value = settings["weighting"]
            self.border_weight_spin.value = settings["border_weight"]

    def _update_hint(self, *_) -> None:
        image = self.image_combo.value
        if str(self.output_edit.value).strip() in ("", "."):
            self.output_hint.value = f"(default: {default_path(image.name if image else 'image', 'prediction')})"
        else:
            self.output_hint.value = ""

    def _level_choices(self, _widget=None):
        image = self.image_combo.value if hasattr(self, "image_combo") else None
        if image is None or level_count(image) == 1:
            return [("0 (full resolution)", 0)]
        return [(f"{i}{' (full resolution)' if i == 0 else ''}: {join_counts(spatial_shape(image, i))}", i)
                for i in range(level_count(image))]

    def _update_levels(self, *_) -> None:
        self.level_combo.reset_choices()
        image = self.image_combo.value
        self.level_combo.visible = image is not None and level_count(image) > 1
        self.level_combo.value = 0

    def _geometry(self, image, level: int) -> dict:
        """The physical scale, translation and units of the tiled axes at ``level``: the
        layer's, times the level's factor (a coarse voxel sits at its block's centre)."""
        axes = source_axes(image).replace("c", "")
        tiled = self.fields.tiled_axes(image)
        factor = level_factor(image, level)
        keep = [i for i, a in enumerate(axes) if a in tiled]
        scale, translate = tuple(image.scale), tuple(image.translate)
        units = getattr(image, "units", None)
        return {
            "scale": [scale[i] * factor[i] for i in keep],
            "translation": [translate[i] + scale[i] * (factor[i] - 1) / 2 for i in keep],
            "units": [str(units[i]) for i in keep] if units is not None else None,
        }

    def _update_order(self, *_) -> None:
        self.after_view_combo.visible = self.order_combo.value == VIEW

    def _on_layer_removed(self, event) -> None:
        if event.value is self.probability_layer:
            self.probability_layer = None
        if event.value is self.labels_layer:
            self.labels_layer = None
        self.unsure.forget(event)


    # -- running ------------------------------------------------------------------------------
    def run(self, *_) -> None:
        self._t_run = time.perf_counter()  # the first view is timed from the press of Run
        super().run()

    def _starting(self) -> None:
        self.last_event, self.events_seen = None, []
        self.view_ready_s = None
        self.progress.max, self.progress.value = 1, 0
        set_status(self.status, "Loading the model and checking it on one window…")

    def _prepare(self):
        image = self.image_combo.value
        if image is None:
            raise ValueError("choose an image layer")
        level = int(self.level_combo.value or 0) if level_count(image) > 1 else 0
        grid = self.fields.grid(image, level)
        ndim = grid.ndim
        weighting = Weighting(self.weighting_combo.value, border_weight=float(self.border_weight_spin.value))
        if not (self.probabilities_check.value or self.labels_check.value):
            raise ValueError("tick probabilities, labels or both")
        device = self.device_combo.value
        resolve_device(device)  # says now, in the widget, when a device is not available
        model = self._model(device)
        if self.model_combo.value == MODEL_FILE:
            self.package.check(grid)
        source = self.fields.source(image, level)
        path = resolve_path(self.output_edit.value, image.name, "prediction")
        post = self.postprocess_combo.value
        kwargs = dict(
            weighting=weighting,
            batch_size=int(self.batch_spin.value),
            device=device,
            probabilities=bool(self.probabilities_check.value),
            labels=bool(self.labels_check.value),
            postprocess=None if post == "none" else post,
            threshold=float(self.threshold_spin.value),
            normalise=NORMALISATIONS[self.normalisation_combo.value],
            overwrite=bool(self.overwrite_check.value),
            memory_budget=self.memory_edit.value.strip() or None,
            chunks=parse_optional_per_axis(self.chunks_edit.value, "chunk size", ndim),
            region=parse_optional_per_axis(self.region_edit.value, "region size", ndim),
            cancelled=self.task.cancel_requested.is_set,
            levels=_levels(self.levels_edit.value),
            uncertainty=self.unsure.wanted,
            **self._geometry(image, level),
        )
        self._close_view()
        if self.order_combo.value == VIEW:
            # small regions: the view waits only for the windows near it
            small = view_region(grid)
            if kwargs["region"] is None:
                kwargs["region"] = small
            if kwargs["chunks"] is None:
                kwargs["chunks"] = tuple(min(s, r) for s, r in zip(small, kwargs["region"]))
            self.screen = ScreenView(self.viewer, image, self.fields.tiled_axes(image), level_factor(image, level),
                                     grid.shape)
            kwargs.update(view=self.screen, view_only=self.after_view_combo.value == STOP)
        if self.path != path:
            self.probability_layer = self.labels_layer = None
        self.path, self._image, self._grid = path, image, grid
        self._each_time_point = self.fields.each_time_point(image)
        self._added = []
        return _relay, (model, source, grid, path), kwargs

    def _model(self, device: str):
        choice = self.model_combo.value
        if choice == MODEL_FILE:
            path = self.model_path.value
            if str(path).strip() in ("", "."):
                raise ValueError("choose a model file (or a model registered in this session)")
            if Path(path).is_dir():
                raise ValueError(f"load model: {path} is a folder; choose a model file (for an unpacked "
                                 "bioimage.io package, its rdf.yaml)")
            if not Path(path).is_file():
                raise FileNotFoundError(f"model file not found: {path}")
            if self.package.package is not None:
                return self.package.spec(str(path))
            factory = self.factory_edit.value.strip() or None
            if factory is None and _weights_only(path):
                raise ValueError(f"{Path(path).name} holds weights only (a state dict): fill in factory with the "
                                 "function that builds its network, package.module:function")
            return ModelSpec(str(path), factory)
        model = REGISTRY.models.get(choice)
        if model is None:
            raise ValueError(f"the model {choice!r} is no longer registered")
        return load_model(model, resolve_device(device))  # a private copy when it must change

    def cancel(self, *_) -> None:
        """Stop after the batch in progress; Run with the same parameters resumes."""
        if self.running:
            self.task.cancel()
            set_status(self.status, "Cancelling after the batch in progress…")

    # -- events -------------------------------------------------------------------------------
    def _on_event(self, event) -> None:
        self.last_event = event
        self.events_seen.append(event.kind)
        if event.kind == "start":
            self._t_start = (event.elapsed, event.windows_done + event.regions_done)
            self._show_layers()
            self._follow_view()
        elif event.kind == "done" and self.probability_layer is None and self.labels_layer is None:
            self._show_layers()
        for layer in (self.probability_layer, self.labels_layer):
            if layer is not None:
                layer.refresh()
        self.unsure.refresh()
        if event.kind == "region" and self._view_progress is not None:
            self._view_progress.add(event.region)
            if self.view_ready_s is None and self._view_progress.covered(self.screen()):
                self.view_ready_s = time.perf_counter() - self._t_run
        if event.kind in ("done", "paused"):
            self._rank_unsure()
        if event.kind == "paused":
            self.progress.max = max(1, event.windows_total + event.regions_total)
            self.progress.value = event.windows_done + event.regions_done
            set_status(self.status, f"The view is done{self._view_time()}: {event.regions_total - event.regions_done} "
                                    f"of {event.regions_total} regions are left. Move the view and press Run to "
                                    f"do it next, or choose '{CONTINUE}' and press Run to finish the image.")
            return
        # progress counts windows run and regions written (a region is final only once
        # its neighbours have handed over, so regions finish after their windows)
        self.progress.max = max(1, event.windows_total + event.regions_total)
        self.progress.value = event.windows_done + event.regions_done
        if event.kind == "done":
            self._finish_contrast()
            self._say_done(event)
            return
        text = self._progress_text(event)
        if self.view_ready_s is not None:
            text += f"\nThe view was ready {format_duration(self.view_ready_s)} after Run; the rest goes on."
        set_status(self.status, text)

    def _say_done(self, event) -> None:
        set_status(
            self.status,
            f"Done ({format_duration(event.elapsed)}): {thousands(event.windows_total)} windows "
            f"in {event.regions_total} region(s), saved to {self.path}"
            + (f"; the view was ready {format_duration(self.view_ready_s)} after Run"
               if self.view_ready_s is not None else "")
            + (f"\n({event.message})" if "already" in event.message else ""),
        )

    def _view_time(self) -> str:
        return f" ({format_duration(self.view_ready_s)} after Run)" if self.view_ready_s is not None else ""

    def _follow_view(self) -> None:
        """Once the store's regions are known: which of them the view needs."""
        if self.screen is None:
            self._view_progress = None
            return
        store = Prediction(self.path)
        self._view_progress = ViewProgress(self._grid, store.layout["region"], store.layout["n_images"],
                                           store.finished_regions())
        if self._view_progress.covered(self.screen()):  # finished before (a resumed run)
            self.view_ready_s = time.perf_counter() - self._t_run

    def _close_view(self) -> None:
        if self.screen is not None:
            self.screen.close()
        self.screen, self._view_progress = None, None

    def _rank_unsure(self) -> None:
        """List the most unsure windows of the result (when it holds uncertainty)."""
        problem = self.unsure.try_rank(self._grid)
        if problem:
            set_status(self.status, problem, error=True)

    def _on_jump(self, rank: int, score: float) -> None:
        set_status(self.status, f"{self.unsure.jump_text(rank, score)}: label here next")

    def _progress_text(self, event) -> str:
        text = (
            f"windows {thousands(event.windows_done)}/{thousands(event.windows_total)} · "
            f"regions {event.regions_done}/{event.regions_total} · {format_duration(event.elapsed)} elapsed"
        )
        if self._t_start is not None:
            t0, w0 = self._t_start
            total = event.windows_total + event.regions_total
            done = event.windows_done + event.regions_done - w0
            if done > 0 and event.elapsed > t0:
                left = (total - w0 - done) * (event.elapsed - t0) / done
                text += f" · about {format_duration(left)} left"
        if event.kind == "start" and event.message:
            text += f"\n{event.message}"
        return text

    def _show_layers(self) -> None:
        """Add (or re-point) the multiscale layers that read the output folder while it is written."""
        store = Prediction(self.path)
        image = self._image
        name = self.path.stem if self.path is not None else "prediction"
        where = self._placement(store)
        each = None if self._each_time_point else 0
        if store.layout["probabilities"]:
            fg = foreground_channel(store.layout["channels"])
            classes = store.layout.get("classes") or []  # a model that names its classes
            what = classes[fg] if fg < len(classes) else f"class {fg}"
            data, multiscale = store_views(store, "probabilities", fg, image=each)
            layer = self.probability_layer
            if layer is not None and layer in self.viewer.layers:
                layer.data = data
            else:
                self.probability_layer = self.viewer.add_image(
                    data, name=f"{name} · P({what})", colormap="magma", blending="additive",
                    contrast_limits=(0.0, 1.0), opacity=0.8, multiscale=multiscale, **where,
                )
                self._added.append(self.probability_layer)
        if store.layout["labels"]:
            data, multiscale = store_views(store, "labels", image=each)
            layer = self.labels_layer
            if layer is not None and layer in self.viewer.layers:
                layer.data = data
            else:
                self.labels_layer = self.viewer.add_labels(
                    data, name=f"{name} · labels", opacity=0.5, multiscale=multiscale,
                    visible=not store.layout["probabilities"], **where,
                )
                self._added.append(self.labels_layer)
        if store.layout.get("uncertainty"):
            self.unsure.show(store, where, self._each_time_point, name)
        if image is not None:
            self.viewer.layers.selection.active = image

    def _placement(self, store) -> dict:
        """The result's scale and translate in the viewer: the run's recorded geometry along
        the tiled axes, the image's along time when each time point ran alone."""
        scale, translate = list(store.scale(0)), list(store.translation(0))
        if self._each_time_point and self._image is not None:
            t = source_axes(self._image).replace("c", "").index("t")
            scale.insert(0, self._image.scale[t])
            translate.insert(0, self._image.translate[t])
        return {"scale": tuple(scale), "translate": tuple(translate)}

    def _finish_contrast(self) -> None:
        layer = self.probability_layer
        if layer is None or self.postprocess_combo.value != "none":
            return
        data = layer.data[-1] if layer.multiscale else layer.data
        stride = tuple(max(1, s // 64) for s in data.shape)
        sample = np.asarray(data[tuple(slice(None, None, s) for s in stride)], dtype=np.float64)
        lo, hi = float(np.nanmin(sample)), float(np.nanmax(sample))
        if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
            layer.contrast_limits_range = (lo, hi)
            layer.contrast_limits = (lo, hi)

    def _on_aborted(self) -> None:
        self._close_view()
        e = self.last_event
        if e is not None and e.kind == "done":  # Cancel came after the last region: it is complete
            self._say_done(e)
            return
        done = f" after {e.regions_done} of {e.regions_total} regions" if e is not None else ""
        set_status(
            self.status,
            f"Cancelled{done}. Finished regions are kept in {self.path}: press Run with the same "
            f"parameters to resume.",
        )

    def _remove_empty_layers(self) -> None:
        """A run that failed before finishing any region leaves no layer showing nothing."""
        event = self.last_event
        if event is not None and event.regions_done > 0:
            return
        for layer in getattr(self, "_added", []):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._added = []
        self.probability_layer = self.labels_layer = None

    def _on_returned(self, result) -> None:
        """The run ended; its "done" (or "paused") event has been shown."""
        self._close_view()

    def _fail(self, exc) -> None:
        self._close_view()
        self._remove_empty_layers()
        set_status(self.status, f"Prediction failed: {error_text(exc, self.overwrite_check.text)}", error=True)
        notify_error(exc)


def _weights_only(path) -> bool:
    """A torch.save archive of weights that does not say which network they are for (a
    napari-qlty model does): it needs the factory field."""
    import zipfile

    return model_kind(path) == "state_dict" and zipfile.is_zipfile(path) and checkpoint_recipe(path) is None


def _levels(text: str) -> int | None:
    """The pyramid levels field: empty is automatic."""
    text = str(text).strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"pyramid levels must be a whole number >= 1 (1: no pyramid), or empty, got {text!r}")
    return value


def _relay(model, source, grid, path, **kwargs):
    """The job: the engine's events, one by one (a cancel stops between them)."""
    t0 = time.perf_counter()
    try:
        for event in iter_predict(model, source, grid, path, **kwargs):
            yield event
    except Cancelled:
        return None  # reported as a cancel
    return time.perf_counter() - t0
