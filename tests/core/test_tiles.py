"""Window extraction against brute-force slicing, in memory and from lazy arrays."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from engine_testing import brute_extract, brute_origins, brute_pad, fast, grid_specs, random_volume, seeds
from hypothesis import given
from hypothesis import strategies as st

from napari_qlty import Grid, extract, extract_lazy

DTYPES = [torch.float16, torch.float32, torch.float64, torch.int32, torch.uint8, torch.bool]
SPEC = dict(max_sizes=(40, 24, 10, 6), max_windows=200, pad=None)


@fast(120)
@given(
    grid_specs(**SPEC),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(DTYPES),
    st.booleans(),
    seeds,
)
def test_extract_equals_brute_force_slicing(spec, n, c, dtype, as_numpy, seed):
    g = Grid(**spec)
    x = random_volume(seed, (n, c, *g.shape), dtype)
    source = x.numpy() if as_numpy else x
    patches = extract(source, g)
    assert patches.dtype == dtype
    assert patches.shape == (n * len(g), c, *g.window)
    expected = torch.from_numpy(np.ascontiguousarray(brute_extract(x, g)))
    assert torch.equal(patches, expected)  # bitwise


@fast(60)
@given(grid_specs(**SPEC), st.integers(1, 3), seeds, st.data())
def test_extract_selected_indices(spec, n, seed, data):
    g = Grid(**spec)
    x = random_volume(seed, (n, 2, *g.shape))
    total = n * len(g)
    indices = data.draw(st.lists(st.integers(0, total - 1), max_size=12))
    full = extract(x, g)
    picked = extract(x, g, np.asarray(indices, dtype=np.int64))
    assert picked.shape == (len(indices), 2, *g.window)
    assert torch.equal(picked, full[indices] if indices else full[:0])
    assert np.array_equal(picked.numpy(), brute_extract(x, g, indices))


def test_extract_keeps_views_of_non_contiguous_input():
    x = torch.arange(2 * 3 * 9 * 7, dtype=torch.float32).reshape(2, 3, 7, 9).transpose(2, 3)
    g = Grid((9, 7), window=(4, 3), step=(2, 2), border=1)
    assert torch.equal(extract(x, g), torch.from_numpy(brute_extract(x, g)))


def _zarr(tmp_dir, array: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    chunks = tuple(int(rng.integers(1, s + 1)) for s in array.shape)
    z = zarr.open_array(
        store=str(tmp_dir / f"v{seed}.zarr"), mode="w", shape=array.shape, chunks=chunks, dtype=array.dtype
    )
    z[...] = array
    return zarr.open_array(store=str(tmp_dir / f"v{seed}.zarr"), mode="r")


@fast(40)
@given(
    grid_specs(max_sizes=(30, 16, 8, 5), max_windows=80, pad=None),
    st.integers(1, 2),
    st.integers(1, 2),
    st.sampled_from([torch.float32, torch.uint8, torch.int32]),
    st.sampled_from(["numpy", "dask", "zarr"]),
    st.sampled_from([0.0, 1.0, 2.0, 1e9]),
    seeds,
    st.data(),
)
def test_extract_lazy_equals_extract(
    tmp_path_factory, spec, n, c, dtype, kind, max_overread, seed, data
):
    g = Grid(**spec)
    x = random_volume(seed, (n, c, *g.shape), dtype)
    arr = x.numpy()
    if kind == "dask":
        source = da.from_array(arr, chunks=tuple(max(1, s // 2) for s in arr.shape))
    elif kind == "zarr":
        source = _zarr(tmp_path_factory.mktemp("zarr"), arr, seed)
    else:
        source = arr
    total = n * len(g)
    indices = data.draw(
        st.one_of(
            st.just(list(range(total))),
            st.lists(st.integers(0, total - 1), min_size=1, max_size=10),
        )
    )
    got = extract_lazy(source, g, indices, max_overread=max_overread)
    assert got.dtype == dtype
    assert torch.equal(got, extract(x, g, indices))


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("pad", ["reflect", "constant"])
@pytest.mark.parametrize("max_overread", [0.0, 1e9])
def test_extract_lazy_with_padding(tmp_path, kind, pad, max_overread):
    g = Grid((3, 11, 6), window=(5, 4, 6), step=(2, 3, 1), pad=pad)
    x = random_volume(7, (2, 2, 3, 11, 6))
    arr = x.numpy()
    source = {
        "numpy": lambda: arr,
        "dask": lambda: da.from_array(arr, chunks=(1, 1, 2, 5, 4)),
        "zarr": lambda: _zarr(tmp_path, arr, 3),
    }[kind]()
    indices = [0, 3, len(g) + 1, 2 * len(g) - 1, 1]
    got = extract_lazy(source, g, indices, max_overread=max_overread)
    assert torch.equal(got, extract(x, g, indices))
    assert np.array_equal(got.numpy(), brute_extract(x, g, indices))
    full = extract_lazy(source, g, np.arange(2 * len(g)), max_overread=max_overread)
    assert torch.equal(full, extract(x, g))


def test_extract_lazy_empty_indices():
    g = Grid((8,), window=4, step=2)
    got = extract_lazy(np.zeros((1, 3, 8), np.float32), g, [])
    assert got.shape == (0, 3, 4)
    assert extract(torch.zeros(1, 3, 8), g, []).shape == (0, 3, 4)


@fast(40)
@given(grid_specs(max_sizes=(30, 16, 8, 5), max_windows=80, pad=False), st.integers(1, 2), seeds)
def test_gradients_flow_through_extract(spec, n, seed):
    g = Grid(**spec)
    x = random_volume(seed, (n, 2, *g.shape), torch.float64).requires_grad_(True)
    patches = extract(x, g)
    r = random_volume(seed + 1, tuple(patches.shape), torch.float64)
    (patches * r).sum().backward()
    # d/dx of sum(patch * r): every window adds its r where it sits
    expected = np.zeros((n, 2, *g.padded_shape))
    origins = brute_origins(g)
    for index in range(n * len(g)):
        nn, k = divmod(index, len(g))
        sl = tuple(slice(o, o + w) for o, w in zip(origins[k], g.window))
        expected[(nn, slice(None), *sl)] += r[index].numpy()
    assert x.grad is not None
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


def test_gradients_flow_through_padded_extract():
    g = Grid((3, 6), window=(5, 4), step=(1, 2), pad="reflect")
    x = torch.randn(1, 1, 3, 6, dtype=torch.float64, requires_grad=True)
    extract(x, g).sum().backward()
    # rows 0..4 of the padded axis read rows 0, 1, 2, 1, 0 of x
    row_weight = torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)
    col_cover = torch.tensor([1.0, 1, 2, 2, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(x.grad[0, 0], row_weight[:, None] * col_cover[None, :])
    assert brute_pad(x.detach().numpy(), g).shape == (1, 1, 5, 6)


def test_extract_numpy_view_with_negative_strides():
    a = np.arange(60, dtype=np.float32).reshape(2, 1, 6, 5)[..., ::-1]
    g = Grid((6, 5), window=3, step=2)
    assert np.array_equal(extract_lazy(a, g, np.arange(2 * len(g))).numpy(), brute_extract(a, g))
    assert np.array_equal(extract(a, g).numpy(), brute_extract(a, g))
