"""Train a network on an image and its sparse labels, round after round, in this napari session.

The interactive loop: paint, **Train**, look at the prediction, correct the labels where
it is wrong, **Train more** (the current model trained on for a short budget on the
labels as they are now), and again until it is good enough; then **Predict whole
image** with the round you choose. Every round is recorded beside the labels store
(:mod:`napari_qlty.io.rounds`: its labels, model, parameters and held-out scores), and
picking an earlier round goes back to its model.

After each round its prediction can run the current view first (the regions on screen,
then the rest, or the view only), so the effect of the new strokes shows where the user
looks within seconds; the time from the round being saved to the view being predicted
is shown. With "uncertainty" the round's prediction also says where the model is unsure
and lists the most unsure windows: where the next strokes help most.

A thin front end to :func:`napari_qlty.train.loop.iter_round` (the shared recipe,
:data:`~napari_qlty.train.recipe.DEFAULT_RECIPE`) and :func:`napari_qlty.iter_predict`,
run in a background thread. napari's labels (0 = unlabelled, 1.. = classes) are the
classes the user sees; every round's model is registered with
:func:`napari_qlty._napari.register_model` for the Tiled inference widget.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    ProgressBar,
    PushButton,
)

from ...core.intensity import Normalisation
from ...io import rounds as rounds_io
from ...io.labels_store import class_names, count_labels
from ...train.recipe import DEFAULT_RECIPE, Recipe
from .._common import (
    default_output_dir,
    error_text,
    format_duration,
    is_blank_path,
    level0,
    notify_error,
    spatial_shape,
    store_views,
    thousands,
)
from .._qt.base import form, hint_label, set_status, status_label
from .._qt.tasks import BackgroundTask, TaskWidget
from .._registry import register_model, registered_models
from ..fields import GridFields
from ..screen_view import ScreenView, ViewProgress, view_region
from ..unsure import UnsureFields

if TYPE_CHECKING:
    import napari


NORMALISATIONS = {
    "percentile 1-99.8": Normalisation("percentile"),
    "mean-std": Normalisation("mean-std"),
    "none": Normalisation(),
}
NETWORK_NAMES = {"unet": "U-Net", "msdnet": "MSDNet"}
#: training reports every this many steps, and the widget redraws at most this often (s):
#: redrawing at every step cost up to half the training steps on a busy 2-core machine
STEP_EVENTS, REDRAW_SECONDS = 5, 0.3
#: how a round's prediction runs: the view first, then the rest; the view only; in order
VIEW_THEN_REST, VIEW_ONLY, WHOLE = "view first, then the rest", "the view only", "whole image in order"


def _normalisation_choice(mode: str) -> str:
    return next((k for k, v in NORMALISATIONS.items() if v.mode == mode), "percentile 1-99.8")


def round_title(r: rounds_io.Round) -> str:
    """``round 3 · F1 0.912 · 14:02`` (what the round list shows)."""
    f1 = (r.attrs.get("scores") or {}).get("val_f1")
    when = str(r.attrs.get("finished", ""))[11:16]
    return " · ".join(p for p in (f"round {r.number}", f"F1 {f1:.3f}" if f1 is not None else "", when) if p)


def per_class_text(per_class: dict) -> str:
    return " · ".join(f"{name} {'–' if f1 is None else f'{f1:.3f}'}" for name, f1 in per_class.items())


def round_scores(r: rounds_io.Round) -> str:
    """``Round 3: held-out F1 0.912 (background 0.991 · filament 0.833)``."""
    scores = r.attrs.get("scores") or {}
    if scores.get("val_f1") is None:
        return f"Round {r.number}: no labels held out to score it (too few windows)"
    return f"Round {r.number}: held-out F1 {scores['val_f1']:.3f} ({per_class_text(scores['per_class'])})"


def round_details(r: rounds_io.Round) -> str:
    """One line on what a round was: its origin, its scores per class, its steps."""
    a = r.attrs
    origin = "trained from scratch" if a.get("parent") is None else f"round {a['parent']} trained more"
    scores = a.get("scores") or {}
    pairs = a.get("pairs") or {}
    steps = ", ".join(f"{NETWORK_NAMES.get(m['arch'], m['arch'])} {m['steps']} steps" for m in a.get("members", []))
    held = (f"held-out F1 {per_class_text(scores['per_class'])}" if scores.get("val_f1") is not None
            else "no labels held out (too few windows)")
    return f"{origin}: {steps}; {held} ({thousands(pairs.get('held_out_voxels', 0))} labelled voxels held out)"


class TrainWidget(TaskWidget):
    """Train on sparse labels in rounds; every round is recorded and offered to Tiled inference."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, labels=False)
        #: the recipe rounds follow (tests use smaller networks)
        self.recipe = DEFAULT_RECIPE
        r = self.recipe
        self.fields = GridFields(
            self, window=str(r.window), step=str(r.step), border=str(r.border), labels="required",
            image_tip="The image to learn from",
            tips={"border": "Labels in this band at each window's edge are ignored"},
        )
        f = self.fields
        self.image_combo, self.labels_combo = f.image_combo, f.labels_combo
        self.window_edit, self.step_edit, self.border_edit = f.edits
        self.normalisation_combo = ComboBox(
            choices=list(NORMALISATIONS), value=_normalisation_choice(r.normalisation), label="normalisation",
            tooltip="How intensities are mapped before the network, with statistics of the whole image "
                    "(never per window); the saved model applies it by itself on any image",
        )
        self.seconds_spin = FloatSpinBox(
            value=60.0, min=1.0, max=7 * 24 * 3600.0, step=10.0, label="time budget (s)",
            tooltip="Train stops after this many seconds (U-Net, then MSDNet, each an equal share)",
        )
        self.more_spin = FloatSpinBox(
            value=20.0, min=1.0, max=7 * 24 * 3600.0, step=5.0, label="train more (s)",
            tooltip="Budget of Train more: the chosen round's model trained on with the labels as they are now",
        )
        self.name_edit = LineEdit(value="", label="model name",
                                  tooltip="Name in the inference widget, followed by the round (empty: the image's)")
        self.train_button = PushButton(text="Train")
        self.train_button.tooltip = "Train new networks on the labels (a new round)"
        self.more_button = PushButton(text="Train more")
        self.more_button.tooltip = "Train the chosen round's model on with the labels as they are now (a new round)"
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.stop_button.tooltip = "End training after the current step (the round keeps what was learnt)"
        buttons = Container(widgets=[self.train_button, self.more_button, self.stop_button], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=1000, label="progress")
        self.metrics = status_label()
        self.status = status_label()

        self.rounds_edit = FileEdit(mode="d", label="rounds folder",
                                    tooltip="Where every round is recorded: labels, model, parameters, scores")
        self.rounds_hint = hint_label()
        self.round_combo = ComboBox(label="round", choices=self._round_choices,
                                    tooltip="The model in use: Train more continues it, Predict and Save use it")
        self.round_hint = hint_label()
        self.predict_check = CheckBox(value=True, text="predict after each round:")
        self.predict_check.tooltip = "Predict the image with the new round's model as soon as it is saved"
        self.order_combo = ComboBox(
            choices=[VIEW_THEN_REST, VIEW_ONLY, WHOLE], value=VIEW_THEN_REST,
            tooltip="The regions on screen first (the effect of new strokes shows where you look, within "
                    "seconds), then the rest or not; or the whole image in order",
        )
        predict_row = Container(widgets=[self.predict_check, self.order_combo], layout="horizontal", labels=False)
        predict_row.margins = (0, 0, 0, 0)
        self.unsure = UnsureFields(viewer, on_jump=self._on_jump)
        self.predict_button = PushButton(text="Predict whole image")
        self.predict_button.tooltip = ("Predict the image with the chosen round's model (kept in its round); "
                                       "finishes a prediction that stopped after the view")
        self.save_path = FileEdit(mode="w", label="save model to", filter="*.pt",
                                  tooltip="A napari-qlty model file: weights, window, classes, normalisation")
        self.save_button = PushButton(text="Save model", enabled=False)
        self.save_button.tooltip = "Save the chosen round's model (for Tiled inference, the command line or a cluster)"
        self.extend([
            form(*f.widgets, self.normalisation_combo, self.seconds_spin, self.more_spin, self.name_edit),
            buttons, self.progress, self.metrics, self.status,
            form(self.rounds_edit, self.rounds_hint, self.round_combo, self.round_hint),
            predict_row, self.unsure.row, self.predict_button,
            form(self.save_path), self.save_button,
        ])
        self._add_package_export()

        self.task = BackgroundTask(
            self, self.train_button, self.stop_button,
            on_yield=self._on_event, on_return=self._on_returned, on_error=self._fail, on_cancel=self._on_cancelled,
        )
        #: Stop ends training early and keeps the round (a cancel, as when the dock closes, drops it)
        self._stop = threading.Event()
        #: options passed to every network's TrainConfig (tests use tiny networks)
        self.config_overrides: dict = {}
        self.model = None
        self.model_name: str | None = None
        #: the round in use: Train more continues it, Predict and Save model use it
        self.current_round: rounds_io.Round | None = None
        #: models of this session's rounds, by (rounds folder, round number)
        self._models: dict = {}
        self.saved_to = None
        self.last_event = None
        #: the last event of the prediction in progress (or done)
        self.last_predict = None
        self.events_seen: list[str] = []
        self.probability_layer = None
        self.prediction_labels_layer = None
        #: the prediction layers of each image (by id): a round of another image gets layers of its
        #: own (re-pointing a layer at data of another shape corrupts napari's view of it)
        self._layers_of: dict[int, tuple] = {}
        self._mode = "train"
        self._budget = 60.0
        self._t0 = self._drawn = 0.0
        self._loss = None
        self._f1: tuple | None = None
        self._image = None
        self._each_time_point = False
        self._predicting: Path | None = None
        #: the view on screen (followed while a round's prediction may run in view mode)
        self.screen: ScreenView | None = None
        self._view_progress: ViewProgress | None = None
        self._t_saved: float | None = None
        #: seconds from the round being saved to its prediction of the view (the last round's)
        self.view_latency_s: float | None = None
        self._rank_grid = self._predict_grid = None

        self.train_button.changed.connect(self.train)
        self.more_button.changed.connect(self.train_more)
        self.stop_button.changed.connect(self.stop)
        self.predict_button.changed.connect(self.predict)
        self.save_button.changed.connect(self.save)
        self.round_combo.changed.connect(self._on_round_chosen)
        self.labels_combo.changed.connect(self._refresh_rounds)
        self.image_combo.changed.connect(self._refresh_rounds)  # the rounds listed are those of this image
        self.rounds_edit.changed.connect(self._refresh_rounds)
        self.connect_to(viewer.layers.events.removed, self._on_layer_removed)
        self.connect_to(viewer.layers.events.removed, self.unsure.forget)
        self._refresh_rounds()

    @property
    def outcome(self) -> str | None:
        """"done", "stopped" (Stop ended training early; the round is kept), "error" or None."""
        outcome = self.task.outcome
        return "stopped" if outcome == "done" and self._stop.is_set() else outcome

    # -- the rounds folder --------------------------------------------------------------------
    def rounds_path(self) -> Path | None:
        """The rounds folder: the field, else beside the labels' store, else in the temp folder."""
        if not is_blank_path(self.rounds_edit.value):
            return Path(str(self.rounds_edit.value)).expanduser()
        labels = self.labels_combo.value
        if labels is None:
            return None
        store = rounds_io.store_path(level0(labels))
        if store is not None:
            return rounds_io.beside(store)
        return default_output_dir() / f"{_safe(labels.name)}.rounds"

    def _open_rounds(self, create: bool) -> rounds_io.Rounds | None:
        path, image = self.rounds_path(), self.image_combo.value
        if path is None or image is None:
            return None
        if not create and not path.exists():
            return None
        return rounds_io.Rounds.open(path, spatial_shape(image), image=image.name, create=create)

    def _round_choices(self, _widget=None):
        try:
            rounds = self._open_rounds(create=False)
        except (ValueError, OSError):
            return []
        if rounds is None:
            return []
        return [(round_title(r), r.number) for r in reversed(rounds.rounds())]

    def _refresh_rounds(self, *_) -> None:
        path = self.rounds_path()
        default = path is not None and is_blank_path(self.rounds_edit.value)
        self.rounds_hint.value = f"(default: {path})" if default else ""
        try:
            self.round_combo.reset_choices()
        except RuntimeError:  # the widget is gone
            return
        self._on_round_chosen()

    def _on_round_chosen(self, *_) -> None:
        """Going back to a round: its model is the one in use, its prediction is shown."""
        number = self.round_combo.value
        if number is None:
            self.current_round, self.round_hint.value = None, ""
            self.save_button.enabled = self.more_button.enabled = self.predict_button.enabled = False
            return
        try:
            rounds = self._open_rounds(create=False)
            chosen = rounds.get(number) if rounds is not None else None
        except (ValueError, OSError, KeyError):
            chosen = None
        if chosen is None:
            return
        if self.current_round is not None and chosen.path == self.current_round.path:
            return
        self.current_round = chosen
        self.round_hint.value = round_details(chosen)
        self.save_button.enabled = self.more_button.enabled = self.predict_button.enabled = not self.running
        key = (str(chosen.path.parent), chosen.number)
        self.model, self.model_name = self._models.get(key, (None, None))
        image = self.image_combo.value  # the rounds listed are this image's
        # a whole prediction, or the view only
        if image is not None and chosen.attrs.get("prediction") and chosen.prediction_path.exists():
            self._show_prediction(chosen.prediction_path, image, self.fields.each_time_point(image))

    def _round_model(self, r: rounds_io.Round):
        """The model of round ``r`` (this session's, or loaded from its checkpoint)."""
        from ...train.trainer import load_checkpoint

        key = (str(r.path.parent), r.number)
        if key not in self._models:
            model = load_checkpoint(r.model_path)
            self._models[key] = (model, self._register(model, r))
        return self._models[key]

    def _round_name(self, r: rounds_io.Round) -> str:
        """A round's name, as Tiled inference lists its model: "tomogram · round 2"."""
        base = r.attrs.get("name") or self.name_edit.value.strip() or "model"
        return f"{base} · round {r.number}"

    def _register(self, model, r: rounds_io.Round) -> str:
        name = self._round_name(r)
        taken = registered_models()
        unique, k = name, 2
        while unique in taken:  # a model of another session or folder is never replaced
            unique, k = f"{name} ({k})", k + 1
        register_model(unique, model)
        return unique

    # -- running --------------------------------------------------------------------------
    def train(self, *_) -> None:
        """A new round: new networks trained on the labels for the time budget."""
        self._mode = "train"
        self.run()

    def train_more(self, *_) -> None:
        """A new round: the chosen round's model trained on with the labels as they are now."""
        self._mode = "more"
        self.run()

    def predict(self, *_) -> None:
        """Predict the whole image with the chosen round's model (resumes an interrupted run)."""
        self._mode = "predict"
        self.run()

    def stop(self, *_) -> None:
        """End training (or the prediction) after the current step; what is done is kept."""
        if self.running:
            self._stop.set()
            set_status(self.status, "Stopping after the current step…")

    def _starting(self) -> None:
        self.last_event, self.last_predict, self.events_seen = None, None, []
        self._t_saved = self.view_latency_s = None
        self._loss = self._f1 = None
        self._stop.clear()
        self._t0 = time.perf_counter()
        self.progress.value = 0
        self.metrics.value = ""
        for button in (self.more_button, self.predict_button, self.save_button):
            button.enabled = False
        self.round_combo.enabled = False
        set_status(self.status, "Copying the labels and cutting training pairs…" if self._mode != "predict"
                   else "Loading the model…")

    def _idle(self) -> None:
        self._close_view()
        self._mode = "train"  # what run() does next
        self.round_combo.enabled = True
        self.more_button.enabled = self.predict_button.enabled = self.current_round is not None
        self.save_button.enabled = self.current_round is not None

    def _prepare(self):
        image, labels = self.image_combo.value, self.labels_combo.value
        if image is None:
            raise ValueError("choose an image layer")
        self._image = image
        self._each_time_point = self.fields.each_time_point(image)
        source = self.fields.source(image)
        shape, axes = self.fields.tiled_shape(image), self.fields.tiled_axes(image)
        if self._mode == "predict":
            chosen = self._chosen_round()
            model, _ = self._round_model(chosen)
            grid = inference_grid(chosen.attrs["inference"], shape, axes)
            return self._work, (), {"source": source, "chosen": chosen, "model": model, "grid": grid,
                                    "options": self._predict_options(image, grid, whole=True)}
        if labels is None:
            raise ValueError("choose a labels layer")
        if getattr(image, "rgb", False):
            raise ValueError("training on RGB images is not supported; choose a single-channel image")
        self.fields.labels(image, labels)  # the shapes must agree: says so in the fields' words
        grid = self.fields.grid(image)
        if grid.ndim not in (2, 3):
            raise ValueError(f"the windows tile {grid.ndim} axes ({grid.axes}); training takes 2D or 3D windows")
        class_list = self._classes(labels)
        from dataclasses import replace

        recipe = replace(self.recipe, normalisation=NORMALISATIONS[self.normalisation_combo.value].mode)
        parent = parent_model = None
        if self._mode == "more":
            parent = self._chosen_round()
            parent_model, _ = self._round_model(parent)
            if list(parent.attrs.get("classes") or []) != class_list:
                raise ValueError(f"round {parent.number} learnt the classes {', '.join(parent.attrs['classes'])}; "
                                 f"the labels now have {', '.join(class_list)}: press Train to start anew")
            recipe = Recipe.from_json(parent.attrs["recipe"])  # its networks, its normalisation
        self._budget = float(self.more_spin.value if self._mode == "more" else self.seconds_spin.value)
        rounds = self._open_rounds(create=True)
        kwargs = dict(source=source, labels=level0(labels), recipe=recipe, grid=grid, class_names=class_list,
                      budget=self._budget, add_image_axis=not self._each_time_point,
                      parent=parent, parent_model=parent_model, axes=grid.axes, scale=tuple(labels.scale),
                      translate=tuple(labels.translate),
                      overrides={"log_every": STEP_EVENTS, **self.config_overrides},
                      name=self.name_edit.value.strip() or image.name)
        grid = inference_grid(recipe.inference(shape), shape, axes)
        return self._work, (), {"source": source, "rounds": rounds, "round_kwargs": kwargs,
                                "predict_after": bool(self.predict_check.value), "grid": grid,
                                "options": self._predict_options(image, grid)}

    def _predict_options(self, image, grid, whole: bool = False) -> dict:
        """How a round's prediction runs: in view mode, small regions ordered by the view on
        screen (followed from now on, on this thread); with or without uncertainty."""
        self._close_view()
        options = {"uncertainty": self.unsure.wanted}
        order = self.order_combo.value
        if order != WHOLE:
            self.screen = ScreenView(self.viewer, image, self.fields.tiled_axes(image), (1.0,) * len(image.scale),
                                     grid.shape)
            small = view_region(grid)
            options.update(view=self.screen, view_only=order == VIEW_ONLY and not whole, region=small, chunks=small)
        self._rank_grid, self._predict_grid = self.fields.grid(image), grid
        return options

    def _close_view(self) -> None:
        if self.screen is not None:
            self.screen.close()
        self.screen, self._view_progress = None, None

    def _chosen_round(self) -> rounds_io.Round:
        if self.current_round is None:
            raise ValueError("no round yet: press Train first (or choose a rounds folder that holds rounds)")
        return self.current_round

    def _classes(self, labels) -> list[str]:
        """Class names of napari's labels 1, 2, ...; refuses labels of fewer than two classes."""
        counts = count_labels(level0(labels))
        painted = [k for k in range(1, len(counts)) if counts[k]]
        names = class_names(labels)
        if not painted:
            raise ValueError(f"labels layer {labels.name!r} holds no labels: paint some (1, 2, ... are classes)")
        if len(painted) < 2:
            k = painted[0]
            raise ValueError(
                f"labels layer {labels.name!r} holds strokes of one class only (label {k}"
                f"{': ' + names[k] if k in names else ''}): training needs strokes of at least two classes, "
                "for example background and the object to find"
            )
        top = max(painted[-1], *names) if names else painted[-1]
        return [names.get(k, f"class {k}") for k in range(1, top + 1)]

    def _work(self, *, source, grid, rounds=None, round_kwargs=None, predict_after=True, chosen=None, model=None,
              options=None):
        """The job (in a worker thread: it never touches Qt): a round, then its prediction."""
        from ...train.loop import iter_round
        from ...train.trainer import TrainEvent

        stop = self._stop.is_set
        cancel = self.task.cancel_requested
        if chosen is None:
            events = iter_round(rounds, stop=lambda: stop() or cancel.is_set(), **round_kwargs)
            while True:
                try:
                    event = next(events)
                except StopIteration as done:
                    result = done.value
                    break
                yield ("train" if isinstance(event, TrainEvent) else "round-event", event)
            chosen, model = result.round, result.model
            yield ("round", (result, time.perf_counter()))  # the round is saved: the latency starts
            if not predict_after or cancel.is_set():
                return chosen
        yield from _predict(model, source, grid, chosen, lambda: stop() or cancel.is_set(), **(options or {}))
        return chosen


    # -- results ----------------------------------------------------------------------------
    def _on_event(self, item) -> None:
        what, value = item
        if what == "train":
            self._on_train_event(value)
        elif what == "round-event":
            if value.kind == "pairs":
                set_status(self.status, f"Training on {value.message}…")
            elif value.kind == "scores":
                set_status(self.status, "Saving the round…")
        elif what == "round":
            result, self._t_saved = value
            self._on_round(result)
        elif what == "predicting":
            self._predicting = value.prediction_path
            self.progress.value = 0
            where = "the view first" if self.screen is not None else "the whole image"
            set_status(self.status, f"Predicting {where} with round {value.number}…")
        elif what == "predict":
            self._on_predict_event(value)
        elif what in ("predicted", "paused"):
            self.current_round = value
            self.progress.value = self.progress.max
            self.metrics.value = round_scores(value) + self._latency_text()
            self._rank_unsure()
            if what == "paused":
                set_status(self.status, f"Round {value.number}: the view is predicted ({value.prediction_path}). "
                                        "Correct the labels where it is wrong and press Train more; Predict whole "
                                        "image finishes the rest.")
                return
            took = f" in {format_duration(self.last_predict.elapsed)}" if self.last_predict is not None else ""
            set_status(self.status, f"Round {value.number}: the whole image is predicted{took} "
                                    f"({value.prediction_path}). Correct the labels where it is wrong and press "
                                    "Train more, or save the model.")

    def _latency_text(self) -> str:
        if self.view_latency_s is None:
            return ""
        return f"\nPrediction in view {format_duration(self.view_latency_s)} after the round was saved"

    def _rank_unsure(self) -> None:
        problem = self.unsure.try_rank(getattr(self, "_rank_grid", None))
        if problem:
            set_status(self.status, problem, error=True)

    def _on_jump(self, rank: int, score: float) -> None:
        set_status(self.status, f"{self.unsure.jump_text(rank, score)}: paint a few strokes here, then press Train more")

    def _on_train_event(self, event) -> None:
        self.last_event = event
        self.events_seen.append(event.kind)
        if event.loss is not None and event.kind == "step":
            self._loss = event.loss
        if event.val_f1 is not None:
            self._f1 = (event.val_f1, event.val_f1_per_class)
        now = time.perf_counter()
        if event.kind == "step" and now - self._drawn < REDRAW_SECONDS:
            return
        self._drawn = now
        self.progress.value = int(1000 * min(1.0, (time.perf_counter() - self._t0) / max(self._budget, 1e-9)))
        parts = [NETWORK_NAMES.get(event.member, event.member or "network"), f"step {thousands(event.step)}"]
        if self._loss is not None:
            parts.append(f"loss {self._loss:.4f}")
        if self._f1 is not None:
            f1, per_class = self._f1
            names = self._class_names()
            detail = " · ".join(f"{n} {v:.2f}" for n, v in zip(names, per_class or ()) if v == v)
            parts.append(f"val F1 {f1:.3f}" + (f" ({detail})" if detail else ""))
        parts.append(f"{format_duration(time.perf_counter() - self._t0)} of {format_duration(self._budget)}")
        self.metrics.value = " · ".join(parts)
        if event.kind == "start":
            set_status(self.status, f"Training the {NETWORK_NAMES.get(event.member, 'network')}: {event.message}")

    def _class_names(self) -> list[str]:
        labels = self.labels_combo.value
        if labels is None:
            return []
        names = class_names(labels)
        return [names.get(k, f"class {k}") for k in range(1, max([2, *names]) + 1)]

    def _on_round(self, result) -> None:
        """A round is recorded: its model is registered and in use."""
        r = result.round
        name = self._register(result.model, r)
        self._models[(str(r.path.parent), r.number)] = (result.model, name)
        self.model, self.model_name = result.model, name
        self.current_round = r
        self.round_combo.reset_choices()
        self.round_combo.value = r.number
        self.round_hint.value = round_details(r)
        self.progress.value = self.progress.max
        stopped = any(m.get("stopped") for m in r.attrs.get("members", []))
        how = "stopped early" if self._stop.is_set() else "time budget reached" if stopped else "done"
        self.metrics.value = round_scores(r)
        set_status(self.status, f"Round {r.number} {how}: model '{name}' is ready in Tiled inference; "
                                f"recorded in {r.path}")

    def _on_predict_event(self, event) -> None:
        self.last_predict = event
        if event.kind == "start" or (event.kind == "done" and self.probability_layer is None):
            self._show_prediction(self._predicting, self._image, self._each_time_point)
            if event.kind == "start" and self.screen is not None:
                from ...io.prediction import Prediction

                store = Prediction(self._predicting)
                self._view_progress = ViewProgress(self._predict_grid, store.layout["region"],
                                                   store.layout["n_images"], store.finished_regions())
        for layer in (self.probability_layer, self.prediction_labels_layer):
            if layer is not None:
                layer.refresh()
        self.unsure.refresh()
        progress = self._view_progress
        if progress is not None and self.view_latency_s is None:
            if event.region is not None:
                progress.add(event.region)
            if progress.covered(self.screen()) and self._t_saved is not None:
                # the round's effect is on screen (the layers were refreshed just above)
                self.view_latency_s = time.perf_counter() - self._t_saved
        total = max(1, event.windows_total + event.regions_total)
        self.progress.value = int(1000 * (event.windows_done + event.regions_done) / total)
        self.metrics.value = (f"predicting: windows {thousands(event.windows_done)}/{thousands(event.windows_total)}"
                              f" · {format_duration(event.elapsed)}" + self._latency_text())

    def _show_prediction(self, path: Path, image, each_time_point: bool) -> None:
        """Show a round's prediction of ``image``: one probability layer and one labels
        layer per image, re-pointed at each round rather than added again."""
        from ...io.prediction import Prediction
        from .inference import foreground_channel

        store = Prediction(path)
        if image is None or not store.layout["probabilities"]:
            return
        # this image's layers; another image's are left showing its own prediction
        self.probability_layer, self.prediction_labels_layer = self._layers_of.get(id(image), (None, None))
        where = {"scale": image.scale, "translate": image.translate}
        which = None if each_time_point else 0
        fg = foreground_channel(store.layout["channels"])
        data, multiscale = store_views(store, "probabilities", fg, image=which)
        names = self._class_names()
        title = f"{image.name} · P({names[fg] if fg < len(names) else f'class {fg + 1}'})"
        if self.probability_layer is not None and self.probability_layer in self.viewer.layers:
            self.probability_layer.data = data
        else:
            self.probability_layer = self.viewer.add_image(
                data, name=title, colormap="magma", blending="additive", contrast_limits=(0.0, 1.0), opacity=0.7,
                multiscale=multiscale, **where)
        data, multiscale = store_views(store, "labels", image=which)
        if self.prediction_labels_layer is not None and self.prediction_labels_layer in self.viewer.layers:
            self.prediction_labels_layer.data = data
        else:
            self.prediction_labels_layer = self.viewer.add_labels(
                data, name=f"{image.name} · predicted labels", opacity=0.5, visible=False, multiscale=multiscale,
                **where)
        self._layers_of[id(image)] = (self.probability_layer, self.prediction_labels_layer)
        if store.layout.get("uncertainty"):
            self.unsure.show(store, where, each_time_point, image.name)
        labels = self.labels_combo.value
        if labels is not None and labels in self.viewer.layers:
            self.viewer.layers.selection.active = labels  # ready to paint the next strokes

    def _on_layer_removed(self, event) -> None:
        if event.value is self.probability_layer:
            self.probability_layer = None
        if event.value is self.prediction_labels_layer:
            self.prediction_labels_layer = None

    def _on_returned(self, result) -> None:
        self._idle()

    def _on_cancelled(self) -> None:
        self._idle()
        set_status(self.status, "Cancelled: an unfinished round is not recorded")

    def save(self, *_) -> None:
        """Write the chosen round's model to the chosen file (only a napari-qlty model file is replaced)."""
        try:
            path = self._save()
        except Exception as e:
            set_status(self.status, f"Could not save the model: {error_text(e)}", error=True)
            notify_error(e)
            return
        self.saved_to = path
        set_status(self.status, f"Saved round {self.current_round.number} to {path}: Tiled inference, the command "
                                f"line (--model {path.name}) and a cluster can load it")

    def _save(self):
        import shutil

        from ...models.checkpoints import checkpoint_recipe

        if self.current_round is None:
            raise ValueError("train a model first")
        text = str(self.save_path.value).strip()
        if text in ("", "."):
            raise ValueError("choose where to save the model (save model to)")
        path = Path(text).expanduser()
        if path.suffix != ".pt":
            path = path.with_name(path.name + ".pt")
        if path.exists() and (path.is_dir() or checkpoint_recipe(path) is None):
            raise ValueError(f"{path} holds something that is not a napari-qlty model; it is left untouched")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        shutil.copyfile(self.current_round.model_path, partial)
        partial.replace(path)
        return path

    def _fail(self, exc) -> None:
        self._idle()
        set_status(self.status, f"Training failed: {error_text(exc)}", error=True)
        notify_error(exc)

    # -- bioimage.io --------------------------------------------------------------------------
    def _add_package_export(self) -> None:
        self.package_button = PushButton(text="Export for bioimage.io")
        self.package_button.tooltip = ("Write the trained model as a bioimage.io package (.zip beside 'save model "
                                       "to'): deepImageJ, ilastik and the Model Zoo's tools run it")
        self.append(self.package_button)
        self.package_button.changed.connect(self.export_package)
        # validating the package and running its test takes a while: off the GUI thread
        self._package_task = BackgroundTask(
            self, self.package_button, on_yield=lambda _: None, on_error=self._package_failed,
            on_return=lambda path: set_status(
                self.status, f"Exported '{self._exporting}' to {path}: a bioimage.io package (validated)"),
        )
        self._exporting = ""

    def export_package(self, *_):
        """Write the trained model as a bioimage.io package beside "save model to" (only a
        package napari-qlty exported is replaced); its test input is cut from the image.
        The export runs in the background; the status says when it is written."""
        from pathlib import Path

        try:
            if self.current_round is None:
                raise ValueError("train a model first")
            text = str(self.save_path.value).strip()
            if text in ("", "."):
                raise ValueError("choose where to save the model (save model to): the package goes beside it")
            image = self.image_combo.value
            if image is None:
                raise ValueError("choose the image the model was trained on: the package's test input comes from it")
            path = Path(text).expanduser().with_suffix(".zip")
            self._exporting = self.model_name or self._round_name(self.current_round)
            # the round's checkpoint: its recipe (networks, window, classes, normalisation) goes along
            self._package_task.start(_export_package, self.current_round.model_path, path,
                                     self.fields.source(image), self._exporting)
        except Exception as e:
            self._package_failed(e)
            return None
        set_status(self.status, f"Exporting round {self.current_round.number} ('{self._exporting}') to {path}: "
                                "writing the package, validating it and checking it reproduces its test result…")
        return path

    def _package_failed(self, exc) -> None:
        set_status(self.status, f"Could not export the model: {error_text(exc)}", error=True)
        notify_error(exc)


def _export_package(checkpoint, path, source, name):
    """The export job (a generator, as background jobs are): returns the package's path."""
    from ...models.bioimageio import export_package

    yield "exporting"
    export_package(checkpoint, path, source, name=name, overwrite=True)
    return path


def inference_grid(settings: dict, shape, axes: str):
    """The grid of a round's inference settings over an image's tiled axes."""
    from ...core.grid import Grid

    return Grid(tuple(shape), window=settings["window"], step=settings["step"], border=settings["border"], axes=axes)


def _predict(model, source, grid, chosen: rounds_io.Round, cancelled, **options):
    """The job's second half: the image through a round's model, into the round (the view
    first with ``view``, only the view with ``view_only``; see :func:`iter_predict`).

    The prediction is the round's own: made again (replaced) when asked for with other
    outputs (uncertainty or not), resumed otherwise."""
    from ...core.weights import Weighting
    from ...run import Cancelled, iter_predict

    settings = chosen.attrs["inference"]
    yield ("predicting", chosen)
    last = None
    try:
        for event in iter_predict(model, source, grid, chosen.prediction_path, postprocess="softmax",
                                  weighting=Weighting(settings["weighting"], border_weight=settings["border_weight"]),
                                  batch_size=1, cancelled=cancelled, overwrite=True, **options):
            last = event
            yield ("predict", event)
    except Cancelled:
        return
    complete = last is not None and last.kind == "done"
    yield ("predicted" if complete else "paused",
           chosen.update(prediction={"path": rounds_io.PREDICTION, "complete": complete}))


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^\w.-]+", "_", name or "labels").strip("_") or "labels"
