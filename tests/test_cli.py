"""The command line end to end, and the training-pair dataset it writes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from napari_qlty import Grid, Weighting, clean_pairs, infer
from napari_qlty.cli import main
from napari_qlty.io.pairs_store import PairsDataset, export_pairs, read_statistics
from napari_qlty.io.prediction import Prediction, StoreError


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.standard_normal((24, 40, 36)).astype(np.float32)
    labels = np.full(image.shape, -1, np.int16)
    labels[5, 3:30:2, 4:20] = 0
    labels[17, 10:12, 10:30] = 1
    labels[:, 20, 30] = 1
    np.save(tmp_path / "image.npy", image)
    zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=labels.shape, chunks=(8, 16, 16),
                    dtype="int16", fill_value=-1)[...] = labels
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1)).eval()
    torch.jit.script(model).save(str(tmp_path / "model.pt"))
    return tmp_path, image, labels, model


def test_plan_prints_grid_and_table(files, capsys):
    tmp, image, labels, _ = files
    assert main(["plan", str(tmp / "image.npy"), "--window", "16", "--step", "8,12,12",
                 "--labels", str(tmp / "labels.zarr")]) == 0
    out = capsys.readouterr().out
    grid = Grid(image.shape, 16, (8, 12, 12))
    assert f"= {len(grid)} per image" in out
    assert "windows kept" in out and "duplication rate" in out
    expected = clean_pairs(torch.from_numpy(image)[None, None], torch.from_numpy(labels)[None].long(), grid)
    kept_line = next(line for line in out.splitlines() if line.startswith("windows kept"))
    assert int(kept_line.split()[-1]) == expected.stats.kept_windows


def test_export_writes_pairs_and_dataset_reads_them(files, capsys):
    tmp, image, labels, _ = files
    out = tmp / "pairs.zarr"
    assert main(["export", str(tmp / "image.npy"), str(tmp / "labels.zarr"), str(out),
                 "--window", "16", "--step", "8", "--border", "2"]) == 0
    grid = Grid(image.shape, 16, 8, 2)
    expected = clean_pairs(torch.from_numpy(image)[None, None], torch.from_numpy(labels)[None].long(), grid)
    stats = read_statistics(out)
    assert stats["kept_windows"] == expected.stats.kept_windows == len(expected)
    ds = PairsDataset(out)
    assert len(ds) == len(expected)
    for i in [0, len(ds) - 1]:
        img, lab = ds[i]
        torch.testing.assert_close(img, expected.images[i])
        torch.testing.assert_close(lab, expected.labels[i].long())
    np.testing.assert_array_equal(ds.positions[:, 1:], expected.origins)
    train, val = ds.split(0.25)
    assert len(train) + len(val) == len(ds) and set(train.indices).isdisjoint(val.indices)
    loader = torch.utils.data.DataLoader(train, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape[1:] == (1, 16, 16, 16) and yb.dtype == torch.int64
    # never overwritten without --overwrite, and no half-written export is left behind
    assert main(["export", str(tmp / "image.npy"), str(tmp / "labels.zarr"), str(out),
                 "--window", "16", "--step", "8"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_cancel_leaves_nothing(files):
    tmp, image, labels, _ = files
    out = tmp / "cancelled.zarr"
    gen = export_pairs(image[None, None], labels[None], Grid(image.shape, 16, 8), out, batch_size=1,
                       cancelled=lambda: True)
    assert list(gen) == []
    assert not out.exists() and not (tmp / "cancelled.zarr.partial").exists()


def test_predict_cli_matches_engine_and_resumes(files, capsys):
    tmp, image, _, model = files
    out = tmp / "pred.zarr"
    args = ["predict", str(tmp / "image.npy"), str(out), "--model", str(tmp / "model.pt"),
            "--window", "16", "--step", "12", "--border", "2", "--border-weight", "0",
            "--device", "cpu", "--batch-size", "3", "--memory-budget", "8MiB", "--chunks", "8"]
    assert main(args) == 0
    expected = infer(model, torch.from_numpy(image)[None, None], Grid(image.shape, 16, 12, 2),
                     Weighting("border", 0.0))
    got = Prediction(out)
    np.testing.assert_allclose(got.probabilities()[...], expected.numpy(), rtol=1e-5, atol=1e-5)
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out


def test_predict_cli_speed_flags_run_and_are_kept_for_a_resume(files, capsys):
    tmp, image, _, model = files
    out = tmp / "fast.zarr"
    args = ["predict", str(tmp / "image.npy"), str(out), "--model", str(tmp / "model.pt"),
            "--window", "16", "--step", "12", "--border", "2", "--device", "cpu", "--chunks", "8"]
    assert main([*args, "--precision", "bfloat16", "--channels-last", "--uncertainty"]) == 0
    assert Prediction(out).layout["uncertainty"] == ["windows", "entropy"]
    from napari_qlty import Speed

    expected = infer(model, torch.from_numpy(image)[None, None], Grid(image.shape, 16, 12, 2),
                     speed=Speed("bfloat16", channels_last=True))
    np.testing.assert_allclose(Prediction(out).probabilities()[...], expected.numpy(),
                               rtol=1e-5, atol=1e-5)
    capsys.readouterr()
    assert main([*args, "--uncertainty"]) == 2  # the same output without the speed flags: refused
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "precision: stored bfloat16, now float32" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--window", "0", "--step", "8"], "--window along z must be >= 1, got 0"),
        (["--window", "16", "--step", "0"], "--step along z must be in [1, --window along z=16]"),
        (["--window", "16", "--step", "8", "--border", "8"], "--border along z must be in [0, 7]"),
        (["--window", "64", "--step", "8"], "or pass --pad reflect or --pad constant"),
        (["--window", "16,16", "--step", "8"], "--window has 2 values"),
        (["--window", "16", "--step", "8", "--border", "4", "--border-weight", "1.5"], "--border-weight must be in [0, 1]"),
        (["--window", "16", "--step", "16", "--border", "2", "--border-weight", "0"], "no weight"),
        (["--window", "16", "--step", "8", "--memory-budget", "lots"], "memory budget"),
        (["--window", "16", "--step", "8", "--device", "cuda"], "cuda"),
    ],
)
def test_predict_bad_input_is_one_clear_line(files, capsys, argv, message):
    tmp, *_ = files
    code = main(["predict", str(tmp / "image.npy"), str(tmp / "bad.zarr"), "--model", str(tmp / "model.pt"),
                 "--device", "cpu", *argv] if "--device" not in argv else
                ["predict", str(tmp / "image.npy"), str(tmp / "bad.zarr"), "--model", str(tmp / "model.pt"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp / "bad.zarr").exists()


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["plan", str(tmp_path / "nope.zarr"), "--window", "8", "--step", "8"]) == 2
    assert "nope.zarr" in capsys.readouterr().err


def test_help_for_each_command():
    for cmd in ([], ["plan"], ["export"], ["predict"]):
        out = subprocess.run([sys.executable, "-m", "napari_qlty.cli", *cmd, "--help"], capture_output=True,
                             text=True, check=True).stdout
        assert "usage: napari-qlty" in out


def test_store_error_is_a_value_error():
    assert issubclass(StoreError, ValueError)


# -- one labels convention --------------------------------------------------------------------
@pytest.fixture
def our_labels(files):
    """The same labels as the widget's store writes them: 0 = unlabelled, class k = value k + 1."""
    from napari_qlty.io import labels_store

    tmp, image, labels, _ = files
    arr = labels_store.create(tmp / "ours.zarr", labels.shape, {1: "background", 2: "filament"})
    arr[...] = (labels + 1).astype(np.uint8)
    return tmp / "ours.zarr"


def test_our_labels_store_means_zero_is_unlabelled(files, our_labels, capsys):
    tmp, image, labels, _ = files
    grid = ["--window", "16", "--step", "8"]
    assert main(["plan", str(tmp / "image.npy"), *grid, "--labels", str(tmp / "labels.zarr")]) == 0
    engine = capsys.readouterr().out
    assert main(["plan", str(tmp / "image.npy"), *grid, "--labels", str(our_labels)]) == 0
    ours = capsys.readouterr().out
    assert "0 = unlabelled, 1.. = classes" in ours
    table = lambda out: [line for line in out.splitlines() if line.startswith(("windows", "labelled"))]  # noqa: E731
    assert table(ours) == table(engine)  # class 0 is not counted as 1.9 M labelled voxels
    expected = clean_pairs(torch.from_numpy(image)[None, None], torch.from_numpy(labels)[None].long(), Grid(image.shape, 16, 8))
    assert main(["export", str(tmp / "image.npy"), str(our_labels), str(tmp / "p.zarr"), *grid]) == 0
    ds = PairsDataset(tmp / "p.zarr")
    assert len(ds) == len(expected)
    torch.testing.assert_close(ds[0][1], expected.labels[0].long())


def test_an_ignore_label_the_dtype_cannot_hold_is_an_error(files, capsys):
    tmp, image, labels, _ = files
    zarr.create_array(str(tmp / "u8.zarr"), data=(labels + 1).astype(np.uint8))
    argv = ["plan", str(tmp / "image.npy"), "--window", "16", "--step", "8", "--labels", str(tmp / "u8.zarr")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "uint8 (0..255), which cannot hold the ignore label -1" in err and "--ignore-label" in err
    assert main([*argv, "--ignore-label", "0"]) == 0


def test_dense_labels_are_warned_about(files, capsys):
    tmp, image, labels, _ = files
    zarr.create_array(str(tmp / "dense.zarr"), data=(labels + 1).astype(np.int16))  # 0 everywhere else
    assert main(["plan", str(tmp / "image.npy"), "--window", "16", "--step", "8",
                 "--labels", str(tmp / "dense.zarr")]) == 0
    err = capsys.readouterr().err
    assert "% of the voxels carry a label" in err and "--ignore-label" in err


def test_uint16_label_values_survive_export(files):
    tmp, image, labels, _ = files
    big = np.zeros(labels.shape, np.uint16)
    big[labels == 0], big[labels == 1] = 40000, 65535
    zarr.create_array(str(tmp / "u16.zarr"), data=big)
    assert main(["export", str(tmp / "image.npy"), str(tmp / "u16.zarr"), str(tmp / "p16.zarr"),
                 "--window", "16", "--step", "8", "--ignore-label", "0"]) == 0
    values = np.unique(zarr.open_group(str(tmp / "p16.zarr"), mode="r")["labels"][...])
    assert set(values.tolist()) == {-1, 40000, 65535}


def test_an_export_that_would_be_empty_is_refused(files, capsys):
    tmp, image, labels, _ = files
    argv = ["export", str(tmp / "image.npy"), str(tmp / "labels.zarr"), str(tmp / "none.zarr"),
            "--window", "16", "--step", "8", "--border", "2"]
    assert main([*argv, "--min-labelled", "100000"]) == 2
    err = capsys.readouterr().err
    assert "no window holds at least 100000 labelled voxels" in err and "the most any window holds is" in err
    assert not (tmp / "none.zarr").exists() and not (tmp / "none.zarr.partial").exists()
    zarr.create_array(str(tmp / "blank.zarr"), data=np.full(labels.shape, -1, np.int16))
    argv[2] = str(tmp / "blank.zarr")
    assert main(argv) == 2
    assert "the labels hold no labelled voxel" in capsys.readouterr().err


def test_labels_of_the_wrong_shape_name_the_labels_not_the_ignore_label(files, capsys):
    tmp, image, labels, _ = files
    np.save(tmp / "short.npy", labels[:, :-2])
    assert main(["plan", str(tmp / "image.npy"), "--window", "16", "--step", "8",
                 "--labels", str(tmp / "short.npy")]) == 2
    err = capsys.readouterr().err
    assert "labels" in err and str(tmp / "short.npy") in err and "--ignore-label" not in err


def test_an_ambiguous_input_names_the_axes_flag(tmp_path, capsys):
    np.save(tmp_path / "six.npy", np.zeros((2, 2, 2, 2, 2, 8), np.float32))
    assert main(["plan", str(tmp_path / "six.npy"), "--window", "4", "--step", "4"]) == 2
    err = capsys.readouterr().err
    assert "--axes" in err and "axes=" not in err
