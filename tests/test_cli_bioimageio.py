"""The command line with bioimage.io packages: predict --model package, export-model."""

from __future__ import annotations

import numpy as np
import torch
from package_builders import build_package

from napari_qlty import Weighting, infer
from napari_qlty.cli import main
from napari_qlty.core.intensity import Normalisation
from napari_qlty.models import ModelSpec, load_model
from napari_qlty.models.bioimageio import load_package, package_grid, read_package
from napari_qlty.io.prediction import Prediction


def test_predict_with_a_package_takes_its_window_and_border(tmp_path, capsys):
    package_path = build_package(tmp_path / "p", weights=("pytorch_state_dict",), zipped=True)
    image = (np.random.default_rng(0).random((70, 52)) * 3000).astype(np.uint16)
    np.save(tmp_path / "image.npy", image)
    args = ["predict", str(tmp_path / "image.npy"), str(tmp_path / "out.zarr"), "--model", str(package_path)]

    assert main(args) == 2  # a state dict runs the package's Python only when accepted
    err = capsys.readouterr().err
    assert "arch.py" in err and "--accept-package-code" in err
    assert not (tmp_path / "out.zarr").exists()

    assert main([*args[:2], str(tmp_path / "bad.zarr"), *args[3:], "--window", "20", "--accept-package-code"]) == 2
    assert "--window along y must be a size the model takes: 16 + k*8 (16, 24, 32, 40, ...); got 20" in \
        capsys.readouterr().err

    assert main([*args, "--accept-package-code", "--window", "24"]) == 0
    package = read_package(package_path)
    grid = package_grid(package, image.shape, window=24)
    expected = infer(load_package(package_path, accept_code=True), image[None, None], grid,
                     Weighting("border", 0.0))
    got = Prediction(tmp_path / "out.zarr").probabilities()[...]
    np.testing.assert_array_equal(got, expected.numpy())  # the halo has no weight by default


def test_export_model_then_predict_with_the_package(tmp_path, capsys):
    from napari_qlty.train import save_checkpoint
    from napari_qlty.train.networks import msdnet

    torch.manual_seed(0)
    kwargs = {"dims": 2, "layers": 4}
    net = msdnet(**kwargs).eval()
    checkpoint = save_checkpoint(net, tmp_path / "m.pt", "napari_qlty.train.networks:msdnet", kwargs, {
        "window": [32, 32], "axes": "yx", "classes": ["background", "cell"],
        "normalisation": Normalisation("mean-std").to_json(), "name": "cells"})
    image = (np.random.default_rng(1).random((60, 50)) * 200).astype(np.uint8)
    np.save(tmp_path / "image.npy", image)
    assert main(["export-model", str(checkpoint), str(tmp_path / "cells.zip"), "--image",
                 str(tmp_path / "image.npy"), "--author", "A. Tester"]) == 0
    assert "cells.zip" in capsys.readouterr().out
    assert main(["export-model", str(checkpoint), str(tmp_path / "cells.zip"), "--image",
                 str(tmp_path / "image.npy")]) == 2
    assert "already holds a bioimage.io package exported by napari-qlty" in capsys.readouterr().err

    assert main(["predict", str(tmp_path / "image.npy"), str(tmp_path / "out.zarr"), "--model",
                 str(tmp_path / "cells.zip")]) == 0
    package = read_package(tmp_path / "cells.zip")
    grid = package_grid(package, image.shape)
    assert grid.window == (32, 32) and grid.border == (10, 10) == tuple(dict(package.output.halo).values())
    assert package.classes == ("background", "cell")
    expected = infer(load_model(ModelSpec(str(checkpoint))), image[None, None], grid, Weighting("border", 0.0))
    got = Prediction(tmp_path / "out.zarr")
    np.testing.assert_array_equal(got.probabilities()[...], expected.softmax(1).numpy())
    np.testing.assert_array_equal(got.labels()[...], expected.argmax(1).numpy().astype(np.uint8))
