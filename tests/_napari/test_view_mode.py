"""The current view first, and where to label next, in a real viewer (issue 12).

Tiled inference in "current view first" mode runs the regions on screen first, follows
the view when it moves, can stop after it (Run again finishes), and gives the bytes of
a run over the whole image; with "uncertainty" it shows where the model is unsure and
lists the most unsure windows as points to jump through. Bounded by steps (regions,
windows), never by seconds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_qlty import Grid, Weighting, infer
from napari_qlty._napari.screen_view import ScreenView, grid_view, view_region, visible_box
from napari_qlty.core.uncertainty import spot_grid
from napari_qlty.io.prediction import Prediction
from napari_qlty.run.regions import Regions
from napari_qlty.run.view import View, ViewOrder

SHAPE = (32, 64, 48)
TIMEOUT_MS = 120_000


class SlowConv(torch.nn.Module):
    """One 3x3x3 convolution (1 -> 2 classes) that sleeps a little per batch, so the view
    can move while the run goes on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        import time

        time.sleep(0.01)
        return self.conv(x)


def wait_idle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)


@pytest.fixture
def inference(viewer, sample_layers):
    from napari_qlty._napari import register_model, unregister_model
    from napari_qlty._napari.widgets.inference import InferenceWidget

    image, _ = sample_layers
    layer = viewer.add_image(image, name="tomogram")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget)
    net = SlowConv().eval()
    register_model("slow conv", net)
    widget.model_combo.value = "slow conv"
    widget.device_combo.value = "cpu"
    widget.window_edit.value, widget.step_edit.value, widget.border_edit.value = "16", "12", "2"
    widget.weighting_combo.value = "hann"
    widget.border_weight_spin.value = 0.5
    widget.postprocess_combo.value = "softmax"
    widget.batch_spin.value = 1
    yield widget, layer, net
    unregister_model("slow conv")


def look_at(viewer, z: float, y: float, x: float, voxels: float = 6.0) -> None:
    """Show slice ``z``, centred on (y, x), zoomed so that about ``voxels`` fit the canvas."""
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, z)
    viewer.scene.camera.center = (y, x)
    viewer.scene.camera.zoom = min(viewer.canvas.size) / voxels


def needed(grid: Grid, region, view: View) -> set:
    """The tasks a run hands out before the view is done: the view's regions and their senders."""
    regions = Regions(grid, tuple(region))
    tasks = [(0, *r) for r in itertools.product(*(range(c) for c in regions.counts))]
    order = ViewOrder(regions, tasks, view=lambda: view, view_only=True)
    out = set()
    while (task := order.pop()) is not None:
        out.add(task)
    return out


def in_view(grid: Grid, region, view: View) -> set:
    regions = Regions(grid, tuple(region))
    tasks = [(0, *r) for r in itertools.product(*(range(c) for c in regions.counts))]
    return set(ViewOrder(regions, tasks).in_view(view))


def expected(net, image) -> np.ndarray:
    return infer(net, torch.from_numpy(image)[None, None], Grid(SHAPE, 16, 12, 2), Weighting("hann", border_weight=0.5),
                 postprocess=lambda y: torch.softmax(y, dim=1))[0].numpy()


def test_the_view_on_screen_is_what_napari_draws(viewer, sample_layers, qtbot):
    """The box computed from the camera (2D), the whole volume (3D), through the layer's
    scale and translate, and down to a coarser level's grid."""
    image, _ = sample_layers
    layer = viewer.add_image(image, name="tomogram", scale=(2.0, 0.5, 0.5), translate=(4.0, 3.0, -2.0))
    look_at(viewer, z=4.0 + 2.0 * 10, y=3.0 + 0.5 * 30, x=-2.0 + 0.5 * 20, voxels=5.0)
    viewer.screenshot(canvas_only=True)  # a draw: napari sets the layer's corner pixels
    start, stop = visible_box(viewer, layer)
    assert start[0] == 10 and stop[0] == 11  # the slice
    drawn = layer.corner_pixels  # napari's own box of the canvas in data voxels (inclusive ends)
    for a in (1, 2):
        assert abs(start[a] - drawn[0, a]) <= 1 and abs((stop[a] - 1) - drawn[1, a]) <= 1, (start, stop, drawn)
    assert 30 - 8 < start[1] < 30 < stop[1] < 30 + 8  # zoomed in: a few voxels around the centre
    # a grid over level 1 (2x coarser): the box halves
    view = grid_view(start, stop, "zyx", "zyx", (2.0, 2.0, 2.0), (16, 32, 24))
    assert view.start == (5, start[1] // 2, start[2] // 2) and view.stop[0] == 6
    # 3D: the whole volume
    viewer.dims.ndisplay = 3
    assert visible_box(viewer, layer) == ((0, 0, 0), SHAPE)
    # a time-lapse run time point by time point: the time point picks the image
    view = grid_view((3, 0, 5, 6), (4, 32, 9, 10), "tzyx", "zyx", (1, 1, 1, 1), SHAPE)
    assert view.images == (3,) and view.start == (0, 5, 6) and view.stop == (32, 9, 10)
    # the canvas off the image: nothing is in view
    viewer.dims.ndisplay = 2
    viewer.scene.camera.center = (1000.0, 1000.0)
    start, stop = visible_box(viewer, layer)
    assert any(b <= a for a, b in zip(start, stop))
    # the tracker follows the camera
    screen = ScreenView(viewer, layer, "zyx", (1, 1, 1), SHAPE)
    look_at(viewer, z=4.0 + 2.0 * 3, y=3.0 + 0.5 * 10, x=-2.0 + 0.5 * 10)
    assert screen().start[0] == 3
    screen.close()
    look_at(viewer, z=4.0 + 2.0 * 7, y=3.0 + 0.5 * 10, x=-2.0 + 0.5 * 10)
    assert screen().start[0] == 3  # closed: no longer follows


def test_the_view_runs_first_and_gives_the_whole_run_s_bytes(inference, viewer, tmp_path, qtbot):
    from napari_qlty._napari.widgets.inference import VIEW, WHOLE

    widget, layer, net = inference
    grid = Grid(SHAPE, 16, 12, 2)
    region = view_region(grid)
    assert region == (8, 8, 8)
    look_at(viewer, z=25, y=50, x=40)
    widget.order_combo.value = VIEW
    assert not widget.after_view_combo.native.isHidden()
    widget.output_edit.value = tmp_path / "view.zarr"
    regions = []
    widget.run()
    view = widget.screen()
    assert view.start[0] == 25 and view.stop[0] == 26
    first_needed = needed(grid, region, view)
    widget.worker.yielded.connect(
        lambda e: regions.append((e.region, widget.view_ready_s is not None)) if e.kind == "region" else None)
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    total = widget.last_event.regions_total
    ready_at = next(i for i, (_, ready) in enumerate(regions) if ready)
    assert ready_at < len(first_needed) < total  # the view was ready long before the end
    assert {r for r, _ in regions[: ready_at + 1]} <= first_needed  # only what the view needs came first
    assert in_view(grid, region, view) <= {r for r, _ in regions[: ready_at + 1]}
    assert "the view was ready" in widget.status.value and widget.view_ready_s is not None
    assert widget.screen is None  # the run no longer follows the viewer

    # the same run over the whole image, in order: the same bytes
    widget.order_combo.value = WHOLE
    assert widget.after_view_combo.native.isHidden()
    widget.region_edit.value = widget.chunks_edit.value = "8"
    widget.output_edit.value = tmp_path / "whole.zarr"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    a, b = Prediction(tmp_path / "view.zarr"), Prediction(tmp_path / "whole.zarr")
    assert a.layout["region"] == b.layout["region"] == [8, 8, 8]
    np.testing.assert_array_equal(a.probabilities()[...], b.probabilities()[...])
    np.testing.assert_array_equal(a.labels()[...], b.labels()[...])
    np.testing.assert_allclose(a.probabilities()[0], expected(net, layer.data), atol=1e-5)


def test_moving_the_view_reorders_what_is_left(inference, viewer, tmp_path, qtbot):
    from napari_qlty._napari.widgets.inference import VIEW

    widget, layer, net = inference
    grid = Grid(SHAPE, 16, 12, 2)
    region = view_region(grid)
    look_at(viewer, z=2, y=4, x=4)  # the first corner in C order
    widget.order_combo.value = VIEW
    widget.output_edit.value = tmp_path / "moved.zarr"
    events, moved = [], []

    def on_event(e):
        if e.kind != "region":
            return
        events.append(e.region)
        if len(events) == 2 and not moved:  # move to the far corner: the last regions in C order
            look_at(viewer, z=29, y=60, x=44)
            moved.append((len(events), widget.screen()))

    widget.run()
    widget.worker.yielded.connect(on_event)
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    (at, far), total = moved[0], widget.last_event.regions_total
    assert far.start[0] == 29
    wanted = in_view(grid, region, far)
    covered = next(i for i in range(len(events)) if wanted <= set(events[: i + 1]))
    # the far corner came right after the move (one region read ahead), long before its turn in C order
    assert covered - at < len(needed(grid, region, far)) + 2
    assert covered < total - 10
    np.testing.assert_allclose(Prediction(tmp_path / "moved.zarr").probabilities()[0], expected(net, layer.data),
                               atol=1e-5)


def test_stop_after_the_view_then_run_again_finishes(inference, viewer, tmp_path, qtbot):
    from napari_qlty._napari.widgets.inference import CONTINUE, STOP, VIEW

    widget, layer, net = inference
    look_at(viewer, z=16, y=30, x=20)
    widget.order_combo.value = VIEW
    widget.after_view_combo.value = STOP
    out = tmp_path / "paused.zarr"
    widget.output_edit.value = out
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    assert widget.events_seen[-1] == "paused"
    assert "The view is done" in widget.status.value and "press Run" in widget.status.value
    store = Prediction(out)
    done, total = len(store.finished_regions()), widget.last_event.regions_total
    assert 0 < done < total and not store.complete
    assert widget.view_ready_s is not None

    # elsewhere, stop again: only the new view's regions run
    look_at(viewer, z=3, y=5, x=5)
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.events_seen[-1] == "paused"
    more = len(Prediction(out).finished_regions())
    assert done < more < total

    widget.after_view_combo.value = CONTINUE
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done" and widget.events_seen[-1] == "done", widget.status.value
    assert widget.events_seen.count("region") == total - more  # resumed: nothing ran twice
    store = Prediction(out)
    assert store.complete
    np.testing.assert_allclose(store.probabilities()[0], expected(net, layer.data), atol=1e-5)


def test_uncertainty_layer_and_unsure_spots_to_jump_through(inference, viewer, tmp_path, qtbot):
    widget, layer, net = inference
    assert widget.unsure.kind_combo.native.isHidden()
    widget.unsure.check.value = True
    assert not widget.unsure.kind_combo.native.isHidden()
    widget.output_edit.value = tmp_path / "u.zarr"
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.outcome == "done", widget.status.value
    store = Prediction(tmp_path / "u.zarr")
    assert store.layout["uncertainty"] == ["windows", "entropy"]  # one network: no members
    shown = widget.unsure.layer
    assert shown in viewer.layers and "unsure" in shown.name
    assert widget.unsure.kind_combo.value == "entropy"
    np.testing.assert_array_equal(np.asarray(shown.data[...]), store.uncertainty()[0, 1])
    points = widget.unsure.spots_layer
    assert points in viewer.layers and len(points.data) == 20
    scores = points.features["score"].to_numpy()
    assert list(points.features["rank"]) == list(range(1, 21))
    assert np.all(np.diff(scores) <= 0) and scores[0] > 0
    # the most unsure spot really is: of all windows of half the grid's (8, step 4), its
    # mean entropy is the highest
    spots = spot_grid(SHAPE, 16)
    assert spots.window == (8, 8, 8) and spots.step == (4, 4, 4)
    entropy = store.uncertainty()[0, 1]
    means = [entropy[tuple(slice(o, o + 8) for o in origin)].mean() for origin in spots.origins()]
    assert scores[0] == pytest.approx(max(means), rel=1e-5)
    np.testing.assert_allclose(points.data[0], np.asarray(widget.unsure.spots[0][2]) + 4)  # its centre

    # jumping: the dims and the camera go to the first spot, then the second
    assert not widget.unsure.next_button.native.isHidden()
    viewer.dims.ndisplay = 2
    widget.unsure.next_button.changed.emit(True)
    z, y, x = points.data[0]
    assert viewer.dims.point[0] == pytest.approx(z) and viewer.scene.camera.center[-2:] == pytest.approx((y, x))
    assert "Unsure spot 1 of 20" in widget.status.value
    widget.unsure.next_button.changed.emit(True)
    assert viewer.scene.camera.center[-2:] == pytest.approx(tuple(points.data[1][1:]))
    assert points.selected_data == {1}

    # another kind: the layer and the ranking follow
    widget.unsure.kind_combo.value = "windows"
    np.testing.assert_array_equal(np.asarray(widget.unsure.layer.data[...]), store.uncertainty()[0, 0])
    assert "windows disagree" in widget.unsure.layer.name
    assert len([lyr for lyr in viewer.layers if "· unsure" in lyr.name]) == 2  # re-pointed, not added
