"""What a newcomer met walking the widgets in a real viewer (1600 x 1000 under Xvfb):
each test is one thing that looked wrong on screen, and stays right."""

from __future__ import annotations

import numpy as np

TIMEOUT_MS = 90_000


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
