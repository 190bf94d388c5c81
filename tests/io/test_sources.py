"""Sources: one reading interface over arrays in memory, files and zarr stores."""

from __future__ import annotations

import functools
import http.server
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import zarr
import zarr.storage

from napari_qlty.core.grid import Grid
from napari_qlty.io.sources import Source, open_source
from napari_qlty.core.tiles import extract, extract_lazy

RNG = np.random.default_rng(0)
VOL = RNG.random((6, 7, 9), dtype=np.float32)  # z, y, x
BOX = (0, slice(None), slice(1, 4), slice(2, 7), slice(3, 9))


def same_box(src: Source, full: np.ndarray) -> None:
    """``full`` is the (N, C, *spatial) truth; compare a box, a read() and the whole."""
    got = src[BOX]
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, full[BOX])
    np.testing.assert_array_equal(src.read(0, (1, 2, 3), (4, 7, 9)), full[BOX])
    np.testing.assert_array_equal(src[:], full)


def roundtrip(src: Source) -> Source:
    return pickle.loads(pickle.dumps(src))


# -- in memory -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["numpy", "torch", "dask"])
def test_in_memory(kind):
    import dask.array as da

    obj = {
        "numpy": VOL,
        "torch": torch.from_numpy(VOL.copy()),
        "dask": da.from_array(VOL, chunks=3),
    }[kind]
    src = open_source(obj)
    assert src.shape == (1, 1, 6, 7, 9) and src.dtype == np.float32 and src.axes == "nczyx"
    assert src.axes_guessed and "guessed" in src.describe()
    assert src.spacing is None and src.offset is None
    same_box(src, VOL[None, None])
    same_box(roundtrip(src), VOL[None, None])
    assert open_source(obj).fingerprint == src.fingerprint
    assert open_source(src) is src


def test_in_memory_fingerprint_sees_data_shape_dtype():
    a = VOL.copy()
    fp = open_source(a).fingerprint
    b = a.copy()
    b[0, 0, 0] += 1
    assert open_source(b).fingerprint != fp
    assert open_source(a.astype(np.float64)).fingerprint != fp
    assert open_source(a[:5]).fingerprint != fp
    assert open_source(torch.from_numpy(a)).fingerprint != fp  # kind is part of it


def test_torch_bfloat16_and_int():
    t = torch.arange(24, dtype=torch.bfloat16).reshape(4, 6)
    src = open_source(t)
    assert src.dtype == np.float32 and src[0, 0, 1:3, 2:4].dtype == np.float32
    np.testing.assert_array_equal(src[0, 0], t.float().numpy())
    i = torch.arange(24, dtype=torch.int16).reshape(4, 6)
    assert open_source(i).dtype == np.int16


# -- files -----------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_pickles_small(tmp_path):
    big = np.zeros((64, 64, 64), np.float32)
    big[1:4, 2:7, 3:9] = VOL[1:4, 2:7, 3:9]
    np.save(tmp_path / "a.npy", big)
    src = open_source(tmp_path / "a.npy")
    assert src.kind == "npy" and src.shape == (1, 1, 64, 64, 64)
    np.testing.assert_array_equal(src[BOX], big[None, None][BOX])
    blob = pickle.dumps(src)
    assert len(blob) < 4000  # the path and options, not 1 MiB of data
    np.testing.assert_array_equal(pickle.loads(blob)[BOX], big[None, None][BOX])


def test_numpy_memmap_object_is_reopened_from_its_file(tmp_path):
    np.save(tmp_path / "a.npy", VOL)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    src = open_source(mm)
    assert src.kind == "memmap" and str(tmp_path) in src.location
    blob = pickle.dumps(src)
    assert len(blob) < 4000
    same_box(pickle.loads(blob), VOL[None, None])
    # a view of a memmap is an ordinary array
    same = open_source(mm[1:])
    assert same.kind == "numpy"


def test_tiff_contiguous_is_memmapped(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(
        tmp_path / "a.tif",
        VOL,
        imagej=True,
        resolution=(2.0, 4.0),
        metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"},
    )
    src = open_source(str(tmp_path / "a.tif"))
    assert src.kind == "tiff (memmap)"
    assert src.axes == "nczyx" and not src.axes_guessed
    assert src.spacing == pytest.approx((3.0, 0.25, 0.5))
    same_box(src, VOL[None, None])
    same_box(roundtrip(src), VOL[None, None])


def test_tiff_compressed_is_read_lazily_through_zarr(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "b.tiff", VOL, compression="zlib", tile=(16, 16))
    src = open_source(tmp_path / "b.tiff")
    assert src.kind == "tiff (zarr)"
    assert src.chunks == (1, 1, 1, 7, 9)  # one tile of one page, clipped to the image
    assert src.spacing is None  # no resolution written
    same_box(src, VOL[None, None])
    same_box(roundtrip(src), VOL[None, None])


def test_tiff_rgb_samples_become_channels(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    rgb = RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    src = open_source(tmp_path / "rgb.tif")
    assert src.stored_axes == "yxc" and src.axes == "ncyx" and src.shape == (1, 3, 20, 30)
    np.testing.assert_array_equal(src[0, :, 2:9, 5:11], rgb[2:9, 5:11].transpose(2, 0, 1))


def test_mrc_voxel_size_is_spacing(tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(VOL)
        m.voxel_size = (1.5, 2.5, 3.5)  # x, y, z
    for name in ("t.mrc",):
        src = open_source(tmp_path / name)
        assert src.kind == "mrc" and src.axes == "nczyx" and not src.axes_guessed
        assert src.spacing == pytest.approx((3.5, 2.5, 1.5))
        assert src.units == ("angstrom",) * 3
        same_box(src, VOL[None, None])
        back = roundtrip(src)
        assert back.spacing == src.spacing
        same_box(back, VOL[None, None])
    os.replace(tmp_path / "t.mrc", tmp_path / "t.rec")
    assert open_source(tmp_path / "t.rec").shape == (1, 1, 6, 7, 9)


# -- zarr ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarr_array_path_and_object(tmp_path, fmt):
    path = tmp_path / f"v{fmt}.zarr"
    z = zarr.create_array(str(path), shape=VOL.shape, chunks=(2, 3, 4), dtype="f4", zarr_format=fmt)
    z[:] = VOL
    src = open_source(str(path))
    assert src.kind == f"zarr v{fmt}" and src.chunks == (1, 1, 2, 3, 4)
    assert f"zarr v{fmt} {path}" in src.describe()
    same_box(src, VOL[None, None])
    blob = pickle.dumps(src)
    assert len(blob) < 4000
    same_box(pickle.loads(blob), VOL[None, None])
    # a zarr object on a directory is reopened by its path
    obj = open_source(zarr.open_array(str(path), mode="r"))
    assert obj.fingerprint == src.fingerprint
    same_box(roundtrip(obj), VOL[None, None])


def test_zarr_group_with_array_and_errors(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", shape=VOL.shape, dtype="f4")[:] = VOL
    g.create_array("other", shape=(3, 3), dtype="f4")
    with pytest.raises(ValueError, match=r"array=.*\['other', 'raw'\]"):
        open_source(tmp_path / "g.zarr")
    src = open_source(tmp_path / "g.zarr", array="raw")
    same_box(src, VOL[None, None])
    same_box(roundtrip(src), VOL[None, None])
    same_box(open_source(g, array="raw"), VOL[None, None])
    same_box(open_source(tmp_path / "g.zarr" / "raw"), VOL[None, None])  # a dir holding zarr.json


def test_zarr_dimension_names_give_axes(tmp_path):
    data = RNG.random((3, 5, 2, 6), dtype=np.float32)  # z, y, c, x
    z = zarr.create_array(
        str(tmp_path / "d.zarr"), shape=data.shape, dtype="f4", dimension_names=("z", "y", "c", "x")
    )
    z[:] = data
    src = open_source(tmp_path / "d.zarr")
    assert src.stored_axes == "zycx" and src.axes == "nczyx" and not src.axes_guessed
    np.testing.assert_array_equal(src[0], data.transpose(2, 0, 1, 3))


# -- OME-Zarr --------------------------------------------------------------------------

IMG = RNG.random((2, 8, 12, 10), dtype=np.float32)  # c, z, y, x
LOW = IMG[:, ::2, ::2, ::2].copy()


def _write_ome(root, version: str):
    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(root), mode="w", zarr_format=fmt)
    axes = [
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {
            "path": "s0",
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 2.0, 0.5, 0.5]},
                {"type": "translation", "translation": [0.0, 10.0, 20.0, 30.0]},
            ],
        },
        {
            "path": "s1",
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 4.0, 1.0, 1.0]},
                {"type": "translation", "translation": [0.0, 11.0, 20.25, 30.25]},
            ],
        },
    ]
    ms = {"axes": axes, "datasets": datasets, "name": "img"}
    if version == "0.4":
        ms["version"] = "0.4"
        g.attrs["multiscales"] = [ms]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    for name, data, chunks in (("s0", IMG, (1, 4, 4, 4)), ("s1", LOW, (1, 2, 2, 2))):
        kw = {"dimension_names": ["c", "z", "y", "x"]} if fmt == 3 else {}
        a = g.create_array(name, shape=data.shape, chunks=chunks, dtype="f4", **kw)
        a[:] = data
    return g


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_levels_spacing_translation(tmp_path, version):
    root = tmp_path / "img.ome.zarr"
    g = _write_ome(root, version)
    src = open_source(root)
    assert src.kind == f"zarr v{2 if version == '0.4' else 3} OME {version}"
    assert src.stored_axes == "czyx" and src.axes == "nczyx" and not src.axes_guessed
    assert src.shape == (1, 2, 8, 12, 10)
    assert src.spacing == (2.0, 0.5, 0.5) and src.offset == (10.0, 20.0, 30.0)
    assert src.units == ("micrometer",) * 3
    assert "level 0/2" in src.describe() and "[s0]" in src.describe()
    np.testing.assert_array_equal(src[0, :, 1:5, 2:9, 3:7], IMG[:, 1:5, 2:9, 3:7])

    for low in (
        open_source(root, level=1),
        open_source(root, level=-1),
        open_source(str(root), array="s1"),
        open_source(root / "s1"),
        open_source(g, level=1),
    ):
        assert low.shape == (1, 2, 4, 6, 5)
        assert low.spacing == (4.0, 1.0, 1.0) and low.offset == (11.0, 20.25, 30.25)
        np.testing.assert_array_equal(low[0], LOW)
        back = roundtrip(low)
        assert back.spacing == low.spacing and back.fingerprint == low.fingerprint
        np.testing.assert_array_equal(back[0, 1, 1:3], LOW[1, 1:3])

    assert open_source(root, level=1).fingerprint != src.fingerprint
    with pytest.raises(ValueError, match=r"level=2 is out of range.*0\.\.1"):
        open_source(root, level=2)
    with pytest.raises(ValueError, match="level"):
        open_source(root / "s0", level=1)  # a single array has no levels


def test_ome_global_transform_and_axes_override(tmp_path):
    root = tmp_path / "t.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    data = RNG.random((3, 5, 4, 6), dtype=np.float32)  # t, z, y, x
    g.create_array("0", shape=data.shape, dtype="f4")[:] = data
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [
                    {"name": "t", "type": "time", "unit": "second"},
                    {"name": "z", "type": "space"},
                    {"name": "y", "type": "space"},
                    {"name": "x", "type": "space"},
                ],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0, 1.0, 2.0, 2.0]},
                            {"type": "translation", "translation": [0.0, 0.0, 1.0, 1.0]},
                        ],
                    }
                ],
                "coordinateTransformations": [{"type": "scale", "scale": [0.5, 3.0, 3.0, 3.0]}],
            }
        ],
    }
    src = open_source(root)
    assert src.axes == "nctzyx" and src.shape == (1, 1, 3, 5, 4, 6)
    assert src.spacing == (0.5, 3.0, 6.0, 6.0) and src.offset == (0.0, 0.0, 3.0, 3.0)
    assert src.units == ("second", None, None, None)
    np.testing.assert_array_equal(src[0, 0], data)
    # axes= overrides the metadata; the scale follows the stored axes it belongs to
    over = open_source(root, axes="nzyx")
    assert over.axes == "nczyx" and over.shape == (3, 1, 5, 4, 6)
    assert over.spacing == (3.0, 6.0, 6.0)
    np.testing.assert_array_equal(over[2, 0], data[2])


# -- axes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axes, norm, perm",
    [
        ((5, 3, 7, 9), "zcyx", "nczyx", (1, 0, 2, 3)),
        ((7, 9, 3), "yxc", "ncyx", (2, 0, 1)),
        ((4, 7, 9), "tyx", "nctyx", (0, 1, 2)),
        ((4, 7, 9), "nyx", "ncyx", (0, 1, 2)),
        ((9, 7, 5), "xyz", "nczyx", (2, 1, 0)),
        ((2, 4, 5, 6, 3), "ztyxn", "nctzyx", (4, 1, 0, 2, 3)),
        ((2, 3, 4, 5, 6, 7), "ntczyx", "nctzyx", (0, 2, 1, 3, 4, 5)),
        ((11,), "x", "ncx", (0,)),
    ],
)
def test_axes_normalisation(shape, axes, norm, perm):
    data = RNG.random(shape, dtype=np.float32)
    src = open_source(data, axes=axes)
    assert src.axes == norm and src.stored_axes == axes
    # the truth: transpose the stored axes, then add the missing n and c
    full = data.transpose(perm)
    present = [a for a in norm if a in axes]
    for i, a in enumerate(norm):
        if a not in present:
            full = np.expand_dims(full, i)
    assert src.shape == full.shape
    np.testing.assert_array_equal(src[:], full)
    key = (full.shape[0] - 1, slice(None)) + tuple(slice(1, s) for s in full.shape[2:])
    np.testing.assert_array_equal(src[key], full[key])
    np.testing.assert_array_equal(roundtrip(src)[key], full[key])
    # ints, negative ints and ellipsis on added and stored axes
    np.testing.assert_array_equal(src[-1, -1, ...], full[-1, -1, ...])
    np.testing.assert_array_equal(src[..., 0], full[..., 0])
    np.testing.assert_array_equal(src[0, 1:], full[0, 1:])  # empty along an added axis


@pytest.mark.parametrize(
    "axes, match",
    [
        ("zyx", "has 3 letters but the data has 4"),
        ("zyxw", "unknown letter"),
        ("zyxx", "repeats 'x'"),
        ("nczz", "repeats 'z'"),
        ("ncnc", "repeats"),
        (3, "not a string"),
    ],
)
def test_axes_errors(axes, match):
    with pytest.raises((ValueError, TypeError), match=match) as err:
        open_source(np.zeros((2, 3, 4, 5)), axes=axes)
    assert "axes" in str(err.value) and "'n', 't', 'c', 'z', 'y', 'x'" in str(err.value)


def test_axes_errors_no_spatial_and_guessing():
    with pytest.raises(ValueError, match="no tiled axis"):
        open_source(np.zeros((2, 3)), axes="nc")
    with pytest.raises(ValueError, match="cannot guess the axes.*axes="):
        open_source(np.zeros((1,) * 6))
    guesses = {2: "yx", 3: "zyx", 4: "czyx", 5: "nczyx"}
    for ndim, axes in guesses.items():
        src = open_source(np.zeros((2,) * ndim))
        assert src.stored_axes == axes and src.axes_guessed
    assert not open_source(np.zeros((2, 2)), axes="YX").axes_guessed  # upper case is fine


def test_indexing_errors():
    src = open_source(VOL)
    with pytest.raises(IndexError):
        src[1]  # the added n axis has length 1
    with pytest.raises(IndexError, match="too many"):
        src[0, 0, 0, 0, 0, 0]
    with pytest.raises(TypeError, match="basic indexing"):
        src[0, 0, np.array([1, 2])]
    with pytest.raises(ValueError, match="one value per tiled axis"):
        src.read(0, (0, 0), (1, 1))


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing.tif")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"cannot tell how to read.*\.tif"):
        open_source(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="level"):
        open_source(VOL, level=1)
    with pytest.raises(ValueError, match="array="):
        open_source(VOL, array="0")
    with pytest.raises(TypeError, match="cannot open"):
        open_source(object())
    with pytest.raises(ValueError, match="already a Source"):
        open_source(open_source(VOL), axes="zyx")


# -- with the engine ---------------------------------------------------------------------


def test_extract_lazy_from_transposed_zarr_equals_in_memory(tmp_path):
    data = RNG.random((10, 2, 12, 11), dtype=np.float32)  # z, c, y, x on disk
    z = zarr.create_array(
        str(tmp_path / "zc.zarr"), shape=data.shape, chunks=(4, 1, 5, 5), dtype="f4"
    )
    z[:] = data
    src = open_source(tmp_path / "zc.zarr", axes="zcyx")
    x = torch.from_numpy(data.transpose(1, 0, 2, 3)[None].copy())
    assert src.shape == tuple(x.shape)
    grid = Grid(src.shape[2:], window=(4, 6, 5), step=(3, 4, 4))
    idx = np.arange(len(grid))
    np.testing.assert_array_equal(
        extract_lazy(src, grid, idx).numpy(), extract(x, grid, idx).numpy()
    )
    back = roundtrip(src)
    np.testing.assert_array_equal(
        extract_lazy(back, grid, idx[::3]).numpy(), extract(x, grid, idx[::3]).numpy()
    )


# -- laziness ------------------------------------------------------------------------------


class CountingStore(zarr.storage.WrapperStore):
    """Records every key read."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        self.keys.extend(k for k, _ in key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)


def test_reads_only_the_chunks_under_the_box(tmp_path):
    # 4 GiB of float32 virtually; one chunk written, the rest is fill_value
    shape, chunks = (1024, 1024, 1024), (64, 64, 64)
    z = zarr.create_array(
        str(tmp_path / "big.zarr"), shape=shape, chunks=chunks, dtype="f4", fill_value=0.0
    )
    block = RNG.random(chunks, dtype=np.float32)
    z[64:128, 64:128, 64:128] = block
    t0 = time.perf_counter()
    src = open_source(tmp_path / "big.zarr")
    assert src.shape == (1, 1) + shape and src.nbytes == 4 * 1024**3
    got = src.read(0, (100, 60, 64), (140, 128, 100))
    assert time.perf_counter() - t0 < 5.0
    want = np.zeros((40, 68, 36), np.float32)
    want[:28, 4:, :] = block[36:, :, :36]
    np.testing.assert_array_equal(got[0], want)

    counting = CountingStore(zarr.storage.LocalStore(str(tmp_path / "big.zarr"), read_only=True))
    src = open_source(zarr.open_array(store=counting, mode="r"))
    counting.keys.clear()
    np.testing.assert_array_equal(src.read(0, (100, 60, 64), (140, 128, 100))[0], want)
    chunk_keys = sorted(k for k in counting.keys if k.startswith("c/"))
    # z chunks 1-2, y chunks 0-1, x chunk 1: 4 chunks of the 16^3 = 4096
    assert chunk_keys == ["c/1/0/1", "c/1/1/1", "c/2/0/1", "c/2/1/1"]
    # a source on a store object pickles the store object (here: its root path)
    back = roundtrip(src)
    np.testing.assert_array_equal(back.read(0, (64, 64, 64), (66, 66, 66))[0], block[:2, :2, :2])


def test_concurrent_first_reads_open_once(tmp_path):
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=VOL.shape, chunks=(2, 3, 4), dtype="f4")
    z[:] = VOL
    src = roundtrip(open_source(tmp_path / "c.zarr"))  # unopened
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: src.read(0, (i, 0, 0), (i + 1, 7, 9)), range(6)))
    np.testing.assert_array_equal(np.concatenate(outs, axis=1)[0], VOL)


# -- identity ------------------------------------------------------------------------------


def test_file_fingerprint_tracks_changes(tmp_path):
    p = tmp_path / "f.npy"
    np.save(p, VOL)
    fp = open_source(p).fingerprint
    assert open_source(str(p)).fingerprint == fp
    assert open_source(p, axes="yxz").fingerprint == fp  # the input, not the view of it
    st = os.stat(p)
    np.save(p, VOL + 1)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert open_source(p).fingerprint != fp


def test_reopen_refuses_a_changed_input(tmp_path):
    p = tmp_path / "f.npy"
    np.save(p, VOL)
    blob = pickle.dumps(open_source(p))
    np.save(p, VOL[:3])
    with pytest.raises(RuntimeError, match="changed since it was opened"):
        pickle.loads(blob)[0, 0, 0]


# -- remote ----------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    # zarr fetches chunks concurrently; the default backlog of 5 drops connections and
    # each dropped SYN costs a second
    request_queue_size = 128


@pytest.fixture
def http_dir(tmp_path):
    pytest.importorskip("fsspec")
    pytest.importorskip("aiohttp")
    served = tmp_path / "served"
    served.mkdir()
    server = _Server(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_zarr_equals_local(http_dir):
    served, url = http_dir
    for fmt in (2, 3):
        z = zarr.create_array(
            str(served / f"v{fmt}.zarr"),
            shape=VOL.shape,
            chunks=(2, 3, 4),
            dtype="f4",
            zarr_format=fmt,
        )
        z[:] = VOL
        local = open_source(served / f"v{fmt}.zarr")
        remote = open_source(f"{url}/v{fmt}.zarr")
        assert remote.kind == f"zarr v{fmt}" and remote.location.startswith(url)
        assert remote.shape == local.shape and remote.dtype == local.dtype
        np.testing.assert_array_equal(remote[BOX], local[BOX])
        back = roundtrip(remote)
        np.testing.assert_array_equal(
            back.read(0, (0, 1, 2), (6, 7, 9)), local.read(0, (0, 1, 2), (6, 7, 9))
        )
    _write_ome(served / "img.zarr", "0.5")
    low = open_source(f"{url}/img.zarr/", level=1)
    assert low.spacing == (4.0, 1.0, 1.0) and low.offset == (11.0, 20.25, 30.25)
    np.testing.assert_array_equal(low[0], LOW)


# -- another process ---------------------------------------------------------------------------

_WORKER = """
import importlib.util, pickle, sys, types

# load napari_qlty.io.sources without the package's __init__ (which imports torch, slow to
# start): this also checks that reading needs nothing from the engine
spec = importlib.util.find_spec("napari_qlty")
pkg = types.ModuleType("napari_qlty")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["napari_qlty"] = pkg
sources = pickle.load(sys.stdin.buffer)
assert "torch" not in sys.modules
assert all(s._reader is None for s in sources)
pickle.dump([s.read(0, (1, 2, 3), (4, 7, 9)) for s in sources], sys.stdout.buffer)
"""


def test_sources_read_in_a_fresh_process(tmp_path):
    """What a dask worker does: unpickle the sources, reopen the files, read."""
    tifffile = pytest.importorskip("tifffile")
    mrcfile = pytest.importorskip("mrcfile")
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=VOL.shape, chunks=(2, 3, 4), dtype="f4")
    z[:] = VOL
    tifffile.imwrite(tmp_path / "a.tif", VOL, compression="zlib")
    tifffile.imwrite(tmp_path / "b.tif", VOL)
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(VOL)
    np.save(tmp_path / "a.npy", VOL)
    names = ("a.zarr", "a.tif", "b.tif", "a.mrc", "a.npy")
    sources = [open_source(tmp_path / n) for n in names]
    for s in sources:
        s[BOX]  # opened here: the handles must not travel
    blob = pickle.dumps(sources)
    assert len(blob) < 4000 * len(names)
    done = subprocess.run(
        [sys.executable, "-c", _WORKER],
        input=blob,
        capture_output=True,
        check=False,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    for out in pickle.loads(done.stdout):
        np.testing.assert_array_equal(out, VOL[None, 1:4, 2:7, 3:9])


def test_describe_is_one_line(tmp_path):
    root = tmp_path / "img.zarr"
    _write_ome(root, "0.4")
    line = open_source(root).describe()
    assert "\n" not in line
    assert line.startswith(f"zarr v2 OME 0.4 {root} [s0] (1, 2, 8, 12, 10) float32 axes nczyx")
    assert "chunks (1, 1, 4, 4, 4)" in line and "spacing (2, 0.5, 0.5) micrometer" in line
    assert "offset (10, 20, 30)" in line
    assert json.dumps(line)  # plain text
