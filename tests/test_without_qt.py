"""`pip install napari-qlty` without the napari extra: the CLI and the cluster runner need no Qt.

The check runs in a fresh interpreter where napari, magicgui, Qt bindings and vispy
cannot be imported (an import hook refuses them, as a missing package would), and
asserts that none of them was even attempted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
import zarr
from napari_qlty.io.prediction import Prediction

GUI_PACKAGES = ("napari", "magicgui", "npe2", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "superqt")

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    GUI = {gui!r}
    tried = []

    class NoGui(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in GUI:
                tried.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}}")
            return None

    sys.meta_path.insert(0, NoGui())

    from distributed import Client, LocalCluster
    from napari_qlty.cli import main

    image, model, out, clustered = sys.argv[1:5]
    grid = ["--window", "16", "--step", "12", "--border", "2"]
    run = ["--model", model, "--device", "cpu", "--border-weight", "0", *grid]
    assert main(["plan", image, *grid]) == 0
    assert main(["predict", image, out, *run]) == 0
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        assert main(["predict", image, clustered, "--scheduler", cluster.scheduler_address, *run]) == 0
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(GUI))
    assert not loaded and not tried, (loaded, tried)
    print("no gui imported")
    """
)


def test_cli_and_cluster_run_without_qt(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(20, 30, 26), dtype=np.uint8).astype(np.float32)
    zarr.create_array(str(tmp_path / "in.zarr"), data=image, chunks=(10, 15, 13))
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    torch.jit.script(net).save(str(tmp_path / "net.pt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(gui=GUI_PACKAGES), str(tmp_path / "in.zarr"),
         str(tmp_path / "net.pt"), str(tmp_path / "out.zarr"), str(tmp_path / "clustered.zarr")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no gui imported" in done.stdout
    local = Prediction(tmp_path / "out.zarr").probabilities()[...]
    clustered = Prediction(tmp_path / "clustered.zarr").probabilities()[...]
    with torch.no_grad():  # border 2 covers the conv's reach of 1: tiled equals untiled
        expected = net(torch.from_numpy(image)[None, None]).numpy()
    np.testing.assert_allclose(local, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(clustered, local, rtol=1e-6, atol=1e-6)
