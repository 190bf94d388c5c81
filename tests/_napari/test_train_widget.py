"""The Train widget: sparse labels -> a model registered for Tiled inference."""

from __future__ import annotations

WORKER_TIMEOUT_MS = 30_000

TINY = {"nets": {"unet": {"channels": 4, "levels": 2}, "msdnet": {"layers": 3, "max_dilation": 2}}, "patch": 16,
        "batch_size": 2, "steps_per_epoch": 3, "val_samples": 4, "threads": 1}
#: a run bounded by steps, not seconds: two epochs of three steps on any machine
TWO_EPOCHS = {"epochs": 2, "max_seconds": None}


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=WORKER_TIMEOUT_MS)


def _widget(viewer, sample_layers):
    from napari_qlty._napari.widgets.train import TrainWidget

    image, sparse = sample_layers
    viewer.add_image(image, name="tomogram")
    labels = viewer.add_labels(sparse, name="sparse")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.labels_combo.value is labels
    assert (widget.window_edit.value, widget.step_edit.value) == ("64", "32")
    assert widget.seconds_spin.value == 60
    widget.window_edit.value, widget.step_edit.value = "32", "16"
    widget.config_overrides = dict(TINY)
    widget.predict_check.value = False
    return widget


def test_train_registers_model_for_inference(viewer, sample_layers, qtbot):
    from napari_qlty._napari import registered_models, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    widget = _widget(viewer, sample_layers)
    widget.config_overrides.update(TWO_EPOCHS)
    widget.name_edit.value = "test model"
    try:
        widget.run()
        assert widget.running
        wait_idle(qtbot, widget)
        assert widget.outcome == "done", widget.status.value
        assert "step" in widget.events_seen and "epoch" in widget.events_seen
        assert "Round 1:" in widget.metrics.value  # its held-out F1 per class (or why there is none)
        assert "model 'test model · round 1' is ready in Tiled inference" in widget.status.value
        assert registered_models()["test model · round 1"] is widget.model
        inference = InferenceWidget(viewer)
        viewer.window.add_dock_widget(inference)
        assert "test model · round 1" in inference.model_combo.choices
    finally:
        unregister_model("test model · round 1")


def test_train_stop_ends_run(viewer, sample_layers, qtbot):
    from napari_qlty._napari import registered_models, unregister_model

    widget = _widget(viewer, sample_layers)
    widget.seconds_spin.value = 600
    widget.name_edit.value = "stopped model"
    try:
        widget.run()
        widget.worker.yielded.connect(lambda item: widget.stop() if item[0] == "train" and item[1].kind == "step" else None)
        wait_idle(qtbot, widget)
        assert widget.outcome == "stopped", widget.status.value
        assert widget.last_event.kind == "stopped"
        assert widget.last_event.elapsed < 30
        assert "stopped model · round 1" in registered_models()
    finally:
        unregister_model("stopped model · round 1")


def test_train_errors_are_shown(viewer, sample_layers, qtbot):
    widget = _widget(viewer, sample_layers)
    widget.window_edit.value = "abc"
    widget.run()
    assert not widget.running
    assert widget.outcome == "error"
    assert "window" in widget.status.value and "not a number" in widget.status.value
