"""Fixtures for the napari plugin tests: a real viewer (pytest-qt + napari's
``make_napari_viewer``) on a small synthetic tomogram.

The widget tests need a display with OpenGL: run them under ``xvfb-run`` on a machine
without a screen. Without a display they are skipped (``QT_QPA_PLATFORM=offscreen`` is not
enough: vispy then has no GL context and adding a layer fails).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

HAVE_DISPLAY = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and (
    os.environ.get("QT_QPA_PLATFORM", "") not in ("offscreen", "minimal")
)

SHAPE = (32, 64, 48)


@pytest.fixture(scope="session")
def tomogram():
    from napari_qlty.data.tomogram import make_tomogram

    return make_tomogram(SHAPE, seed=0)


@pytest.fixture
def sample_layers(tomogram):
    """(image, napari labels) arrays as the sample-data entry gives them (0 = unlabelled)."""
    sparse = (tomogram.annotations.astype(np.int16) + 1).astype(np.uint8)
    return tomogram.image, sparse


@pytest.fixture(autouse=True)
def _private_output_dir(tmp_path, monkeypatch):
    """Default output paths go to the test's temporary folder, not the shared temp dir."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


@pytest.fixture
def viewer(request):
    """A shown napari viewer (napari's ``make_napari_viewer``), or a skip without a display."""
    if not HAVE_DISPLAY:
        pytest.skip("needs a display with OpenGL (run under xvfb-run)")
    return request.getfixturevalue("make_napari_viewer")(show=True)
