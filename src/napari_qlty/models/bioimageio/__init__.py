"""bioimage.io model packages: run one from the Model Zoo tiled over a volume of any size,
and export a model trained here as one.

A package is a folder or ``.zip`` holding ``rdf.yaml`` (formats 0.4 and 0.5), weights
(TorchScript, or a PyTorch state dict with the Python file of its architecture), the
declared pre- and postprocessing, the input's valid sizes and the output's halo, and
test tensors::

    from napari_qlty import infer, predict
    from napari_qlty.models.bioimageio import load_package, package_grid, read_package

    package = read_package("model.zip")                 # validated offline, nothing runs
    model = load_package("model.zip")                   # TorchScript; a state dict needs
                                                        # accept_code=True (it runs the file)
    grid = package_grid(package, volume.shape[2:])      # window min + k*step, border = halo
    y = infer(model, volume, grid, Weighting("border", 0.0))   # processing applied globally
    predict(PackageSpec("model.zip"), "tomo.zarr", grid, "out.zarr",
            weighting=Weighting("border", 0.0))

Export with :func:`export_package` (needs the ``bioimageio`` extra:
``pip install "napari-qlty[bioimageio]"``).
"""

from __future__ import annotations

import os

import torch

from .package import Package, PackageSpec, is_package
from .reading import read_package
from .running import PackageModel, check_window, code_to_accept, package_grid, valid_sizes


def load_package(path: str | os.PathLike, device: str | torch.device = "cpu", *, weights: str | None = None,
                 accept_code: bool | str = False) -> PackageModel:
    """The package's network, ready for :func:`~napari_qlty.infer` and
    :func:`~napari_qlty.predict` (see :class:`PackageSpec` for ``weights`` and ``accept_code``)."""
    from ..loading import load_model

    return load_model(PackageSpec(os.fspath(path), weights=weights, accept_code=accept_code), device)


def export_package(*args, **kwargs):
    """See :func:`.exporting.export_package`."""
    from .exporting import export_package as export

    return export(*args, **kwargs)


__all__ = [
    "Package",
    "PackageModel",
    "PackageSpec",
    "check_window",
    "code_to_accept",
    "export_package",
    "is_package",
    "load_package",
    "package_grid",
    "read_package",
    "valid_sizes",
]
