"""Stitching: identity round trips, weight maps, sub-regions, gradients, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_testing import (
    brute_norm,
    brute_origins,
    fast,
    grid_specs,
    random_volume,
    ref_window_weight,
    seeds,
    weightings,
)
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Accumulator, Grid, Weighting, WindowWeights, extract, stitch

SPEC = dict(max_sizes=(40, 20, 10, 6), max_windows=150, band_safe=True, pad=None)


def close(y, x, rtol=1e-5):
    """allclose with an absolute tolerance relative to the values' magnitude."""
    scale = float(x.detach().abs().max()) if x.numel() else 1.0
    torch.testing.assert_close(y, x, rtol=rtol, atol=rtol * max(scale, 1e-30))


@fast(150)
@given(grid_specs(**SPEC), st.integers(1, 3), st.integers(1, 3), seeds, st.data())
def test_identity_round_trip(spec, n, c, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    x = random_volume(seed, (n, c, *g.shape))
    y = stitch(extract(x, g), g, weighting)
    assert y.shape == x.shape and y.dtype == torch.float32
    close(y, x)
    uniform = WindowWeights(g, weighting).uniform
    if uniform and all(s == w for s, w in zip(g.step, g.window)) and not g.needs_padding:
        assert torch.equal(y, x)  # each voxel seen once with weight 1


@fast(60)
@given(grid_specs(**SPEC), st.integers(1, 2), seeds, st.data())
def test_identity_round_trip_float64(spec, n, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    x = random_volume(seed, (n, 2, *g.shape), torch.float64)
    y = stitch(extract(x, g), g, weighting)
    assert y.dtype == torch.float64
    close(y, x, rtol=1e-12)


@pytest.mark.parametrize("mode", ["border", "gaussian", "hann", "linear", "map"])
def test_step_equals_window_is_exact_or_nearly(mode):
    g = Grid((12, 9), window=(4, 3), step=(4, 3), border=(1, 1))
    kw = {"weight_map": np.full((4, 3), 0.5)} if mode == "map" else {"border_weight": 0.3}
    x = random_volume(1, (2, 3, 12, 9))
    y = stitch(extract(x, g), g, Weighting(mode, **kw))
    close(y, x, rtol=1e-6)
    assert torch.equal(stitch(extract(x, g), g, Weighting("border", border_weight=1.0)), x)
    assert torch.equal(stitch(extract(x, Grid((12, 9), 4, 4)), Grid((12, 9), 4, 4)), x)


@fast(80)
@given(grid_specs(**SPEC), st.integers(1, 2), seeds, st.data())
def test_constant_patches_stitch_to_the_constant(spec, n, seed, data):
    """The weights form a partition of unity after normalising, for every mode."""
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    value = float(np.random.default_rng(seed).uniform(-5, 5))
    patches = torch.full((n * len(g), 1, *g.window), value)
    close(stitch(patches, g, weighting), torch.full((n, 1, *g.shape), value))


@fast(60)
@given(grid_specs(**SPEC), st.integers(1, 2), seeds, st.data())
def test_output_channels_follow_the_patches(spec, n, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    x = random_volume(seed, (n, 1, *g.shape))
    patches = extract(x, g)
    scale = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, *([1] * g.ndim))
    y = stitch(patches.repeat(1, 3, *([1] * g.ndim)) * scale, g, weighting)
    assert y.shape == (n, 3, *g.shape)
    close(y, x * scale)


@fast(80)
@given(grid_specs(**SPEC), st.integers(1, 2), seeds, st.data())
def test_stitch_is_the_weighted_mean_and_return_weight(spec, n, seed, data):
    """Arbitrary patches: brute-force weighted sum over windows divided by the brute norm."""
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    patches = random_volume(seed, (n * len(g), 2, *g.window), torch.float64)
    y, weight = stitch(patches, g, weighting, return_weight=True)
    ref_w = [ref_window_weight(g, weighting, k) for k in range(len(g))]
    norm = brute_norm(g, lambda k: ref_w[k])
    acc = np.zeros((n, 2, *g.padded_shape))
    origins = brute_origins(g)
    for index in range(n * len(g)):
        nn, k = divmod(index, len(g))
        sl = tuple(slice(o, o + w) for o, w in zip(origins[k], g.window))
        acc[(nn, slice(None), *sl)] += patches[index].numpy() * ref_w[k]
    keep = tuple(slice(0, s) for s in g.shape)
    expected = (acc / norm)[(slice(None), slice(None), *keep)]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-10, atol=1e-10)
    assert weight.dtype == torch.float64 and tuple(weight.shape) == g.shape
    np.testing.assert_allclose(weight.numpy(), norm[keep], rtol=1e-12)
    # float32 patches: float32 weight map
    y32, w32 = stitch(patches.float(), g, weighting, return_weight=True)
    assert w32.dtype == torch.float32
    np.testing.assert_allclose(w32.numpy(), norm[keep], rtol=2e-6)
    np.testing.assert_allclose(y32.numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # a prebuilt WindowWeights gives the same
    torch.testing.assert_close(stitch(patches, g, WindowWeights(g, weighting)), y, rtol=0, atol=0)


@fast(80)
@given(grid_specs(**SPEC), st.integers(1, 2), seeds, st.data())
def test_accumulator_over_a_sub_region_equals_crop_of_full_stitch(spec, n, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    ww = WindowWeights(g, weighting)
    patches = random_volume(seed, (n * len(g), 2, *g.window))
    full = stitch(patches, g, ww)
    start, stop = [], []
    for p in g.padded_shape:
        a = data.draw(st.integers(0, p - 1))
        start.append(a)
        stop.append(data.draw(st.integers(a + 1, p)))
    crop = tuple(slice(a, min(b, s)) for a, b, s in zip(start, stop, g.shape))
    expected = full[(slice(None), slice(None), *crop)]
    # only the windows touching the region, in batches
    touching = g.touching(start, stop)
    indices = np.concatenate([touching + i * len(g) for i in range(n)])
    acc = Accumulator(ww, n, 2, start=start, stop=stop)
    for chunk in np.array_split(indices, 3):
        if len(chunk):
            acc.add(patches[chunk], chunk)
    got = acc.result()
    assert got.shape == expected.shape
    close(got, expected)
    # every window, in reverse order: those outside the region are ignored
    acc = Accumulator(ww, n, 2, start=start, stop=stop)
    everything = np.arange(n * len(g))[::-1].copy()
    acc.add(patches[everything], everything)
    close(acc.result(), expected)
    # without cropping, the region's full size comes back
    acc = Accumulator(ww, n, 2, start=start, stop=stop)
    acc.add(patches, np.arange(n * len(g)))
    uncropped = acc.result(crop=False)
    assert tuple(uncropped.shape[2:]) == tuple(b - a for a, b in zip(start, stop))


@fast(40)
@given(grid_specs(**SPEC), st.integers(1, 2), seeds, st.data())
def test_gradients_reach_the_patches(spec, n, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    patches = random_volume(seed, (n * len(g), 2, *g.window), torch.float64).requires_grad_(True)
    y = stitch(patches, g, weighting)
    r = random_volume(seed + 1, tuple(y.shape), torch.float64)
    (y * r).sum().backward()
    ref_w = [ref_window_weight(g, weighting, k) for k in range(len(g))]
    norm = brute_norm(g, lambda k: ref_w[k])
    r_pad = np.zeros((n, 2, *g.padded_shape))
    r_pad[(slice(None), slice(None), *(slice(0, s) for s in g.shape))] = r.numpy()
    origins = brute_origins(g)
    expected = np.zeros(tuple(patches.shape))
    for index in range(n * len(g)):
        nn, k = divmod(index, len(g))
        sl = tuple(slice(o, o + w) for o, w in zip(origins[k], g.window))
        expected[index] = r_pad[(nn, slice(None), *sl)] * ref_w[k] / norm[sl]
    assert patches.grad is not None
    np.testing.assert_allclose(patches.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("mode", ["border", "gaussian", "map"])
def test_gradients_reach_a_small_models_parameters(ndim, mode):
    torch.manual_seed(ndim)
    shape = {1: (23,), 2: (13, 11), 3: (7, 9, 6)}[ndim]
    window = {1: 8, 2: 5, 3: 4}[ndim]
    g = Grid(shape, window=window, step=window - 2, border=1)
    kw = {"weight_map": np.random.default_rng(0).uniform(0.1, 1, g.window)} if mode == "map" else {}
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[ndim]
    model = torch.nn.Sequential(conv(2, 4, 3, padding=1), torch.nn.Tanh(), conv(4, 3, 1))
    x = torch.randn(2, 2, *shape, requires_grad=True)
    y = stitch(model(extract(x, g)), g, Weighting(mode, border_weight=0.5, **kw))
    assert y.shape == (2, 3, *shape)
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "dtype, out_dtype",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
@pytest.mark.parametrize("weighting", [Weighting(), Weighting("hann", border_weight=0.2)])
def test_result_dtype(dtype, out_dtype, weighting):
    g = Grid((10, 9), window=4, step=3, border=1)
    x = random_volume(3, (2, 2, 10, 9)).to(dtype)
    y, w = stitch(extract(x, g), g, weighting, return_weight=True)
    assert y.dtype == out_dtype and w.dtype == out_dtype
    close(y, x.to(out_dtype), rtol=1e-5)


def test_stitch_keeps_the_patches_unchanged():
    g = Grid((9, 9), window=4, step=2, border=1)
    patches = random_volume(0, (len(g), 1, 4, 4))
    before = patches.clone()
    stitch(patches, g, Weighting("gaussian", border_weight=0.3))
    assert torch.equal(patches, before)


def test_tiny_gaussian_sigma_float64_is_fine():
    g = Grid((30,), window=10, step=10)
    x = random_volume(0, (1, 1, 30), torch.float64)
    close(stitch(extract(x, g), g, Weighting("gaussian", sigma=0.03)), x, rtol=1e-12)


def test_tiny_gaussian_sigma_float32():
    g = Grid((30,), window=10, step=10)
    x = random_volume(0, (1, 1, 30))
    weighting = Weighting("gaussian", sigma=0.03)
    close(stitch(extract(x, g), g, weighting), x)


# -- the fused path: a batch in a fixed number of operators --------------------------------------
@fast(60)
@given(grid_specs(max_sizes=(40, 20, 10, 6), max_windows=60, band_safe=True, pad=None), seeds, st.integers(1, 7),
       st.data())
def test_fused_batches_equal_window_by_window(spec, seed, batch_size, data):
    """Cutting with one gather and adding with one index_add_ per batch gives the same
    result as strided copies window by window, for every weighting and 1 to 4 axes."""
    from napari_qlty import infer

    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    x = random_volume(seed, (2, 2, *g.shape))
    a = infer(lambda b: b * 3 - 1, x, g, weighting, batch_size=batch_size, fused=False)
    b = infer(lambda b: b * 3 - 1, x, g, weighting, batch_size=batch_size, fused=True)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * max(1.0, float(a.abs().max())))


@fast(40)
@given(grid_specs(min_ndim=2, max_ndim=3, max_sizes=(40, 30, 16, 6), max_windows=60, band_safe=True), seeds, st.data())
def test_fused_region_accumulator_equals_strided(spec, seed, data):
    """In a region's box (the region grown by its own windows), as the out-of-core run uses it."""
    from napari_qlty.run.handover import RegionSums
    from napari_qlty.run.regions import Regions

    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    w = WindowWeights(g, weighting)
    size = tuple(data.draw(st.integers(1, s)) for s in g.padded_shape)
    regions = Regions(g, size)
    r = tuple(data.draw(st.integers(0, c - 1)) for c in regions.counts)
    owned = regions.owned(r)
    if not owned.size:
        return
    patches = random_volume(seed, (len(owned), 3, *g.window))
    slow = RegionSums(regions, w, 0, r, 3)
    fast_ = RegionSums(regions, w, 0, r, 3)
    slow.add(patches, owned, fused=False)
    fast_.add(patches, owned, fused=True)
    torch.testing.assert_close(fast_.acc.sum, slow.acc.sum, rtol=1e-5, atol=1e-5)


@fast(60)
@given(grid_specs(**SPEC), st.sampled_from([8, 64, 1 << 12]), seeds, st.data())
def test_normalising_in_cache_sized_blocks_equals_one_pass(spec, block_bytes, seed, data):
    """Any box of the volume, cut into blocks of any size (down to part of one row of the
    second axis), is divided by the brute-force total weight, for every weighting."""
    from napari_qlty.core import blend

    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    w = WindowWeights(g, weighting)
    norm = brute_norm(g, lambda k: ref_window_weight(g, weighting, k))
    start = tuple(data.draw(st.integers(0, p - 1)) for p in g.padded_shape)
    stop = tuple(data.draw(st.integers(a + 1, p)) for a, p in zip(start, g.padded_shape))
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    sums = random_volume(seed, (2, 3, *(b - a for a, b in zip(start, stop))), torch.float64)
    expected = sums.numpy() / norm[box]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blend, "NORMALISE_BYTES", block_bytes)
        blocked = blend.normalise_(sums.clone(), w, start, one_pass=False)
    one = blend.normalise_(sums.clone(), w, start, one_pass=True)
    np.testing.assert_allclose(blocked.numpy(), expected, rtol=1e-12)
    assert torch.equal(blocked, one)


def test_a_nan_in_one_block_is_found(monkeypatch):
    from napari_qlty.core import blend

    g = Grid((9, 7, 5), window=(3, 3, 3), step=(2, 2, 2))
    sums = torch.ones((1, 2, 9, 7, 5))
    sums[0, 1, 8, 6, 4] = float("nan")
    monkeypatch.setattr(blend, "NORMALISE_BYTES", 16)
    with pytest.raises(ValueError, match="NaN or infinite"):
        blend.normalise_(sums, WindowWeights(g, Weighting("gaussian")), (0, 0, 0), one_pass=False)


def test_huge_finite_values_are_not_taken_for_a_model_failure():
    """The quick check sums each block in float32, which overflows on values near 1e38;
    the exact check behind it then finds every value finite."""
    from napari_qlty.core import blend

    g = Grid((64, 64), window=(8, 8), step=(8, 8))
    sums = torch.full((1, 2, 64, 64), 3e38)
    out = blend.normalise_(sums, WindowWeights(g, Weighting("border")), (0, 0), one_pass=True)
    assert torch.isfinite(out).all()
