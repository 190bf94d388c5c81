"""One task: one region of one image through the model, handed over and finished."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.blend import fused_for
from ..core.feed import feed_windows
from ..core.grid import Grid
from ..core.inference import check_output, input_dtype, to_model
from ..core.intensity import IDENTITY, Fitted
from ..core.processing import FittedProcessing
from ..core.speed import Speed, sped_up
from ..core.tiles import read_region
from ..core.uncertainty import split, spread_of, with_moments
from ..core.weights import Weighting, WindowWeights, window_weights
from ..io.prediction import OutputStore
from ..io.sources import Source
from ..models import ModelSpec, load_model, run_with_oom_backoff
from ..models.batching import give_back_memory
from .handover import RegionSums, finish, release, spill_key
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
    speed: Speed = Speed()
    #: a package's postprocessing, applied to the blended region before it is written
    finishing: FittedProcessing | None = None
    #: with uncertainty: {"classes", "members", "probabilities"} (``channels_out`` counts
    #: the blended channels, see :func:`napari_qlty.core.uncertainty.with_moments`)
    moments: dict | None = None
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
    sums, windows = compute_region(job, task, read_input(job, task), cancelled)
    return windows, finish_region(job, task, hand_over(job, task, sums))


def read_input(job: Job, task: tuple[int, ...]) -> torch.Tensor | None:
    """The input box region ``task`` needs, in its stored dtype (None: it owns no window)."""
    regions = Regions(job.grid, job.region_size)
    if not regions.owned(task[1:]).size:
        return None
    return read_region(job.source, task[0], *regions.box(task[1:]), job.grid)


def compute_region(job: Job, task: tuple[int, ...], x: torch.Tensor | None,
                   cancelled: Callable[[], bool] | None = None) -> tuple[RegionSums, int]:
    """Run region ``task``'s windows over its input box ``x`` (see :func:`read_input`);
    returns (the weighted sums over its box, windows run)."""
    n, r = task[0], task[1:]
    regions = Regions(job.grid, job.region_size)
    device = torch.device(job.device)
    box_start, _ = regions.box(r)
    positions = regions.owned(r)
    sums = RegionSums(regions, _weights(job), n, r, job.channels_out, device=device)
    if positions.size:
        model = load_model(job.model, device) if isinstance(job.model, (ModelSpec, str)) else job.model
        post = POSTPROCESS[job.postprocess] if job.postprocess else None
        dtype = input_dtype(model)
        spread = spread_of(model) if job.moments and job.moments["members"] else None
        model = sped_up(model, job.speed, device, job.grid.ndim)
        if spread is not None:  # one tensor, so a batch can still be halved on out-of-memory
            model = _joined(spread)
        fused = fused_for(device)
        with torch.no_grad():
            for chunk, batch in feed_windows(x.unsqueeze(0), job.grid, positions, job.batch_size, device,
                                             start=box_start):
                if cancelled is not None and cancelled():
                    raise Cancelled()
                batch = to_model(batch, device, dtype, job.intensity)
                out = run_with_oom_backoff(model, batch)  # halves the batch on out-of-memory
                members = None
                if spread is not None:
                    out, members = out[:, :-1], out[:, -1:]
                check_output(out, batch, job.grid)
                if post is not None:
                    out = post(out)
                if job.moments:
                    out = with_moments(out, members)
                sums.add(out, chunk, fused=fused)
                del out, batch
                give_back_memory()  # an operator's workspace (a conv's columns) goes back at once
    return sums, int(positions.size)


def hand_over(job: Job, task: tuple[int, ...], sums: RegionSums, *, hold: bool = False) -> torch.Tensor | None:
    """Write region ``task``'s sums past its far faces for its receivers (they may finish
    once this returns); returns its own sums, or with ``hold`` writes them to the store
    too (a region that cannot finish yet keeps nothing in memory) and returns None."""
    store = OutputStore(job.store_path)
    core = sums.hand_over(store.spills)
    if not hold:
        return core
    store.spills.write(spill_key(task[0], task[1:], task[1:]), core)
    return None


def finish_region(job: Job, task: tuple[int, ...], core: torch.Tensor | None) -> int:
    """Add what region ``task``'s senders handed to it to its own sums ``core`` (None: the
    sums it held in the store), write its final values and mark it finished; returns
    the values saturated to the store's dtype."""
    n, r = task[0], task[1:]
    regions = Regions(job.grid, job.region_size)
    store = OutputStore(job.store_path)
    own = spill_key(n, r, r)
    if core is None:
        core = store.spills.read(own).to(torch.device(job.device))
    final = finish(regions, _weights(job), store.spills, n, r, core)
    apply = None if job.finishing is None else (lambda v: job.finishing.apply(v.unsqueeze(0))[0])
    unsure = None
    if job.moments:
        probabilities = job.moments["probabilities"]
        final, unsure = split(final, job.moments["classes"], job.moments["members"], probabilities, finish=apply)
    elif apply is not None:
        final = apply(final)
    saturated = store.write_region(n, regions.bounds(r)[0], final, unsure)
    store.mark_finished(task)
    release(regions, store.spills, n, r)
    store.spills.delete(own)
    del core, final
    give_back_memory()
    return saturated


def _joined(spread: Callable) -> Callable:
    """A model's (outputs, members' spread) as one tensor, the spread its last channel."""
    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat(spread(batch), dim=1)
    return run


class Cancelled(Exception):
    """The run was asked to stop; finished regions stay finished."""
