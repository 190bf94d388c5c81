"""Checkpoints: the weights and everything needed to use them, in one ``torch.save`` file.

The file is a dict ``{"napari_qlty": recipe, "state_dict": weights}`` that
``torch.load(weights_only=True)`` reads (plain data only). The recipe names the factory
that builds the network (checked against :mod:`~napari_qlty.models.factories`), its
arguments, and what the model expects and gives: the window it was trained on, its
tiled axes, its class names and the intensity normalisation it was trained with.
Checkpoints of the first layout (a JSON file beside the weights) are read too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..io import formats

FORMAT = formats.CHECKPOINT
KEY = formats.ATTRS_KEY


def write_checkpoint(state: Mapping[str, torch.Tensor], path: str | os.PathLike, recipe: Mapping) -> Path:
    """Write weights and recipe to ``path`` under a temporary name, then rename (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recipe = formats.canonical({**recipe, "format": FORMAT})
    tmp = path.with_name(path.name + ".partial")
    torch.save({KEY: recipe, "state_dict": {k: v.detach().cpu() for k, v in state.items()}}, tmp)
    tmp.replace(path)
    return path


def read_recipe(obj, path: str | os.PathLike) -> dict | None:
    """The recipe inside a loaded checkpoint object, or beside the file (first layout)."""
    if isinstance(obj, Mapping):
        recipe = obj.get(KEY)
        if isinstance(recipe, Mapping) and recipe.get("format") == FORMAT:
            return dict(recipe)
    beside = Path(path).with_suffix(".json")
    if beside.is_file():
        try:
            recipe = json.loads(beside.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(recipe, dict) and recipe.get("format") == FORMAT:
            return recipe
    return None


def checkpoint_recipe(path: str | os.PathLike) -> dict | None:
    """The recipe of the checkpoint at ``path`` (None if it is not one of ours)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch.save file we can read as data
        obj = None
    return read_recipe(obj, path)
