"""`make demo` end to end on a tiny volume with a tiny budget."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from napari_qlty import Grid
from napari_qlty.io.prediction import Prediction
from napari_qlty.demo import DEMO_SHAPE, figure2, main, paper_grid_note, parse_args
from napari_qlty.models import load_model
from napari_qlty.models.checkpoints import checkpoint_recipe
from napari_qlty.train import checkpoint_spec

TINY = ["--shape", "32,64,64", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
        "--infer-window", "32", "--infer-step", "24", "--infer-border", "4"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*TINY, "--out", str(out), "--figure", str(tmp_path / "copy.png")]) == 0
    text = capsys.readouterr().out
    # the engine check, both tables, the paper's grid, the scores and the timings are printed
    assert "engine check: max |stitched - whole-volume|" in text and ": OK" in text
    for heading in ("Table 2", "windows in the grid", "duplication rate", "Table 3", "axis Z", "windows / s",
                    "macro F1, all voxels", "within 2 voxels of a seam", "elsewhere", "total"):
        assert heading in text, heading
    assert "2 x 7 x 5 = 70 windows, not the 231" in text
    # what it wrote
    pairs = zarr.open_group(str(out / "pairs.zarr"), mode="r")
    assert pairs["images"].shape[2:] == (32, 64, 64)  # the training window, clipped to the volume
    probabilities = Prediction(out / "prediction.zarr").probabilities()[...]
    assert probabilities.shape == (1, 2, 32, 64, 64)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
    for name in ("unet", "msdnet", "ensemble"):
        assert (out / f"{name}.pt").is_file()
        assert checkpoint_recipe(out / f"{name}.pt")["format"] == "napari-qlty/checkpoint/1"
    # the saved ensemble reloads as a model
    model = load_model(checkpoint_spec(out / "ensemble.pt"))
    with torch.no_grad():
        y = model(torch.zeros(1, 1, 8, 8, 8))
    assert y.shape == (1, 2, 8, 8, 8)
    for png in (out / "figure2.png", tmp_path / "copy.png"):
        with Image.open(png) as im:
            assert im.mode == "RGB" and im.width > 3 * 64


def test_paper_grid_note():
    note = paper_grid_note()
    assert "(236, 720, 510)" in note and "2 x 7 x 5 = 70" in note and "3 x 11 x 7" in note


def test_demo_shape_fits_the_paper_inference_grid():
    grid = Grid(DEMO_SHAPE, window=128, step=108, border=10)
    assert not grid.needs_padding
    assert grid.counts == (1, 2, 2)
    assert [s.tolist() for s in grid.seams()] == [[], [118.0], [118.0]]


def test_hidden_flags_stay_hidden(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--paper" in text and "--epochs" not in text and "--shape" not in text


def test_figure_draws_seams_in_purple(tmp_path):
    rng = np.random.default_rng(0)
    h = w = 40
    grid = Grid((16, h, w), window=(16, 24, 24), step=(16, 16, 16), border=(0, 2, 2))
    truth = rng.random((h, w)) < 0.1
    figure2(rng.standard_normal((h, w)), rng.random((h, w)), np.full((h, w), -1), truth, truth, grid, 0,
            [tmp_path / "f.png"], "test")
    with Image.open(tmp_path / "f.png") as im:
        pixels = np.asarray(im)
    purple = np.all(pixels == (170, 60, 220), axis=-1)
    assert purple.sum() > 2 * 40  # one horizontal and one vertical seam line, 2 px wide
