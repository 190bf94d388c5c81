"""Batches of windows on their way to the model's device, in their stored dtype.

Three routes, chosen by where the volume and the model are:

- the volume already on the device (and ``fused``): one gather per batch
  (:func:`~napari_qlty.core.blend.cut_fused`), a fixed number of operators;
- the volume on the host, the model on a CUDA device: each batch is cut into one of two
  pinned host buffers and copied on a side stream while the model runs on the one
  before, so the device never waits for the host;
- otherwise: cut into one reused host buffer and moved (a CPU run uses it as it is).

The batch a caller receives is its own to change (normalising works in place) until it
asks for the next one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .blend import FlatIndex, cut_fused
from .grid import Grid


def feed_windows(
    x: torch.Tensor,
    grid: Grid,
    order: np.ndarray,
    batch_size: int,
    device: torch.device,
    *,
    start: Sequence[int] | None = None,
    fused: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """``(indices, windows)`` for consecutive ``batch_size`` slices of ``order``.

    ``x`` is (N, C, *box) with its box at ``start`` of the (padded) volume (default: the
    whole volume); ``order`` holds flat window indices (image * windows per image +
    position), every window inside the box. Windows arrive on ``device`` in ``x``'s dtype.
    """
    start = tuple(int(a) for a in start) if start is not None else (0,) * grid.ndim
    parts = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if fused and x.device == device:
        stop = tuple(a + s for a, s in zip(start, x.shape[2:]))
        flat = FlatIndex(grid, start, stop, device)
        x = x.contiguous()
        for idx in parts:
            yield idx, cut_fused(x, flat.index(idx, x.shape[1]), grid.window)
    elif device.type == "cuda" and x.device.type == "cpu":
        yield from _prefetched(x, grid, parts, start, device)
    else:
        buffer = None
        for idx in parts:
            buffer = _cut(x, grid, idx, start, buffer)
            yield idx, buffer.to(device)


def _cut(x: torch.Tensor, grid: Grid, idx: np.ndarray, start: Sequence[int],
         buffer: torch.Tensor | None, pin: bool = False) -> torch.Tensor:
    """The windows ``idx`` copied into ``buffer`` (a new one if it has another batch size)."""
    per_image = len(grid)
    origins = grid.origins()
    views = [
        x[(int(i) // per_image, slice(None),
           *(slice(int(o) - a, int(o) - a + w) for o, a, w in zip(origins[int(i) % per_image], start, grid.window)))]
        for i in idx
    ]
    if buffer is None or buffer.shape[0] != len(views):
        buffer = torch.empty((len(views), *views[0].shape), dtype=x.dtype, pin_memory=pin)
    return torch.stack(views, out=buffer)


def _prefetched(x: torch.Tensor, grid: Grid, parts: list[np.ndarray], start: Sequence[int],
                device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Double-buffered: batch i+1 is cut on the host and copied on a side stream while
    the model's stream runs batch i (the caller works between two ``next`` calls)."""
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)
    pinned: list[torch.Tensor | None] = [None, None]
    copied: list[torch.cuda.Event | None] = [None, None]

    def stage(i: int) -> tuple[torch.Tensor, torch.cuda.Event]:
        slot = i % 2
        if copied[slot] is not None:
            copied[slot].synchronize()  # the copy that last read this host buffer is done
        pinned[slot] = _cut(x, grid, parts[i], start, pinned[slot], pin=True)
        with torch.cuda.stream(side):
            on_device = pinned[slot].to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(side)
        copied[slot] = done
        return on_device, done

    if not parts:
        return
    ready = stage(0)
    for i, idx in enumerate(parts):
        batch, done = ready
        main.wait_event(done)
        batch.record_stream(main)  # made on the side stream, used on the main one
        yield idx, batch
        if i + 1 < len(parts):
            ready = stage(i + 1)  # runs while the device works on batch i
