"""The interactive loop in a real viewer: paint, Train, Train more, go back a round, predict,
save; every round recorded beside the labels store. Bounded by steps, never by seconds."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_qlty.io import labels_store
from napari_qlty.io.prediction import Prediction
from napari_qlty.io.rounds import Rounds

TIMEOUT_MS = 120_000
#: tiny networks, a handful of steps (both networks of the recipe run)
TINY = {"nets": {"unet": {"channels": 4, "levels": 1, "norm": "batch"}, "msdnet": {"layers": 3, "max_dilation": 2}},
        "patch": 16, "batch_size": 2, "epochs": 2, "steps_per_epoch": 3, "val_samples": 4, "threads": 1}


def layer_store(layer) -> str:
    """Where a prediction layer reads from (its finest level)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return str(data.array.array.store_path)


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


@pytest.fixture
def loop(viewer, tomogram, tmp_path):
    """The sample as a newcomer has it after Sparse labelling: strokes in a labels store."""
    from napari_qlty._napari import unregister_model
    from napari_qlty._napari._registry import registered_models
    from napari_qlty._napari.widgets.train import TrainWidget

    image = viewer.add_image(tomogram.image, name="tomogram")
    store = labels_store.create(tmp_path / "strokes.zarr", tomogram.image.shape, {1: "background", 2: "filament"})
    store[...] = (tomogram.annotations.astype(np.int16) + 1).astype(np.uint8)
    layer = viewer.add_labels(store, name="strokes", features=labels_store.features_table(
        {1: "background", 2: "filament"}))
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.window_edit.value, widget.step_edit.value = "32", "16"
    widget.config_overrides = dict(TINY)
    before = set(registered_models())
    yield widget, image, layer, store
    for name in set(registered_models()) - before:
        unregister_model(name)


def test_rounds_are_recorded_beside_the_labels_and_can_be_gone_back_to(loop, viewer, qtbot, tmp_path):
    from napari_qlty._napari._registry import registered_models
    from napari_qlty._napari.widgets.inference import InferenceWidget

    widget, image, layer, store = loop
    assert widget.rounds_path() == tmp_path / "strokes.rounds"
    assert "strokes.rounds" in widget.rounds_hint.value
    assert not widget.more_button.enabled and not widget.predict_button.enabled  # no round yet

    # round 1: Train, then the whole image is predicted into the round
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    rounds = Rounds.open(tmp_path / "strokes.rounds", image.data.shape)
    (first,) = rounds.rounds()
    assert widget.current_round.number == 1 and widget.round_combo.value == 1
    assert widget.model_name == "tomogram · round 1" and widget.model_name in registered_models()
    assert (first.attrs.get("prediction") or {}).get("complete")
    assert "background" in widget.metrics.value and "filament" in widget.metrics.value  # per-class F1
    assert "held-out F1" in widget.metrics.value
    assert Prediction(first.prediction_path).labels().shape == (1, *image.data.shape)
    assert widget.probability_layer is not None and widget.probability_layer.data.shape == image.data.shape
    assert widget.prediction_labels_layer.data.shape == image.data.shape
    assert viewer.layers.selection.active is layer  # ready for the next strokes
    seen = [lyr.name for lyr in viewer.layers]

    # new strokes, then Train more: a new round continues round 1 on the labels as they are now
    store[4, 10:20, 10:12] = 2
    widget.train_more()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    second = rounds.get(2)
    assert second.parent == 1 and second.attrs["kind"] == "train more"
    assert (zarr.open_array(str(second.labels_path))[4, 10:20, 10:12] == 2).all()
    assert not (zarr.open_array(str(first.labels_path))[4, 10:20, 10:12] == 2).all()
    assert [lyr.name for lyr in viewer.layers] == seen  # the prediction layers were re-pointed, not added
    assert "round-002" in layer_store(widget.probability_layer)
    assert {"tomogram · round 1", "tomogram · round 2"} <= set(registered_models())

    # going back: round 1's model and prediction are the ones in use
    widget.round_combo.value = 1
    assert widget.current_round.number == 1 and "round-001" in layer_store(widget.probability_layer)
    assert "trained from scratch" in widget.round_hint.value
    widget.predict()  # already complete: nothing is recomputed, nothing is replaced
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    # Train more from round 1 branches off: round 3, parent 1; round 2 stays
    widget.train_more()
    wait_idle(qtbot, widget)
    assert [(r.number, r.parent) for r in rounds.rounds()] == [(1, None), (2, 1), (3, 1)]

    # Save model writes the chosen round's model; Tiled inference takes it and its settings
    widget.round_combo.value = 2
    widget.save_path.value = tmp_path / "chosen.pt"
    widget.save()
    assert widget.saved_to == tmp_path / "chosen.pt"
    assert (tmp_path / "chosen.pt").read_bytes() == second.model_path.read_bytes()
    inference = InferenceWidget(viewer)
    viewer.window.add_dock_widget(inference)
    inference.model_combo.value = "tomogram · round 2"
    # the recipe's inference settings (window 128, step 108, border 10, weight 0), clipped to the
    # image; 16 deep with a border of the networks' context (2) along z
    assert (inference.window_edit.value, inference.step_edit.value, inference.border_edit.value) == \
        ("16, 64, 48", "12, 64, 48", "2, 10, 10")
    assert inference.weighting_combo.value == "border" and inference.border_weight_spin.value == 0.0

    # a file that is not a model is never replaced
    (tmp_path / "notes.pt").write_text("mine")
    widget.save_path.value = tmp_path / "notes.pt"
    widget.save()
    assert "not a napari-qlty model; it is left untouched" in widget.status.value
    assert (tmp_path / "notes.pt").read_text() == "mine"


def test_train_twice_under_one_name_replaces_nothing(loop, qtbot, tmp_path):
    from napari_qlty._napari._registry import registered_models

    widget, _, _, _ = loop
    widget.predict_check.value = False
    widget.name_edit.value = "my model"
    for _ in range(2):
        widget.train()
        wait_idle(qtbot, widget)
        assert widget.outcome == "done", widget.status.value
    assert {"my model · round 1", "my model · round 2"} <= set(registered_models())
    rounds = Rounds.open(tmp_path / "strokes.rounds", widget.image_combo.value.data.shape)
    assert [(r.number, r.parent, r.attrs["kind"]) for r in rounds.rounds()] == [(1, None, "train"), (2, None, "train")]
    assert all(not r.prediction_path.exists() for r in rounds.rounds())


def test_a_rounds_folder_holding_something_else_is_refused_in_the_fields_words(loop, qtbot, tmp_path):
    widget, _, _, _ = loop
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.txt").write_text("keep")
    widget.rounds_edit.value = theirs
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.outcome == "error"
    text = widget.status.value
    assert "not the rounds of a napari-qlty loop; it is left untouched: choose another rounds folder" in text
    assert "Traceback" not in text and "--" not in text
    assert sorted(p.name for p in theirs.iterdir()) == ["data.txt"]


def test_train_more_needs_a_round_and_says_so(loop, qtbot):
    widget, _, _, _ = loop
    widget.train_more()
    wait_idle(qtbot, widget)
    assert widget.outcome == "error" and "no round yet: press Train first" in widget.status.value


def test_stop_keeps_the_round_and_a_cancel_leaves_nothing(loop, qtbot, tmp_path):
    widget, image, _, _ = loop
    widget.config_overrides = {**TINY, "epochs": 10_000}  # far more steps than the test waits for
    widget.predict_check.value = False
    widget.train()
    qtbot.waitUntil(lambda: "step" in widget.events_seen, timeout=TIMEOUT_MS)
    widget.stop()
    wait_idle(qtbot, widget)
    assert widget.outcome == "stopped", widget.status.value
    rounds = Rounds.open(tmp_path / "strokes.rounds", image.data.shape)
    (r,) = rounds.rounds()
    assert [(m["arch"], m["stopped"]) for m in r.attrs["members"]] == [("unet", True)]
    assert "stopped early" in widget.status.value
    # a cancel (closing the dock does the same) records nothing and leaves no partial round
    widget.train()
    qtbot.waitUntil(lambda: "step" in widget.events_seen, timeout=TIMEOUT_MS)
    widget.task.cancel()
    wait_idle(qtbot, widget)
    assert widget.outcome == "cancelled"
    assert [p.name for p in sorted(rounds.path.iterdir())] == ["round-001", "zarr.json"]


def look_at(viewer, z: float, y: float, x: float, voxels: float) -> None:
    """Show slice ``z`` centred on (y, x), about ``voxels`` across the canvas."""
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, z)
    viewer.scene.camera.center = (y, x)
    viewer.scene.camera.zoom = min(viewer.canvas.size) / voxels


def test_a_round_s_prediction_shows_the_view_first_and_says_how_soon(loop, viewer, qtbot, tmp_path):
    """After Train and Train more the new round predicts the view on screen first (here: the
    view only), shows how long after the round was saved, where the model is unsure, and
    Predict whole image finishes the rest to the bytes of a whole run."""
    from dataclasses import replace

    from napari_qlty._napari.widgets.train import VIEW_ONLY

    widget, image, layer, store = loop
    widget.recipe = replace(widget.recipe, infer_window=16, infer_step=12, infer_border=2)  # several windows
    look_at(viewer, z=20, y=8, x=8, voxels=8)
    widget.order_combo.value = VIEW_ONLY
    widget.unsure.check.value = True
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    rounds = Rounds.open(tmp_path / "strokes.rounds", image.data.shape)
    first = rounds.get(1)
    assert first.attrs["prediction"]["complete"] is False
    pred = Prediction(first.prediction_path)
    total = int(np.prod(pred.layout["region_counts"]))
    assert 0 < len(pred.finished_regions()) < total
    assert widget.view_latency_s is not None
    assert "Prediction in view" in widget.metrics.value and "after the round was saved" in widget.metrics.value
    assert "the view is predicted" in widget.status.value
    on_screen = pred.probabilities()[0, 1, 20, 4:12, 4:12]
    assert (pred.labels()[0, 20, 4:12, 4:12] >= 0).all() and on_screen.max() > 0  # written
    # where the model is unsure: a layer, and the training windows ranked as points
    assert pred.layout["uncertainty"] == ["windows", "members", "entropy"]  # the recipe's ensemble
    assert widget.unsure.layer in viewer.layers and widget.unsure.kind_combo.value == "members"
    assert widget.unsure.spots_layer in viewer.layers and len(widget.unsure.spots) > 0
    widget.unsure.next_button.changed.emit(True)
    assert "paint a few strokes here" in widget.status.value

    # new strokes, Train more: the view again, and its latency
    store[20, 2:6, 2:6] = 2
    widget.train_more()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    second = rounds.get(2)
    assert second.attrs["prediction"]["complete"] is False and widget.view_latency_s is not None
    assert "round-002" in layer_store(widget.probability_layer)
    # Predict whole image finishes it: what the view showed is what a whole run gives
    shown = Prediction(second.prediction_path).probabilities()[0, :, 20, 4:12, 4:12]
    widget.predict()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    done = Prediction(rounds.get(2).prediction_path)
    assert done.complete and rounds.get(2).attrs["prediction"]["complete"] is True
    np.testing.assert_array_equal(done.probabilities()[0, :, 20, 4:12, 4:12], shown)
    from napari_qlty.run import predict
    from napari_qlty.core.weights import Weighting

    model, _ = widget._round_model(rounds.get(2))
    grid = widget.recipe.inference_grid(image.data.shape)
    predict(model, image.data, grid, tmp_path / "whole.zarr", postprocess="softmax", axes="zyx",
            weighting=Weighting("border", border_weight=0.0), batch_size=1, uncertainty=True,
            region=done.layout["region"], chunks=done.layout["chunks"])
    np.testing.assert_array_equal(Prediction(tmp_path / "whole.zarr").probabilities()[...], done.probabilities()[...])
