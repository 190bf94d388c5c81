"""The Train widget on a second image in the same session: the first image's prediction
stays on screen, the second gets layers of its own, and the rounds listed follow the
image chosen. (Re-pointing the first image's layers at a prediction of another shape
left napari's view of them stale: every layer added afterwards failed to draw.)"""

from __future__ import annotations

import numpy as np

TIMEOUT_MS = 120_000
TINY = {"nets": {"unet": {"channels": 4, "levels": 1}, "msdnet": {"layers": 3, "max_dilation": 2}},
        "patch": 16, "batch_size": 2, "epochs": 2, "steps_per_epoch": 3, "val_samples": 4, "threads": 1,
        "max_seconds": None}


def strokes(image: np.ndarray) -> np.ndarray:
    """Class 1 on the darkest, class 2 on the brightest voxels of the middle plane, every 5th."""
    labels = np.zeros(image.shape, np.uint8)
    middle = tuple(s // 2 for s in image.shape[:-2])
    plane = image[middle]
    lo, hi = np.percentile(plane, [3, 97])
    for value, mask in ((1, plane <= lo), (2, plane >= hi)):
        ys, xs = np.nonzero(mask)
        labels[middle + (ys[::5], xs[::5])] = value
    return labels


def train(widget, image, labels, window: str, qtbot) -> None:
    widget.image_combo.value, widget.labels_combo.value = image, labels
    widget.window_edit.value, widget.step_edit.value, widget.border_edit.value = window, window, "0"
    widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.outcome == "done", widget.status.value


def test_a_second_image_gets_its_own_prediction_layers(viewer, qtbot, tomogram, tmp_path):
    from real_images import catalogue

    from napari_qlty._napari import unregister_model
    from napari_qlty._napari._registry import registered_models
    from napari_qlty._napari.widgets.train import TrainWidget

    volume = viewer.add_image(tomogram.image, name="tomogram")
    volume_labels = viewer.add_labels((tomogram.annotations.astype(np.int16) + 1).astype(np.uint8), name="strokes")
    cell = catalogue()["cell uint8"][0][:96, :96]
    flat = viewer.add_image(cell, name="cell")
    flat_labels = viewer.add_labels(strokes(cell), name="cell strokes")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.config_overrides = dict(TINY)
    widget.rounds_edit.value = tmp_path / "tomogram.rounds"
    before = set(registered_models())
    try:
        train(widget, volume, volume_labels, "32", qtbot)
        first = widget.probability_layer
        assert first.data.shape == volume.data.shape and first.name.startswith("tomogram")

        widget.rounds_edit.value = tmp_path / "cell.rounds"
        train(widget, flat, flat_labels, "32", qtbot)
        second = widget.probability_layer
        assert second is not first and second.name.startswith("cell")
        assert second.data.shape == cell.shape
        assert first in viewer.layers and first.data.shape == volume.data.shape  # still the tomogram's
        for layer in viewer.layers:
            assert layer.extent.data.shape[1] == layer.ndim, layer.name
        viewer.add_image(np.zeros((8, 8), np.float32), name="drawn after")  # raised IndexError before

        # the rounds listed follow the image: away to the cell and back to the tomogram
        widget.rounds_edit.value = tmp_path / "tomogram.rounds"
        widget.image_combo.value = flat
        assert widget.round_combo.choices == ()  # the tomogram's rounds are not the cell's
        widget.image_combo.value = volume
        assert widget.round_combo.choices == (1,) and widget.more_button.enabled
        # going back shows the tomogram's round in the tomogram's layers, not in the cell's (nor in new ones)
        assert widget.probability_layer is first and first.data.shape == volume.data.shape
        assert second.data.shape == cell.shape
        assert sum(layer.name.startswith("tomogram · P(") for layer in viewer.layers) == 1
    finally:
        for name in set(registered_models()) - before:
            unregister_model(name)
