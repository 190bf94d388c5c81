"""Bad inputs raise clear errors that name the parameter and its valid range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr

from napari_qlty import (
    Accumulator,
    Grid,
    Weighting,
    WindowWeights,
    clean_pairs,
    extract,
    extract_lazy,
    infer,
    stitch,
)

# --- Grid ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, window, pattern",
    [
        ((10,), 11, r"window\[0\]=11 is larger .*size 10.*window\[0\] in \[1, 10\].*pad="),
        ((20, 7), (5, 8), r"window\[1\]=8 is larger .*size 7.*window\[1\] in \[1, 7\]"),
        ((4, 4, 4), (4, 4, 5), r"window\[2\]=5 .*\[1, 4\]"),
    ],
)
def test_window_larger_than_volume_without_pad(shape, window, pattern):
    with pytest.raises(ValueError, match=pattern):
        Grid(shape, window=window, step=1)


def test_window_larger_than_volume_is_fine_with_pad():
    for pad in ("reflect", "constant"):
        assert Grid((10,), window=11, step=1, pad=pad).padded_shape == (11,)


@pytest.mark.parametrize("window", [0, -3])
def test_window_below_one(window):
    with pytest.raises(ValueError, match=r"window\[0\] must be >= 1"):
        Grid((10,), window=window, step=1)


@pytest.mark.parametrize(
    "step, pattern",
    [
        (0, r"step\[0\] must be in \[1, window\[0\]=4\].*got 0"),
        (-1, r"step\[0\] must be in \[1, window\[0\]=4\].*got -1"),
        (5, r"step\[0\] must be in \[1, window\[0\]=4\].*got 5"),
        ((2, 7), r"step\[1\] must be in \[1, window\[1\]=4\].*got 7"),
    ],
)
def test_step_out_of_range(step, pattern):
    ndim = 2 if isinstance(step, tuple) else 1
    with pytest.raises(ValueError, match=pattern):
        Grid((10,) * ndim, window=4, step=step)


@pytest.mark.parametrize(
    "window, border, pattern",
    [
        (8, 4, r"border\[0\] must be in \[0, 3\].*window\[0\]=8.*got 4"),
        (9, 4, r"border\[0\] must be in \[0, 4\]"),  # 2 * 4 < 9 is fine ...
        (9, 5, r"border\[0\] must be in \[0, 4\].*got 5"),
        (8, -1, r"border\[0\] must be in \[0, 3\].*got -1"),
        (1, 1, r"border\[0\] must be in \[0, 0\]"),
    ],
)
def test_border_at_least_half_the_window(window, border, pattern):
    if 0 <= border and 2 * border < window:
        Grid((20,), window=window, step=1, border=border)  # legal
        return
    with pytest.raises(ValueError, match=pattern):
        Grid((20,), window=window, step=1, border=border)


@pytest.mark.parametrize("shape", [(), (5, 5, 5, 5, 5)])
def test_zero_or_five_tiled_axes(shape):
    with pytest.raises(ValueError, match=r"1 to 4 tiled axes, got %d" % len(shape)):
        Grid(shape, window=1, step=1)


def test_non_positive_shape():
    with pytest.raises(ValueError, match=r"shape must be positive"):
        Grid((4, 0), window=1, step=1)


def test_per_axis_value_count_and_type():
    with pytest.raises(ValueError, match=r"window has 3 values but the grid has 2 tiled axes"):
        Grid((10, 10), window=(4, 4, 4), step=2)
    with pytest.raises(TypeError, match=r"step must hold ints"):
        Grid((10, 10), window=4, step=(2.0, 2))
    with pytest.raises(TypeError, match=r"border must be an int or a sequence"):
        Grid((10, 10), window=4, step=2, border=1.5)


def test_bad_pad_spacing_offset():
    with pytest.raises(ValueError, match=r"pad must be None, 'reflect' or 'constant'"):
        Grid((10,), window=4, step=2, pad="wrap")
    with pytest.raises(ValueError, match=r"spacing must be finite and > 0"):
        Grid((10, 10), window=4, step=2, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"spacing must be finite and > 0"):
        Grid((10,), window=4, step=2, spacing=math.nan)
    with pytest.raises(ValueError, match=r"spacing must have 2 values"):
        Grid((10, 10), window=4, step=2, spacing=(1.0, 1.0, 1.0))


def test_window_at_negative_index():
    with pytest.raises(IndexError, match=r">= 0"):
        Grid((10,), window=4, step=2).window_at(-1)


# --- Weighting ------------------------------------------------------------------------


@pytest.mark.parametrize("bw", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_border_weight_outside_unit_interval(bw):
    with pytest.raises(ValueError, match=r"border_weight must be in \[0, 1\]"):
        Weighting("border", border_weight=bw)


@pytest.mark.parametrize("bw", [0.0, 0.5, 1.0])
def test_border_weight_in_range_is_used_in_the_band(bw):
    """Accepted at both ends of [0, 1]: an interior window weighs ``bw`` in its band, 1 inside."""
    grid = Grid((30,), window=10, step=4, border=2)
    w = WindowWeights(grid, Weighting("border", border_weight=bw)).for_window(2).numpy()
    np.testing.assert_allclose(w[:2], bw)
    np.testing.assert_allclose(w[8:], bw)
    np.testing.assert_allclose(w[2:8], 1.0)


def test_unknown_mode_and_bad_sigma():
    with pytest.raises(ValueError, match=r"weighting mode must be one of .*'cosine'"):
        Weighting("cosine")
    for sigma in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"sigma must be > 0"):
            Weighting("gaussian", sigma=sigma)


def test_zero_border_weight_that_leaves_no_weight_names_border():
    g = Grid((32,), window=16, step=16, border=2)
    with pytest.raises(ValueError, match=r"border\[0\]=2 with border_weight=0 leaves voxels with no weight") as info:
        WindowWeights(g, Weighting("border", border_weight=0.0))
    message = str(info.value)
    assert "step[0] <= window[0] - 2*border[0] = 12" in message and "got 16" in message
    with pytest.raises(ValueError, match=r"border\[0\]=2"):
        stitch(torch.zeros(2, 1, 16), g, Weighting("border", border_weight=0.0))
    with pytest.raises(ValueError, match=r"border\[1\]=3 with border_weight=0"):
        WindowWeights(Grid((8, 20), window=(8, 10), step=(8, 5), border=(0, 3)), Weighting(border_weight=0.0))


def test_map_mode_without_a_map_and_a_map_without_map_mode():
    with pytest.raises(ValueError, match=r"weight_map is required with mode='map'"):
        Weighting("map")
    with pytest.raises(ValueError, match=r"weight_map is required with mode='map' and only then"):
        Weighting("hann", weight_map=np.ones(4))


def test_map_of_the_wrong_shape():
    g = Grid((12, 12), window=(4, 6), step=2)
    with pytest.raises(ValueError, match=r"weight_map has shape \(6, 4\) but the window is \(4, 6\)"):
        WindowWeights(g, Weighting("map", weight_map=np.ones((6, 4))))
    with pytest.raises(ValueError, match=r"weight_map has shape"):
        stitch(torch.zeros(len(g), 1, 4, 6), g, Weighting("map", weight_map=np.ones(4)))


def test_map_zero_at_its_edges_with_step_equal_window():
    m = np.zeros((4, 4))
    m[1:3, 1:3] = 1
    g = Grid((8, 8), window=4, step=4)
    with pytest.raises(ValueError, match=r"weight_map leaves voxels with no weight \(first at \(0, 0\)\)"):
        WindowWeights(g, Weighting("map", weight_map=m))
    # with overlap the zeros are covered elsewhere only where windows overlap: still no weight at (0, 0)
    with pytest.raises(ValueError, match=r"no weight"):
        stitch(torch.zeros(len(Grid((8, 8), 4, 2)), 1, 4, 4), Grid((8, 8), 4, 2), Weighting("map", weight_map=m))


@pytest.mark.parametrize(
    "m, pattern",
    [
        (np.zeros(4), r"zero everywhere"),
        (np.array([1.0, -1.0, 1.0, 1.0]), r"finite and >= 0"),
        (np.array([1.0, math.nan, 1.0, 1.0]), r"finite and >= 0"),
        (np.array([1.0, math.inf, 1.0, 1.0]), r"finite and >= 0"),
    ],
)
def test_bad_map_values(m, pattern):
    with pytest.raises(ValueError, match=pattern):
        Weighting("map", weight_map=m)


# --- extract / stitch / infer -----------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 10, 10), (10, 10), (1, 1, 1, 10, 10)])
def test_wrong_dimensionality_of_the_input(shape):
    g = Grid((10, 10), window=4, step=2)
    pattern = r"must have 4 dimensions \(N, C, 2 spatial\).*got %d" % len(shape)
    with pytest.raises(ValueError, match=pattern):
        extract(torch.zeros(shape), g)
    with pytest.raises(ValueError, match=pattern):
        extract_lazy(np.zeros(shape), g, [0])
    with pytest.raises(ValueError, match=pattern):
        infer(lambda b: b, torch.zeros(shape), g)


def test_wrong_spatial_shape_of_the_input():
    g = Grid((10, 10), window=4, step=2)
    with pytest.raises(ValueError, match=r"spatial shape \(10, 11\) but the grid was made for \(10, 10\)"):
        extract(torch.zeros(1, 1, 10, 11), g)
    with pytest.raises(ValueError, match=r"spatial shape \(9, 10\)"):
        infer(lambda b: b, torch.zeros(1, 1, 9, 10), g)


def test_window_indices_out_of_range():
    g = Grid((10,), window=4, step=2)  # 4 windows
    x = torch.zeros(2, 1, 10)
    with pytest.raises(IndexError, match=r"window indices must be in \[0, 8\)"):
        extract(x, g, [0, 8])
    with pytest.raises(IndexError, match=r"window indices must be in \[0, 8\)"):
        extract_lazy(x.numpy(), g, [-1])


def test_nan_in_patches_passed_to_stitch():
    g = Grid((10, 10), window=4, step=3)
    patches = torch.zeros(len(g), 2, 4, 4)
    patches[3, 1, 2, 2] = math.nan
    with pytest.raises(ValueError, match=r"NaN"):
        stitch(patches, g)
    patches[3, 1, 2, 2] = math.inf
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        stitch(patches, g, Weighting("hann"))


def test_nan_output_of_a_model_in_infer():
    g = Grid((12, 12), window=4, step=4)

    def model(batch):
        out = batch.clone()
        out[-1, 0, 0, 0] = math.nan
        return out

    with pytest.raises(ValueError, match=r"NaN.*model"):
        infer(model, torch.zeros(1, 1, 12, 12), g, batch_size=5)


@pytest.mark.parametrize("count", [0, 3, 10])
def test_patch_count_not_a_multiple_of_windows_per_image(count):
    g = Grid((10, 10), window=4, step=3)  # 3 x 3 = 9 windows
    with pytest.raises(ValueError, match=rf"got {count} patches.*9 windows per image.*positive multiple of 9"):
        stitch(torch.zeros(count, 1, 4, 4), g)


@pytest.mark.parametrize("shape", [(9, 1, 4, 5), (9, 1, 4), (9, 1, 4, 4, 1), (9, 4, 4)])
def test_patch_shape_not_the_window(shape):
    g = Grid((10, 10), window=4, step=3)
    with pytest.raises(ValueError, match=r"patches must have shape \(M, C, 4, 4\) for this grid, got"):
        stitch(torch.zeros(shape), g)


def test_patches_not_a_tensor():
    g = Grid((10,), window=4, step=3)
    with pytest.raises(TypeError, match=r"patches must be a torch.Tensor"):
        stitch(np.zeros((len(g), 1, 4)), g)


def test_accumulator_errors():
    g = Grid((10,), window=4, step=3)
    ww = WindowWeights(g)
    with pytest.raises(ValueError, match=r"region .* is empty"):
        Accumulator(ww, 1, 1, start=(3,), stop=(3,))
    acc = Accumulator(ww, 1, 2)
    with pytest.raises(ValueError, match=r"patches have 1 channels, expected 2"):
        acc.add(torch.zeros(1, 1, 4), [0])
    with pytest.raises(ValueError, match=r"got 2 patches but 1 window indices"):
        acc.add(torch.zeros(2, 2, 4), [0])
    with pytest.raises(IndexError, match=r"image 1, outside \[0, 1\)"):
        acc.add(torch.zeros(1, 2, 4), [len(g)])


def test_infer_batch_size_below_one():
    g = Grid((10,), window=4, step=3)
    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        infer(lambda b: b, torch.zeros(1, 1, 10), g, batch_size=0)


def test_infer_model_returning_wrong_spatial_shape():
    g = Grid((10,), window=4, step=3)
    with pytest.raises(ValueError, match=r"output \(2, 1, 3\) does not fit its input \(2, 1, 4\)"):
        infer(lambda b: b[..., 1:], torch.zeros(1, 1, 10), g, batch_size=2)


# --- clean_pairs -----------------------------------------------------------------------


@pytest.mark.parametrize("min_labelled", [0, -1, 1.5])
def test_clean_pairs_min_labelled_below_one(min_labelled):
    g = Grid((10,), window=4, step=2)
    with pytest.raises(ValueError, match=r"min_labelled must be an int >= 1, got %s" % min_labelled):
        clean_pairs(torch.zeros(1, 1, 10), torch.zeros(1, 10), g, min_labelled=min_labelled)


@pytest.mark.parametrize(
    "label_shape, pattern",
    [
        ((1, 10, 9), r"labels has spatial shape \(10, 9\) but the grid was made for \(10, 10\)"),
        ((1, 10), r"labels must be \(N, 2 spatial\) or \(N, 1, 2 spatial\), got shape \(1, 10\)"),
        ((1, 2, 10, 10), r"labels must be \(N, 2 spatial\) or \(N, 1, 2 spatial\), got shape \(1, 2, 10, 10\)"),
        ((2, 10, 10), r"image has 1 images but labels have 2"),
    ],
)
def test_clean_pairs_mismatched_label_shape(label_shape, pattern):
    g = Grid((10, 10), window=4, step=2)
    with pytest.raises(ValueError, match=pattern):
        clean_pairs(torch.zeros(1, 1, 10, 10), torch.zeros(label_shape), g)


def test_clean_pairs_mismatched_lazy_label_shape(tmp_path):
    g = Grid((10, 10), window=4, step=2)
    z = zarr.open_array(store=str(tmp_path / "l.zarr"), mode="w", shape=(1, 1, 10, 8), dtype="int16")
    with pytest.raises(ValueError, match=r"labels has spatial shape \(10, 8\)"):
        clean_pairs(torch.zeros(1, 1, 10, 10), z, g)
