"""Speed options: lower precision, channels-last memory, compiling; off by default, each
within a stated tolerance of float32, never changing the caller's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_qlty import Grid, Speed, Weighting, infer, predict
from napari_qlty.io.formats import StoreError

#: how far a float32-trained conv's blended outputs may move (relative to their range)
TOLERANCE = {"bfloat16": 2e-2, "float16": 2e-3}


def small_net(ndim=3, seed=0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(1, 8, 3, padding=1), torch.nn.ReLU(), conv(8, 3, 3, padding=1)).eval()


def volume(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -100), min(info.max, 200), size=shape).astype(dtype)
    return rng.normal(0, 1, size=shape).astype(dtype)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "uint16", "float32"])
def test_lower_precision_stays_within_its_tolerance(precision, dtype):
    x = volume(dtype, (1, 1, 20, 24, 22))
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    net = small_net()
    ref = infer(net, x, grid, Weighting("gaussian"), normalise="percentile")
    fast = infer(net, x, grid, Weighting("gaussian"), normalise="percentile", speed=Speed(precision))
    assert fast.dtype == torch.float32
    scale = float(ref.abs().max())
    assert float((fast - ref).abs().max()) <= TOLERANCE[precision] * scale
    assert (fast.argmax(1) == ref.argmax(1)).float().mean() > 0.97


@pytest.mark.parametrize("ndim", [2, 3])
def test_channels_last_gives_the_same_result_and_leaves_the_model(ndim):
    x = volume("uint16", (2, 1, *([18] * ndim)))
    grid = Grid(x.shape[2:], window=10, step=6, border=2)
    net = small_net(ndim)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ref = infer(net, x, grid)
    fast = infer(net, x, grid, speed=Speed(channels_last=True))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    weight = next(net.parameters())
    assert weight.is_contiguous()  # the caller's model keeps its memory format
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_channels_last_of_a_4d_window_is_a_clear_error():
    x = torch.zeros(1, 1, 4, 6, 6, 6)
    grid = Grid(x.shape[2:], window=(2, 4, 4, 4), step=(2, 2, 2, 2))
    with pytest.raises(ValueError, match="channels_last applies to 2D and 3D windows, not 4D"):
        infer(lambda b: b, x, grid, speed=Speed(channels_last=True))


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16, float16"):
        Speed("int8")


def test_compiled_model_gives_the_same_result():
    x = volume("int16", (1, 1, 16, 16))
    grid = Grid(x.shape[2:], window=8, step=6, border=1)
    net = small_net(2)
    ref = infer(net, x, grid, batch_size=3)
    fast = infer(net, x, grid, batch_size=3, speed=Speed(compile=True))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_predict_records_the_speed_and_a_resume_keeps_it(tmp_path):
    x = volume("uint8", (1, 1, 20, 20, 20))
    grid = Grid(x.shape[2:], window=10, step=8, border=2)
    net = small_net()
    out = tmp_path / "p.zarr"
    predict(net, x, grid, out, device="cpu", speed=Speed("bfloat16"))
    predict(net, x, grid, out, device="cpu", speed=Speed("bfloat16"))  # the same: already complete
    with pytest.raises(StoreError, match="precision: stored bfloat16, now float32"):
        predict(net, x, grid, out, device="cpu")
