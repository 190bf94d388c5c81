"""Uncertainty: the windows' disagreement against a brute-force weighted variance, an
ensemble's members' spread, entropy, and the ranking of windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_testing import brute_origins, fast, grid_specs, ref_window_weight, seeds, weightings
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting, extract, infer
from napari_qlty.core.uncertainty import entropy, kinds, rank_windows
from napari_qlty.train.ensemble import Ensemble


@fast(40)
@given(grid_specs(max_sizes=(30, 16, 9, 5), max_windows=60, band_safe=True), seeds, st.data())
def test_windows_disagreement_is_the_weighted_variance_of_overlapping_outputs(spec, seed, data):
    g = Grid(**spec)
    weighting = data.draw(weightings(g.window))
    dtype = data.draw(st.sampled_from([torch.uint8, torch.int16, torch.float32]))
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 100, size=(1, 1, *g.shape))).to(dtype)
    noise = torch.from_numpy(rng.normal(size=(len(g), 2, *g.window))).float()
    calls = []

    def model(batch):  # every window sees its own noise: overlapping windows disagree
        first = sum(len(c) for c in calls)
        calls.append(batch)
        return batch.float().repeat(1, 2, *([1] * g.ndim)) + noise[order[first : first + len(batch)]]

    from napari_qlty.core.inference import window_order
    from napari_qlty.core.weights import window_weights

    order = window_order(window_weights(g, weighting), 1)  # the order infer runs windows in
    values, unsure = infer(model, x, g, weighting, batch_size=3, uncertainty=True)
    assert unsure.shape == (1, 2, *g.shape) and kinds(False) == ["windows", "entropy"]
    # brute force: weighted mean and variance over the windows covering each voxel
    outs = extract(x.float(), g).repeat(1, 2, *([1] * g.ndim)) + noise
    s1 = np.zeros((2, *g.padded_shape))
    s2 = np.zeros((2, *g.padded_shape))
    wsum = np.zeros(g.padded_shape)
    for k, origin in enumerate(brute_origins(g)):
        sl = tuple(slice(o, o + w) for o, w in zip(origin, g.window))
        w = ref_window_weight(g, weighting, k)
        o = outs[k].double().numpy()
        s1[(slice(None), *sl)] += w * o
        s2[(slice(None), *sl)] += w * o * o
        wsum[sl] += w
    mean, var = s1 / wsum, np.maximum(s2 / wsum - (s1 / wsum) ** 2, 0).sum(0)
    keep = tuple(slice(0, s) for s in g.shape)
    np.testing.assert_allclose(values[0].numpy(), mean[(slice(None), *keep)], rtol=1e-4, atol=1e-4)
    scale = max(1.0, float(np.abs(s2 / wsum).max()))
    np.testing.assert_allclose(unsure[0, 0].numpy(), var[keep], rtol=0, atol=1e-4 * scale)


def test_an_ensemble_reports_its_members_disagreement():
    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Conv2d(1, 3, 3, padding=1)
    x = torch.randn(1, 1, 30, 26)
    grid = Grid((30, 26), 12, 8, 2)
    exact = Weighting("border", 0.0)  # the border (2) covers the convs' reach (1): tiled = untiled
    _, agreeing = infer(Ensemble([a, a]).eval(), x, grid, exact, uncertainty=True)
    values, unsure = infer(Ensemble([a, b]).eval(), x, grid, exact, uncertainty=True)
    assert unsure.shape == (1, 3, 30, 26) and kinds(True) == ["windows", "members", "entropy"]
    pa, pb = torch.softmax(a(x), 1), torch.softmax(b(x), 1)
    spread = (((pa - values) ** 2 + (pb - values) ** 2) / 2).sum(1)  # the members' variance
    torch.testing.assert_close(unsure[:, 1], spread.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(values, (pa + pb).detach() / 2, rtol=1e-4, atol=1e-5)
    assert float(agreeing[:, 1].abs().max()) < 1e-6  # identical members never disagree


def test_entropy_of_probabilities_and_of_scores():
    p = torch.tensor([[0.5, 1.0, 0.2], [0.5, 0.0, 0.8]])
    expected = -(p * torch.log(p.clamp_min(1e-12))).sum(0)
    torch.testing.assert_close(entropy(p, True)[0], expected)
    torch.testing.assert_close(entropy(torch.log(p.clamp_min(1e-30)), False)[0], expected, atol=1e-6, rtol=1e-6)
    one = torch.tensor([[0.0, 10.0]])
    assert float(entropy(one, False)[0, 0]) == pytest.approx(np.log(2))
    assert float(entropy(one, False)[0, 1]) < 1e-3


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_ranking_finds_the_window_over_the_unsure_spot(scale):
    grid = Grid((40, 50), 10, 6, 1)
    score = torch.zeros(2, 40, 50)
    score[1, 31:35, 12:15] = 5.0  # image 1
    coarse = torch.nn.functional.avg_pool2d(score[:, None], scale, ceil_mode=True)[:, 0] if scale > 1 else score
    ranked = rank_windows(coarse, grid, top=3, scale=scale)
    mean, n, origin = ranked[0]
    assert n == 1 and mean > 0
    assert all(o <= c and c < o + w for o, c, w in zip(origin, (32, 13), grid.window))
    brute = []
    for k, o in enumerate(grid.origins()):
        lo = [int(v) // scale for v in o]
        hi = [-(-(int(v) + w) // scale) for v, w in zip(o, grid.window)]
        brute.append(float(coarse[1, lo[0]:hi[0], lo[1]:hi[1]].mean()))
    assert mean == pytest.approx(max(brute))


def test_spots_are_half_windows_overlapping_by_half_within_the_image():
    from napari_qlty.core.uncertainty import spot_grid

    g = spot_grid((64, 192, 160), (64, 128, 128))
    assert g.window == (32, 64, 64) and g.step == (16, 32, 32)
    assert spot_grid((10, 300), 64).window == (10, 32)  # at most the image
    assert spot_grid((100, 100), 4).window == (8, 8)  # at least 8 voxels
    origins = g.origins()
    assert origins[:, 0].max() + 32 == 64 and len(g) == 3 * 5 * 4  # every voxel covered


def test_ranked_spots_are_the_ranked_windows_with_their_centres():
    from napari_qlty.core.uncertainty import rank_spots, spot_grid

    rng = np.random.default_rng(3)
    score = torch.from_numpy(rng.random((2, 20, 36, 28)))
    grid = spot_grid(score.shape[1:], (20, 24, 16))
    assert grid.window == (10, 12, 8)
    spots = rank_spots(score, grid, top=len(grid) * 2)
    assert [tuple(s[:3]) for s in spots] == rank_windows(score, grid, top=len(grid) * 2)
    assert {(s.image, s.origin) for s in spots} == {(n, tuple(int(v) for v in o)) for n in (0, 1)
                                                   for o in grid.origins()}  # every window of every image
    for s in spots:
        box = tuple(slice(o, o + w) for o, w in zip(s.origin, grid.window))
        assert s.score == pytest.approx(float(score[(s.image, *box)].mean()))
        assert s.centre == tuple(o + w // 2 for o, w in zip(s.origin, grid.window))
        assert all(o <= c < o + w for o, c, w in zip(s.origin, s.centre, grid.window))
    assert [s.score for s in spots] == sorted((s.score for s in spots), reverse=True)


def test_the_default_kind_prefers_the_networks_disagreement():
    from napari_qlty.core.uncertainty import default_kind

    assert default_kind(kinds(True)) == "members" and default_kind(kinds(False)) == "entropy"
    assert default_kind(["windows"]) == "windows"
    with pytest.raises(ValueError, match="no uncertainty"):
        default_kind([])
