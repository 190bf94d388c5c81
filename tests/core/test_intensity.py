"""Global intensity normalisation: exact statistics out of core, the same mapping for every
window (so no seam), kept with a prediction so that a resume uses the same numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr
from engine_testing import fast
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting, infer, iter_predict, predict
from napari_qlty.core.intensity import Fitted, Normalisation, measure
from napari_qlty.io.prediction import Prediction, read_meta

INTEGERS = ["uint8", "int8", "uint16", "int16", "bool"]


@fast(60)
@given(st.sampled_from(INTEGERS), st.integers(0, 2**31), st.floats(0, 49), st.floats(51, 100),
       st.integers(1, 3), st.integers(1, 2))
def test_integer_percentiles_are_exactly_numpys(dtype, seed, low, high, n, c):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        x = rng.random((n, c, 9, 11)) < rng.random()
    else:
        info = np.iinfo(dt)
        spread = int(rng.integers(1, int(info.max) - int(info.min) + 1))
        x = (rng.integers(0, spread, size=(n, c, 9, 11)) + int(info.min)).astype(dt)
    stats = measure(x, Normalisation("percentile", low, high))
    assert stats["method"] == "exact histogram" and stats["voxels_read"] == x.size
    reference = np.percentile(x.astype(np.float64), [low, high])
    assert stats[f"p{low:g}"] == reference[0] and stats[f"p{high:g}"] == reference[1]
    assert stats["mean"] == pytest.approx(float(x.astype(np.float64).mean()), rel=1e-12, abs=1e-9)
    assert stats["std"] == pytest.approx(float(x.astype(np.float64).std()), rel=1e-9, abs=1e-9)


def test_large_float_volumes_are_sampled_deterministically_and_say_so():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 64, 64, 64)).astype(np.float32)
    small = measure(x, Normalisation("percentile"), sample_voxels=1 << 20)
    assert small["method"] == "all voxels"
    sampled = measure(x, Normalisation("percentile"), sample_voxels=1 << 15)
    assert sampled["method"].startswith("sample of") and sampled["voxels_read"] < x.size
    assert sampled == measure(x, Normalisation("percentile"), sample_voxels=1 << 15)  # the same blocks
    # the estimate's true rank is close to the one asked for (the documented DKW bound, loosely)
    rank = float((x < sampled["p99.8"]).mean() * 100)
    n = sampled["voxels_read"]
    assert abs(rank - 99.8) <= 100 * 4 * math.sqrt(math.log(40) / (2 * n))


def test_modes_map_as_documented():
    x = np.arange(0, 1001, dtype=np.uint16)[None, None, None]
    pct = Normalisation("percentile", 1, 99).fit(x)
    assert pct.apply(torch.tensor([10.0, 990.0])).tolist() == pytest.approx([0.0, 1.0])
    ms = Normalisation("mean-std").fit(x)
    out = ms.apply(torch.from_numpy(x.astype(np.float64)))
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-9) and float(out.std(unbiased=False)) == pytest.approx(1.0)
    rng_ = Normalisation("range", 100, 300).fit(x)
    assert rng_.apply(torch.tensor([100.0, 300.0])).tolist() == [0.0, 1.0]
    assert Normalisation().fit(x).identity
    for bad, match in ((dict(mode="zscore"), "one of"), (dict(mode="range", low=1), "both low and high"),
                       (dict(mode="percentile", low=60, high=50), "0 <= low < high <= 100"),
                       (dict(mode="none", low=1), "takes no low")):
        with pytest.raises(ValueError, match=match):
            Normalisation(**bad)
    assert Fitted.from_json(pct.to_json()) == pct


def _gradient_volume():
    """Intensity that climbs across the volume (uneven illumination), in uint16."""
    z, y, x = np.meshgrid(np.arange(16), np.arange(48), np.arange(40), indexing="ij")
    rng = np.random.default_rng(1)
    return (1000 + 60 * x + 30 * y + rng.integers(0, 200, size=x.shape)).astype(np.uint16)[None, None]


def test_global_normalisation_has_no_seam_per_window_normalisation_does():
    """Normalising each window on its own puts a step in what the model sees at every
    window edge; normalising with the whole volume's statistics does not."""
    x = _gradient_volume()
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1).eval()
    grid = Grid(x.shape[2:], window=(8, 16, 16), step=(4, 12, 12), border=2)
    fitted = Normalisation("percentile").fit(x)
    tiled = infer(net, x, grid, Weighting("border", 0.0), normalise=fitted)
    with torch.no_grad():
        whole = net(fitted.apply(torch.from_numpy(x.astype(np.float32))))
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)

    def per_window(batch):  # what a peer does: each window on its own percentiles
        flat = batch.reshape(len(batch), -1)
        lo = torch.quantile(flat, 0.01, dim=1).view(-1, 1, 1, 1, 1)
        hi = torch.quantile(flat, 0.998, dim=1).view(-1, 1, 1, 1, 1)
        return net((batch - lo) / (hi - lo))

    seamed = infer(per_window, x.astype(np.float32), grid, Weighting("border", 0.0))
    assert float((seamed - whole).abs().max()) > 100 * float((tiled - whole).abs().max()) + 1e-3


def test_statistics_are_kept_with_the_prediction_and_reused_on_resume(tmp_path):
    x = _gradient_volume()
    zarr.create_array(str(tmp_path / "in.zarr"), data=x[0, 0], chunks=(8, 16, 16))
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    grid = Grid(x.shape[2:], window=8, step=6, border=1)
    kwargs = dict(weighting=Weighting("border", 0.0), device="cpu", normalise="percentile",
                  region=(8, 16, 16), chunks=(8, 16, 16))
    events = iter_predict(net, str(tmp_path / "in.zarr"), grid, tmp_path / "out.zarr", **kwargs)
    for event in events:
        if event.kind == "region":
            break
    events.close()  # stopped after one region
    stored = read_meta(tmp_path / "out.zarr")["params"]["normalisation"]
    assert stored["mode"] == "percentile" and stored["statistics"]["method"] == "exact histogram"
    assert stored["offset"] == float(np.percentile(x, 1))

    import napari_qlty.core.intensity as intensity

    calls = []
    original = intensity.measure
    intensity.measure = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        assert predict(net, str(tmp_path / "in.zarr"), grid, tmp_path / "out.zarr", **kwargs).kind == "done"
    finally:
        intensity.measure = original
    assert not calls  # the resume took the store's statistics
    fitted = Fitted.from_json(stored)
    expected = infer(net, x, grid, Weighting("border", 0.0), normalise=fitted).numpy()
    np.testing.assert_allclose(Prediction(tmp_path / "out.zarr").probabilities()[...], expected,
                               rtol=1e-5, atol=1e-5)


def test_float16_store_saturates_and_says_so(tmp_path):
    x = np.full((1, 1, 8, 8, 8), 3.0e4, np.float32)
    grid = Grid(x.shape[2:], 8, 8)
    event = predict(lambda b: b * 4, x, grid, tmp_path / "h.zarr", dtype="float16", device="cpu", labels=False)
    got = Prediction(tmp_path / "h.zarr").probabilities()[...]
    assert np.isfinite(got).all() and float(got.max()) == 65504.0
    assert "512 values beyond float16's range were saturated" in event.message
