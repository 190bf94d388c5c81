"""Ensembles: the average of several networks' class probabilities, as one model.

An :class:`Ensemble` is an ``nn.Module`` like any other, so it goes through the
stitcher (:func:`napari_qlty.infer`, :func:`napari_qlty.run`) unchanged:
every window runs through every member once. By default it returns probabilities
(blend them as they are: ``postprocess=None``); ``output="log"`` returns their
logarithm, for code that applies a softmax itself.

Averaging probabilities (not logits) keeps each member's calibration, and members that
disagree give an honest 50/50 rather than whichever is more confident.

An ensemble saved with :func:`save_ensemble` is one state dict plus a JSON recipe, so
``ModelSpec(path, factory="napari_qlty.train.ensemble:ensemble", factory_kwargs=...)``
(:func:`napari_qlty.train.checkpoint_spec` writes it for you) reloads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..models.checkpoints import checkpoint_recipe
from ..models.factories import check_trusted
from ..models.loading import import_factory
from .trainer import load_checkpoint, save_checkpoint

__all__ = ["Ensemble", "ensemble", "ensemble_factory", "load_ensemble", "save_ensemble"]

ENSEMBLE_FACTORY = "napari_qlty.train.ensemble:ensemble"


class Ensemble(nn.Module):
    """Weighted mean of the softmax probabilities of ``members`` (each returns logits).

    ``weights`` (default: equal) are normalised to sum to 1. Members that already return
    probabilities are flagged in ``probabilities`` (one bool per member).
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 output: str = "probabilities", probabilities: Sequence[bool] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if output not in ("probabilities", "log"):
            raise ValueError(f"output must be 'probabilities' or 'log', got {output!r}")
        self.members = nn.ModuleList(members)
        w = torch.ones(len(members)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(members),) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(members)} non-negative numbers with a positive sum")
        self.weights = [float(v) for v in (w / w.sum())]
        self.output = output
        self.probabilities = [False] * len(members) if probabilities is None else [bool(p) for p in probabilities]

    @property
    def outputs_probabilities(self) -> bool:
        """Whether its outputs are class probabilities (for the entropy of a blend)."""
        return self.output == "probabilities"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_spread(x, spread=False)[0]

    def forward_with_spread(self, x: torch.Tensor, spread: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the output, the members' disagreement): the weighted variance of their
        probabilities summed over classes, (B, 1, *window); None unless ``spread``."""
        total = squares = None
        for member, w, is_prob in zip(self.members, self.weights, self.probabilities):
            y = member(x)
            p = y if is_prob else torch.softmax(y, dim=1)
            total = p * w if total is None else total.add_(p, alpha=w)
            if spread:
                squares = p * p * w if squares is None else squares.addcmul_(p, p, value=w)
        disagreement = (squares - total * total).clamp_min(0).sum(1, keepdim=True) if spread else None
        if self.output == "log":
            return torch.log(total.clamp_min(1e-12)), disagreement
        return total, disagreement


def ensemble(members: Sequence[dict], weights: Sequence[float] | None = None,
             output: str = "probabilities") -> Ensemble:
    """Factory for :class:`ModelSpec`: members given as ``{"factory": ..., "factory_kwargs": ...}``.

    The members' factories come from a file (the ensemble's recipe), so each must be
    trusted (see :mod:`napari_qlty.models.factories`); a member of your own goes into an
    :class:`Ensemble` built in Python.
    """
    modules = []
    for recipe in members:
        factory = str(recipe.get("factory", ""))
        check_trusted(factory, "the ensemble's recipe")
        modules.append(import_factory(factory)(**dict(recipe.get("factory_kwargs") or {})))
    return Ensemble(modules, weights=weights, output=output)


def ensemble_factory(members: Sequence[tuple[str, dict]], weights: Sequence[float] | None = None,
                     output: str = "probabilities") -> tuple[str, dict]:
    """``(factory, kwargs)`` that rebuild an ensemble of members given as ``(factory, kwargs)``."""
    n = len(members)
    w = [1.0 / n] * n if weights is None else [float(v) for v in weights]
    return ENSEMBLE_FACTORY, {"members": [{"factory": f, "factory_kwargs": dict(k)} for f, k in members],
                              "weights": w, "output": output}


def load_ensemble(paths: Sequence[str | Path], weights: Sequence[float] | None = None,
                  output: str = "probabilities", device: str = "cpu") -> Ensemble:
    """An ensemble of the checkpoints at ``paths`` (see :func:`napari_qlty.train.save_checkpoint`)."""
    members = [load_checkpoint(p, device) for p in paths]
    return Ensemble(members, weights=weights, output=output).to(device).eval()


def save_ensemble(model: Ensemble, path: str | Path, member_paths: Sequence[str | Path]) -> Path:
    """Save ``model`` as one checkpoint; ``member_paths`` are its members' checkpoints (for
    their recipes). Reload with :func:`napari_qlty.train.load_checkpoint`."""
    if len(member_paths) != len(model.members):
        raise ValueError(f"{len(model.members)} members but {len(member_paths)} checkpoint paths")
    recipes, shared = [], {}
    for p in member_paths:
        recipe = checkpoint_recipe(p)
        if recipe is None:
            raise ValueError(f"{p} is not a napari-qlty checkpoint")
        recipes.append((recipe["factory"], recipe.get("factory_kwargs") or {}))
        for key in ("window", "axes", "classes", "normalisation"):  # what the members share
            if recipe.get(key) is not None:
                shared.setdefault(key, recipe[key])
    factory, kwargs = ensemble_factory(recipes, model.weights, model.output)
    return save_checkpoint(model, path, factory, kwargs, shared)
