"""What a microscopist meets first: integer images, 2D/3D/RGB/time-lapse layers, a
model trained here and used there, failures that leave nothing behind, and messages in
the widgets' own words."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_qlty.io.prediction import Prediction
from napari_qlty import Grid, Weighting, infer
from napari_qlty.core.intensity import Normalisation
from napari_qlty.io.locks import LOCK_NAME

TIMEOUT_MS = 90_000
TINY = {"nets": {"unet": {"channels": 4, "levels": 2}, "msdnet": {"layers": 3, "max_dilation": 2}}, "patch": 16,
        "batch_size": 2, "steps_per_epoch": 3, "val_samples": 4, "threads": 1, "epochs": 2}


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


def process(qtbot, ms: int = 50) -> None:
    qtbot.wait(ms)


class Conv(torch.nn.Module):
    """One 3x3(x3) convolution (reach 1 voxel), any number of channels in and out."""

    def __init__(self, dims=3, c_in=1, c_out=2, seed=0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def layers(viewer):
    rng = np.random.default_rng(0)
    return {
        "2d": viewer.add_image(rng.random((40, 52)).astype(np.float32), name="2d"),
        "3d": viewer.add_image(rng.integers(0, 65535, (20, 40, 36), dtype=np.uint16), name="3d"),
        "rgb": viewer.add_image(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8), name="rgb", rgb=True),
        "4d": viewer.add_image(rng.integers(0, 255, (3, 12, 40, 36), dtype=np.uint8), name="4d"),
    }


def all_widgets(viewer):
    from napari_qlty._napari.widgets.export_pairs import ExportWidget
    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget
    from napari_qlty._napari.widgets.inference import InferenceWidget
    from napari_qlty._napari.widgets.labelling import LabellingWidget
    from napari_qlty._napari.widgets.train import TrainWidget

    widgets = [GridPreviewWidget(viewer), InferenceWidget(viewer), ExportWidget(viewer), TrainWidget(viewer),
               LabellingWidget(viewer)]
    for w in widgets:
        viewer.window.add_dock_widget(w)
        if hasattr(w, "window_edit"):
            w.window_edit.value, w.step_edit.value, w.border_edit.value = "8", "6", "1"
    return widgets


def test_switching_images_never_crashes_and_the_preview_follows(viewer, layers, qtbot):
    import sys

    raised = []
    hook, sys.excepthook = sys.excepthook, lambda *a: raised.append(a[1])
    try:
        widgets = all_widgets(viewer)
        preview = widgets[0]
        expected = {"2d": "7 × 9 = 63  (y × x)", "3d": "3 × 7 × 6 = 126  (z × y × x)",
                    "rgb": "7 × 9 = 63  (y × x)", "4d": "3 × 2 × 7 × 6 = 252  (t × z × y × x)"}
        for display in (2, 3):
            viewer.dims.ndisplay = display
            for name in ("2d", "3d", "rgb", "4d", "2d", "rgb", "3d", "4d"):
                for w in widgets:
                    w.image_combo.value = layers[name]
                preview.refresh()
                process(qtbot)
                assert expected[name] in preview.summary_label.value, (display, name, preview.summary_label.value)
                if layers[name].ndim >= display:
                    assert preview.windows_layer.ndim == layers[name].ndim
                    assert len(preview.windows_layer.data) > 0
                else:
                    assert "drawn in the 2D view" in preview.summary_label.value
                assert widgets[1].fields.time_combo.visible == (name == "4d")
    finally:
        sys.excepthook = hook
    assert not raised, raised


def test_messages_name_fields_and_axes(viewer, layers, qtbot):
    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget

    preview = GridPreviewWidget(viewer)
    viewer.window.add_dock_widget(preview)
    preview.image_combo.value = layers["3d"]
    preview.window_edit.value = "64"
    preview.refresh()
    text = preview.summary_label.value
    assert "window along z = 64 is larger than the volume along z (size 20)" in text
    assert "pad" not in text and "[0]" not in text and "--" not in text
    preview.window_edit.value, preview.step_edit.value, preview.border_edit.value = "8", "8", "2"
    preview.border_weight_spin.value = 0.0
    preview.refresh()
    assert "border along z=2 with border weight=0 leaves voxels with no weight" in preview.summary_label.value


def test_a_model_trained_here_runs_on_a_uint16_volume_and_leaves_the_viewer(viewer, qtbot, tmp_path, tomogram):
    """Train on a uint16 volume (percentile normalisation), save the model, load it in
    Tiled inference, and get what the same network gives on the whole volume."""
    from napari_qlty._napari import unregister_model
    from napari_qlty._napari._registry import registered_models
    from napari_qlty._napari.widgets.inference import MODEL_FILE, InferenceWidget
    from napari_qlty._napari.widgets.train import TrainWidget
    from napari_qlty.cli import main

    counts = ((tomogram.image - tomogram.image.min()) * 4000).astype(np.uint16)
    image = viewer.add_image(counts, name="light-sheet")
    sparse = (tomogram.annotations.astype(np.int16) + 1).astype(np.uint8)
    viewer.add_labels(sparse, name="strokes")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.window_edit.value, train.step_edit.value = "32", "16"
    train.config_overrides = dict(TINY)
    train.normalisation_combo.value = "percentile 1-99.8"
    train.name_edit.value = "u16 model"
    train.predict_check.value = False
    try:
        train.run()
        wait_idle(qtbot, train)
        assert train.outcome == "done", train.status.value
        assert train.model.napari_qlty_normalisation.mode == "percentile"
        # a second run under the same name keeps the first model
        train.run()
        wait_idle(qtbot, train)
        assert train.model_name == "u16 model · round 2" and "u16 model · round 1" in registered_models()
        train.save_path.value = tmp_path / "model.pt"
        train.save()
        assert train.saved_to == tmp_path / "model.pt", train.status.value

        inference = InferenceWidget(viewer)
        viewer.window.add_dock_widget(inference)
        inference.image_combo.value = image
        inference.model_combo.value = MODEL_FILE
        inference.model_path.value = tmp_path / "model.pt"
        assert "napari-qlty model" in inference.model_hint.value and "percentile" in inference.model_hint.value
        # the recipe's inference settings, clipped to the image, 16 deep along z (2.5D networks)
        assert (inference.window_edit.value, inference.border_edit.value) == ("16, 64, 48", "2, 10, 10")
        inference.window_edit.value, inference.step_edit.value, inference.border_edit.value = "32", "16", "8"
        inference.output_edit.value = tmp_path / "out.zarr"
        inference.run()
        wait_idle(qtbot, inference)
        assert inference.outcome == "done", inference.status.value
        got = Prediction(tmp_path / "out.zarr").probabilities()[...]
        net = train.model
        normalised = Normalisation("percentile").fit(counts[None, None]).apply(torch.from_numpy(counts.astype(np.float32))[None, None])
        with torch.no_grad():
            whole = torch.softmax(net(normalised), 1).numpy()
        assert np.isfinite(got).all()
        # the 2.5D network reaches about 20 voxels in-plane: compare where the border covers it
        inner = (slice(None), slice(None), slice(8, -8), slice(12, -12), slice(12, -12))
        np.testing.assert_allclose(got[inner], whole[inner], atol=2e-3)
        # the command line takes the same file
        zarr.create_array(str(tmp_path / "counts.zarr"), data=counts)
        assert main(["predict", str(tmp_path / "counts.zarr"), str(tmp_path / "cli.zarr"), "--model",
                     str(tmp_path / "model.pt"), "--window", "32", "--step", "16", "--border", "8",
                     "--border-weight", "0", "--postprocess", "softmax", "--device", "cpu"]) == 0
        cli = Prediction(tmp_path / "cli.zarr").probabilities()[...]
        np.testing.assert_allclose(cli, got, atol=1e-5)
    finally:
        unregister_model("u16 model · round 1")
        unregister_model("u16 model · round 2")


def test_training_on_one_class_is_refused(viewer, qtbot, tomogram):
    from napari_qlty._napari.widgets.train import TrainWidget

    viewer.add_image(tomogram.image, name="tomogram")
    only_background = np.where(tomogram.annotations == 0, 1, 0).astype(np.uint8)
    viewer.add_labels(only_background, name="background only")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.window_edit.value, train.step_edit.value = "32", "16"
    train.config_overrides = dict(TINY)
    train.run()
    wait_idle(qtbot, train)
    assert train.outcome == "error"
    assert ("labels layer 'background only' holds strokes of one class only (label 1)" in train.status.value
            and "at least two classes" in train.status.value)
    assert train.model is None and not train.save_button.enabled and train.rounds_path() is not None
    assert not train.rounds_path().exists()  # refused before anything was written


def test_time_lapse_runs_each_time_point_with_a_3d_model(viewer, layers, qtbot, tmp_path):
    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    net = Conv(3).eval()
    register_model("conv3d", net)
    try:
        w = InferenceWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.image_combo.value = layers["4d"]
        w.model_combo.value = "conv3d"
        process(qtbot)
        assert w.fields.time_combo.visible and w.fields.each_time_point(layers["4d"])
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "8, 16, 16", "6, 12, 12", "1"
        w.border_weight_spin.value = 0.0
        w.normalisation_combo.value = "none"
        w.output_edit.value = tmp_path / "t.zarr"
        w.run()
        wait_idle(qtbot, w)
        assert w.outcome == "done", w.status.value
        data = layers["4d"].data
        with torch.no_grad():
            expected = torch.softmax(net(torch.from_numpy(data.astype(np.float32))[:, None]), 1).numpy()
        got = Prediction(tmp_path / "t.zarr").probabilities()[...]
        np.testing.assert_allclose(got, expected, atol=1e-5)  # (t, classes, z, y, x)
        assert w.probability_layer.data.shape == data.shape  # shown with the time axis
    finally:
        unregister_model("conv3d")


def test_rgb_channel_last_images_run_as_channels(viewer, layers, qtbot, tmp_path):
    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    net = Conv(2, c_in=3).eval()
    register_model("rgb conv", net)
    try:
        w = InferenceWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.image_combo.value = layers["rgb"]
        w.model_combo.value = "rgb conv"
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "16", "12", "2"
        w.border_weight_spin.value = 0.0
        w.output_edit.value = tmp_path / "rgb.zarr"
        w.run()
        wait_idle(qtbot, w)
        assert w.outcome == "done", w.status.value
        rgb = layers["rgb"].data
        expected = infer(net, torch.from_numpy(np.moveaxis(rgb, -1, 0).copy())[None], Grid(rgb.shape[:2], 16, 12, 2),
                         Weighting("border", 0.0), postprocess=lambda y: y.softmax(1)).numpy()
        np.testing.assert_allclose(Prediction(tmp_path / "rgb.zarr").probabilities()[...], expected,
                                   atol=1e-5)
        # a one-channel model on it: the reason, in the image's terms
        register_model("gray conv", Conv(2, c_in=1).eval())
        w.model_combo.value = "gray conv"
        w.output_edit.value = tmp_path / "gray.zarr"
        w.run()
        wait_idle(qtbot, w)
        assert w.outcome == "error"
        assert "the model expects 1 channel, the image has 3" in w.status.value
        assert not (tmp_path / "gray.zarr").exists()
    finally:
        unregister_model("rgb conv")
        unregister_model("gray conv")


class FailsLater(torch.nn.Module):
    """Runs fine on the probes, then fails on real windows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        if x.abs().sum() > 0:
            raise RuntimeError("the GPU fell off the bus")
        return self.conv(x)


def test_a_failed_run_leaves_no_empty_layers(viewer, layers, qtbot, tmp_path):
    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    register_model("fails later", FailsLater().eval())
    try:
        w = InferenceWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.image_combo.value = layers["3d"]
        w.model_combo.value = "fails later"
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "8", "6", "1"
        w.output_edit.value = tmp_path / "f.zarr"
        before = [layer.name for layer in viewer.layers]
        w.run()
        wait_idle(qtbot, w)
        assert w.outcome == "error" and "the GPU fell off the bus" in w.status.value
        assert [layer.name for layer in viewer.layers] == before
        assert not (tmp_path / "f.zarr" / LOCK_NAME).exists()
        meta = zarr.open_group(str(tmp_path / "f.zarr")).attrs["napari_qlty"]
        assert meta["complete"] is False  # nothing looks finished
    finally:
        unregister_model("fails later")


def test_closing_the_dock_mid_run_cancels_cleanly(viewer, layers, qtbot, tmp_path):
    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    class Slow(Conv):
        def forward(self, x):
            import time

            time.sleep(0.05)
            return super().forward(x)

    register_model("slow", Slow().eval())
    try:
        w = InferenceWidget(viewer)
        dock = viewer.window.add_dock_widget(w)
        w.image_combo.value = layers["3d"]
        w.model_combo.value = "slow"
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "8", "6", "1"
        w.region_edit.value, w.chunks_edit.value = "8", "8"
        w.output_edit.value = tmp_path / "closed.zarr"
        task = w.task
        w.run()
        qtbot.waitUntil(lambda: w.last_event is not None and w.last_event.kind == "region", timeout=TIMEOUT_MS)
        dock.title.close_button.click()  # the dock's x, as a user closes it
        qtbot.waitUntil(lambda: task.worker is None, timeout=TIMEOUT_MS)
        assert task.outcome == "cancelled"
        assert not (tmp_path / "closed.zarr" / LOCK_NAME).exists()
        meta = zarr.open_group(str(tmp_path / "closed.zarr")).attrs["napari_qlty"]
        assert meta["complete"] is False
    finally:
        unregister_model("slow")


def test_labelling_start_from_is_never_silently_ignored(viewer, layers, qtbot, tmp_path):
    from napari_qlty._napari.widgets.labelling import LabellingWidget

    w = LabellingWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_combo.value = layers["3d"]
    w.path_edit.value = tmp_path / "strokes.zarr"
    wrong = viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="wrong shape")
    w.start_combo.value = wrong
    assert w.create() is None
    assert "'start from' layer 'wrong shape' is 4 × 4 × 4 but the image is 20 × 40 × 36" in w.status.value
    assert not (tmp_path / "strokes.zarr").exists()  # nothing half made
    w.start_combo.value = None
    assert w.create() is not None
    good = viewer.add_labels(np.ones((20, 40, 36), np.uint8), name="earlier strokes")
    w.start_combo.value = good
    assert w.create() is not None
    assert "'start from' (earlier strokes) was not copied" in w.status.value


@pytest.mark.parametrize("name", ["brain MRI int16 >i2", "fMRI time-lapse int16", "MR uint16", "cell int8"])
def test_real_images_in_the_inference_widget(viewer, qtbot, tmp_path, name):
    """Real images from PyPI packages, opened as a scientist opens them, predicted in the
    widget with percentile normalisation: equal to the model on the whole image."""
    from real_images import catalogue

    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    array, axes, _ = catalogue()[name]
    layer = viewer.add_image(array, name=name)
    dims = 3 if "z" in axes else 2
    net = Conv(dims).eval()
    register_model("real conv", net)
    try:
        w = InferenceWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.image_combo.value = layer
        w.model_combo.value = "real conv"
        w.window_edit.value, w.step_edit.value, w.border_edit.value = "12", "9", "1"
        w.border_weight_spin.value = 0.0
        w.normalisation_combo.value = "percentile 1-99.8"
        w.output_edit.value = tmp_path / "real.zarr"
        w.run()
        wait_idle(qtbot, w)
        assert w.outcome == "done", w.status.value
        stack = array[:, None] if "t" in axes else array[None, None]  # time points are images
        fitted = Normalisation("percentile").fit(stack)
        with torch.no_grad():
            expected = torch.softmax(net(fitted.apply(torch.from_numpy(stack.astype(np.float32)))), 1).numpy()
        got = Prediction(tmp_path / "real.zarr").probabilities()[...]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert w.probability_layer.data.shape == array.shape
    finally:
        unregister_model("real conv")
