"""bioimage.io packages in the widgets: one loaded into Tiled inference (window, halo and the
tick box that accepts its code), and the Train widget's export."""

from __future__ import annotations

import numpy as np
from package_builders import REACH, build_package

from napari_qlty import Weighting, infer
from napari_qlty.models.bioimageio import load_package, package_grid, read_package
from napari_qlty.io.prediction import Prediction

WORKER_TIMEOUT_MS = 60_000


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=WORKER_TIMEOUT_MS)


def test_a_package_in_tiled_inference(viewer, sample_layers, tmp_path, qtbot):
    from napari_qlty._napari.widgets.inference import InferenceWidget

    image, _ = sample_layers
    viewer.add_image(image, name="tomogram")
    path = build_package(tmp_path / "p", dims=3, test_shape=(1, 1, 20, 24, 32), valid=(8, 4),
                         weights=("pytorch_state_dict",), zipped=True)
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_path.value = path
    hint = widget.model_hint.value
    assert "bioimage.io package 'small network'" in hint and f"halo {REACH}" in hint and "8 + k*4" in hint
    assert not widget.package.accept.native.isHidden() and "arch.py" in widget.package.accept.text
    assert widget.border_edit.value == str(REACH) and widget.border_weight_spin.value == 0.0
    assert widget.postprocess_combo.value == "none"
    widget.output_edit.value = tmp_path / "out.zarr"

    widget.run()  # not accepted: nothing of the package's runs
    wait_idle(qtbot, widget)
    assert widget.outcome == "error" and "tick" in widget.status.value and "arch.py" in widget.status.value
    assert "--" not in widget.status.value

    widget.package.accept.value = True
    widget.window_edit.value, widget.step_edit.value = "21", "8"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "error"
    assert "window along z must be a size the model takes: 8 + k*4 (8, 12, 16, 20, ...); got 21" in widget.status.value

    widget.window_edit.value, widget.step_edit.value = "16, 20, 20", "12, 16, 16"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    package = read_package(path)
    grid = package_grid(package, image.shape, window=(16, 20, 20), step=(12, 16, 16))
    expected = infer(load_package(path, accept_code=True), image[None, None], grid, Weighting("border", 0.0))
    got = Prediction(tmp_path / "out.zarr").probabilities()[...]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-6)


def test_train_then_export_for_bioimageio(viewer, sample_layers, tmp_path, qtbot):
    """A round trained in the Train widget leaves as a package that validates and carries
    the round's normalisation and class names."""
    from napari_qlty._napari import unregister_model
    from napari_qlty._napari._registry import registered_models
    from napari_qlty._napari.widgets.train import TrainWidget
    from napari_qlty.io import labels_store

    image, sparse = sample_layers
    viewer.add_image(image, name="tomogram")
    store = labels_store.create(tmp_path / "strokes.zarr", image.shape, {1: "background", 2: "filament"})
    store[...] = sparse.astype(np.uint8)
    viewer.add_labels(store, name="strokes",
                      features=labels_store.features_table({1: "background", 2: "filament"}))
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.window_edit.value, widget.step_edit.value = "32", "16"
    widget.config_overrides = {"nets": {"unet": {"channels": 4, "levels": 1}}, "patch": 16, "batch_size": 2,
                               "epochs": 1, "steps_per_epoch": 2, "val_samples": 4, "threads": 1}
    widget.predict_check.value = False
    before = set(registered_models())
    widget.package_button.native.click()  # the button, before any training
    assert "train a model first" in widget.status.value
    try:
        widget.train()
        wait_idle(qtbot, widget)
        assert widget.outcome == "done", widget.status.value
        widget.save_path.value = tmp_path / "model.pt"
        widget.package_button.native.click()
        qtbot.waitUntil(lambda: widget.package_button.enabled, timeout=WORKER_TIMEOUT_MS)  # it runs in the background
        written = tmp_path / "model.zip"
        assert written.is_file(), widget.status.value
        assert "bioimage.io package" in widget.status.value
        package = read_package(written)
        assert package.name == "tomogram - round 1"  # the Zoo allows no '·' in a name
        assert package.input.space == ("z", "y", "x")
        assert package.input.processing.describe().startswith("zero_mean_unit_variance")  # the recipe's default
        assert package.classes == ("background", "filament")
    finally:
        for name in set(registered_models()) - before:
            unregister_model(name)
