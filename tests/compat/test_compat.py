"""napari_qlty.compat: qlty 1.5.0's API on the engine, checked against brute-force loops
written from qlty's documented rules (origins ``min(i * step, size - window)``, patch order
n then z, y, x, border band on every face), without qlty installed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import zarr

from napari_qlty.compat import large as compat_large
from napari_qlty.compat import (
    LargeNCYXQuilt,
    LargeNCZYXQuilt,
    NCYXQuilt,
    NCZYXQuilt,
    weed_sparse_classification_training_pairs_2D,
    weed_sparse_classification_training_pairs_3D,
)


# -- brute-force references -------------------------------------------------------------
def qlty_times(size, window, step):
    """qlty's compute_chunk_times, per axis."""
    out = []
    for d, w, s in zip(size, window, step):
        full = (d - w) // s
        out.append(full + 2 if d > full * s + w else full + 1)
    return tuple(out)


def qlty_origins(size, window, step):
    """Window origins in qlty's order (per image), from its documented rule."""
    per_axis = [
        [min(i * s, d - w) for i in range(n)]
        for d, w, s, n in zip(size, window, step, qlty_times(size, window, step))
    ]
    return list(itertools.product(*per_axis))


def brute_patches(x, window, step):
    size = tuple(x.shape[2:])
    out = []
    for n in range(x.shape[0]):
        for o in qlty_origins(size, window, step):
            out.append(x[(n, slice(None), *(slice(a, a + w) for a, w in zip(o, window)))])
    return torch.stack(out)


def band(window, border):
    """True in the border band on every face (qlty's border_tensor() < 0.5)."""
    inside = torch.zeros(window, dtype=torch.bool)
    inside[tuple(slice(b, w - b) for w, b in zip(window, border))] = True
    return ~inside


def cover_count(size, window, step):
    count = torch.zeros(size)
    for o in qlty_origins(size, window, step):
        count[tuple(slice(a, a + w) for a, w in zip(o, window))] += 1
    return count


def run_large(quilt, x, f=lambda p: p, var=None):
    for _ in range(quilt.N_chunks):
        index, patch = quilt.unstitch_next(x)
        quilt.stitch(f(patch).unsqueeze(0), index, None if var is None else var(patch).unsqueeze(0))


@pytest.fixture
def small_blocks(monkeypatch):
    """zarr chunks (and cache blocks) of the Large quilts at the window size."""
    monkeypatch.setattr(compat_large, "BLOCK_BYTES", 1)


# -- constructors, attributes, get_times ------------------------------------------------
def test_signatures_and_attributes(tmp_path):
    q = NCYXQuilt(100, 90, (32, 32), (16, 16), (4, 4))
    assert q.border_weight == 1.0 and q.border == (4, 4) and (q.nY, q.nX) == (6, 5)
    assert q.window == (32, 32) and q.step == (16, 16) and q.weight.shape == (32, 32)
    q3 = NCZYXQuilt(64, 64, 64, (32, 32, 32), (16, 16, 16), 0)
    assert q3.border_weight == 0.1 and q3.border is None and (q3.nZ, q3.nY, q3.nX) == (3, 3, 3)
    L2 = LargeNCYXQuilt(str(tmp_path / "a"), 2, 64, 64, (32, 32), (16, 16), 2)
    assert L2.border_weight == 0.1 and L2.border == (2, 2) and L2.N_chunks == 2 * 9
    assert L2.weight.dtype == torch.float64
    L3 = LargeNCZYXQuilt(str(tmp_path / "b"), 1, 40, 40, 40, (32, 32, 32), (16, 16, 16))
    assert L3.border is None and L3.border_weight == 0.1 and L3.N_chunks == 8
    # qlty clamps border_weight 0 to 1e-8 and keeps the weight matrix 1 inside
    q0 = NCYXQuilt(64, 64, (32, 32), (16, 16), 4, border_weight=0.0)
    assert q0.border_weight == 1e-8
    assert q0.weight[16, 16] == 1.0 and q0.weight[0, 16] == pytest.approx(1e-8)


@pytest.mark.parametrize(
    "size, window, step",
    [
        ((128, 128), (32, 32), (16, 16)),
        ((100, 37), (32, 20), (16, 7)),
        ((33, 33), (33, 10), (1, 9)),
        ((70, 40, 33), (32, 32, 32), (16, 16, 16)),
        ((48, 50, 65), (16, 20, 16), (8, 9, 16)),
    ],
)
def test_get_times_matches_qlty_formula(size, window, step, tmp_path):
    expected = qlty_times(size, window, step)
    if len(size) == 2:
        quilts = [
            NCYXQuilt(*size, window, step, None),
            LargeNCYXQuilt(str(tmp_path / "q"), 1, *size, window, step, None),
        ]
    else:
        quilts = [
            NCZYXQuilt(*size, window, step, None),
            LargeNCZYXQuilt(str(tmp_path / "q"), 1, *size, window, step),
        ]
    for q in quilts:
        assert q.get_times() == expected
        assert all(isinstance(t, int) for t in q.get_times())


# -- unstitch: order and contents ---------------------------------------------------------
@pytest.mark.parametrize(
    "size, window, step", [((50, 61), (16, 16), (8, 8)), ((37, 100), (20, 30), (7, 13))]
)
def test_2d_unstitch_matches_brute_force(size, window, step, tmp_path):
    x = torch.randn(2, 3, *size)
    expected = brute_patches(x, window, step)
    q = NCYXQuilt(*size, window, step, 2)
    assert torch.equal(q.unstitch(x), expected)
    patches, pos = q.unstitch(x, return_positions=True, include_n_position=True)
    origins = qlty_origins(size, window, step)
    assert torch.equal(patches, expected)
    assert pos.tolist() == [[n, *o] for n in range(2) for o in origins]
    assert q.unstitch(x, return_positions=True)[1].tolist() == [list(o) for o in origins] * 2
    L = LargeNCYXQuilt(str(tmp_path / "l"), 2, *size, window, step, 2)
    assert torch.equal(torch.stack([L.unstitch(x, i) for i in range(L.N_chunks)]), expected)
    index, patch, position = L.unstitch_next(x, return_positions=True, include_n_position=True)
    assert index == 0 and position.tolist() == [0, 0, 0] and torch.equal(patch, expected[0])


@pytest.mark.parametrize(
    "size, window, step",
    [((48, 40, 33), (16, 16, 16), (8, 8, 8)), ((70, 40, 40), (32, 32, 32), (16, 16, 16))],
)
def test_3d_unstitch_matches_brute_force(size, window, step, tmp_path):
    x = torch.randn(2, 1, *size)
    expected = brute_patches(x, window, step)
    assert torch.equal(NCZYXQuilt(*size, window, step, 2).unstitch(x), expected)
    L = LargeNCZYXQuilt(str(tmp_path / "l"), 2, *size, window, step, 2)
    got = [L.unstitch_next(x) for _ in range(L.N_chunks)]
    assert [i for i, _ in got] == list(range(L.N_chunks))
    assert torch.equal(torch.stack([p for _, p in got]), expected)
    with pytest.raises(StopIteration):
        L.unstitch_next(x)


def test_3d_step_back_z70():
    """qlty 1.5.0's NCZYXQuilt cuts a short last window here and fails to stack."""
    q = NCZYXQuilt(70, 40, 32, (32, 32, 32), (16, 16, 16), 0)
    assert q.get_times() == (4, 2, 1)
    x = torch.randn(1, 1, 70, 40, 32)
    patches = q.unstitch(x)
    assert patches.shape == (8, 1, 32, 32, 32)
    assert torch.equal(patches[6], x[0, :, 38:70, 0:32, 0:32])
    mean, norma = q.stitch(patches)
    torch.testing.assert_close(mean, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(norma, cover_count((70, 40, 32), (32, 32, 32), (16, 16, 16)))


# -- stitch -------------------------------------------------------------------------------
@pytest.mark.parametrize("border, bw", [(None, 1.0), (3, 1.0), (3, 0.5), (3, 0.0), ((2, 5), 0.1)])
def test_2d_round_trip(border, bw):
    x = torch.randn(2, 3, 45, 52)
    q = NCYXQuilt(45, 52, (16, 16), (6, 6), border, bw)
    mean, norma = q.stitch(q.unstitch(x))
    torch.testing.assert_close(mean, x, rtol=0, atol=1e-5)
    assert norma.shape == (45, 52) and (norma > 0).all()
    if bw == 1.0:
        assert torch.equal(norma, cover_count((45, 52), (16, 16), (6, 6)))


@pytest.mark.parametrize("bw", [1.0, 0.1, 0.0])
def test_3d_round_trip(bw):
    x = torch.randn(1, 2, 30, 25, 27)
    q = NCZYXQuilt(30, 25, 27, (12, 12, 12), (5, 6, 7), 2, bw)
    mean, norma = q.stitch(q.unstitch(x))
    torch.testing.assert_close(mean, x, rtol=0, atol=1e-5)
    assert norma.shape == (30, 25, 27)


def test_stitch_interior_matches_qlty_weighting():
    """Away from the volume's edge the blend is qlty's: sum(w * patch) / sum(w) with w =
    border_weight in the band, 1 inside. The model output differs per window so the
    weights matter."""
    size, window, step, b, bw = (40, 46), (16, 16), (6, 6), 3, 0.3
    q = NCYXQuilt(*size, window, step, b, bw)
    f = torch.randn(len(qlty_origins(size, window, step)), 2, *window, dtype=torch.float64)
    w = torch.full(window, bw, dtype=torch.float64)
    w[b:-b, b:-b] = 1.0
    total = torch.zeros(1, 2, *size, dtype=torch.float64)
    norm = torch.zeros(size, dtype=torch.float64)
    for patch, o in zip(f, qlty_origins(size, window, step)):
        sl = tuple(slice(a, a + s) for a, s in zip(o, window))
        total[(0, slice(None), *sl)] += patch * w
        norm[sl] += w
    mean, norma = q.stitch(f)
    inner = (slice(b, size[0] - b), slice(b, size[1] - b))
    expected = (total[0] / norm)[(slice(None), *inner)]
    torch.testing.assert_close(mean[(0, slice(None), *inner)], expected)
    torch.testing.assert_close(norma[inner], norm[inner])


def test_border_weight_zero_keeps_edges_exact():
    """qlty gives corner voxels k/(k+1) of their value with border_weight=0 (norma + eps)."""
    x = torch.rand(1, 1, 24, 20, 20) + 1.0
    q = NCZYXQuilt(24, 20, 20, (8, 8, 8), (4, 4, 4), (1, 1, 1), 0.0)
    mean, _ = q.stitch(q.unstitch(x))
    torch.testing.assert_close(mean, x, rtol=1e-6, atol=0)


def test_stitch_keeps_device_and_dtype():
    x = torch.randn(1, 1, 20, 20, dtype=torch.float64)
    q = NCYXQuilt(20, 20, (8, 8), (4, 4), 1, 0.5)
    mean, norma = q.stitch(q.unstitch(x), use_numba=True)
    assert mean.dtype == torch.float64 and mean.device == x.device


# -- border tensor, label pairs, weeding ----------------------------------------------------
def test_border_tensor(tmp_path):
    q = NCYXQuilt(64, 64, (16, 20), (8, 8), (2, 3))
    bt = q.border_tensor()
    assert bt.dtype == torch.float32 and bt.shape == (16, 20)
    assert torch.equal(bt == 0, band((16, 20), (2, 3)))
    no_band = NCYXQuilt(64, 64, (16, 16), (8, 8), None).border_tensor()
    assert torch.equal(no_band, torch.ones(16, 16))
    L = LargeNCZYXQuilt(str(tmp_path / "l"), 1, 32, 32, 32, (16, 16, 16), (8, 8, 8), 2)
    lb = L.border_tensor()
    assert isinstance(lb, np.ndarray) and lb.dtype == np.float64
    assert np.array_equal(lb == 0, band((16, 16, 16), (2, 2, 2)).numpy())
    q3 = NCZYXQuilt(32, 32, 32, (16, 16, 16), (8, 8, 8), 2)
    assert np.array_equal(q3.border_tensor().numpy(), lb)


@pytest.mark.parametrize("with_channel", [False, True])
def test_2d_unstitch_data_pair_label_band(with_channel):
    size, window, step, b = (40, 44), (16, 16), (8, 7), 3
    x = torch.randn(2, 2, *size)
    labels = torch.randint(0, 3, (2, 1, *size) if with_channel else (2, *size))
    q = NCYXQuilt(*size, window, step, b)
    pin, pout = q.unstitch_data_pair(x, labels, missing_label=-1)
    expected = brute_patches(labels if with_channel else labels[:, None], window, step)
    mask = band(window, (b, b))
    assert torch.equal(pin, brute_patches(x, window, step))
    m = expected.shape[0]
    assert pout.shape == ((m, 1, *window) if with_channel else (m, *window))
    out = pout if with_channel else pout[:, None]
    assert (out[:, :, mask] == -1).all()
    assert torch.equal(out[:, :, ~mask], expected[:, :, ~mask])
    # without missing_label nothing is masked; labels are not modified in place
    unmasked = q.unstitch_data_pair(x, labels)[1]
    assert torch.equal(unmasked, expected if with_channel else expected[:, 0])
    assert (labels >= 0).all()
    _, _, pos = q.unstitch_data_pair(x, labels, -1, return_positions=True)
    assert pos.shape == (expected.shape[0], 2)


def test_3d_unstitch_data_pair():
    size, window, step = (20, 24, 22), (12, 12, 12), (8, 6, 5)
    x = torch.randn(1, 1, *size)
    labels = torch.randint(0, 2, (1, *size)).float()
    q = NCZYXQuilt(*size, window, step, 2)
    pin, pout = q.unstitch_data_pair(x, labels)
    assert torch.equal(pout, brute_patches(labels[:, None], window, step)[:, 0])
    _, masked = q.unstitch_data_pair(x, labels, missing_label=-1.0)
    mask = band(window, (2, 2, 2))
    assert (masked[:, mask] == -1).all() and torch.equal(masked[:, ~mask], pout[:, ~mask])


def test_weed_2d_keeps_exactly_windows_with_labels():
    q = NCYXQuilt(64, 64, (16, 16), (8, 8), 3)
    bt = q.border_tensor()
    labels = torch.full((6, 16, 16), -1.0)
    labels[1, 8, 8] = 2.0  # inside: kept
    labels[2, 0, 0] = 1.0  # band only: removed
    labels[3, 3, 12] = 0.0  # first inside voxel: kept
    labels[4, 15, 8] = 1.0  # band only: removed
    labels[5] = 1.0
    x = torch.arange(6.0)[:, None, None, None].expand(6, 2, 16, 16)
    vin, vout, removed = weed_sparse_classification_training_pairs_2D(x, labels, -1, bt)
    assert removed.tolist() == [True, False, True, False, True, False]
    assert vin[:, 0, 0, 0].tolist() == [1.0, 3.0, 5.0] and torch.equal(vout, labels[[1, 3, 5]])
    # (N, C, Y, X) labels; a label in any channel counts
    lab_c = torch.full((6, 2, 16, 16), -1.0)
    lab_c[2, 1, 8, 8] = 1.0
    _, _, removed_c = weed_sparse_classification_training_pairs_2D(x, lab_c, -1, bt)
    assert removed_c.tolist() == [True, True, False, True, True, True]


def test_weed_3d_keeps_exactly_windows_with_labels(tmp_path):
    L = LargeNCZYXQuilt(str(tmp_path / "l"), 1, 32, 32, 32, (8, 8, 8), (4, 4, 4), 2)
    labels = torch.full((4, 8, 8, 8), -1)
    labels[0, 4, 4, 4] = 1
    labels[1, 1, 4, 4] = 1
    labels[3, 2, 2, 5] = 0
    x = torch.randn(4, 1, 8, 8, 8)
    bt = L.border_tensor()
    vin, vout, removed = weed_sparse_classification_training_pairs_3D(x, labels, -1, bt)
    assert removed.tolist() == [False, True, True, False]
    assert torch.equal(vin, x[[0, 3]]) and torch.equal(vout, labels[[0, 3]])
    with pytest.raises(ValueError, match="border_tensor"):
        weed_sparse_classification_training_pairs_3D(x, labels, -1, torch.ones(5, 5, 5))


@pytest.mark.parametrize("three_d", [False, True])
def test_large_clean_sparse_pairs_matches_qlty_loop(three_d, tmp_path):
    torch.manual_seed(3)
    size = (20, 22, 18) if three_d else (40, 37)
    window, step = ((8, 8, 8), (5, 6, 5)) if three_d else ((12, 12), (6, 5))
    cls = LargeNCZYXQuilt if three_d else LargeNCYXQuilt
    L = cls(str(tmp_path / "l"), 2, *size, window, step, 2)
    x = torch.randn(2, 2, *size)
    labels = torch.full((2, *size), -1.0)
    for _ in range(6):  # a few sparse labels, some at the volume's edge
        n = int(torch.randint(0, 2, ()))
        labels[(n, *(int(torch.randint(0, s, ())) for s in size))] = float(torch.randint(0, 3, ()))
    labels[(0, *(0,) * len(size))] = 1.0  # in the corner band of every window holding it
    pin, pout = L.unstitch_and_clean_sparse_data_pair(x, labels, -1)
    mask = torch.from_numpy(L.border_tensor() < 0.5)
    exp_in, exp_out = [], []
    for i in range(L.N_chunks):  # qlty's own loop
        chunk = L.unstitch(labels[:, None], i).clone()
        chunk[:, mask] = -1
        if (chunk != -1).any():
            exp_in.append(L.unstitch(x, i))
            exp_out.append(chunk[0])
    assert len(exp_in) > 0 and pin.shape[0] == len(exp_in)
    assert torch.equal(pin, torch.stack(exp_in)) and torch.equal(pout, torch.stack(exp_out))
    empty_in, empty_out = L.unstitch_and_clean_sparse_data_pair(x, torch.full((2, *size), -1.0), -1)
    assert len(empty_in) == 0 and len(empty_out) == 0
    if three_d:
        assert empty_in.shape == (0, 2, *window) and empty_out.shape == (0, *window)
    else:
        assert empty_in == [] and empty_out == []


# -- Large quilts: accumulation and return_mean ------------------------------------------
@pytest.mark.parametrize("memory_limit", [1 << 30, 0])
@pytest.mark.parametrize("bw", [1.0, 0.0])
def test_large_2d_round_trip_twice(memory_limit, bw, tmp_path, small_blocks):
    x = torch.rand(2, 3, 40, 52) + 0.5
    name = str(tmp_path / "l2")
    L = LargeNCYXQuilt(name, 2, 40, 52, (16, 16), (8, 8), (2, 2), bw, memory_limit=memory_limit)
    run_large(L, x)
    first = L.return_mean()
    second = L.return_mean()
    assert isinstance(first, np.ndarray) and first.shape == (2, 3, 40, 52)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, x.numpy(), rtol=1e-6, atol=0)  # no k/(k+1) at the edges
    saved = np.asarray(zarr.open_array(name + "_mean.zarr", mode="r")[:])
    np.testing.assert_array_equal(saved, first)
    assert L.mean.in_memory == (memory_limit > 0)
    if memory_limit == 0:
        # window-sized regions, each handed over (and freed) once its windows were in
        assert L.mean.regions.size == (16, 16) and L.mean.regions.counts == (3, 4)
        assert not L.mean.open
        handed = zarr.open_group(name + "_mean_cache.zarr", mode="r")
        assert len(list(handed.array_keys())) > 2 * 12  # own sums and neighbours' parts


@pytest.mark.parametrize("memory_limit", [1 << 30, 0])
def test_large_3d_round_trip_and_std(memory_limit, tmp_path, small_blocks):
    x = torch.rand(1, 2, 24, 20, 22) + 0.5
    L = LargeNCZYXQuilt(str(tmp_path / "l3"), 1, 24, 20, 22, (8, 8, 8), (4, 5, 6), (1, 1, 1), 0.0,
                        memory_limit=memory_limit)
    run_large(L, x, var=lambda p: torch.full_like(p, 0.25))
    mean, std = L.return_mean(std=True)
    np.testing.assert_allclose(mean, x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(std, 0.5, rtol=1e-6)
    mean2, std2 = L.return_mean(std=True)
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(std, std2)


def test_large_zarr_mode_equals_memory_mode(tmp_path, small_blocks):
    torch.manual_seed(1)
    x = torch.randn(2, 2, 30, 34)
    results = []
    for limit in (1 << 30, 0):
        L = LargeNCYXQuilt(str(tmp_path / f"m{limit}"), 2, 30, 34, (10, 12), (4, 5), (2, 3), 0.3,
                           memory_limit=limit)
        run_large(L, x, f=lambda p: torch.sin(3 * p) + p.mean())  # windows disagree
        results.append(L.return_mean())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)
    assert any(zarr.open_group(str(tmp_path / "m0_mean_cache.zarr"), mode="r").array_keys())


def test_large_windows_in_any_order(tmp_path, small_blocks):
    """Regions hand over as their windows come in, whatever the order: the blend is the same."""
    torch.manual_seed(3)
    x = torch.randn(2, 2, 26, 30)

    def f(p):
        return torch.sin(3 * p) + p.mean()  # windows disagree

    ref = LargeNCYXQuilt(str(tmp_path / "ref"), 2, 26, 30, (10, 12), (4, 5), (2, 3), 0.3)
    run_large(ref, x, f)
    shuffled = LargeNCYXQuilt(str(tmp_path / "any"), 2, 26, 30, (10, 12), (4, 5), (2, 3), 0.3,
                              memory_limit=0)
    for i in np.random.default_rng(0).permutation(shuffled.N_chunks):
        shuffled.stitch(f(shuffled.unstitch(x, int(i))).unsqueeze(0), int(i))
    np.testing.assert_allclose(shuffled.return_mean(), ref.return_mean(), rtol=1e-5, atol=1e-6)


def test_large_stitch_matches_in_memory_stitch(tmp_path):
    """Per-window stitching and the in-memory quilt blend identically (interior and edges)."""
    torch.manual_seed(2)
    x = torch.randn(1, 1, 20, 24, 18)
    q = NCZYXQuilt(20, 24, 18, (8, 8, 8), (4, 4, 4), 2, 0.2)
    f = q.unstitch(x) * torch.linspace(0.5, 1.5, 8)  # windows disagree
    ref, norma = q.stitch(f)
    L = LargeNCZYXQuilt(str(tmp_path / "l"), 1, 20, 24, 18, (8, 8, 8), (4, 4, 4), 2, 0.2)
    for i in range(0, L.N_chunks, 5):  # batches of windows are accepted too
        idx = list(range(i, min(i + 5, L.N_chunks)))
        L.stitch(f[idx], idx)
    np.testing.assert_allclose(L.return_mean(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(L.norma, norma.numpy(), rtol=1e-6)


@pytest.mark.parametrize("three_d", [False, True])
def test_large_renormalize_channels(three_d, tmp_path):
    size = (12, 14, 16) if three_d else (30, 26)
    window, step = ((8, 8, 8), (4, 3, 4)) if three_d else ((10, 10), (4, 4))
    cls = LargeNCZYXQuilt if three_d else LargeNCYXQuilt
    x = torch.rand(2, 3, *size) + 0.1
    L = cls(str(tmp_path / "r"), 2, *size, window, step, 1, 0.5)
    run_large(L, x)
    m = L.return_mean(renormalize_channels=True)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m, (x / x.sum(1, keepdim=True)).numpy(), rtol=1e-5)
    if not three_d:  # qlty's 2D name for it, positional
        np.testing.assert_array_equal(L.return_mean(False, True), m)


def test_large_errors_and_warnings(tmp_path):
    L = LargeNCYXQuilt(str(tmp_path / "e"), 1, 32, 32, (16, 16), (8, 8), 2)
    with pytest.raises(ValueError, match="nothing was stitched"):
        L.return_mean()
    with pytest.raises(IndexError):
        L.stitch(torch.zeros(1, 1, 16, 16), L.N_chunks)
    with pytest.raises(ValueError, match="patch must be"):
        L.stitch(torch.zeros(1, 1, 15, 16), 0)
    L.stitch(torch.ones(1, 1, 16, 16), 0)
    with pytest.raises(ValueError, match="patch_var"):
        L.return_mean(std=True)
    with pytest.warns(UserWarning, match="never stitched"):
        L.return_mean()


# -- errors -------------------------------------------------------------------------------
def test_small_input_raises_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"window\[0\]=32 is larger than Z=20"):
        NCZYXQuilt(20, 64, 64, (32, 32, 32), (16, 16, 16), 0)
    with pytest.raises(ValueError, match=r"window\[1\]=32 is larger than X=30"):
        NCYXQuilt(64, 30, (32, 32), (16, 16), 0)
    with pytest.raises(ValueError, match=r"window\[2\]=16 is larger than X=10"):
        LargeNCZYXQuilt(str(tmp_path / "s"), 1, 32, 32, 10, (16, 16, 16), (8, 8, 8))
    with pytest.raises(ValueError, match="border_weight"):
        NCYXQuilt(64, 64, (32, 32), (16, 16), 4, border_weight=1.5)


def test_unsupported_options_raise():
    q = NCYXQuilt(32, 32, (16, 16), (8, 8), 0)
    x = torch.zeros(1, 1, 32, 32)
    with pytest.raises(NotImplementedError, match="add_positional_channels"):
        q.unstitch(x, add_positional_channels=True)
    with pytest.raises(NotImplementedError, match="add_positional_channels"):
        q.unstitch_data_pair(x, x[:, 0], add_positional_channels=True)


def test_counts_stay_consistent():
    for size in [(33, 47), (64, 64)]:
        q = NCYXQuilt(*size, (16, 16), (7, 9), 0)
        assert math.prod(q.get_times()) == len(qlty_origins(size, (16, 16), (7, 9)))


def test_weed_nan_missing_label_and_numpy_inputs():
    bt = NCYXQuilt(32, 32, (8, 8), (4, 4), 1).border_tensor().numpy()
    labels = np.full((3, 8, 8), np.nan)
    labels[1, 4, 4] = 1.0
    x = np.arange(3.0)[:, None, None, None] * np.ones((3, 1, 8, 8))
    vin, vout, removed = weed_sparse_classification_training_pairs_2D(x, labels, float("nan"), bt)
    assert removed.tolist() == [True, False, True]
    assert isinstance(vin, np.ndarray) and vin[:, 0, 0, 0].tolist() == [1.0]


def test_patch_var_broadcasts_over_channels(tmp_path):
    """qlty's own test_stitch_with_patch_var passes a one-channel variance for C channels."""
    x = torch.rand(1, 3, 20, 22) + 0.5
    L = LargeNCYXQuilt(str(tmp_path / "v"), 1, 20, 22, (8, 8), (6, 7), (1, 1), 0.5)
    for _ in range(L.N_chunks):
        index, patch = L.unstitch_next(x)
        L.stitch(patch.unsqueeze(0), index, torch.full((1, 1, 8, 8), 0.09))
    mean, std = L.return_mean(std=True)
    np.testing.assert_allclose(mean, x.numpy(), rtol=1e-6)
    np.testing.assert_allclose(std, 0.3, rtol=1e-6)
    assert std.shape == (1, 3, 20, 22)
    with pytest.raises(ValueError, match="broadcast"):
        L.stitch(torch.zeros(1, 3, 8, 8), 0, torch.zeros(1, 2, 8, 8))
