"""clean_pairs against brute force: extract every label window, blank its band, count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from engine_testing import brute_band_mask, brute_extract, fast, grid_specs, random_volume, seeds
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import IGNORE, Grid, clean_pairs, extract
from napari_qlty.core.pairs import band_mask

SPEC = dict(max_sizes=(40, 20, 10, 6), max_windows=150, pad=False)


def sparse_labels(seed: int, shape, density: float, classes: int = 4, ignore=IGNORE, dtype=np.int64):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=shape).astype(dtype)
    labels[rng.random(shape) >= density] = ignore
    return labels


def brute_pairs(image, labels, grid: Grid, ignore, min_labelled: int):
    """Cut every label window, mark its band unobserved, keep windows with enough labels."""
    labels = np.asarray(labels)
    windows = brute_extract(labels[:, None], grid)[:, 0].copy()
    is_nan = isinstance(ignore, float) and np.isnan(ignore)
    counts = []
    for index in range(len(windows)):
        band = brute_band_mask(grid, index % len(grid))
        windows[index][band] = ignore
        labelled = ~np.isnan(windows[index]) if is_nan else windows[index] != ignore
        counts.append(int(labelled.sum()))
    counts = np.asarray(counts)
    kept = np.nonzero(counts >= min_labelled)[0]
    observed = labels[~np.isnan(labels)] if is_nan else labels[labels != ignore]
    classes, per_class = np.unique(observed, return_counts=True)
    return dict(
        kept=kept,
        labels=windows[kept],
        images=brute_extract(image, grid, kept),
        total=len(windows),
        per_class={c.item(): int(k) for c, k in zip(classes, per_class)},
        labelled_in_kept=int(counts[kept].sum()),
        total_labelled=int(len(observed)),
    )


def check_pairs(pairs, ref, grid: Grid, ignore=IGNORE):
    assert pairs.indices.tolist() == ref["kept"].tolist()
    assert len(pairs) == len(ref["kept"])
    assert pairs.labels.shape == (len(ref["kept"]), *grid.window)
    np.testing.assert_array_equal(pairs.labels.numpy(), ref["labels"])
    np.testing.assert_array_equal(pairs.images.numpy(), ref["images"])
    origins = grid.origins()
    assert pairs.origins.tolist() == origins[ref["kept"] % len(grid)].tolist()
    assert pairs.n.tolist() == (ref["kept"] // len(grid)).tolist()
    s = pairs.stats
    assert s.total_windows == ref["total"]
    assert s.kept_windows == len(ref["kept"])
    assert s.labelled_voxels == ref["per_class"]
    assert s.total_labelled == ref["total_labelled"]
    assert s.labelled_in_kept == ref["labelled_in_kept"]
    expected_dup = ref["labelled_in_kept"] / ref["total_labelled"] if ref["total_labelled"] else 0.0
    assert s.duplication == pytest.approx(expected_dup)
    assert "windows kept" in s.table()
    if ignore is not None and not (isinstance(ignore, float) and np.isnan(ignore)):
        assert pairs.ignore_label == ignore


@fast(80)
@given(grid_specs(min_ndim=1, max_ndim=3, max_sizes=(40, 20, 10, 6), max_windows=150), seeds, st.data())
def test_band_mask_matches_brute_force(spec, seed, data):
    g = Grid(**spec)
    for position in range(len(g)):
        mask = band_mask(g, position)
        assert mask.dtype == torch.bool and tuple(mask.shape) == g.window
        np.testing.assert_array_equal(mask.numpy(), brute_band_mask(g, position))


@fast(120)
@given(
    grid_specs(**SPEC),
    st.integers(1, 2),
    st.integers(1, 2),
    st.sampled_from([0.0, 0.005, 0.05, 0.3, 1.0]),
    st.integers(1, 6),
    st.sampled_from(["numpy", "torch"]),
    st.booleans(),
    seeds,
)
def test_clean_pairs_equals_brute_force(spec, n, c, density, min_labelled, kind, channel_axis, seed):
    g = Grid(**spec)
    image = random_volume(seed, (n, c, *g.shape))
    labels = sparse_labels(seed, (n, *g.shape), density)
    ref = brute_pairs(image, labels, g, IGNORE, min_labelled)
    given_labels = labels[:, None] if channel_axis else labels
    before = given_labels.copy()
    if kind == "torch":
        given_labels = torch.from_numpy(given_labels)
        pairs = clean_pairs(image, given_labels, g, min_labelled=min_labelled)
        assert pairs.labels.dtype == torch.int64
    else:
        pairs = clean_pairs(image.numpy(), given_labels, g, min_labelled=min_labelled)
    check_pairs(pairs, ref, g)
    # inputs untouched
    np.testing.assert_array_equal(np.asarray(given_labels), before)


@fast(25)
@given(
    grid_specs(max_ndim=3, max_sizes=(30, 16, 8), max_windows=60, pad=False),
    st.integers(1, 2),
    st.sampled_from([0.01, 0.2]),
    st.integers(1, 3),
    st.booleans(),
    st.booleans(),
    seeds,
)
def test_clean_pairs_from_zarr_on_disk(
    tmp_path_factory, spec, n, density, min_labelled, channel_axis, zarr_image, seed
):
    g = Grid(**spec)
    root = tmp_path_factory.mktemp("clean")
    image = random_volume(seed, (n, 2, *g.shape))
    labels = sparse_labels(seed, (n, *g.shape), density, dtype=np.int16)
    ref = brute_pairs(image, labels, g, IGNORE, min_labelled)
    stored = labels[:, None] if channel_axis else labels
    z = zarr.open_array(
        store=str(root / "labels.zarr"), mode="w", shape=stored.shape, dtype=stored.dtype,
        chunks=tuple(max(1, s // 2) for s in stored.shape),
    )
    z[...] = stored
    z = zarr.open_array(store=str(root / "labels.zarr"), mode="r")
    img = image
    if zarr_image:
        img = zarr.open_array(
            store=str(root / "image.zarr"), mode="w", shape=image.shape, dtype="float32",
            chunks=tuple(max(1, s // 2) for s in image.shape),
        )
        img[...] = image.numpy()
    pairs = clean_pairs(img, z, g, min_labelled=min_labelled)
    check_pairs(pairs, ref, g)


def test_labels_in_the_band_are_ignored_by_hand():
    # 1D: windows [0, 6) and [4, 10), border 1; the shared faces are interior
    g = Grid((10,), window=6, step=4, border=1)
    image = torch.arange(10.0).reshape(1, 1, 10)
    labels = torch.full((1, 10), IGNORE)
    labels[0, 5] = 2  # in window 0's band (index 5) but inside window 1 (index 1)
    labels[0, 0] = 1  # on the volume edge: no band there
    pairs = clean_pairs(image, labels, g)
    assert pairs.indices.tolist() == [0, 1]
    assert pairs.labels.tolist() == [[1, -1, -1, -1, -1, -1], [-1, 2, -1, -1, -1, -1]]
    assert pairs.stats.labelled_voxels == {1: 1, 2: 1}
    assert pairs.stats.labelled_in_kept == 2
    pairs = clean_pairs(image, labels, g, min_labelled=2)
    assert len(pairs) == 0 and pairs.images.shape == (0, 1, 6) and pairs.labels.shape == (0, 6)
    assert pairs.origins.shape == (0, 1)
    assert pairs.stats.kept_windows == 0 and pairs.stats.labelled_in_kept == 0


def test_no_labels_at_all():
    g = Grid((8, 8), window=4, step=2, border=1)
    pairs = clean_pairs(torch.zeros(1, 1, 8, 8), torch.full((1, 8, 8), IGNORE), g)
    assert len(pairs) == 0
    assert pairs.stats.total_windows == 9 and pairs.stats.labelled_voxels == {}
    assert pairs.stats.duplication == 0.0


@fast(30)
@given(grid_specs(max_ndim=2, max_sizes=(30, 16), max_windows=60, pad=False), st.integers(1, 3), seeds)
def test_other_ignore_labels(spec, min_labelled, seed):
    g = Grid(**spec)
    image = random_volume(seed, (1, 1, *g.shape))
    # uint8 labels with 255 unobserved
    labels = sparse_labels(seed, (1, *g.shape), 0.1, ignore=255, dtype=np.uint8)
    pairs = clean_pairs(image, labels, g, ignore_label=255, min_labelled=min_labelled)
    check_pairs(pairs, brute_pairs(image, labels, g, 255, min_labelled), g, ignore=255)
    # float labels with NaN unobserved
    flabels = sparse_labels(seed, (1, *g.shape), 0.1, ignore=np.nan, dtype=np.float32)
    pairs = clean_pairs(image, torch.from_numpy(flabels), g, ignore_label=float("nan"), min_labelled=min_labelled)
    check_pairs(pairs, brute_pairs(image, flabels, g, float("nan"), min_labelled), g, ignore=float("nan"))


@pytest.mark.parametrize("pad", ["constant", "reflect"])
def test_padded_label_voxels_are_unobserved(pad):
    g = Grid((3, 8), window=5, step=3, border=1, pad=pad)
    image = random_volume(0, (1, 1, 3, 8))
    labels = torch.full((1, 3, 8), IGNORE)
    labels[0, 1, 2] = 1
    labels[0, 0, 6] = 2
    pairs = clean_pairs(image, labels, g)
    # rows 3 and 4 of every window lie past the volume: nothing was observed there
    assert (pairs.labels[:, 3:] == IGNORE).all()
    assert pairs.stats.labelled_in_kept == int((pairs.labels != IGNORE).sum())


def test_images_are_the_extracted_windows_for_every_kept_index():
    g = Grid((9, 12), window=(5, 6), step=(2, 3), border=(1, 2))
    image = random_volume(4, (2, 3, 9, 12))
    labels = torch.from_numpy(sparse_labels(4, (2, 9, 12), 0.2))
    pairs = clean_pairs(image, labels, g, min_labelled=3)
    assert len(pairs) > 0
    assert torch.equal(pairs.images, extract(image, g, pairs.indices))
