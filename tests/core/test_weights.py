"""Window weights and their normaliser against brute-force accumulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_testing import (
    TAPER_MODES,
    brute_norm,
    fast,
    grid_specs,
    qlty_window_weight,
    ref_window_weight,
    weightings,
)
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting, WindowWeights

SPEC = dict(max_sizes=(40, 24, 12, 7), max_windows=300, band_safe=True, pad=None)


def random_box(data, shape):
    start, stop = [], []
    for p in shape:
        a = data.draw(st.integers(0, p - 1))
        start.append(a)
        stop.append(data.draw(st.integers(a + 1, p)))
    return tuple(start), tuple(stop)


@fast(150)
@given(grid_specs(**SPEC), st.data())
def test_norm_equals_brute_force_accumulation(spec, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    ww = WindowWeights(g, weighting)
    windows = [ww.for_window(k, dtype=torch.float64).numpy() for k in range(len(g))]
    brute = brute_norm(g, lambda k: windows[k])
    norm64 = ww.norm(dtype=torch.float64)
    assert norm64.dtype == torch.float64 and tuple(norm64.shape) == g.padded_shape
    np.testing.assert_allclose(norm64.numpy(), brute, rtol=1e-12, atol=1e-12)
    assert (brute > 0).all()
    norm32 = ww.norm()
    assert norm32.dtype == torch.float32
    np.testing.assert_allclose(norm32.numpy(), brute, rtol=2e-6, atol=1e-30)
    assert (norm32 > 0).all()
    # sub-boxes, several in a row (the engine caches per-box pieces)
    for _ in range(3):
        start, stop = random_box(data, g.padded_shape)
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        np.testing.assert_allclose(
            ww.norm(start, stop, dtype=torch.float64).numpy(), brute[box], rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(ww.norm(start, stop).numpy(), brute[box], rtol=2e-6)
    np.testing.assert_allclose(ww.norm(dtype=torch.float64).numpy(), brute, rtol=1e-12)


@fast(120)
@given(grid_specs(**SPEC), st.data())
def test_window_weights_match_documented_formula(spec, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    ww = WindowWeights(g, weighting)
    for k in range(len(g)):
        w64 = ww.for_window(k, dtype=torch.float64)
        assert w64.dtype == torch.float64 and tuple(w64.shape) == g.window
        ref = ref_window_weight(g, weighting, k)
        np.testing.assert_allclose(w64.numpy(), ref, rtol=1e-12, atol=1e-12)
        w32 = ww.for_window(k)
        assert w32.dtype == torch.float32
        np.testing.assert_allclose(w32.numpy(), ref, rtol=1e-6, atol=1e-30)
        assert (w64 >= 0).all()
        if weighting.mode != "map":
            assert float(w64.max()) == pytest.approx(1.0)
            assert (w64 <= 1 + 1e-12).all()
            if weighting.border_weight > 0:
                assert (w64 > 0).all()


@fast(120)
@given(grid_specs(**SPEC), st.one_of(st.just(0.0), st.floats(0.0, 1.0)))
def test_qlty_border_weight(spec, bw):
    """'border' mode: 1 inside, border_weight in the band of every interior face."""
    g = Grid(**spec)
    ww = WindowWeights(g, Weighting("border", border_weight=bw))
    for k in range(len(g)):
        expected = qlty_window_weight(g, bw, k)
        np.testing.assert_allclose(ww.for_window(k, dtype=torch.float64).numpy(), expected, rtol=1e-15)
    assert ww.uniform == (bw == 1.0 or not any(g.border))


@fast(80)
@given(grid_specs(**SPEC), st.data())
def test_faces_on_the_volume_edge_keep_full_weight(spec, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window, modes=TAPER_MODES))
    ww = WindowWeights(g, weighting)
    low, high = g.edge_flags()
    for k in range(len(g)):
        w = ww.for_window(k, dtype=torch.float64)
        for axis, size in enumerate(g.window):
            centre_low = w.select(axis, (size + 1) // 2 - 1)
            centre_high = w.select(axis, size // 2)
            if low[k, axis]:
                # the half of the profile on the edge side is flat: the outermost layer
                # weighs what the centre of the window weighs
                for j in range((size + 1) // 2):
                    torch.testing.assert_close(w.select(axis, j), centre_low, rtol=1e-12, atol=0)
            if high[k, axis]:
                for j in range(size // 2, size):
                    torch.testing.assert_close(w.select(axis, j), centre_high, rtol=1e-12, atol=0)
            if not low[k, axis] and not high[k, axis]:
                # an interior axis: the weight is symmetric
                torch.testing.assert_close(w, w.flip(axis), rtol=1e-12, atol=1e-15)
        if weighting.mode == "border":
            # outermost voxels on edge faces: weight 1 wherever the other axes are inside
            q = qlty_window_weight(g, 0.0, k)
            for axis in range(g.ndim):
                if low[k, axis]:
                    sel = q.take(0, axis=axis).astype(bool)
                    assert (w.select(axis, 0).numpy()[sel] == 1.0).all()
                if high[k, axis]:
                    sel = q.take(-1, axis=axis).astype(bool)
                    assert (w.select(axis, g.window[axis] - 1).numpy()[sel] == 1.0).all()
        if low[k].all() and high[k].all():
            # a window alone on every axis: nothing to blend with, weight 1 everywhere
            assert (w == 1).all()


def test_edge_windows_border_mode_by_hand():
    g = Grid((10,), window=6, step=4, border=2)  # origins 0, 4
    ww = WindowWeights(g, Weighting("border", border_weight=0.25))
    assert ww.for_window(0, dtype=torch.float64).tolist() == [1, 1, 1, 1, 0.25, 0.25]
    assert ww.for_window(1, dtype=torch.float64).tolist() == [0.25, 0.25, 1, 1, 1, 1]
    assert ww.norm(dtype=torch.float64).tolist() == [1, 1, 1, 1, 0.5, 0.5, 1, 1, 1, 1]
    g = Grid((12, 12), window=6, step=3, border=1)  # 3 x 3 windows; the centre one is interior
    ww = WindowWeights(g, Weighting("border", border_weight=0.0))
    centre = ww.for_window(4, dtype=torch.float64)
    expected = torch.zeros(6, 6, dtype=torch.float64)
    expected[1:5, 1:5] = 1
    assert torch.equal(centre, expected)


@fast(80)
@given(grid_specs(max_sizes=(40, 24, 12, 7), max_windows=300), st.sampled_from(TAPER_MODES))
def test_zero_border_weight_raises_iff_a_voxel_has_no_weight(spec, mode):
    g = Grid(**spec)
    brute = brute_norm(g, lambda k: qlty_window_weight(g, 0.0, k))
    if brute.min() > 0:
        ww = WindowWeights(g, Weighting(mode, border_weight=0.0))
        assert (ww.norm(dtype=torch.float64) > 0).all()
    else:
        with pytest.raises(ValueError, match=r"border\[\d\]=\d+ with border_weight=0 leaves voxels"):
            WindowWeights(g, Weighting(mode, border_weight=0.0))
        # any positive border weight is fine
        WindowWeights(g, Weighting(mode, border_weight=0.5))


@fast(60)
@given(grid_specs(**SPEC), st.integers(0, 2**32 - 1))
def test_map_mode_used_as_given_on_every_window(spec, seed):
    g = Grid(**spec)
    m = np.random.default_rng(seed).uniform(0.01, 2.0, g.window)
    for weight_map in (m, torch.from_numpy(m)):
        ww = WindowWeights(g, Weighting("map", weight_map=weight_map))
        for k in range(len(g)):
            np.testing.assert_allclose(ww.for_window(k, dtype=torch.float64).numpy(), m, rtol=1e-15)
        np.testing.assert_allclose(
            ww.norm(dtype=torch.float64).numpy(), brute_norm(g, lambda k: m), rtol=1e-12
        )
