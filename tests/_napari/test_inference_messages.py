"""What the Tiled inference widget says when a model file or a Performance field is not
right: the field's name, what to do, no Python (ModelSpec), no command-line syntax (::),
no torch internals; and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

TIMEOUT_MS = 60_000


@pytest.fixture
def widget(viewer, tmp_path):
    from napari_qlty._napari.widgets.inference import MODEL_FILE, InferenceWidget

    image = viewer.add_image(np.random.default_rng(0).integers(0, 255, (12, 40, 36), dtype=np.uint8), name="stack")
    w = InferenceWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image_combo.value = image
    w.model_combo.value = MODEL_FILE
    w.window_edit.value, w.step_edit.value, w.border_edit.value = "8", "6", "1"
    w.output_edit.value = tmp_path / "out.zarr"
    return w


def run(w, qtbot) -> str:
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert w.outcome == "error"
    message = w.status.value
    for jargon in ("ModelSpec", "::", "Traceback", "operand", "KeyError", "--"):
        assert jargon not in message, message
    return message


def test_model_files_that_cannot_run_say_what_to_do(widget, qtbot, tmp_path):
    folder = tmp_path / "some folder"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * 8)
    widget.model_path.value = folder
    assert "load model: " in run(widget, qtbot) and "is a folder" in widget.status.value

    weights = tmp_path / "weights.pth"
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), weights)
    widget.model_path.value = weights
    message = run(widget, qtbot)
    assert "weights.pth holds weights only (a state dict): fill in factory" in message

    notes = tmp_path / "notes.pt"
    notes.write_text("not a model")
    widget.model_path.value = notes
    assert "is not a model file torch can read (it is none of TorchScript" in run(widget, qtbot)
    assert not (tmp_path / "out.zarr").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["weights.bin"]


@pytest.mark.parametrize("field, label", [("chunks_edit", "chunk size"), ("region_edit", "region size")])
def test_performance_sizes_below_one_name_their_field(widget, qtbot, tmp_path, field, label):
    script = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1)).save(str(script))
    widget.model_path.value = script
    getattr(widget, field).value = "0"
    assert f"{label} must be at least 1 voxel along every axis" in run(widget, qtbot)
    assert not (tmp_path / "out.zarr").exists()
