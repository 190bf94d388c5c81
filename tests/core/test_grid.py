"""Grid geometry against brute force: origins, order, coverage, metadata, touching, padding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from engine_testing import (
    brute_axis_origins,
    brute_extract,
    brute_origins,
    brute_pad,
    fast,
    grid_specs,
    random_volume,
    seeds,
    weightings,
)
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting, extract, stitch
from napari_qlty.core.tiles import window_slices


@fast(200)
@given(grid_specs())
def test_axis_origins_match_brute_force(spec):
    """Full range: 1-4 axes of 1..40, any window, step in [1, window], any legal border."""
    g = Grid(**spec)
    assert g.padded_shape == g.shape
    for axis in range(g.ndim):
        size, w, s = g.shape[axis], g.window[axis], g.step[axis]
        ref = brute_axis_origins(size, w, s)
        assert g.axis_origins[axis].tolist() == ref
        assert g.counts[axis] == len(ref) == math.ceil((size - w) / s) + 1
    assert len(g) == math.prod(g.counts)


@fast(120)
@given(grid_specs(max_windows=3000))
def test_origins_and_positions_in_c_order(spec):
    g = Grid(**spec)
    origins = g.origins()
    assert origins.dtype == np.int64
    assert origins.shape == (len(g), g.ndim)
    assert origins.tolist() == [list(o) for o in brute_origins(g)]
    positions = g.positions()
    assert positions.tolist() == [list(p) for p in itertools.product(*map(range, g.counts))]
    low, high = g.edge_flags()
    assert np.array_equal(low, positions == 0)
    assert np.array_equal(high, positions == np.asarray(g.counts) - 1)


@fast(100)
@given(grid_specs(max_sizes=(40, 30, 12, 7), max_windows=400, pad=None))
def test_every_voxel_covered_and_no_window_short(spec):
    g = Grid(**spec)
    coverage = np.zeros(g.padded_shape, dtype=np.int64)
    for origin in g.origins():
        assert all(0 <= o and o + w <= p for o, w, p in zip(origin, g.window, g.padded_shape))
        sl = tuple(slice(int(o), int(o) + w) for o, w in zip(origin, g.window))
        assert coverage[sl].shape == g.window  # never short
        coverage[sl] += 1
    assert coverage.min() >= 1
    assert coverage.sum() == len(g) * math.prod(g.window)
    for axis, origins in enumerate(g.axis_origins):
        assert origins[0] == 0
        # the last window ends exactly on the (padded) far edge
        assert origins[-1] + g.window[axis] == g.padded_shape[axis]
        diffs = np.diff(origins)
        assert (diffs > 0).all(), "origins strictly increase (no duplicate windows)"
        assert (diffs[:-1] == g.step[axis]).all() if len(diffs) else True
        assert (diffs <= g.step[axis]).all()
    # duplication: voxels in all windows over voxels of the (unpadded) volume
    assert g.duplication == pytest.approx(coverage.sum() / math.prod(g.shape))
    if not g.needs_padding:
        assert g.duplication == pytest.approx(coverage.mean())


@fast(80)
@given(
    grid_specs(max_sizes=(40, 24, 10, 6), max_windows=150, pad=None),
    st.integers(1, 2),
    st.booleans(),
    st.booleans(),
    seeds,
)
def test_window_at_metadata_matches_extracted_slices(spec, n_images, with_spacing, with_offset, seed):
    g0 = Grid(**spec)
    rng = np.random.default_rng(seed)
    spacing = tuple(rng.uniform(0.1, 3.0, g0.ndim).tolist()) if with_spacing else None
    offset = tuple(rng.uniform(-50, 50, g0.ndim).tolist()) if with_offset else None
    g = Grid(**spec, spacing=spacing, offset=offset)
    # unique values so a slice is identified by its content
    x = torch.arange(n_images * math.prod(g.shape), dtype=torch.float64).reshape(n_images, 1, *g.shape)
    xp = torch.from_numpy(np.ascontiguousarray(brute_extract(x, g)))
    patches = extract(x, g)
    assert torch.equal(patches, xp)
    padded = x
    if g.needs_padding:
        padded = torch.from_numpy(brute_pad(x.numpy(), g))
    origins = brute_origins(g)
    windows = list(g.windows(n_images))
    assert len(windows) == n_images * len(g)
    slices = window_slices(g, np.arange(n_images * len(g)))
    for index in range(n_images * len(g)):
        w = g.window_at(index)
        assert w == windows[index]
        n, k = divmod(index, len(g))
        position = tuple(int(p) for p in np.unravel_index(k, g.counts))
        assert (w.index, w.n, w.position) == (index, n, position)
        assert w.origin == origins[k]
        assert w.size == g.window
        assert w.stop == tuple(o + s for o, s in zip(origins[k], g.window))
        assert w.slices == tuple(slice(o, o + s) for o, s in zip(origins[k], g.window))
        assert slices[index] == (n, w.slices)
        # edge flags are geometric: the face lies on the (padded) volume's edge
        assert w.at_low_edge == tuple(o == 0 for o in w.origin)
        assert w.at_high_edge == tuple(s == p for s, p in zip(w.stop, g.padded_shape))
        assert torch.equal(patches[index], padded[(n, slice(None), *w.slices)])
        if spacing is None:
            assert w.physical_origin is None
        else:
            off = offset or (0.0,) * g.ndim
            expected = [t + o * s for t, o, s in zip(off, w.origin, spacing)]
            assert w.physical_origin == pytest.approx(expected)


@fast(120)
@given(grid_specs(max_windows=2000, pad=None), st.data())
def test_touching_equals_brute_force(spec, data):
    g = Grid(**spec)
    start, stop = [], []
    for p in g.padded_shape:
        a = data.draw(st.integers(0, p - 1))
        start.append(a)
        stop.append(data.draw(st.integers(a + 1, p)))
    got = g.touching(start, stop)
    brute = [
        k
        for k, origin in enumerate(brute_origins(g))
        if all(o < b and o + w > a for o, w, a, b in zip(origin, g.window, start, stop))
    ]
    assert got.tolist() == brute
    # the whole volume touches every window
    assert g.touching((0,) * g.ndim, g.padded_shape).tolist() == list(range(len(g)))


@fast(60)
@given(grid_specs(max_windows=2000, pad=None))
def test_duplication_formula(spec):
    g = Grid(**spec)
    assert g.duplication == pytest.approx(len(g) * math.prod(g.window) / math.prod(g.shape))
    assert g.duplication >= 1.0 or g.needs_padding


@fast(60)
@given(
    grid_specs(max_sizes=(30, 16, 8, 5), max_windows=100, force_pad=True, band_safe=True),
    st.integers(1, 2),
    st.integers(1, 2),
    seeds,
    st.data(),
)
def test_padding_shape_extract_and_identity_round_trip(spec, n, c, seed, data):
    g = Grid(**spec)
    assert g.needs_padding
    assert g.padded_shape == tuple(max(s, w) for s, w in zip(g.shape, g.window))
    x = random_volume(seed, (n, c, *g.shape))
    patches = extract(x, g)
    assert patches.shape == (n * len(g), c, *g.window)
    assert np.array_equal(patches.numpy(), brute_extract(x, g))
    weighting = data.draw(weightings(g.window))
    y = stitch(patches, g, weighting)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-5 * float(x.abs().max()))


@pytest.mark.parametrize("pad", ["reflect", "constant"])
def test_padding_values_small_example(pad):
    g = Grid((3, 5), window=(5, 4), step=(1, 2), pad=pad)
    assert g.padded_shape == (5, 5)
    assert g.counts == (1, 2)
    x = torch.arange(15, dtype=torch.float32).reshape(1, 1, 3, 5)
    p = extract(x, g)
    if pad == "reflect":
        rows = [0, 1, 2, 1, 0]
        expected = x[0, 0, rows]
    else:
        expected = torch.cat([x[0, 0], torch.zeros(2, 5)])
    assert torch.equal(p[0, 0], expected[:, 0:4])
    assert torch.equal(p[1, 0], expected[:, 1:5])
    assert torch.equal(stitch(p, g), x)


def test_reflect_padding_of_a_single_voxel_axis():
    g = Grid((1, 4), window=(3, 2), step=(1, 2), pad="reflect")
    x = torch.arange(4.0).reshape(1, 1, 1, 4)
    p = extract(x, g)
    assert torch.equal(p[:, 0], torch.tensor([[[0.0, 1], [0, 1], [0, 1]], [[2.0, 3], [2, 3], [2, 3]]]))
    assert torch.equal(stitch(p, g), x)


@fast(40)
@given(grid_specs(max_windows=500))
def test_equality_hash_and_per_axis_sequences(spec):
    g = Grid(**spec)
    assert g == Grid(**spec)
    assert hash(g) == hash(Grid(**spec))
    assert g != Grid(**{**spec, "border": tuple(0 for _ in spec["border"])}) or not any(spec["border"])
    assert g.ndim == len(spec["shape"])
    # one int means the same value on every axis
    w = spec["window"][0]
    if all(v == w for v in spec["window"]):
        assert Grid(**{**spec, "window": w}) == g
    assert "counts" in repr(g)


def test_examples_by_hand():
    g = Grid((10,), window=4, step=3)
    assert g.axis_origins[0].tolist() == [0, 3, 6]
    g = Grid((11,), window=4, step=3)
    assert g.axis_origins[0].tolist() == [0, 3, 6, 7]  # the last one stepped back
    g = Grid((4,), window=4, step=1)
    assert g.axis_origins[0].tolist() == [0]
    g = Grid((236, 720, 510), window=128, step=108, border=10)
    assert g.counts == (2, 7, 5) and len(g) == 70
    g = Grid((5, 5), window=(2, 5), step=(2, 1))
    assert g.origins().tolist() == [[0, 0], [2, 0], [3, 0]]
