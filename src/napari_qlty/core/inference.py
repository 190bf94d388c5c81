"""Running a model over a volume in memory, window batch by window batch.

Memory stays at input + output + two batches (windows in, outputs out): windows are
cut into one reused buffer, and each batch's outputs are added to the weighted sum
before the next batch is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .blend import Accumulator, accumulation_dtype, check_patches
from .grid import Grid
from .tiles import as_tensor, check_volume, pad_far_end, window_slices
from .weights import Weighting, WindowWeights, window_weights

Model = Callable[[torch.Tensor], torch.Tensor]


def batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def window_order(weights: WindowWeights, n_images: int) -> np.ndarray:
    """All flat window indices, grouped by edge class so each class's weights are built once."""
    per_image = len(weights.grid)
    return np.asarray(
        sorted(range(n_images * per_image), key=lambda i: weights.class_of(i % per_image)),
        dtype=np.int64,
    )


def check_output(out: torch.Tensor, batch: torch.Tensor, grid: Grid) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a torch.Tensor, got {type(out).__name__}")
    if out.ndim != batch.ndim or out.shape[0] != batch.shape[0] or tuple(out.shape[2:]) != grid.window:
        raise ValueError(
            f"the model's output {tuple(out.shape)} does not fit its input {tuple(batch.shape)}: "
            f"it must be (batch, classes, {', '.join(map(str, grid.window))})"
        )


@torch.no_grad()
def infer(
    model: Model,
    x: torch.Tensor | np.ndarray,
    grid: Grid,
    weighting: Weighting = Weighting(),
    *,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    postprocess: Model | None = None,
) -> torch.Tensor:
    """Apply ``model`` to every window of ``x`` (N, C, *shape) and blend: (N, C_out, *shape).

    Windows run on ``device`` (default: the input's); the weighted sum lives there too.
    ``postprocess`` (e.g. ``lambda y: y.softmax(1)``) is applied to each batch of outputs
    before blending. Each window goes through the model exactly once.
    """
    x = as_tensor(x)
    check_volume(x, grid, "input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else x.device
    weights = window_weights(grid, weighting)
    if grid.needs_padding:
        x = pad_far_end(x, grid.padded_shape, grid.pad)
    n_images = x.shape[0]
    acc: Accumulator | None = None
    buffer = None
    for idx in batches(window_order(weights, n_images), batch_size):
        views = [x[(n, slice(None), *sl)] for n, sl in window_slices(grid, idx)]
        if buffer is None or buffer.shape[0] != len(views):
            buffer = torch.empty((len(views), *views[0].shape), dtype=x.dtype, device=x.device)
        batch = torch.stack(views, out=buffer)
        if batch.device != device:
            batch = batch.to(device, non_blocking=True)
        out = model(batch)
        check_output(out, batch, grid)
        if postprocess is not None:
            out = postprocess(out)
        if acc is None:
            check_patches(out, grid)
            acc = Accumulator(
                weights, n_images, out.shape[1], device=out.device,
                dtype=accumulation_dtype(out.dtype),
            )
        acc.add(out, idx)
    assert acc is not None
    return acc.result()
