"""`pip install napari-qlty` (no extras) on a fresh environment: the engine, the command line
and the dask cluster runner work, and no GUI package is installed or needed.

Run by `make check-core` (part of `make test`) in `.venv-core`, which has only the base
dependencies.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr

GUI = ("napari", "magicgui", "npe2", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt")


def main() -> int:
    present = [name for name in GUI if importlib.util.find_spec(name) is not None]
    if present:
        print(f"check-core: this environment has GUI packages ({', '.join(present)}); "
              "it must hold the base install only", file=sys.stderr)
        return 1
    from distributed import LocalCluster

    from napari_qlty.cli import main as cli
    from napari_qlty.io.prediction import Prediction

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = np.random.default_rng(0).integers(0, 255, size=(20, 30, 26), dtype=np.uint8)
        zarr.create_array(str(tmp / "in.zarr"), data=image.astype(np.float32), chunks=(10, 15, 13))
        torch.manual_seed(0)
        net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
        torch.jit.script(net).save(str(tmp / "net.pt"))
        grid = ["--window", "16", "--step", "12", "--border", "2"]
        run = ["--model", str(tmp / "net.pt"), "--device", "cpu", "--border-weight", "0", *grid]
        assert cli(["plan", str(tmp / "in.zarr"), *grid]) == 0
        assert cli(["predict", str(tmp / "in.zarr"), str(tmp / "out.zarr"), *run]) == 0
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
            assert cli(["predict", str(tmp / "in.zarr"), str(tmp / "cluster.zarr"),
                        "--scheduler", cluster.scheduler_address, *run]) == 0
        with torch.no_grad():
            expected = net(torch.from_numpy(image.astype(np.float32))[None, None]).numpy()
        for name in ("out.zarr", "cluster.zarr"):
            got = Prediction(tmp / name).probabilities()[...]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    print("check-core: engine, CLI and cluster runner work without any GUI package")
    return 0


if __name__ == "__main__":
    sys.exit(main())
