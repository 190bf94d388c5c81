"""The Python file that rebuilds one of napari-qlty's networks from its state dict, for a
package: it must run where napari-qlty is not installed (bioimage.io's tools, deepImageJ,
ilastik), so it is self-contained: the source of :mod:`napari_qlty.train.networks` (it
needs torch only), plus the :class:`~napari_qlty.train.ensemble.Ensemble` class and a
builder for its members when the model is an ensemble.

The sources are read as text from the installed package (this layer does not import the
training code), so the file is exactly the code napari-qlty itself runs.
"""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

from ..spec import ModelLoadError

FILE_NAME = "napari_qlty_networks.py"
NETWORKS = "napari_qlty.train.networks"
ENSEMBLE = "napari_qlty.train.ensemble:ensemble"
BUILDERS = ("unet", "msdnet", "planar")

_ENSEMBLE_BUILDER = '''

def ensemble(members, weights=None, output="probabilities"):
    """An Ensemble of the networks named by ``members``: [{"factory": ..., "factory_kwargs": ...}]."""
    builders = {"unet": unet, "msdnet": msdnet, "planar": planar}
    nets = []
    for member in members:
        name = str(member["factory"]).rpartition(":")[2]
        if name not in builders:
            raise ValueError(f"unknown network {member['factory']!r}")
        nets.append(builders[name](**dict(member.get("factory_kwargs") or {})))
    return Ensemble(nets, weights=weights, output=output)
'''


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"cannot find the source of {module}")
    return Path(spec.origin).read_text(encoding="utf-8")


def _class_source(module: str, name: str) -> str:
    text = _source(module)
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return ast.get_source_segment(text, node) or ""
    raise ModelLoadError(f"{module} defines no class {name}")


def _member(factory: str) -> str:
    module, _, name = factory.partition(":")
    if module != NETWORKS or name not in BUILDERS:
        raise ModelLoadError(
            f"the factory {factory!r} is not one of napari-qlty's networks, so its source cannot go into "
            "the package"
        )
    return name


def architecture_source(factory: str, kwargs: dict) -> tuple[str, str, dict]:
    """``(source, callable, kwargs)`` of the file that builds what ``factory(**kwargs)``
    builds; ModelLoadError for a factory that is not one of napari-qlty's networks."""
    if factory == ENSEMBLE:
        for member in kwargs.get("members") or ():
            _member(str(member.get("factory", "")))
        source = _source(NETWORKS) + "\n\n" + _class_source("napari_qlty.train.ensemble", "Ensemble") + "\n"
        return source + _ENSEMBLE_BUILDER, "ensemble", dict(kwargs)
    return _source(NETWORKS), _member(factory), dict(kwargs)


def size_step(factory: str | None, kwargs: dict) -> int:
    """The step between the window sizes the network handles alike: ``2**levels`` for a
    U-Net (its poolings), 1 for an MSD-Net; the least common multiple for an ensemble;
    1 when the factory is not known (any size)."""
    if factory == ENSEMBLE:
        steps = [size_step(m.get("factory"), dict(m.get("factory_kwargs") or {})) for m in kwargs.get("members") or ()]
        return math.lcm(*steps) if steps else 1
    name = (factory or "").partition(":")[2]
    arch = kwargs.get("arch", "unet") if name == "planar" else name
    return 2 ** int(kwargs.get("levels", 2)) if arch == "unet" else 1
