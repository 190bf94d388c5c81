"""What a newcomer met walking the widgets in a real viewer (1600 x 1000 under Xvfb):
each test is one thing that looked wrong on screen, and stays right."""

from __future__ import annotations

import numpy as np
import pytest

TIMEOUT_MS = 90_000


@pytest.fixture
def conv_inference(viewer, tmp_path):
    """Tiled inference set up on a uint8 stack with a registered conv, ready to Run into
    ``tmp_path / "out.zarr"``."""
    import torch

    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (12, 30, 26), dtype=np.uint8), name="stack")
    torch.manual_seed(0)
    register_model("conv", torch.nn.Conv3d(1, 2, 3, padding=1))
    try:
        w = InferenceWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.image_combo.value, w.model_combo.value = image, "conv"
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "8, 10, 10", "6, 8, 8", "1"
        w.output_edit.value = tmp_path / "out.zarr"
        yield w
    finally:
        unregister_model("conv")


def test_grid_preview_draws_over_an_image_added_after_it(viewer, qtbot):
    """Switching the preview to an image opened later keeps its windows and seams on top
    of that image: an opaque RGB photo hid them (the layers were only renamed)."""
    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget

    first = viewer.add_image(np.zeros((120, 100), np.uint8), name="first")
    preview = GridPreviewWidget(viewer)
    viewer.window.add_dock_widget(preview)
    preview.window_edit.value, preview.step_edit.value, preview.border_edit.value = "32", "24", "4"
    preview.refresh()
    assert preview.windows_layer is not None
    photo = viewer.add_image(np.full((120, 100, 3), 200, np.uint8), name="photo", rgb=True)
    preview.image_combo.value = photo
    preview.refresh()
    qtbot.wait(50)
    layers = list(viewer.layers)
    assert layers.index(preview.windows_layer) > layers.index(photo)
    assert layers.index(preview.seams_layer) > layers.index(photo)
    assert len(preview.windows_layer.data) > 0
    assert first in viewer.layers


def test_other_parameters_are_said_in_the_widgets_words(conv_inference, qtbot):
    """Running into a prediction made with other parameters names what differs as the
    fields show it ("step: stored 6 × 5 × 5, now 4"; "uncertainty: stored off, now on"):
    no Python lists, None or quotes. The folder is left as it was."""
    w = conv_inference
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert w.outcome == "done", w.status.value
    w.step_edit.value = "4"
    w.unsure.check.value = True
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    message = w.status.value
    assert w.outcome == "error", message
    assert "step: stored 6 × 8 × 8, now 4" in message
    assert "uncertainty: stored off, now on" in message
    for python in ("[", "None", "'"):
        assert python not in message, message


def test_export_for_bioimageio_runs_in_the_background_and_names_the_round(viewer, sample_layers, tmp_path, qtbot):
    """Export for bioimage.io validates, reloads and test-runs the package (a minute on a
    laptop): napari stays usable and the status says what is going on, and a round reopened
    in a new session is named as in Tiled inference (it said "Exported 'None'")."""
    from napari_qlty._napari import unregister_model
    from napari_qlty._napari._registry import registered_models
    from napari_qlty._napari.widgets.train import TrainWidget
    from napari_qlty.io import labels_store

    image, sparse = sample_layers
    viewer.add_image(image, name="tomogram")
    names = {1: "background", 2: "filament"}
    store = labels_store.create(tmp_path / "strokes.zarr", image.shape, names)
    store[...] = sparse.astype(np.uint8)
    strokes = viewer.add_labels(store, name="strokes", features=labels_store.features_table(names))
    before = set(registered_models())
    try:
        first = TrainWidget(viewer)
        viewer.window.add_dock_widget(first)
        first.window_edit.value, first.step_edit.value = "32", "16"
        first.config_overrides = {"nets": {"unet": {"channels": 4, "levels": 1}}, "patch": 16, "batch_size": 2,
                                  "epochs": 1, "steps_per_epoch": 2, "val_samples": 4, "threads": 1}
        first.predict_check.value = False
        first.train()
        qtbot.waitUntil(lambda: not first.running, timeout=TIMEOUT_MS)
        assert first.outcome == "done", first.status.value
        viewer.window.remove_dock_widget(first.native)

        # a new session: the labels' rounds are listed, nothing trained here
        widget = TrainWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.labels_combo.value = strokes
        assert widget.round_combo.value == 1 and widget.model_name is None
        widget.save_path.value = tmp_path / "model.pt"
        widget.package_button.native.click()
        assert "Exporting round 1" in widget.status.value
        assert not widget.package_button.enabled  # still running: the click came back at once
        qtbot.waitUntil(lambda: widget.package_button.enabled, timeout=TIMEOUT_MS)
        assert (tmp_path / "model.zip").is_file(), widget.status.value
        assert widget.status.value.startswith("Exported 'tomogram · round 1' to "), widget.status.value
        assert "None" not in widget.status.value
    finally:
        for name in set(registered_models()) - before:
            unregister_model(name)


def test_the_uncertainty_layer_adds_nothing_where_the_model_is_sure(viewer, qtbot, tmp_path):
    """The uncertainty layer is blended additively over the image: zero uncertainty (and
    regions not run yet) must add no colour. Viridis starts at dark purple, which tinted
    the whole image purple, finished or not."""
    import torch

    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (12, 30, 26), dtype=np.uint8), name="stack")
    register_model("conv", torch.nn.Conv3d(1, 2, 3, padding=1))
    try:
        w = InferenceWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.image_combo.value, w.model_combo.value = image, "conv"
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "8, 10, 10", "6, 8, 8", "1"
        w.output_edit.value = tmp_path / "out.zarr"
        w.unsure.check.value = True
        w.run()
        qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
        assert w.outcome == "done", w.status.value
        layer = w.unsure.layer
        assert layer is not None and layer.blending == "additive"
        low = layer.contrast_limits[0]
        assert np.allclose(layer.colormap.map(np.array([0.0]))[0, :3], 0, atol=0.02), low
    finally:
        unregister_model("conv")


def test_tiled_inference_names_the_probability_by_the_models_class(viewer, qtbot, tmp_path):
    """A model that names its classes shows "P(cell)", as the Train widget and the reader
    do, not "P(class 1)"."""
    import torch

    from napari_qlty._napari.widgets.inference import MODEL_FILE, InferenceWidget
    from napari_qlty.train import save_checkpoint
    from napari_qlty.train.networks import msdnet

    torch.manual_seed(0)
    kwargs = {"dims": 2, "layers": 2}
    model = save_checkpoint(msdnet(**kwargs).eval(), tmp_path / "cells.pt", "napari_qlty.train.networks:msdnet",
                            kwargs, {"window": [32, 32], "axes": "yx", "classes": ["background", "cell"]})
    image = viewer.add_image(np.random.default_rng(1).integers(0, 200, (60, 50), dtype=np.uint8), name="cells")
    w = InferenceWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_combo.value, w.model_combo.value = image, MODEL_FILE
    w.model_path.value = model
    w.step_edit.value, w.border_edit.value = "24", "4"
    w.output_edit.value = tmp_path / "out.zarr"
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert w.outcome == "done", w.status.value
    assert w.probability_layer.name == "out · P(cell)"


def test_cancel_pressed_as_the_run_finishes_says_it_is_done(conv_inference, qtbot, tmp_path):
    """Cancel pressed when the last region is already written: the result is complete, so
    the widget says Done (it said "Cancelled after 1 of 1 regions … press Run to resume")."""
    from napari_qlty.io.prediction import Prediction

    w = conv_inference
    w.run()
    # the person presses Cancel as the last event ("done") arrives
    w.worker.yielded.connect(lambda event: w.cancel() if event.kind == "done" else None)
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert w.last_event.kind == "done"
    assert w.status.value.startswith("Done"), w.status.value
    assert "resume" not in w.status.value
    store = Prediction(tmp_path / "out.zarr")
    assert len(store.finished_regions()) == w.last_event.regions_total
