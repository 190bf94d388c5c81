"""The manifest, the reader and the writer (no viewer needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import zarr

import napari_qlty
from napari_qlty._napari import reader, writer
from napari_qlty.io.prediction import Prediction


def test_manifest_is_valid_and_every_command_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(napari_qlty.__file__).parent / "napari.yaml")
    contributions = manifest.contributions
    for command in contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name
    assert {w.display_name for w in contributions.widgets} == {
        "Grid preview", "Sparse labelling", "Export training pairs", "Tiled inference", "Train",
    }
    assert {s.key for s in contributions.sample_data} == {"tomogram-small", "tomogram-paper"}
    assert contributions.readers[0].accepts_directories
    assert "*.zarr" in contributions.readers[0].filename_patterns
    assert contributions.writers[0].layer_types == ["labels"]
    menus = {k: [i.command for i in v] for k, v in contributions.menus.items()}
    assert "napari-qlty.inference" in menus["napari/layers/segment"]
    assert "napari-qlty.sparse_labelling" in menus["napari/layers/annotate"]


def test_reader_declines_other_files(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    assert reader.get_reader(str(tmp_path / "a.txt")) is None
    assert reader.get_reader(str(tmp_path / "missing.zarr")) is None
    assert reader.get_reader([str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]) is None


def _write_ome(path: Path, data: np.ndarray, scale=(2.0, 0.5, 0.5), labels: np.ndarray | None = None):
    """A two-level OME-Zarr 0.5 image (zarr v3), optionally with a labels image."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    levels = [data, data[::2, ::2, ::2]]
    datasets = []
    for i, level in enumerate(levels):
        root.create_array(str(i), data=level, chunks=(8, 16, 16))
        datasets.append({
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [s * 2**i for s in scale]}],
        })
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets, "name": "cells"}]}
    if labels is not None:
        group = root.create_group("labels")
        group.attrs["ome"] = {"version": "0.5", "labels": ["nuclei"]}
        nuclei = group.create_group("nuclei")
        nuclei.create_array("0", data=labels, chunks=(8, 16, 16))
        nuclei.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [{"axes": axes, "datasets": [{
                "path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}],
            }]}],
            "image-label": {"version": "0.5"},
        }


def test_reader_ome_zarr_is_multiscale_and_lazy(tmp_path):
    import dask.array as da

    data = np.random.default_rng(0).random((16, 32, 32)).astype("float32")
    labels = (data > 0.9).astype("uint8")
    path = tmp_path / "cells.ome.zarr"
    _write_ome(path, data, labels=labels)
    read = reader.get_reader(str(path))
    assert read is not None
    layers = read(str(path))
    (image, kwargs, kind), (lab, lkw, lkind) = layers
    assert kind == "image" and kwargs["multiscale"] is True
    assert isinstance(image, list) and all(isinstance(level, da.Array) for level in image)
    assert [level.shape for level in image] == [(16, 32, 32), (8, 16, 16)]
    assert kwargs["scale"] == (2.0, 0.5, 0.5)
    assert kwargs["name"] == "cells"
    np.testing.assert_array_equal(image[0][3].compute(), data[3])
    assert lkind == "labels" and isinstance(lab, da.Array)
    np.testing.assert_array_equal(lab.compute(), labels)


def test_reader_plain_zarr_array_with_channels(tmp_path):
    path = tmp_path / "plain.zarr"
    arr = zarr.create_array(str(path), shape=(2, 8, 8), chunks=(1, 8, 8), dtype="uint16",
                            dimension_names=["c", "y", "x"])
    arr[...] = np.arange(128, dtype="uint16").reshape(2, 8, 8)
    data, kwargs, kind = reader.get_reader(str(path))(str(path))[0]
    assert kind == "image" and kwargs["channel_axis"] == 0
    np.testing.assert_array_equal(data.compute(), arr[...])


def test_reader_prediction_and_pairs_stores(tmp_path, tomogram):
    import torch

    from napari_qlty import Grid
    from napari_qlty.io.pairs_store import export_pairs
    from napari_qlty import predict

    image = tomogram.image
    grid = Grid(image.shape, 16, 12, 2)
    net = torch.nn.Conv3d(1, 3, 1)
    out = tmp_path / "pred.zarr"
    predict(net, image, grid, out, device="cpu", postprocess="softmax", levels=3, chunks=(8, 8, 8),
            scale=(2.0, 0.5, 0.5), translation=(10.0, 0.0, 0.0))
    layers = reader.get_reader(str(out))(str(out))
    (probs, pkw, pkind), (labels, lkw, lkind) = layers
    assert pkind == "image" and pkw["channel_axis"] == 0 and pkw["multiscale"] and len(probs) == 3
    assert probs[0].shape == (3, *image.shape)
    assert probs[2].shape == (3, *(-(-s // 4) for s in image.shape))  # ceil: nothing lost at the edge
    assert pkw["visible"] == [False, True, False] and pkw["scale"] == (2.0, 0.5, 0.5)
    assert pkw["translate"] == (10.0, 0.0, 0.0)
    assert lkind == "labels" and lkw["multiscale"] and labels[0].shape == image.shape
    assert lkw["scale"] == pkw["scale"]
    stored = Prediction(out)
    np.testing.assert_array_equal(labels[0].compute(), stored.labels()[0])
    np.testing.assert_array_equal(labels[1].compute(), stored.labels(1)[0])

    pairs = tmp_path / "pairs.zarr"
    sparse = torch.from_numpy(tomogram.annotations.astype(np.int64))[None]
    for _ in export_pairs(image[None, None], sparse, grid, pairs):
        pass
    (windows, wkw, wkind), (wl, wlkw, wlkind) = reader.get_reader(str(pairs))(str(pairs))
    k = zarr.open_group(str(pairs), mode="r")["labels"].shape[0]
    assert windows.shape == (k, 16, 16, 16) and wkind == "image"
    assert wlkind == "labels" and int(wl.min().compute()) == 0  # -1 (unobserved) shown as 0


def test_reader_mrc_is_memory_mapped_with_voxel_size(tmp_path):
    import mrcfile

    data = np.random.default_rng(1).random((8, 16, 12)).astype("float32")
    path = tmp_path / "tomo.mrc"
    with mrcfile.new(str(path)) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (3.0, 2.0, 1.5)  # x, y, z in Å
    image, kwargs, kind = reader.get_reader(str(path))(str(path))[0]
    assert kind == "image" and isinstance(image, np.memmap)
    np.testing.assert_array_equal(np.asarray(image), data)
    assert kwargs["scale"] == pytest.approx((1.5, 2.0, 3.0))


def test_writer_round_trip_with_class_names(tmp_path):
    import pandas as pd

    data = np.zeros((6, 10, 8), dtype=np.uint8)
    data[2, 3:5, 4] = 1
    data[4, 1, 1:3] = 2
    features = pd.DataFrame({"index": [0, 1, 2], "class": ["unlabelled", "background", "filament"]})
    meta = {"features": features, "scale": (2.0, 1.0, 1.0), "translate": (0.0, 5.0, 0.0), "name": "x"}
    paths = writer.write_labels(str(tmp_path / "saved"), data, meta)
    assert paths == [str(tmp_path / "saved.zarr")]
    arr, kwargs, kind = reader.get_reader(paths[0])(paths[0])[0]
    assert kind == "labels"
    np.testing.assert_array_equal(arr[...], data)
    assert list(kwargs["features"]["class"]) == ["unlabelled", "background", "filament"]
    assert kwargs["scale"] == (2.0, 1.0, 1.0) and kwargs["translate"] == (0.0, 5.0, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        writer.write_labels(str(tmp_path / "neg.zarr"), np.full((2, 2), -1, np.int8), {})
    assert not (tmp_path / "neg.zarr").exists()


def test_writer_never_replaces_what_is_not_a_labels_store_of_ours(tmp_path):
    from napari_qlty import Grid
    from napari_qlty.io.formats import StoreError
    from napari_qlty.io.pairs_store import PairsDataset, export_pairs

    image = np.random.default_rng(0).standard_normal((1, 1, 8, 12, 12)).astype(np.float32)
    sparse = np.full((1, 8, 12, 12), -1, np.int16)
    sparse[0, 3, 2:10, 2:10] = 1
    sparse[0, 3, 0, 0:4] = 0
    for _ in export_pairs(image, sparse, Grid((8, 12, 12), 8, 4), tmp_path / "pairs.zarr"):
        pass
    (tmp_path / "results.zarr").mkdir()  # someone's folder that happens to end in .zarr
    (tmp_path / "results.zarr" / "table.csv").write_text("a,b\n1,2\n")
    labels = np.ones((8, 12, 12), np.uint8)
    for target, what in ((tmp_path / "pairs.zarr", "training-pairs export"),
                         (tmp_path / "results", r"a folder with 1 entry \(table.csv\)")):  # .zarr added
        with pytest.raises(StoreError, match=f"holds .*{what}"):
            writer.write_labels(str(target), labels, {})
    assert len(PairsDataset(tmp_path / "pairs.zarr")) > 0  # the export is intact
    assert (tmp_path / "results.zarr" / "table.csv").read_text() == "a,b\n1,2\n"
    # a labels store of ours is replaced (napari's save), and an empty folder filled
    writer.write_labels(str(tmp_path / "mine.zarr"), labels, {})
    writer.write_labels(str(tmp_path / "mine.zarr"), 2 * labels, {})
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "mine.zarr"))[...], 2 * labels)
