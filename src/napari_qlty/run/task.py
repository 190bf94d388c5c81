"""One task: one region of one image through the model, handed over and finished."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.blend import fused_for
from ..core.grid import Grid
from ..core.inference import check_output, input_dtype, to_model
from ..core.intensity import IDENTITY, Fitted
from ..core.processing import FittedProcessing
from ..core.tiles import read_region
from ..core.weights import Weighting, WindowWeights, window_weights
from ..io.prediction import OutputStore
from ..io.sources import Source
from ..models import ModelSpec, load_model, run_with_oom_backoff
from ..models.batching import give_back_memory
from .handover import RegionSums, finish, release
from .regions import Regions

POSTPROCESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda y: torch.softmax(y, dim=1),
    "sigmoid": torch.sigmoid,
}


# -- one task ------------------------------------------------------------------------------
@dataclass
class Job:
    """Everything a task needs; picklable when the source and model are given by location."""

    source: Source
    model: ModelSpec | torch.nn.Module | Callable
    grid: Grid
    weighting: Weighting
    store_path: str
    region_size: tuple[int, ...]
    channels_out: int
    batch_size: int = 4
    device: str = "cpu"
    postprocess: str | None = None
    intensity: Fitted | FittedProcessing = IDENTITY
    #: a package's postprocessing, applied to the blended region before it is written
    finishing: FittedProcessing | None = None
    token: str = field(default_factory=lambda: f"{time.time_ns()}")


_weights_lock = threading.Lock()


_map_weights: dict[str, WindowWeights] = {}


def _weights(job: Job) -> WindowWeights:
    """The run's weights, built once per process (a user map once per run)."""
    with _weights_lock:
        if job.weighting.mode != "map":
            return window_weights(job.grid, job.weighting)
        if job.token not in _map_weights:
            _map_weights.clear()
            _map_weights[job.token] = WindowWeights(job.grid, job.weighting)
        return _map_weights[job.token]


def run_region(job: Job, task: tuple[int, ...], cancelled: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Compute, hand over and finish one region of one image.

    Returns (windows run, values saturated to the store's dtype).
    """
    n, r = task[0], task[1:]
    grid = job.grid
    regions = Regions(grid, job.region_size)
    store = OutputStore(job.store_path)
    weights = _weights(job)
    device = torch.device(job.device)
    box_start, box_stop = regions.box(r)
    positions = regions.owned(r)
    sums = RegionSums(regions, weights, n, r, job.channels_out, device=device)
    if positions.size:
        model = load_model(job.model, device) if isinstance(job.model, (ModelSpec, str)) else job.model
        post = POSTPROCESS[job.postprocess] if job.postprocess else None
        x = read_region(job.source, n, box_start, box_stop, grid)  # the stored dtype
        dtype = input_dtype(model)
        origins = grid.origins()
        with torch.no_grad():
            for i in range(0, len(positions), job.batch_size):
                if cancelled is not None and cancelled():
                    raise Cancelled()
                chunk = positions[i : i + job.batch_size]
                batch = torch.stack([
                    x[(slice(None), *(slice(o - a, o - a + w) for o, a, w in zip(origins[k], box_start, grid.window)))]
                    for k in chunk
                ])
                batch = to_model(batch, device, dtype, job.intensity)
                out = run_with_oom_backoff(model, batch)  # halves the batch on out-of-memory
                check_output(out, batch, grid)
                if post is not None:
                    out = post(out)
                sums.add(out, chunk, fused=fused_for(device))
                del out, batch
                give_back_memory()  # an operator's workspace (a conv's columns) goes back at once
        del x
    core = sums.hand_over(store.spills)
    final = finish(regions, weights, store.spills, n, r, core)
    if job.finishing is not None:
        final = job.finishing.apply(final.unsqueeze(0))[0]
    saturated = store.write_region(n, regions.bounds(r)[0], final)
    store.mark_finished(task)
    release(regions, store.spills, n, r)
    del sums, core, final
    give_back_memory()
    return int(positions.size), saturated


class Cancelled(Exception):
    """The run was asked to stop; finished regions stay finished."""
