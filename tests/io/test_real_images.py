"""Real images (shipped inside scikit-image, nibabel and pydicom), written as instruments
write them and run through the command line: the tiled result equals the same model run
on the whole image, wherever the border covers the model's reach."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import tifffile
import torch
import zarr
from real_images import catalogue

from napari_qlty.io.prediction import Prediction
from napari_qlty import Grid, Weighting, infer, open_source
from napari_qlty.cli import main
from napari_qlty.core.intensity import Normalisation

#: how an instrument would store each image
FILES = {
    "cell uint8": "tif", "cell int8": "mrc", "MR uint16": "tif", "CT int16": "mrc",
    "brain MRI int16 >i2": "npy", "dose uint32": "zarr", "fMRI time-lapse int16": "zarr",
    "ultrasound RGB time-lapse uint8": "tif",
}


def write(path_stem, array, kind):
    path = f"{path_stem}.{kind}"
    if kind == "tif":
        tifffile.imwrite(path, array)
    elif kind == "mrc":
        with mrcfile.new(path) as m:
            m.set_data(array)
    elif kind == "npy":
        np.save(path, array)  # keeps the big-endian byte order
    else:
        zarr.create_array(path, data=array)
    return path


class Conv(torch.nn.Module):
    """A 3x3(x3) convolution: reach 1 voxel."""

    def __init__(self, dims, c_in, c_out=2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(c_in, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("name", list(FILES))
@pytest.mark.parametrize("normalise", ["none", "percentile"])
def test_real_image_through_the_cli_equals_the_untiled_model(tmp_path, name, normalise):
    array, axes, _ = catalogue()[name]
    path = write(str(tmp_path / "image"), array, FILES[name])
    each_time_point = "t" in axes
    tiled = axes.replace("c", "").replace("t", "") if each_time_point else axes.replace("c", "")
    c_in = array.shape[axes.index("c")] if "c" in axes else 1
    net = Conv(len(tiled), c_in)
    model = tmp_path / "net.pt"
    torch.jit.script(net.eval()).save(str(model))
    src = open_source(path, axes=axes)
    if each_time_point:
        src = src.time_as_images()
    assert src.dtype == array.dtype.newbyteorder("=")  # read in its own dtype
    window = [min(16, s) for s in src.shape[2:]]
    step = [max(1, w - 4) for w in window]
    argv = ["predict", path, str(tmp_path / "out.zarr"), "--model", str(model), "--axes", axes,
            "--window", ",".join(map(str, window)), "--step", ",".join(map(str, step)), "--border", "1",
            "--border-weight", "0", "--device", "cpu", "--normalise", normalise]
    if each_time_point:
        argv.append("--each-time-point")
    assert main(argv) == 0
    got = Prediction(tmp_path / "out.zarr").probabilities()[...]
    whole = torch.from_numpy(np.asarray(src[...]).astype(np.float32))
    whole = Normalisation(normalise).fit(src).apply(whole)
    with torch.no_grad():
        expected = net(whole).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("name", ["cell uint8", "MR uint16", "brain MRI int16 >i2"])
def test_real_image_in_python_gives_the_same(name):
    array, axes, _ = catalogue()[name]
    net = Conv(len(axes), 1).eval()
    grid = Grid(array.shape, 16, 12, 1)
    got = infer(net, array[None, None], grid, Weighting("border", 0.0), normalise="mean-std")
    fitted = Normalisation("mean-std").fit(array[None, None])
    with torch.no_grad():
        expected = net(fitted.apply(torch.from_numpy(array.astype(np.float32))[None, None]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
