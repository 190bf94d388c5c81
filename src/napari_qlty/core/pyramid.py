"""Resolution pyramids built block by block: how many levels, their chunks, and the
reductions (mean for values, majority vote for labels).

Level ``l`` shrinks each tiled axis by ``F_l = factor ** l``; a voxel of level ``l`` is
the reduction of the level-0 block ``[i * F_l, (i + 1) * F_l)`` along every axis (the
last block along an axis holds what is left, so no voxel is lost). Any box whose start
is a multiple of ``F_l`` reduces on its own to exactly its share of level ``l``: that
is what lets every region of a run add its part of every level as it finishes.
Reductions are cascaded (level ``l`` from the sums of level ``l - 1``), so the whole
pyramid costs about one pass over the region.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

#: the coarsest level is at most this many voxels along every downsampled axis
SCREEN = 512


def downscale_factors(axes: Sequence[str], downscale: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """The factor per level along each tiled axis: ``downscale`` (one, or one per axis),
    by default 2 along space and 1 along time (a mean over time points mixes them)."""
    if downscale is None:
        return tuple(1 if a == "t" else 2 for a in axes)
    values = (downscale,) * len(axes) if isinstance(downscale, int) else tuple(downscale)
    if len(values) != len(axes) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"downscale must be an int >= 1 or one per tiled axis ({', '.join(axes)}), "
                         f"got {downscale!r}")
    return values


def level_factors(shape: Sequence[int], factors: Sequence[int], levels: int | None = None,
                  screen: int = SCREEN) -> list[tuple[int, ...]]:
    """Cumulative downsampling factors per level (level 0 is all ones).

    ``levels`` None: as many as it takes for the coarsest level to fit ``screen`` voxels
    along every axis with a factor above 1 (at least one level: the data itself).
    """
    factors = tuple(int(f) for f in factors)
    if len(factors) != len(shape) or min(factors) < 1:
        raise ValueError(f"downsampling factors must be {len(shape)} ints >= 1, got {factors}")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 1):
        raise ValueError(f"levels must be an int >= 1 (1: no pyramid), got {levels!r}")
    out = [(1,) * len(shape)]
    shrinking = [a for a, f in enumerate(factors) if f > 1]
    while True:
        current = out[-1]
        if levels is not None:
            if len(out) >= levels:
                return out
        elif not shrinking or all(math.ceil(shape[a] / current[a]) <= screen for a in shrinking):
            return out
        out.append(tuple(c * f for c, f in zip(current, factors)))


def level_shape(shape: Sequence[int], factor: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.ceil(s / f) for s, f in zip(shape, factor))


def level_chunks(chunks: Sequence[int], factor: Sequence[int], floor: Sequence[int]) -> tuple[int, ...]:
    """A level's chunk: the image of a level-0 chunk, but never under ``floor`` (so coarse
    levels are not cut into many tiny files)."""
    return tuple(max(1, min(c, m), c // f) for c, f, m in zip(chunks, factor, floor))


def granule(chunks: Sequence[int], factors: Sequence[Sequence[int]], floor: Sequence[int]) -> tuple[int, ...]:
    """The alignment regions need so that no two regions ever share a chunk at any level:
    per axis, the least common multiple of every level's chunk times its factor."""
    out = []
    for a, c in enumerate(chunks):
        g = 1
        for factor in factors:
            g = math.lcm(g, level_chunks(chunks, factor, floor)[a] * factor[a])
        out.append(g)
    return tuple(out)


# -- reductions ---------------------------------------------------------------------------
def block_sum(x: torch.Tensor, dims: Sequence[int], factors: Sequence[int],
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sums over blocks of ``factors`` along ``dims``; a partial block at an axis's far end
    sums what it holds. Views, not copies, of ``x`` are reduced (one axis at a time)."""
    for d, f in zip(dims, factors):
        if f == 1:
            if dtype is not None and x.dtype != dtype:
                x = x.to(dtype)
            continue
        n = x.shape[d]
        full = n // f * f
        parts = []
        if full:
            head = x.narrow(d, 0, full)
            parts.append(head.reshape(*head.shape[:d], full // f, f, *head.shape[d + 1:]).sum(d + 1, dtype=dtype))
        if full < n:
            parts.append(x.narrow(d, full, n - full).sum(d, keepdim=True, dtype=dtype))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, d)
    return x


def _block_counts(extent: Sequence[int], factor: Sequence[int], device) -> torch.Tensor:
    """How many level-0 voxels each voxel of a level reduces (an outer product of per-axis counts)."""
    counts = None
    for a, (n, f) in enumerate(zip(extent, factor)):
        c = torch.clamp(n - torch.arange(math.ceil(n / f), device=device) * f, max=f).to(torch.float32)
        shape = [1] * len(extent)
        shape[a] = -1
        c = c.reshape(shape)
        counts = c if counts is None else counts * c
    return counts


def mean_levels(values: torch.Tensor, factors: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
    """The means of ``values`` (C, *box) at each level after the first (``factors`` as from
    :func:`level_factors`); the box starts on a multiple of every factor."""
    extent = tuple(values.shape[1:])
    dims = range(1, values.dim())
    sums, previous = values, factors[0]
    for factor in factors[1:]:
        sums = block_sum(sums, dims, [f // p for f, p in zip(factor, previous)])
        previous = factor
        yield sums / _block_counts(extent, factor, values.device).to(sums.dtype)


def mode_levels(labels: torch.Tensor, classes: int, factors: Sequence[Sequence[int]]) -> Iterator[torch.Tensor]:
    """The majority label of each block of ``labels`` (*box, values below ``classes``) at
    each level after the first; ties go to the smallest label. One class at a time, so
    memory does not grow with the number of classes; a class's counts are cascaded level
    to level, and the last class's are what the others leave of each block."""
    coarse = factors[1:]
    if not coarse:
        return
    extent, dims = tuple(labels.shape), range(labels.dim())
    best_count: list = [None] * len(coarse)
    best_label: list = [None] * len(coarse)
    counted: list = [None] * len(coarse)
    for k in range(classes):
        counts, previous = labels == k, factors[0]
        for i, factor in enumerate(coarse):
            if k == classes - 1 and k > 0:
                counts = _block_counts(extent, factor, labels.device).to(torch.int32) - counted[i]
            else:
                counts = block_sum(counts, dims, [f // p for f, p in zip(factor, previous)], dtype=torch.int32)
                counted[i] = counts if counted[i] is None else counted[i] + counts
            previous = factor
            if best_count[i] is None:
                best_count[i] = counts
                best_label[i] = torch.zeros(counts.shape, dtype=labels.dtype, device=labels.device)
            else:
                better = counts > best_count[i]
                best_count[i] = torch.maximum(counts, best_count[i])
                best_label[i].masked_fill_(better, k)
    yield from best_label
