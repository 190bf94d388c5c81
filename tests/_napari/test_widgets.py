"""The four widgets, driven end to end in a real viewer on a small synthetic tomogram."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import zarr

from napari_qlty.io.prediction import Prediction
from napari_qlty import Grid, Weighting, infer
from napari_qlty.core.pairs import clean_pairs, select_windows
from napari_qlty.io.pairs_store import read_statistics

SHAPE = (32, 64, 48)  # the tomogram fixture's shape (tests/_napari/conftest.py)

WORKER_TIMEOUT_MS = 60_000


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=WORKER_TIMEOUT_MS)


def engine_labels(tomogram) -> torch.Tensor:
    """The sample's annotations as the engine takes them: (1, *shape), -1 unlabelled."""
    return torch.from_numpy(tomogram.annotations.astype(np.int64))[None]


# -- grid preview ------------------------------------------------------------------------------
def test_grid_preview_slices_seams_labels_and_3d(viewer, sample_layers, tomogram, qtbot):
    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget

    image, sparse = sample_layers
    img = viewer.add_image(image, name="tomogram", scale=(2.0, 1.0, 1.0))
    widget = GridPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.window_edit.value, widget.step_edit.value, widget.border_edit.value = "16", "12", "2"
    widget.refresh()

    grid = Grid(SHAPE, 16, 12, 2)
    assert widget.grid == grid
    origins = grid.origins()
    seams = grid.seams()

    def expected_crossing(z):
        return np.nonzero((origins[:, 0] <= z) & (z < origins[:, 0] + 16))[0]

    for z in (15, 0, 30):
        viewer.dims.set_current_step(0, z)
        widget.refresh()
        crossing = expected_crossing(z)
        outlines = widget.windows_layer.data
        assert len(outlines) == len(crossing)
        # each outline is its window's footprint on the slice, drawn on the voxels' edges
        # (clipped to the image's extent)
        top = np.asarray(SHAPE[1:]) - 1.0
        drawn = sorted((tuple(o[:, 1:].min(axis=0)), tuple(o[:, 1:].max(axis=0))) for o in outlines)
        expected = sorted(
            (tuple(np.clip(origins[i, 1:] - 0.5, 0, top)), tuple(np.clip(origins[i, 1:] + 15.5, 0, top)))
            for i in crossing
        )
        np.testing.assert_allclose(np.asarray(drawn), np.asarray(expected))
        # the shapes sit on the current slice, in the image's world coordinates
        world_z = widget.windows_layer.data_to_world(outlines[0][0])[0]
        assert world_z == pytest.approx(z * 2.0)
        assert widget.windows_layer.scale[0] == 2.0
        # seams: one purple line per seam of the two displayed axes
        lines = widget.seams_layer.data
        assert len(lines) == len(seams[1]) + len(seams[2])
        ys = sorted(float(line[0, 1]) + 0.5 for line in lines if line[0, 1] == line[1, 1])
        assert ys == sorted(float(m) for m in seams[1])
        assert f"{len(crossing)} windows cross it" in widget.summary_label.value
    assert "3 × 5 × 4 = 60" in widget.summary_label.value
    assert f"{grid.duplication:.2f}" in widget.summary_label.value
    edge = np.asarray(widget.seams_layer.edge_color[0])
    assert edge[2] > 0.9 and edge[0] > 0.6 and edge[1] < 0.3  # purple

    # per-axis values, and an invalid value reported in the widget
    widget.window_edit.value = "16, 32, 24"
    widget.refresh()
    assert widget.grid.window == (16, 32, 24)
    widget.window_edit.value = "100"
    widget.refresh()
    assert widget.grid is None
    assert "larger than" in widget.summary_label.value
    assert len(widget.windows_layer.data) == 0
    widget.window_edit.value = "16"

    # with labels: the windows an export keeps (napari 0 = unlabelled -> engine -1)
    labels = viewer.add_labels(sparse, name="sparse", scale=(2.0, 1.0, 1.0))
    widget.labels_combo.value = labels
    widget.refresh()
    qtbot.waitUntil(lambda: widget.stats is not None, timeout=WORKER_TIMEOUT_MS)
    kept, stats = select_windows(engine_labels(tomogram), grid, ignore_label=-1, min_labelled=1)
    np.testing.assert_array_equal(widget.kept, kept)
    assert widget.stats == stats
    assert f"export keeps {stats.kept_windows} of 60 windows" in widget.summary_label.value
    # painting changes the count
    before = widget.stats.total_labelled
    labels.paint((20, 30, 30), 2)
    qtbot.waitUntil(
        lambda: widget.stats is not None and widget.stats.total_labelled > before, timeout=WORKER_TIMEOUT_MS
    )

    # 3D view: one box per window and one rectangle per seam plane
    viewer.dims.ndisplay = 3
    widget.refresh()
    assert len(widget.windows_layer.data) == len(grid)
    assert len(widget.seams_layer.data) == sum(len(s) for s in seams)
    box = widget.windows_layer.data[0]
    edges = {frozenset(map(tuple, np.round(box[i : i + 2], 3))) for i in range(len(box) - 1)}
    assert len(edges) == 12  # every edge of the box is drawn
    viewer.dims.ndisplay = 2


def test_grid_preview_lazy_2d(viewer, sample_layers, qtbot):
    """A dask-backed 2D layer: only its shape is used; all windows are drawn."""
    import dask.array as da

    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget

    image, _ = sample_layers
    plane = da.from_array(image[5], chunks=(16, 16))
    viewer.add_image(plane, name="plane")
    # opened the way the Plugins menu opens it (the manifest's command, viewer injected)
    _, widget = viewer.window.add_plugin_dock_widget("napari-qlty", "Grid preview")
    assert isinstance(widget, GridPreviewWidget)
    widget.window_edit.value, widget.step_edit.value, widget.border_edit.value = "20, 16", "15, 12", "0"
    widget.refresh()
    grid = Grid((64, 48), (20, 16), (15, 12), 0)
    assert len(widget.windows_layer.data) == len(grid)
    assert len(widget.seams_layer.data) == sum(len(s) for s in grid.seams())
    widget.border_weight_spin.value = 0.0  # border 0: no warning
    widget.refresh()
    assert "Warning" not in widget.summary_label.value
    widget.border_edit.value = "4"  # bands of neighbours meet with border weight 0: warned
    widget.refresh()
    assert "Warning" in widget.summary_label.value


# -- sparse labelling ------------------------------------------------------------------------------
def test_labelling_persists_to_zarr(viewer, sample_layers, tmp_path, qtbot):
    from napari_qlty._napari import reader
    from napari_qlty._napari.widgets.labelling import LabellingWidget

    image, sparse = sample_layers
    img = viewer.add_image(image, name="tomogram", scale=(2.0, 1.5, 1.5), translate=(10.0, 0.0, 5.0))
    widget = LabellingWidget(viewer)
    viewer.window.add_dock_widget(widget)
    path = tmp_path / "my labels.zarr"
    widget.path_edit.value = path
    layer = widget.create()
    assert layer is not None, widget.status.value
    assert isinstance(layer.data, zarr.Array)
    assert layer.data.shape == SHAPE
    assert tuple(layer.scale) == (2.0, 1.5, 1.5) and tuple(layer.translate) == (10.0, 0.0, 5.0)

    layer.paint((10, 20, 20), 2)  # a brush stroke of "filament"
    layer.brush_size = 3
    layer.paint((12, 40, 30), 1)  # and one of "background"
    stored = np.asarray(zarr.open_array(str(path), mode="r")[...])
    assert (stored == 2).sum() > 0 and (stored == 1).sum() > 0
    np.testing.assert_array_equal(stored, np.asarray(layer.data[...]))
    qtbot.waitUntil(lambda: widget.counts is not None and len(widget.counts) > 2, timeout=WORKER_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not widget.counting, timeout=WORKER_TIMEOUT_MS)
    assert widget.counts[2] == (stored == 2).sum()
    assert "filament" in widget.counts_label.value and "background" in widget.counts_label.value

    # renaming classes updates the layer and the folder
    widget.classes_edit.value = "bg, tube"
    qtbot.waitUntil(lambda: "tube" in list(layer.features["class"]), timeout=5_000)
    meta = zarr.open_array(str(path), mode="r").attrs["napari_qlty"]
    assert meta["classes"] == {"1": "bg", "2": "tube"}

    # the reader reopens it as labels that keep saving
    data, kwargs, kind = reader.get_reader(str(path))(str(path))[0]
    assert kind == "labels" and isinstance(data, zarr.Array)
    assert list(kwargs["features"]["class"]) == ["unlabelled", "bg", "tube"]
    assert kwargs["scale"] == (2.0, 1.5, 1.5)

    # Create again on the same path reopens it (nothing is lost)
    viewer.layers.remove(layer)
    widget.classes_edit.value = "something, else"
    again = widget.create()
    np.testing.assert_array_equal(np.asarray(again.data[...]), stored)
    assert widget.classes_edit.value == "bg, tube"

    # starting from an existing labels layer copies it
    start = viewer.add_labels(sparse, name="sparse")
    widget.start_combo.value = start
    widget.path_edit.value = tmp_path / "copy.zarr"
    copied = widget.create()
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(tmp_path / "copy.zarr"))[...]), sparse)
    assert copied.name.startswith("tomogram")

    # a path holding something else is refused, in the widget
    other = tmp_path / "other.zarr"
    zarr.create_array(str(other), shape=(2, 2), dtype="uint8")
    widget.path_edit.value = other
    assert widget.create() is None
    assert "not a napari-qlty labels" in widget.status.value


# -- export ------------------------------------------------------------------------------------
def test_export_pairs_end_to_end(viewer, sample_layers, tomogram, tmp_path, qtbot):
    from napari_qlty._napari.widgets.export_pairs import ExportWidget

    image, sparse = sample_layers
    viewer.add_image(image, name="tomogram")
    labels = viewer.add_labels(sparse, name="sparse")
    widget = ExportWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.labels_combo.value is labels
    widget.window_edit.value, widget.step_edit.value, widget.border_edit.value = "16", "12", "2"
    path = tmp_path / "pairs.zarr"
    widget.path_edit.value = path
    widget.run()
    assert widget.running
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value

    grid = Grid(SHAPE, 16, 12, 2)
    expected = clean_pairs(torch.from_numpy(image)[None, None], engine_labels(tomogram), grid, ignore_label=-1)
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(group["images"][...], expected.images.numpy())
    np.testing.assert_array_equal(group["labels"][...], expected.labels.numpy())
    stats = read_statistics(path)
    assert stats["kept_windows"] == expected.stats.kept_windows == len(expected)
    assert widget.stats == expected.stats
    assert expected.stats.table() in widget.summary.value
    assert widget.progress.value == widget.progress.max == len(expected)

    # exporting to the same path again: refused, and said so in the widget
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "error"
    assert "already holds a napari-qlty training-pairs export" in widget.status.value
    assert "tick \u201creplace an existing export at this path\u201d" in widget.status.value
    assert "--overwrite" not in widget.status.value
    # ...unless asked to replace it
    widget.overwrite_check.value = True
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done"

    # cancel: nothing is left behind
    path2 = tmp_path / "cancelled.zarr"
    widget.path_edit.value = path2
    widget.run()
    widget.cancel()
    wait_idle(qtbot, widget)
    assert widget.outcome == "cancelled"
    assert not path2.exists() and not (tmp_path / "cancelled.zarr.partial").exists()

    # a shape mismatch is reported, not raised
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="wrong")
    widget.labels_combo.value = viewer.layers["wrong"]
    widget.run()
    assert widget.outcome == "error"
    assert "labels layer 'wrong' is 4 × 4 × 4 but image 'tomogram' is 32 × 64 × 48" in widget.status.value


# -- inference ---------------------------------------------------------------------------------
class TinyNet(torch.nn.Module):
    """One 3x3x3 convolution, 1 -> 2 classes (scriptable)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class SlowNet(TinyNet):
    """The same, taking a while per batch (so a run can be cancelled half way)."""

    def forward(self, x):
        time.sleep(0.02)
        return self.conv(x)


@pytest.fixture
def tiny_model_file(tmp_path):
    model = torch.jit.script(TinyNet().eval())
    path = tmp_path / "tiny.pt"
    model.save(str(path))
    return path, model


def _expected(model, image, grid, weighting):
    return infer(
        model, torch.from_numpy(image)[None, None], grid, weighting,
        postprocess=lambda y: torch.softmax(y, dim=1),
    )[0].numpy()


def _set_inference_fields(widget, path):
    widget.device_combo.value = "cpu"
    widget.window_edit.value, widget.step_edit.value, widget.border_edit.value = "16", "12", "2"
    widget.weighting_combo.value = "hann"
    widget.border_weight_spin.value = 0.5
    widget.postprocess_combo.value = "softmax"
    widget.chunks_edit.value = "16"
    widget.batch_spin.value = 1
    widget.region_edit.value = "16"  # several regions: results stream, cancel has somewhere to stop
    widget.output_edit.value = path


def test_inference_streams_and_matches_infer(viewer, sample_layers, tiny_model_file, tmp_path, qtbot):
    from napari_qlty._napari.widgets.inference import InferenceWidget

    image, _ = sample_layers
    model_path, model = tiny_model_file
    viewer.add_image(image, name="tomogram")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_path.value = model_path
    out = tmp_path / "prediction.zarr"
    _set_inference_fields(widget, out)

    seen = []  # what the probability layer showed at each region event

    widget.run()
    widget.worker.yielded.connect(
        lambda e: seen.append((e.kind, widget.probability_layer is not None
                               and float(np.asarray(widget.probability_layer.data[...]).max())))
    )
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    grid = Grid(SHAPE, 16, 12, 2)
    expected = _expected(model, image, grid, Weighting("hann", border_weight=0.5))

    probs = Prediction(out).probabilities()[...]
    np.testing.assert_allclose(probs[0], expected, atol=1e-5)
    layer = widget.probability_layer
    assert layer is not None and layer in viewer.layers
    np.testing.assert_allclose(np.asarray(layer.data[...]), expected[1], atol=1e-5)
    assert tuple(layer.scale) == tuple(viewer.layers["tomogram"].scale)
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data[...]), expected.argmax(0))
    # streamed: the layer existed from the start and filled in region by region
    kinds = [k for k, _ in seen]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("region") > 3
    assert widget.events_seen.count("region") == widget.last_event.regions_total
    assert widget.progress.value == widget.progress.max == len(grid) + widget.last_event.regions_total
    assert "Done" in widget.status.value

    # the result is also what the reader shows for the folder
    from napari_qlty._napari import reader

    layers = reader.get_reader(str(out))(str(out))
    kinds = [k for _, _, k in layers]
    assert kinds == ["image", "labels"]
    np.testing.assert_allclose(np.asarray(layers[0][0][1]), expected[1], atol=1e-5)

    # errors are shown in the widget: another model into the same folder is refused
    widget.postprocess_combo.value = "sigmoid"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "error"
    assert "other parameters" in widget.status.value
    widget.model_path.value = tmp_path / "missing.pt"
    widget.run()
    assert widget.outcome == "error" and "not found" in widget.status.value


def test_inference_cancel_resume_with_registered_model(viewer, sample_layers, tmp_path, qtbot):
    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import MODEL_FILE, InferenceWidget

    image, _ = sample_layers
    viewer.add_image(image, name="tomogram")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    net = SlowNet()
    register_model("tiny (slow)", net)
    try:
        assert widget.model_combo.choices == (MODEL_FILE, "tiny (slow)")
        widget.model_combo.value = "tiny (slow)"
        assert not widget.model_path.visible
        out = tmp_path / "resumed.zarr"
        _set_inference_fields(widget, out)

        widget.run()
        widget.worker.yielded.connect(lambda e: widget.cancel() if e.kind == "region" else None)
        wait_idle(qtbot, widget)
        assert widget.outcome == "cancelled", widget.status.value
        assert "resume" in widget.status.value
        finished = int(zarr.open_group(str(out), mode="r")["napari_qlty/progress"][...].sum())
        total = widget.last_event.regions_total
        assert 0 < finished < total

        widget.run()  # same parameters: resumes
        wait_idle(qtbot, widget)
        assert widget.outcome == "done", widget.status.value
        assert widget.events_seen.count("region") == total - finished
        assert net.training  # the widget ran a copy in eval mode: the owner's model is untouched
        grid = Grid(SHAPE, 16, 12, 2)
        expected = _expected(net.eval(), image, grid, Weighting("hann", border_weight=0.5))
        np.testing.assert_allclose(
            Prediction(out).probabilities()[0], expected, atol=1e-5
        )
        np.testing.assert_allclose(np.asarray(widget.probability_layer.data[...]), expected[1], atol=1e-5)
        assert len([layer for layer in viewer.layers if "P(class" in layer.name]) == 1  # reused
    finally:
        unregister_model("tiny (slow)")
    assert widget.model_combo.choices == (MODEL_FILE,)


def test_inference_at_a_coarse_level_streams_a_pyramid(viewer, sample_layers, tiny_model_file, tmp_path, qtbot):
    """A multiscale image run at its level 1 (a quick preview): the result has that
    level's scale and is itself a pyramid, shown as multiscale layers while it fills in."""
    from napari_qlty._napari.widgets.inference import InferenceWidget

    image, _ = sample_layers
    model_path, model = tiny_model_file
    coarse = image[::2, ::2, ::2].copy()
    layer = viewer.add_image([image, coarse], name="pyramid", multiscale=True, scale=(2.0, 1.0, 1.0),
                             translate=(5.0, 0.0, 0.0))
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.value = layer
    assert not widget.level_combo.native.isHidden() and len(widget.level_combo.choices) == 2
    widget.level_combo.value = 1
    widget.model_path.value = model_path
    out = tmp_path / "preview.zarr"
    _set_inference_fields(widget, out)
    widget.chunks_edit.value = "8"
    widget.region_edit.value = "8"
    widget.levels_edit.value = "2"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value

    expected = _expected(model, coarse, Grid(coarse.shape, 16, 12, 2), Weighting("hann", border_weight=0.5))
    store = Prediction(out)
    np.testing.assert_allclose(store.probabilities()[0], expected, atol=1e-5)
    assert store.scale(0) == (4.0, 2.0, 2.0)  # the layer's scale times the level's factor
    assert store.translation(0) == (6.0, 0.5, 0.5)  # a coarse voxel sits at its block's centre
    shown = widget.probability_layer
    assert shown.multiscale and len(shown.data) == 2
    assert tuple(shown.scale) == (4.0, 2.0, 2.0) and tuple(shown.translate) == (6.0, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(shown.data[0][...]), expected[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(shown.data[1][...]), store.probabilities(1)[0, 1], atol=1e-7)
    assert widget.labels_layer.multiscale
    np.testing.assert_array_equal(np.asarray(widget.labels_layer.data[0][...]), expected.argmax(0))
