"""Every dtype instruments write goes through infer, predict and export, exactly.

Integer volumes reach the model cast to its dtype on the device, with their stored
values unless a normalisation is asked for; the tiled result equals the model run on the
whole volume wherever the border covers the model's reach.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from engine_testing import fast, grid_specs
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty.io.prediction import Prediction
from napari_qlty import Grid, Weighting, extract, infer, predict
from napari_qlty.core.intensity import Normalisation
from napari_qlty.io.pairs_store import PairsDataset, export_pairs

DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64"]
INTEGERS = ["uint8", "int8", "uint16", "int16"]


def volume_of(dtype: str, shape, seed: int = 0) -> np.ndarray:
    """Values over the dtype's whole range (or a generous part of it), as instruments write."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.4
    if dt.kind in "ui":
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -(1 << 20)), min(int(info.max), 1 << 20)
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
    return (rng.standard_normal(shape) * 50 + 10).astype(dt)


class Conv(torch.nn.Module):
    def __init__(self, dims: int, dtype=torch.float32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1).to(dtype)

    def forward(self, x):
        return self.conv(x)


class Seen:
    """The identity, noting the dtype it was handed."""

    def __init__(self):
        self.dtypes = set()

    def __call__(self, x):
        self.dtypes.add(x.dtype)
        return x


@fast(40)
@given(st.sampled_from(DTYPES), grid_specs(min_ndim=2, max_ndim=3, max_sizes=(40, 24, 12, 6), max_windows=60,
                                           band_safe=True), st.integers(0, 2**16))
def test_identity_sees_the_stored_values_in_a_float(dtype, spec, seed):
    g = Grid(**spec)
    x = volume_of(dtype, (1, 1, *g.shape), seed)
    model = Seen()
    y = infer(model, x, g, Weighting("border", 0.0) if any(g.border) else Weighting())
    expected = x.astype(np.float64 if dtype == "float64" else np.float32)
    assert model.dtypes == {torch.float64 if dtype == "float64" else torch.float16 if dtype == "float16" else torch.float32}
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float64])
def test_tiled_equals_untiled_for_every_dtype(dtype, model_dtype):
    """A conv of reach 1 with border 1 and border weight 0: the tiles agree with the whole."""
    x = volume_of(dtype, (1, 1, 13, 22, 19))
    net = Conv(3, model_dtype).eval()
    grid = Grid(x.shape[2:], window=(8, 10, 9), step=(5, 6, 6), border=1)
    y = infer(net, torch.from_numpy(x), grid, Weighting("border", 0.0))
    with torch.no_grad():
        whole = net(torch.from_numpy(x).to(model_dtype))
    assert y.dtype == (torch.float64 if model_dtype == torch.float64 else torch.float32)
    scale = float(whole.abs().max())
    torch.testing.assert_close(y.to(model_dtype), whole, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_predict_from_a_zarr_store_in_its_own_dtype(tmp_path, dtype):
    x = volume_of(dtype, (1, 1, 13, 22, 19))
    zarr.create_array(str(tmp_path / "in.zarr"), data=x[0, 0], chunks=(7, 11, 10))
    net = Conv(3).eval()
    grid = Grid(x.shape[2:], window=(8, 10, 9), step=(5, 6, 6), border=1)
    predict(net, str(tmp_path / "in.zarr"), grid, tmp_path / "out.zarr", weighting=Weighting("border", 0.0),
            device="cpu", region=(7, 11, 10), chunks=(7, 11, 10))
    with torch.no_grad():
        whole = net(torch.from_numpy(x).float()).numpy()
    got = Prediction(tmp_path / "out.zarr").probabilities()[...]
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5 * float(np.abs(whole).max()))


@pytest.mark.parametrize("dtype", INTEGERS + ["float32"])
def test_export_keeps_the_images_dtype(tmp_path, dtype):
    x = volume_of(dtype, (1, 1, 12, 20, 20))
    labels = np.full((1, 12, 20, 20), -1, np.int16)
    labels[0, 5, 2:18, 3:17] = 1
    labels[0, 5, 0, :] = 0
    grid = Grid(x.shape[2:], 8, 6, 1)
    for _ in export_pairs(x, labels, grid, tmp_path / "p.zarr", normalise=Normalisation("percentile")):
        pass
    stored = zarr.open_group(str(tmp_path / "p.zarr"))["images"]
    assert np.dtype(str(stored.dtype)) == np.dtype(dtype)
    ds = PairsDataset(tmp_path / "p.zarr")
    kept = [int(i) for i in np.nonzero([True] * len(ds))[0]]
    windows = extract(torch.from_numpy(x), grid)
    positions = ds.positions
    for i in kept[:3]:
        k = next(j for j, o in enumerate(grid.origins()) if tuple(o) == tuple(positions[i, 1:]))
        np.testing.assert_array_equal(ds[i][0].numpy(), windows[k].numpy())  # the stored values, exactly
    assert ds.intensity.normalisation.mode == "percentile"
    assert ds.intensity.offset == pytest.approx(float(np.percentile(x.astype(np.float64), 1)))


def test_half_and_bfloat16_models_get_their_dtype():
    x = volume_of("uint16", (1, 1, 10, 12, 12))
    for dtype in (torch.float16, torch.bfloat16):
        net = Conv(3, dtype).eval()
        seen = []
        net.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
        y = infer(net, x, Grid(x.shape[2:], 8, 4, 1), Weighting("border", 0.0), normalise="mean-std")
        assert seen and set(seen) == {dtype} and y.dtype == torch.float32 and torch.isfinite(y).all()
