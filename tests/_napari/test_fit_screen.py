"""Every widget fits a laptop screen (1366 x 768), all five docked at once: a dock taller
than its share of the column scrolls, and none is cut off at its right edge."""

from __future__ import annotations

import numpy as np

LAPTOP = (1366, 768)


def test_all_five_widgets_docked_fit_a_laptop_screen(viewer, qtbot):
    from napari_qlty._napari.widgets.export_pairs import ExportWidget
    from napari_qlty._napari.widgets.grid_preview import GridPreviewWidget
    from napari_qlty._napari.widgets.inference import InferenceWidget
    from napari_qlty._napari.widgets.labelling import LabellingWidget
    from napari_qlty._napari.widgets.train import TrainWidget

    viewer.add_image(np.zeros((16, 40, 36), np.uint8), name="image")
    widgets = [cls(viewer) for cls in (GridPreviewWidget, LabellingWidget, ExportWidget, InferenceWidget, TrainWidget)]
    for w in widgets:
        viewer.window.add_dock_widget(w, area="right")
    window = viewer.window._qt_window
    window.resize(*LAPTOP)
    qtbot.wait(200)

    # without scrolling docks the window's minimum height was the sum of the widgets' (~3200 px)
    assert window.minimumSizeHint().height() <= LAPTOP[1]
    assert window.height() <= LAPTOP[1]
    for w in widgets:
        scroll = w.native
        content = scroll.widget()
        # napari docks the scroll area, and still hands back the widget itself
        assert any(docked is w for docked in viewer.window.dock_widgets.values())
        # the scroll area never scrolls sideways: it must be as wide as its content needs
        assert scroll.minimumWidth() >= content.minimumSizeHint().width(), type(w).__name__
        assert content.width() >= content.minimumSizeHint().width(), type(w).__name__
