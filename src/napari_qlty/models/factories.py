"""Which code a model file may ask us to run: our own networks and the factories that
installed packages register, nothing else.

A state dict is only weights; the code that builds the network around it comes either
from the user (``weights.pt::package.module:function``, typed by them: their choice) or
from a name stored in a file (a checkpoint, an ensemble recipe). A name from a file is
run only if it is trusted here: one of napari-qlty's own factories, or one that an
installed package declares under the entry point group ``napari_qlty.factories``
(installing a package is trusting its code)::

    [project.entry-points."napari_qlty.factories"]
    my-unet = "my_package.nets:build_unet"
"""

from __future__ import annotations

from importlib.metadata import entry_points

from .spec import ModelLoadError

ENTRY_POINT_GROUP = "napari_qlty.factories"

BUILT_IN = (
    "napari_qlty.train.networks:unet",
    "napari_qlty.train.networks:msdnet",
    "napari_qlty.train.networks:planar",
    "napari_qlty.train.ensemble:ensemble",
)


def trusted_factories() -> dict[str, str]:
    """``{"module:function": who vouches for it}``: napari-qlty, or an installed package."""
    out = {name: "napari-qlty" for name in BUILT_IN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        who = ep.dist.name if ep.dist is not None else ep.name
        out.setdefault(ep.value.strip(), who)
    return out


def check_trusted(factory: str, where: str) -> None:
    """Refuse to build a model with ``factory`` when a file named it and nobody vouches for it."""
    if factory in trusted_factories():
        return
    raise ModelLoadError(
        f"{where} names the factory {factory!r}, and napari-qlty never runs code that a file "
        f"names: only its own networks and factories that installed packages register under the "
        f"entry point group {ENTRY_POINT_GROUP!r} are built from files. If you trust this code, "
        f"name the factory yourself (weights.pt::{factory})"
    )
