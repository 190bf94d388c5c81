"""Predictions are OME-Zarr 0.5 images with pyramids: checked by other people's readers
(ome-zarr-py, napari-ome-zarr, ome-zarr-models' NGFF validation) and each level against
a reduction of the full-resolution array computed by another route."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_qlty import Grid, Weighting, infer, predict
from napari_qlty.core.pyramid import granule, level_factors, mean_levels, mode_levels
from napari_qlty.io import formats
from napari_qlty.io.prediction import Prediction, StoreError, levels_layout
from napari_qlty.run.regions import Regions

DTYPES = ["uint8", "int8", "int16", "uint16", "float32"]


def conv(c_in=1, c_out=3, ndim=3, seed=0):
    torch.manual_seed(seed)
    layer = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[ndim]
    return torch.nn.Sequential(layer(c_in, c_out, 3, padding=1)).eval()


def volume(dtype, shape=(1, 1, 37, 45, 29), seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


# -- independent references ---------------------------------------------------------------
def coarsen_mean(full: np.ndarray, factor) -> np.ndarray:
    """dask's coarsen of the array padded with NaN to whole blocks: the mean of what each block holds."""
    pad = [(0, (-s) % f) for s, f in zip(full.shape, factor)]
    padded = np.pad(full.astype(np.float64), pad, constant_values=np.nan)
    return da.coarsen(np.nanmean, da.from_array(padded), dict(enumerate(factor))).compute()


def block_mode(full: np.ndarray, factor) -> np.ndarray:
    """The most frequent value of each block (the smallest on a tie), block by block."""
    out = np.zeros([math.ceil(s / f) for s, f in zip(full.shape, factor)], dtype=full.dtype)
    for idx in np.ndindex(*out.shape):
        block = full[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factor))]
        out[idx] = np.argmax(np.bincount(block.ravel().astype(np.int64)))
    return out


def all_levels(path) -> dict[str, np.ndarray]:
    """Every array of a store's pyramids, by path (the bytes a resume must reproduce)."""
    store = Prediction(path)
    out = {}
    for kind in ("probabilities", "labels"):
        if store.layout[kind]:
            for level in range(store.levels):
                out[store.array_path(kind, level)] = store.array(kind, level)[...]
    return out


# -- the reductions ----------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 13), min_size=1, max_size=3), st.lists(st.integers(1, 3), min_size=3, max_size=3),
       st.integers(1, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_levels_of_a_box_are_the_block_reductions(shape, factor, levels, classes, seed):
    factor = factor[: len(shape)]
    factors = level_factors(shape, factor, levels)
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((2, *shape)).astype(np.float32)
    labels = rng.integers(0, classes, size=shape).astype(np.uint8)
    means = list(mean_levels(torch.from_numpy(values), factors))
    modes = list(mode_levels(torch.from_numpy(labels), classes, factors))
    assert len(means) == len(modes) == len(factors) - 1
    for f, mean, mode in zip(factors[1:], means, modes):
        np.testing.assert_allclose(mean.numpy(), coarsen_mean(values, (1, *f)), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mode.numpy(), block_mode(labels, f))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(5, 300), min_size=1, max_size=3), st.lists(st.integers(3, 40), min_size=3, max_size=3),
       st.integers(1, 5), st.integers(1, 64), st.integers(1, 4))
def test_regions_never_share_a_chunk_at_any_level(shape, chunks, levels, floor, grow):
    """Regions are whole granules, so each region's share of every level is whole chunks
    (or ends on the level's far edge): no two writers ever touch one chunk."""
    nd = len(shape)
    chunks, factors = chunks[:nd], level_factors(shape, (2,) * nd, levels)
    unit = granule(chunks, factors, (floor,) * nd)
    grid = Grid(shape, window=tuple(min(4, s) for s in shape), step=1)
    regions = Regions(grid, tuple(u * grow for u in unit))
    if math.prod(regions.counts) > 2000:
        regions = Regions(grid, tuple(max(u * grow, s // 10 // u * u) for u, s in zip(unit, shape)))
    for level in levels_layout(shape, chunks, factors, (floor,) * nd):
        for r in np.ndindex(*regions.counts):
            start, stop = regions.bounds(r)
            for a, b, f, c, s in zip(start, stop, level["factor"], level["chunks"], level["shape"]):
                assert a % f == 0 and (a // f) % c == 0
                assert math.ceil(b / f) % c == 0 or math.ceil(b / f) == s


def test_the_coarsest_level_fits_a_screen():
    assert level_factors((2154, 2154, 2154), (2, 2, 2))[-1] == (8, 8, 8)  # 270 voxels an axis
    assert level_factors((100, 20000, 30000), (1, 2, 2))[-1] == (1, 64, 64)  # time is not coarsened
    assert level_factors((37, 45, 29), (2, 2, 2)) == [(1, 1, 1)]  # small: no pyramid
    with pytest.raises(ValueError, match="levels must be an int >= 1"):
        level_factors((8, 8), (2, 2), 0)


# -- the store, level by level -------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_level_equals_a_reduction_of_level_0(tmp_path, dtype):
    x = volume(dtype)
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    model = conv()
    out = tmp_path / "out.zarr"
    predict(model, x, grid, out, device="cpu", chunks=(8, 8, 8), levels=3, postprocess="softmax",
            dtype="float16" if dtype == "int8" else "float32")
    store = Prediction(out)
    assert store.levels == 3 and store.complete
    expected = infer(model, torch.from_numpy(x), grid, postprocess=lambda y: torch.softmax(y, 1)).numpy()
    full = store.probabilities()[...]
    np.testing.assert_allclose(full, expected, atol=2e-3 if dtype == "int8" else 1e-5)
    labels = store.labels()[0]
    if dtype != "int8":  # (a float16 store's labels are the argmax of the float32 values)
        np.testing.assert_array_equal(labels, full[0].argmax(0))
    for level in (1, 2):
        factor = store.layout["levels"][level]["factor"]
        mean = store.probabilities(level)[0]
        # from the float32 sums, so a float16 store is within its rounding of the float16 level 0's mean
        np.testing.assert_allclose(mean, coarsen_mean(full[0], (1, *factor)), rtol=2e-3 if dtype == "int8" else 1e-5,
                                   atol=1e-3 if dtype == "int8" else 1e-6)
        np.testing.assert_array_equal(store.labels(level)[0], block_mode(labels, factor))


def test_threads_equal_sequential_at_every_level(tmp_path):
    x = volume("float32")
    grid = Grid(x.shape[2:], window=12, step=8, border=2)
    kwargs = dict(weighting=Weighting("border", 0.0), device="cpu", chunks=(8, 8, 8), levels=3)
    predict(conv(), x, grid, tmp_path / "a.zarr", **kwargs)
    predict(conv(), x, grid, tmp_path / "b.zarr", workers=3, **kwargs)
    a, b = all_levels(tmp_path / "a.zarr"), all_levels(tmp_path / "b.zarr")
    assert len(a) == 6 and a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# -- other people's readers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 3D prediction with 3 levels, a physical scale and named classes."""
    tmp = tmp_path_factory.mktemp("ome")
    x = volume("uint16", shape=(1, 1, 20, 40, 36))
    model = conv(c_out=3)
    model.napari_qlty_info = {"classes": ["background", "membrane", "filament"]}
    out = tmp / "pred.zarr"
    predict(model, x, Grid(x.shape[2:], 12, 8, 2), out, device="cpu", chunks=(8, 8, 8), levels=3,
            postprocess="softmax", scale=(2.0, 0.5, 0.5), translation=(100.0, 0.0, 10.0), units="nanometer")
    return out


def test_ome_zarr_models_validates_image_and_labels(pyramid):
    from ome_zarr_models.v05.image import Image
    from ome_zarr_models.v05.image_label import ImageLabel

    image = Image.from_zarr(zarr.open_group(str(pyramid), mode="r"))
    (multiscale,) = image.ome_attributes.multiscales
    assert [a.name for a in multiscale.axes] == ["c", "z", "y", "x"]
    assert [a.unit for a in multiscale.axes] == [None, "nanometer", "nanometer", "nanometer"]
    assert image.labels.label_paths == ["segmentation"]
    label = ImageLabel.from_zarr(zarr.open_group(str(pyramid / "labels" / "segmentation"), mode="r"))
    props = label.ome_attributes.image_label.properties
    assert [p.model_dump(by_alias=True) for p in props] == [
        {"label-value": 0, "class": "background"}, {"label-value": 1, "class": "membrane"},
        {"label-value": 2, "class": "filament"}]
    colors = label.ome_attributes.image_label.colors
    assert colors[0].rgba == (0, 0, 0, 0) and len({c.rgba for c in colors}) == 3


def test_ome_zarr_py_reads_axes_scales_levels_and_labels(pyramid):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(pyramid)))())
    image = nodes[0]
    assert image.load(Multiscales) is not None
    assert [d.shape for d in image.data] == [(3, 20, 40, 36), (3, 10, 20, 18), (3, 5, 10, 9)]
    transforms = image.metadata["coordinateTransformations"]
    assert [t[0]["scale"] for t in transforms] == [[1, 2, 0.5, 0.5], [1, 4, 1, 1], [1, 8, 2, 2]]
    assert transforms[0][1]["translation"] == [0, 100, 0, 10]
    assert transforms[2][1]["translation"] == [0, 103, 0.75, 10.75]  # a block's centre
    np.testing.assert_array_equal(np.asarray(image.data[2]), Prediction(pyramid).array("probabilities", 2)[...])
    label = next(n for n in nodes if n.load(Label) is not None)
    assert [d.shape for d in label.data] == [(20, 40, 36), (10, 20, 18), (5, 10, 9)]
    assert label.metadata["name"] == "segmentation"
    np.testing.assert_array_equal(np.asarray(label.data[1]), Prediction(pyramid).labels(1)[0])


def test_napari_ome_zarr_opens_it_as_multiscale_layers(pyramid):
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr._reader")
    reader = napari_ome_zarr.napari_get_reader(str(pyramid))
    assert reader is not None
    layers = reader(str(pyramid))
    image = next(layer for layer in layers if (layer[2] if len(layer) > 2 else "image") == "image")
    data, kwargs = image[0], image[1]
    assert len(data) == 3 and kwargs["channel_axis"] == 0
    assert list(kwargs["scale"]) == [2.0, 0.5, 0.5]  # (it reads the first transform only: no translation)
    assert kwargs["axis_labels"] == ("z", "y", "x") and kwargs["units"] == ("nanometer",) * 3
    labels = next(layer for layer in layers if len(layer) > 2 and layer[2] == "labels")
    assert len(labels[0]) == 3 and list(labels[1]["scale"]) == [2.0, 0.5, 0.5]


@pytest.mark.parametrize(
    "shape, axes, expected",
    [
        ((40, 36), "yx", ["c", "y", "x"]),  # 2D
        ((3, 20, 24), "nyx", ["n", "c", "y", "x"]),  # a stack of images: the custom axis
        ((4, 20, 24), "tyx", ["t", "c", "y", "x"]),  # time tiled (and never coarsened)
        ((50,), "x", ["c", "y", "x"]),  # one space axis gets a length-1 partner
        ((4, 20, 24), "t,yx", ["t", "c", "y", "x"]),  # each time point on its own: the images are time
    ],
)
def test_every_layout_is_valid_ngff(tmp_path, shape, axes, expected):
    from ome_zarr_models.v05.image import Image

    from napari_qlty.io.sources import open_source

    src = open_source(volume("float32", shape=shape), axes=axes.replace(",", ""))
    if "," in axes:
        src = src.time_as_images()
    grid = Grid(src.shape[2:], window=tuple(min(8, s) for s in src.shape[2:]), step=4)
    out = tmp_path / "o.zarr"
    predict(conv(ndim=grid.ndim), src, grid, out, device="cpu", levels=2)
    image = Image.from_zarr(zarr.open_group(str(out), mode="r"))
    assert [a.name for a in image.ome_attributes.multiscales[0].axes] == expected
    store = Prediction(out)
    assert store.probabilities().shape == (src.shape[0], 3, *src.shape[2:])
    factor = store.layout["levels"][1]["factor"]
    assert factor == [1 if a == "t" else 2 for a in axes.partition(",")[2] or axes if a != "n"]
    np.testing.assert_allclose(store.probabilities(1)[0], coarsen_mean(store.probabilities()[0], (1, *factor)),
                               rtol=1e-5, atol=1e-6)


def test_labels_alone_make_the_root_a_label_image(tmp_path):
    from ome_zarr_models.v05.image_label import ImageLabel

    x = volume("uint8", shape=(1, 1, 20, 24, 16))
    out = tmp_path / "l.zarr"
    predict(conv(c_out=1), x, Grid(x.shape[2:], 8, 6), out, device="cpu", probabilities=False, levels=2)
    label = ImageLabel.from_zarr(zarr.open_group(str(out), mode="r"))
    assert [p.model_dump(by_alias=True)["class"] for p in label.ome_attributes.image_label.properties] == [
        "background", "foreground"]
    assert Prediction(out).labels(1).shape == (1, 10, 12, 8)


# -- the earlier layout ---------------------------------------------------------------------
def flat_store(path):
    """A prediction as the earlier version wrote it."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("probabilities", shape=(1, 3, 37, 45, 29), dtype="float32", fill_value=0)
    group.create_array("labels", shape=(1, 37, 45, 29), dtype="uint8", fill_value=0)
    group.attrs[formats.ATTRS_KEY] = {"format": formats.PREDICTION_FLAT, "params": {}, "complete": True}
    return group


def test_the_earlier_flat_layout_is_recognised_never_misread(tmp_path):
    from napari_qlty._napari import reader

    old = tmp_path / "old.zarr"
    flat_store(old)
    x = volume("float32")
    grid = Grid(x.shape[2:], 12, 8, 2)
    with pytest.raises(StoreError, match=r"earlier flat layout.*neither resumes nor reads.*left untouched") as info:
        predict(conv(), x, grid, old, device="cpu")
    assert info.value.remedy == "overwrite"
    assert formats.identify(old) == formats.PREDICTION_FLAT  # untouched
    with pytest.raises(StoreError, match="earlier flat layout"):
        Prediction(old)
    layers = reader.read_zarr(str(old))  # the plugin still shows it as it was written
    assert [kind for _, _, kind in layers] == ["image", "labels"] and layers[0][0].shape == (3, 37, 45, 29)
    predict(conv(), x, grid, old, device="cpu", overwrite=True)  # asked for: replaced
    assert formats.identify(old) == formats.PREDICTION and Prediction(old).complete


# -- physical scale from the input ------------------------------------------------------------
def test_scale_comes_from_the_input_and_its_level(tmp_path):
    """An OME-Zarr input's scale and translation (at the level run), an MRC's voxel size."""
    import mrcfile

    from napari_qlty.cli import main

    x = volume("float32", shape=(16, 32, 24))
    root = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=3)
    root.create_array("0", data=x, dimension_names=["z", "y", "x"])
    root.create_array("1", data=x[::2, ::2, ::2].copy(), dimension_names=["z", "y", "x"])
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]},
                                                                {"type": "translation", "translation": [1.0, 2.0, 3.0]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [4.0, 1.0, 1.0]},
                                                                {"type": "translation", "translation": [2.0, 2.25, 3.25]}]}]}]}
    model = tmp_path / "m.pt"
    torch.jit.script(conv(c_out=2)).save(str(model))
    common = ["--model", str(model), "--window", "8", "--step", "6", "--device", "cpu"]
    assert main(["predict", str(tmp_path / "in.ome.zarr"), str(tmp_path / "full.zarr"), *common]) == 0
    assert main(["predict", str(tmp_path / "in.ome.zarr"), str(tmp_path / "coarse.zarr"), "--level", "1",
                 "--classes", "dark,bright", *common]) == 0
    full, coarse = Prediction(tmp_path / "full.zarr"), Prediction(tmp_path / "coarse.zarr")
    assert full.scale() == (2.0, 0.5, 0.5) and full.translation() == (1.0, 2.0, 3.0)
    assert full.layout["units"] == ["micrometer"] * 3
    assert coarse.scale() == (4.0, 1.0, 1.0) and coarse.translation() == (2.0, 2.25, 3.25)
    assert coarse.probabilities().shape == (1, 2, 8, 16, 12)
    assert coarse.layout["classes"] == ["dark", "bright"]

    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(x)
        m.voxel_size = (1.5, 2.5, 3.5)  # x, y, z
    predict(conv(c_out=2), str(tmp_path / "t.mrc"), Grid(x.shape, 8, 6), tmp_path / "mrc.zarr", device="cpu")
    mrc = Prediction(tmp_path / "mrc.zarr")
    assert mrc.scale() == (3.5, 2.5, 1.5) and mrc.layout["units"] == ["angstrom"] * 3
    # given by the user: that wins, and says what is wrong when it does not fit
    predict(conv(c_out=2), str(tmp_path / "t.mrc"), Grid(x.shape, 8, 6), tmp_path / "mine.zarr", device="cpu",
            scale=(1.0, 1.0, 1.0), units="nm")
    assert Prediction(tmp_path / "mine.zarr").layout["units"] == ["nanometer"] * 3
    with pytest.raises(ValueError, match=r"scale must have one value per tiled axis \(z, y, x\)"):
        predict(conv(c_out=2), x, Grid(x.shape, 8, 6), tmp_path / "bad.zarr", device="cpu", scale=(1.0, 2.0))


def test_cli_flags_for_the_pyramid_say_what_is_wrong(tmp_path, capsys):
    from napari_qlty.cli import main

    x = volume("float32", shape=(16, 32, 24))
    np.save(tmp_path / "x.npy", x)
    model = tmp_path / "m.pt"
    torch.jit.script(conv(c_out=2)).save(str(model))
    common = [str(tmp_path / "x.npy"), str(tmp_path / "o.zarr"), "--model", str(model), "--window", "8",
              "--step", "6", "--device", "cpu"]
    assert main(["predict", *common, "--levels", "0"]) == 2
    assert "--levels must be an int >= 1" in capsys.readouterr().err
    assert main(["predict", *common, "--downscale", "2,2"]) == 2
    assert "--downscale must be an int >= 1 or one per tiled axis (z, y, x)" in capsys.readouterr().err
    assert main(["predict", *common, "--scale", "1,0,1"]) == 2
    assert "--scale must be > 0 along every axis" in capsys.readouterr().err
    assert main(["predict", *common, "--level", "1"]) == 2
    assert "--level 1 applies to multiscale inputs only" in capsys.readouterr().err
    assert main(["predict", *common, "--levels", "2", "--downscale", "1,2,2", "--units", "µm"]) == 0
    store = Prediction(tmp_path / "o.zarr")
    assert store.layout["levels"][1]["factor"] == [1, 2, 2] and store.layout["units"] == ["micrometer"] * 3


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.sampled_from(["x", "yx", "zyx", "tyx", "tzyx", "ty", "t"]), st.sampled_from("nt"),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_dims_round_trip_every_layout(n_images, tiled, image_axis, channel, seed):
    """Any (N, C, *tiled) block goes into the arrays' order and back unchanged; layouts NGFF
    cannot hold keep the engine's order and say so."""
    from napari_qlty.io.ngff import Dims, LogicalView

    image_axis = image_axis if "t" not in tiled else "n"
    dims = Dims.plan(n_images, tiled, image_axis=image_axis, channel=channel)
    space = [a for a in tiled if a != "t"]
    assert dims.ome == (1 <= len(space) <= 3 and len(dims.names) <= 5)
    if dims.ome:
        types = [t for t in dims.types]
        assert types[-len([t for t in types if t == "space"]):] == ["space"] * types.count("space")
        assert "time" not in types or types[0] == "time"
    rng = np.random.default_rng(seed)
    logical = rng.integers(0, 100, size=(n_images, 2 if channel else 1, *rng.integers(1, 4, size=len(tiled))))
    stored = dims.to_array(logical, logical.ndim)
    assert stored.shape == dims.shape(logical.shape)
    np.testing.assert_array_equal(dims.to_logical(stored, logical.ndim), logical)
    view = LogicalView(stored, dims, logical.ndim)
    np.testing.assert_array_equal(view[...], logical)
    np.testing.assert_array_equal(view[n_images - 1, 0], logical[n_images - 1, 0])


def test_reader_of_raw_outputs_takes_contrast_from_the_coarsest_level(tmp_path):
    from napari_qlty._napari import reader

    x = volume("int16", shape=(1, 1, 20, 24, 16))
    out = tmp_path / "raw.zarr"
    predict(conv(c_out=1), x, Grid(x.shape[2:], 8, 6), out, device="cpu", levels=2)  # logits, no softmax
    (data, kwargs, kind), _ = reader.read_zarr(str(out))
    coarse = np.asarray(data[-1])
    assert kind == "image" and kwargs["multiscale"] and len(data) == 2 and data[0].shape == (20, 24, 16)
    lo, hi = kwargs["contrast_limits"]
    assert coarse.min() <= lo < hi <= coarse.max()
    np.testing.assert_allclose(coarse, Prediction(out).probabilities(1)[0, 0])
