"""Round records: complete or absent, never replaced, refused where something else lives."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_qlty.io import formats, labels_store
from napari_qlty.io.formats import StoreError
from napari_qlty.io.rounds import Rounds, beside, store_path

SHAPE = (6, 20, 18)


def labels_of(dtype, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros(SHAPE, dtype=dtype)
    a[rng.random(SHAPE) < 0.1] = 1
    a[rng.random(SHAPE) < 0.05] = 2
    return a


def finished_round(rounds: Rounds, labels, **attrs):
    pending = rounds.begin(**attrs)
    pending.snapshot(labels, {1: "background", 2: "filament"})
    pending.model_path.write_bytes(b"weights")  # the checkpoint itself is the trainer's business
    return pending.finish(scores={"val_f1": 0.5})


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.int64])
def test_a_round_keeps_the_labels_it_was_given(tmp_path, dtype):
    rounds = Rounds.open(tmp_path / "l.rounds", SHAPE, image="tomogram")
    labels = labels_of(dtype)
    r = finished_round(rounds, labels, kind="train", parent=None)
    assert r.number == 1 and r.path.name == "round-001" and r.parent is None
    stored = zarr.open_array(str(r.labels_path), mode="r")
    np.testing.assert_array_equal(stored[...], labels)
    assert labels_store.is_labels_store(r.labels_path)  # a labels store: napari opens it as one
    assert labels_store.stored_classes(labels_store.read_meta(r.labels_path)) == {1: "background", 2: "filament"}
    assert r.attrs["format"] == formats.ROUND and r.attrs["kind"] == "train" and "finished" in r.attrs
    assert formats.identify(rounds.path) == formats.ROUNDS and formats.identify(r.path) == formats.ROUND


def test_the_snapshot_is_taken_slab_by_slab_from_a_lazy_array(tmp_path):
    source = zarr.create_array(str(tmp_path / "lazy.zarr"), shape=SHAPE, chunks=(2, 8, 8), dtype="uint16")
    source[...] = labels_of(np.uint16, seed=3)
    rounds = Rounds.open(tmp_path / "r", SHAPE)
    r = finished_round(rounds, source)
    np.testing.assert_array_equal(zarr.open_array(str(r.labels_path))[...], source[...])


def test_labels_out_of_range_are_refused_and_nothing_is_left(tmp_path):
    rounds = Rounds.open(tmp_path / "r", SHAPE)
    pending = rounds.begin()
    bad = labels_of(np.int16)
    bad[0, 0, 0] = -3
    with pytest.raises(ValueError, match=r"labels must be in \[0, 255\]"):
        pending.snapshot(bad, {1: "a", 2: "b"})
    pending.discard()
    assert rounds.rounds() == [] and not pending.path.exists()


def test_rounds_are_numbered_on_and_never_replaced(tmp_path):
    rounds = Rounds.open(tmp_path / "r", SHAPE)
    first = finished_round(rounds, labels_of(np.uint8), kind="train", parent=None)
    stale = rounds.begin()  # a round that never finished (a crash): its number is not reused
    second = finished_round(rounds, labels_of(np.uint8, 1), kind="train more", parent=1)
    assert [r.number for r in rounds.rounds()] == [1, 3]
    assert second.parent == 1 and stale.path.exists() and stale.path.name == "round-002.partial"
    assert rounds.get(1).attrs == first.attrs
    # an unfinished round is never listed, and cannot be finished without its model
    with pytest.raises(StoreError, match="has no model"):
        stale.finish()
    # finishing onto an existing name refuses rather than replaces
    clash = rounds.begin()
    clash.model_path.write_bytes(b"w")
    clash.final.mkdir()
    (clash.final / "theirs.txt").write_text("keep me")
    with pytest.raises(StoreError, match="exists already"):
        clash.finish()
    assert (clash.final / "theirs.txt").read_text() == "keep me"


def test_update_adds_to_a_finished_round(tmp_path):
    rounds = Rounds.open(tmp_path / "r", SHAPE)
    r = finished_round(rounds, labels_of(np.uint8))
    r2 = r.update(prediction={"path": "prediction.zarr", "complete": True})
    assert rounds.get(1).attrs["prediction"] == {"path": "prediction.zarr", "complete": True}
    assert r2.attrs["scores"] == r.attrs["scores"]


def test_discard_removes_only_the_partial_round_it_made(tmp_path):
    rounds = Rounds.open(tmp_path / "r", SHAPE)
    pending = rounds.begin()
    r = finished_round(rounds, labels_of(np.uint8))
    pending.path.rename(pending.path.with_name("moved"))  # its folder is gone: nothing to remove
    pending.discard()
    assert r.path.exists() and (rounds.path / "moved").exists()


@pytest.mark.parametrize("what", ["file", "folder", "zarr", "labels"])
def test_a_path_holding_something_else_is_refused_and_left_alone(tmp_path, what):
    path = tmp_path / "x.rounds"
    if what == "file":
        path.write_text("notes")
    elif what == "folder":
        path.mkdir()
        (path / "data.tif").write_bytes(b"1234")
    elif what == "zarr":
        zarr.create_array(str(path), shape=(2,), dtype="uint8")
    else:
        labels_store.create(path, SHAPE, {1: "a"})
    before = sorted(p.name for p in path.rglob("*")) if path.is_dir() else path.read_text()
    with pytest.raises(StoreError, match="not the rounds of a napari-qlty loop; it is left untouched"):
        Rounds.open(path, SHAPE)
    after = sorted(p.name for p in path.rglob("*")) if path.is_dir() else path.read_text()
    assert before == after


def test_rounds_of_another_image_shape_are_refused(tmp_path):
    Rounds.open(tmp_path / "r", SHAPE)
    with pytest.raises(StoreError, match="rounds of an image of 6 × 20 × 18, not 6 × 20 × 19"):
        Rounds.open(tmp_path / "r", (6, 20, 19))


def test_an_empty_folder_becomes_the_rounds_folder(tmp_path):
    (tmp_path / "r").mkdir()
    rounds = Rounds.open(tmp_path / "r", SHAPE, image="im")
    assert rounds.attrs["image"] == "im" and Rounds.open(tmp_path / "r", SHAPE).rounds() == []
    with pytest.raises(FileNotFoundError):
        Rounds.open(tmp_path / "nothing", SHAPE, create=False)


def test_the_rounds_live_beside_the_labels_store(tmp_path):
    arr = labels_store.create(tmp_path / "cell labels.zarr", SHAPE, {1: "a", 2: "b"})
    assert store_path(arr) == tmp_path / "cell labels.zarr"
    assert beside(store_path(arr)) == tmp_path / "cell labels.rounds"
    assert store_path(np.zeros(SHAPE)) is None
    other = zarr.create_array(str(tmp_path / "other.zarr"), shape=SHAPE, dtype="uint8")
    assert store_path(other) is None  # not one of our labels stores
