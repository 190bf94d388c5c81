"""The recipe: how sparse labels become a segmentation, in one place.

What ``make demo`` learnt on the synthetic tomogram (``docs/demo.md``,
``docs/training.md``), used by the demo and the Train widget alike, so the two never
drift apart:

* intensities mapped to zero mean and unit variance over the whole image;
* training windows 64, step 32, no border band; at most about 20 % of the labelled voxels
  held out in windows no training label overlaps (:func:`napari_qlty.core.holdout.hold_out`);
* an ensemble of two 2.5D networks (:data:`~napari_qlty.train.trainer.DEFAULT_NETS`:
  a U-Net with batch norm, which draws filaments too thick, and an MSDNet, whose
  boundary wanders from seed to seed; their mean is steadier than either), each 500
  steps of 8 crops of 48 x 48 through labelled voxels, flips and 90-degree rotations in
  the XY plane, masked cross-entropy with class weights ``(1 / frequency) ** 0.5``,
  Adam at 3e-3 along a cosine to 1e-4 that follows the time budget;
* inference windows 128, step 108, border 10 with border weight 0 (each voxel taken
  from the one window whose trusted interior holds it); in 3D only 16 deep, with a
  border of the networks' context along z (2 slices), which is all a 2.5D network
  reaches along z: the same voxels as deep windows, and a slice on screen is predicted
  from a few thin windows instead of the whole depth.

A time budget is shared between the networks as the demo does: each gets an equal part
of what is left when its turn comes. "Train more" continues every network from its
current weights at a third of the learning rate for a quarter of the epochs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import torch

from ..core.grid import Grid
from ..core.inference import NORMALISATION_ATTRIBUTE
from ..core.intensity import Normalisation
from .ensemble import Ensemble, ensemble_factory
from .trainer import TrainConfig, TrainEvent, stop_requested, build_model, iter_train, saved_factory

__all__ = ["DEFAULT_RECIPE", "Recipe", "combine", "iter_train_members", "members_of", "model_factory"]


@dataclass(frozen=True)
class Recipe:
    """Training and inference settings (plain data: written into every round record)."""

    window: int = 64
    """Training windows (per axis, clipped to the image)."""
    step: int = 32
    border: int = 0
    """Labels in this band at each training window's edge are ignored."""
    members: tuple[str, ...] = ("unet", "msdnet")
    """Networks of the ensemble (architectures of :class:`TrainConfig`, with its defaults)."""
    validation: float = 0.2
    """Share of the labelled voxels held out for validation."""
    normalisation: str = "mean-std"
    """Intensity mapping (:class:`~napari_qlty.core.intensity.Normalisation` mode), with
    statistics of the whole image. Zero mean and unit variance is what the networks were
    tuned on (the synthetic tomogram is made so); percentiles 1-99.8 squeeze the
    intensities into about [0, 1] and scored lower (docs/training.md)."""
    infer_window: int = 128
    infer_step: int = 108
    infer_border: int = 10
    border_weight: float = 0.0
    infer_depth: int | None = 16
    """Depth along z of 3D inference windows: the networks are 2.5D, so their reach along
    z is their context, and a z border of the context gives the voxels deep windows give.
    None: as deep as the others (the paper's grid, which the demo reproduces)."""
    threads: int | None = 1
    """torch threads while training: these small networks gain nothing from more on a
    CPU and lose a lot when it is shared (docs/demo.md: 24 ms a U-Net step on one
    thread, 194 ms on two at load 5). None: leave torch's setting."""
    more_lr: float = 1e-3
    """Peak learning rate of a "Train more" round (it starts from trained weights)."""
    more_steps: float = 0.25
    """Share of each network's epochs (rounded up) a "Train more" round plans (its budget
    may end it sooner)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if not self.members:
            raise ValueError("a recipe needs at least one network")
        if not 0 < self.validation < 1:
            raise ValueError(f"validation must be in (0, 1), got {self.validation}")
        if not 0 < self.more_steps <= 1:
            raise ValueError(f"more_steps must be in (0, 1], got {self.more_steps}")

    def configs(self, *, ndim: int, classes: int, seed: int = 0, more: bool = False,
                nets: dict[str, dict] | None = None, **overrides) -> list[TrainConfig]:
        """One :class:`TrainConfig` per network (seeds ``seed``, ``seed + 1``, ...);
        ``more``: for a "Train more" round; ``nets``: network arguments per architecture
        (default: :data:`DEFAULT_NETS`); ``overrides`` go to every config."""
        out = []
        for i, arch in enumerate(self.members):
            config = TrainConfig(**{"arch": arch, "classes": classes, "planar": ndim == 3, "seed": seed + i,
                                    "net": (nets or {}).get(arch), "threads": self.threads, **overrides})
            if more:
                config = replace(config, lr=min(config.lr, self.more_lr),
                                 epochs=math.ceil(config.epochs * self.more_steps))
            out.append(config)
        return out

    def intensity(self) -> Normalisation:
        return Normalisation(self.normalisation)

    def training_grid(self, shape: Sequence[int], **kwargs) -> Grid:
        window = tuple(min(self.window, int(s)) for s in shape)
        return Grid(tuple(shape), window=window, step=tuple(min(self.step, w) for w in window),
                    border=self.border, **kwargs)

    def inference(self, shape: Sequence[int]) -> dict:
        """Inference window, step, border and weighting for an image of ``shape`` (the
        window is clipped to the image; the border to what the window allows)."""
        window = [min(self.infer_window, int(s)) for s in shape]
        step = [min(self.infer_step, w) for w in window]
        border = [min(self.infer_border, (w - 1) // 2) for w in window]
        thin = len(shape) == 3 and self.infer_depth is not None  # 3D: 2.5D networks (see configs)
        if thin and window[0] > self.infer_depth:
            window[0] = self.infer_depth
            border[0] = min(TrainConfig.context, (window[0] - 1) // 2)
            step[0] = window[0] - 2 * border[0]
        return {"window": window, "step": step, "border": border,
                "weighting": "border", "border_weight": self.border_weight}

    def inference_grid(self, shape: Sequence[int], **kwargs) -> Grid:
        s = self.inference(shape)
        return Grid(tuple(shape), window=s["window"], step=s["step"], border=s["border"], **kwargs)

    def to_json(self) -> dict:
        d = asdict(self)
        d["members"] = list(self.members)
        return d

    @classmethod
    def from_json(cls, data: dict) -> Recipe:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


DEFAULT_RECIPE = Recipe()


def combine(models: Sequence[torch.nn.Module]) -> torch.nn.Module:
    """The one model of a round: the network itself, or the ensemble of several (which
    returns log-probabilities, so ``postprocess="softmax"`` suits either)."""
    if len(models) == 1:
        return models[0]
    ensemble = Ensemble(list(models), output="log")
    for attribute in (NORMALISATION_ATTRIBUTE, "napari_qlty_info"):  # what the trainer attached to each
        if hasattr(models[0], attribute):
            setattr(ensemble, attribute, getattr(models[0], attribute))
    return ensemble


def model_factory(configs: Sequence[TrainConfig], ndim: int) -> tuple[str, dict]:
    """``(factory, kwargs)`` that rebuild :func:`combine`'s model of trained ``configs``."""
    factories = [saved_factory(c, ndim) for c in configs]
    if len(factories) == 1:
        return factories[0]
    return ensemble_factory(factories, output="log")


def members_of(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The networks of a model :func:`combine` made (or that a round's checkpoint reloads):
    the first of a recipe's ``count`` networks (all of them unless its training stopped)."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    if len(members) > count:
        raise ValueError(f"the model has {len(members)} networks, the recipe {count}: "
                         "continue it with the recipe it was trained with")
    return members


def iter_train_members(
    configs: Sequence[TrainConfig],
    train_data,
    val_data=None,
    *,
    ndim: int,
    models: Sequence[torch.nn.Module] | None = None,
    budget: float | None = None,
    stop: Callable[[], bool] | threading.Event | None = None,
    checkpoints: Sequence[str | os.PathLike] | None = None,
    **kwargs,
) -> Iterator[TrainEvent]:
    """Train one network per config in turn (``models`` to continue, else new ones),
    sharing ``budget`` seconds: each gets an equal part of what is left at its turn.

    Yields every network's :class:`TrainEvent` (``member`` says whose); returns
    ``(config, network, last event)`` of the networks that took at least one step
    (after a stop, the ones not reached are left out). ``checkpoints``: where each
    network's checkpoint goes; ``kwargs`` go to :func:`iter_train` (``intensity``,
    ``class_names``).
    """
    t0 = time.perf_counter()
    trained = []
    for i, config in enumerate(configs):
        if budget is not None:
            left = budget - (time.perf_counter() - t0)
            config = replace(config, max_seconds=max(1.0, left / (len(configs) - i)))
        model = models[i] if models is not None else build_model(config, ndim)
        last = None
        checkpoint = checkpoints[i] if checkpoints is not None else None
        for event in iter_train(config, train_data, val_data, model=model, stop=stop, checkpoint=checkpoint,
                                **kwargs):
            last = replace(event, member=config.arch)
            yield last
        if last is not None and last.step:
            trained.append((config, model, last))
        if stop_requested(stop):
            break
    return trained
