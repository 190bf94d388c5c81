"""infer: batched model application equals stitch(model(extract(x)))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_testing import fast, grid_specs, random_volume, seeds, weightings
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting, extract, infer, stitch

SPEC = dict(max_sizes=(40, 20, 10, 6), max_windows=150, band_safe=True, pad=None)


def close(y, x, rtol=1e-5):
    scale = float(x.abs().max()) if x.numel() else 1.0
    torch.testing.assert_close(y, x, rtol=rtol, atol=rtol * max(scale, 1e-30))


class Recorder:
    """The identity, remembering every batch it saw."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __call__(self, batch):
        self.batches.append(batch.clone())
        return batch


@fast(100)
@given(grid_specs(**SPEC), st.integers(1, 3), st.integers(1, 2), st.integers(1, 9), seeds, st.data())
def test_identity_model_equals_stitch_of_extract(spec, n, c, batch_size, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    x = random_volume(seed, (n, c, *g.shape))
    model = Recorder()
    y = infer(model, x, g, weighting, batch_size=batch_size)
    expected = stitch(extract(x, g), g, weighting)
    assert y.shape == x.shape and y.dtype == torch.float32
    close(y, expected, rtol=1e-6)
    close(y, x)
    # each window through the model exactly once, in batches of at most batch_size
    assert all(1 <= len(b) <= batch_size for b in model.batches)
    seen = torch.cat(model.batches)
    assert len(seen) == n * len(g)
    all_windows = extract(x, g)
    seen_sorted = sorted(seen.reshape(len(seen), -1).tolist())
    assert seen_sorted == sorted(all_windows.reshape(len(all_windows), -1).tolist())


@fast(40)
@given(grid_specs(**SPEC), st.integers(1, 2), st.integers(1, 5), seeds, st.data())
def test_float64_and_numpy_input(spec, n, batch_size, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    x = random_volume(seed, (n, 1, *g.shape), torch.float64)
    y = infer(lambda b: b, x.numpy(), g, weighting, batch_size=batch_size)
    assert y.dtype == torch.float64
    close(y, x, rtol=1e-12)


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_model_changing_channels(ndim, batch_size):
    torch.manual_seed(0)
    shape = {1: (37,), 2: (14, 17), 3: (9, 7, 8)}[ndim]
    g = Grid(shape, window={1: 10, 2: 6, 3: 4}[ndim], step={1: 7, 2: 4, 3: 3}[ndim], border=1)
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[ndim]
    model = conv(1, 3, 3, padding=1)
    x = torch.randn(2, 1, *shape)
    weighting = Weighting("border", border_weight=0.25)
    y = infer(model, x, g, weighting, batch_size=batch_size)
    assert y.shape == (2, 3, *shape)
    assert not y.requires_grad
    with torch.no_grad():
        expected = stitch(model(extract(x, g)), g, weighting)
    close(y, expected, rtol=1e-5)


def test_postprocess_is_applied_to_each_batch_before_blending():
    g = Grid((20, 18), window=6, step=4, border=1)
    x = random_volume(0, (2, 3, 20, 18))
    y = infer(lambda b: b, x, g, Weighting("hann"), batch_size=5, postprocess=lambda o: 2 * o + 1)
    close(y, 2 * x + 1)
    y = infer(lambda b: b, x, g, Weighting("linear"), batch_size=4, postprocess=lambda o: o.softmax(1))
    close(y, x.softmax(1))
    # postprocess may change channels too
    y = infer(lambda b: b, x, g, batch_size=3, postprocess=lambda o: o.sum(1, keepdim=True))
    close(y, x.sum(1, keepdim=True))


@pytest.mark.parametrize("pad", ["reflect", "constant"])
def test_padded_grid(pad):
    g = Grid((3, 17), window=(5, 6), step=(1, 4), border=(1, 2), pad=pad)
    x = random_volume(1, (2, 2, 3, 17))
    weighting = Weighting("gaussian", border_weight=0.5)
    y = infer(lambda b: b * 3, x, g, weighting, batch_size=2)
    assert y.shape == x.shape
    close(y, 3 * x)
    close(y, stitch(extract(x, g) * 3, g, weighting), rtol=1e-6)


def test_device_argument_and_model_without_grad():
    g = Grid((12,), window=5, step=3)
    x = random_volume(2, (1, 1, 12))
    model = torch.nn.Conv1d(1, 2, 3, padding=1)
    y = infer(model, x, g, device="cpu")
    assert y.shape == (1, 2, 12) and y.device.type == "cpu" and not y.requires_grad


def test_wrong_spatial_output_names_both_shapes():
    g = Grid((12, 10), window=(6, 4), step=3)
    x = torch.zeros(1, 1, 12, 10)
    with pytest.raises(ValueError, match=r"\(4, 1, 5, 3\).*\(4, 1, 6, 4\)") as info:
        infer(lambda b: b[..., :-1, :-1], x, g, batch_size=4)
    assert "6, 4" in str(info.value)


def test_wrong_batch_output_names_both_shapes():
    g = Grid((12,), window=6, step=3)
    x = torch.zeros(1, 1, 12)
    with pytest.raises(ValueError, match=r"\(1, 1, 6\).*\(2, 1, 6\)"):
        infer(lambda b: b[:1], x, g, batch_size=2)


def test_model_returning_not_a_tensor():
    g = Grid((12,), window=6, step=3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        infer(lambda b: b.numpy(), torch.zeros(1, 1, 12), g)


def test_input_is_not_modified():
    g = Grid((11, 9), window=5, step=3, border=1)
    x = random_volume(5, (1, 2, 11, 9))
    before = x.clone()
    infer(lambda b: b.mul_(2), x, g, Weighting("border", border_weight=0.1), batch_size=3)
    assert torch.equal(x, before)
    np.testing.assert_array_equal(x.numpy(), before.numpy())
