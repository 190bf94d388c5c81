"""Where the model is unsure, measured three ways, and the windows where one more
stroke of labels would help most.

- ``windows``: how much the overlapping windows disagree at a voxel, the weighted
  variance of their outputs (summed over classes). It rides along with the blend: each
  window adds its outputs and their squares, so it costs a second set of sums, no pass.
- ``members``: how much an ensemble's members disagree (the weighted variance of their
  probabilities, summed over classes), blended like an output; for models that offer
  ``forward_with_spread`` (:class:`~napari_qlty.train.ensemble.Ensemble` does).
- ``entropy``: the entropy of the blended class probabilities (natural log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch

from .grid import Grid

KINDS = ("windows", "members", "entropy")
#: the kind to rank spots by, first that a prediction holds: an ensemble's disagreement
#: where there is one (the recipe's inference windows barely overlap with weight), else
#: the entropy
PREFERRED = ("members", "entropy", "windows")


def default_kind(kinds: Iterable[str]) -> str:
    """The first of :data:`PREFERRED` among ``kinds``."""
    kinds = list(kinds)
    for kind in PREFERRED:
        if kind in kinds:
            return kind
    raise ValueError(f"no uncertainty among {kinds}: the kinds are {', '.join(KINDS)}")


def spread_of(model: Callable) -> Callable | None:
    """The model's ``forward_with_spread`` (returning (outputs, members' spread)), if it has one."""
    method = getattr(model, "forward_with_spread", None)
    return method if callable(method) else None


def gives_probabilities(model: Callable, postprocess) -> bool:
    """Whether blended outputs are class probabilities: a softmax or sigmoid applied to
    each batch, or a model that says so (``outputs_probabilities``, as an ensemble)."""
    return postprocess is not None or bool(getattr(model, "outputs_probabilities", False))


def with_moments(out: torch.Tensor, spread: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, *w) outputs as the channels blended for uncertainty: the outputs, their
    squares and, for an ensemble, its members' spread (B, 1, *w)."""
    parts = [out, out * out] + ([spread] if spread is not None else [])
    return torch.cat(parts, dim=1)


def blended_channels(classes: int, members: bool) -> int:
    """How many channels :func:`with_moments` makes of ``classes`` outputs."""
    return 2 * classes + (1 if members else 0)


def split(blended: torch.Tensor, classes: int, members: bool, probabilities: bool, dim: int = 0,
          finish: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (C, *box), uncertainty (len(kinds), *box)) of blended (2C [+1], *box)
    channels (channels along ``dim``); the kinds are :func:`kinds`.

    ``finish`` (a package's postprocessing) is applied to the blended values before their
    entropy is taken; ``probabilities`` says the values are then class probabilities,
    otherwise the entropy is that of their softmax (one channel: their sigmoid).
    """
    values = blended.narrow(dim, 0, classes)
    squares = blended.narrow(dim, classes, classes)
    parts = [(squares - values * values).clamp_min(0).sum(dim, keepdim=True)]
    if members:
        parts.append(blended.narrow(dim, 2 * classes, 1))
    if finish is not None:
        values = finish(values)
    parts.append(entropy(values, probabilities, dim))
    return values, torch.cat(parts, dim=dim)


def kinds(members: bool) -> list[str]:
    """The uncertainty channels' names, in order."""
    return [k for k in KINDS if members or k != "members"]


def entropy(values: torch.Tensor, probabilities: bool, dim: int = 0) -> torch.Tensor:
    """(1, *box) entropy of (C, *box) class scores (classes along ``dim``); one channel
    is a yes/no class."""
    if values.shape[dim] == 1:
        p = values.clamp(0, 1) if probabilities else torch.sigmoid(values)
        p = torch.cat([p, 1 - p], dim=dim)
    elif probabilities:
        p = values.clamp_min(0)
        p = p / p.sum(dim, keepdim=True).clamp_min(1e-12)
    else:
        p = torch.softmax(values, dim=dim)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim, keepdim=True)


def spot_grid(shape, window) -> Grid:
    """Windows to rank for "where to label next": half the size of ``window`` (per axis, at
    least 8 voxels, at most the image), overlapping by half, so a spot is specific enough to
    label (a whole inference window often spans the volume's depth)."""
    shape = tuple(int(s) for s in shape)
    window = (int(window),) * len(shape) if isinstance(window, int) else tuple(int(w) for w in window)
    half = tuple(min(n, max(8, w // 2)) for n, w in zip(shape, window))
    return Grid(shape, window=half, step=tuple(max(1, h // 2) for h in half))


def rank_windows(score: torch.Tensor | np.ndarray, grid: Grid, top: int = 20, *, scale: int = 1
                 ) -> list[tuple[float, int, tuple[int, ...]]]:
    """The ``top`` windows with the highest mean ``score`` (N, *shape), best first, as
    (mean score, image, window origin in full-resolution voxels).

    ``score`` may be a pyramid level ``scale`` times coarser along every tiled axis
    (each window is then averaged over the coarse voxels it covers); the means come from
    one cumulative sum, so ranking costs one pass over the score.
    """
    s = torch.as_tensor(np.asarray(score), dtype=torch.float64)
    n_images, ndim = s.shape[0], grid.ndim
    integral = s
    for axis in range(1, ndim + 1):
        integral = torch.nn.functional.pad(integral.cumsum(axis), (0, 0) * (ndim - axis) + (1, 0))
    origins = grid.origins()
    lo = [np.minimum(origins[:, a] // scale, s.shape[1 + a] - 1) for a in range(ndim)]
    hi = [np.maximum(np.minimum(-(-(origins[:, a] + w) // scale), s.shape[1 + a]), lo[a] + 1)
          for a, w in enumerate(grid.window)]
    means = []
    for n in range(n_images):
        total = torch.zeros(len(origins), dtype=torch.float64)
        for corner in range(2**ndim):  # inclusion-exclusion over the box's corners
            idx, sign = [], 1
            for a in range(ndim):
                upper = (corner >> a) & 1
                idx.append(torch.from_numpy(hi[a] if upper else lo[a]))
                sign *= 1 if upper else -1
            total += sign * integral[(n, *idx)]
        volume = torch.from_numpy(np.prod([h - l for h, l in zip(hi, lo)], axis=0).astype(np.float64))
        means.append(total / volume)
    flat = torch.stack(means).reshape(-1)
    best = torch.argsort(flat, descending=True)[:top]
    per_image = len(origins)
    return [(float(flat[i]), int(i) // per_image, tuple(int(o) for o in origins[int(i) % per_image])) for i in best]


class Spot(NamedTuple):
    """A window of a :func:`spot_grid`, ranked: its mean uncertainty, its image, its origin
    and the voxel at its centre (where a marker goes: jumping there shows the spot on its
    slice)."""

    score: float
    image: int
    origin: tuple[int, ...]
    centre: tuple[int, ...]


def rank_spots(score: torch.Tensor | np.ndarray, grid: Grid, top: int = 20, *, scale: int = 1) -> list[Spot]:
    """:func:`rank_windows` of ``grid`` (a :func:`spot_grid`) as :class:`Spot` records, most
    unsure first."""
    return [Spot(s, n, origin, tuple(o + w // 2 for o, w in zip(origin, grid.window)))
            for s, n, origin in rank_windows(score, grid, top, scale=scale)]
