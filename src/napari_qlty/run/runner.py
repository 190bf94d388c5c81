"""The out-of-core runner: any volume through any model into a zarr store, in bounded memory.

The output is cut into regions, each a whole number of the store's chunks. A window
belongs to the region that holds its origin, so every window runs through the model
exactly once. A region's task reads its input box once, runs its windows, and keeps
the weighted sums that fall inside the region; the sums that spill past its far faces
go to the store, addressed to the neighbours that own them. A region is final once its
lower neighbours have handed over their spills: then it is divided by the total weight
(known in closed form), written chunk by chunk, and marked finished. Tasks never share
a chunk, depend only on lower neighbours, and run in a loop, on threads, or on a dask
cluster with identical results; a rerun of the same command skips finished regions.

``iter_predict`` yields :class:`Event` objects (one runner, three faces: the command
line shows them with tqdm, the napari widget updates a layer, tests assert on them).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.grid import Grid
from ..core.inference import check_output
from ..models import ModelSpec, check_model_output, load_model, resolve_device, run_with_oom_backoff
from ..io.sources import Source, open_source
from ..core.blend import Accumulator, normalise_
from ..io.prediction import OutputStore
from ..core.tiles import read_region
from ..core.weights import Weighting, WindowWeights, window_weights

POSTPROCESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda y: torch.softmax(y, dim=1),
    "sigmoid": torch.sigmoid,
}

#: default chunk edge per number of spatial axes (about a million voxels a chunk)
DEFAULT_CHUNK = {1: 1 << 20, 2: 1024, 3: 128, 4: 32}


@dataclass(frozen=True)
class Event:
    """What happened: ``kind`` is "start", "region", "skip" or "done"."""

    kind: str
    windows_done: int
    windows_total: int
    regions_done: int
    regions_total: int
    elapsed: float
    region: tuple[int, ...] | None = None
    start: tuple[int, ...] | None = None
    stop: tuple[int, ...] | None = None
    message: str = ""


# -- regions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Regions:
    """The output cut into chunk-aligned regions, and who hands partial sums to whom."""

    grid: Grid
    size: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(p / s) for p, s in zip(self.grid.padded_shape, self.size))

    def bounds(self, r: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        start = tuple(int(i) * s for i, s in zip(r, self.size))
        stop = tuple(min(a + s, p) for a, s, p in zip(start, self.size, self.grid.padded_shape))
        return start, stop

    def owned(self, r: Sequence[int]) -> np.ndarray:
        """Per-image positions of the windows whose origin lies in region ``r``."""
        start, stop = self.bounds(r)
        hits = [np.nonzero((o >= a) & (o < b))[0] for o, a, b in zip(self.grid.axis_origins, start, stop)]
        if any(h.size == 0 for h in hits):
            return np.zeros(0, dtype=np.int64)
        mesh = np.meshgrid(*hits, indexing="ij")
        return np.ravel_multi_index([m.reshape(-1) for m in mesh], self.grid.counts)

    def box(self, r: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The span of region ``r``'s own windows (the region, grown at its far faces)."""
        start, stop = self.bounds(r)
        grown = []
        for o, w, a, b in zip(self.grid.axis_origins, self.grid.window, start, stop):
            inside = o[(o >= a) & (o < b)]
            grown.append(max(b, int(inside.max()) + w) if inside.size else b)
        return start, tuple(grown)

    def receivers(self, r: Sequence[int]) -> list[tuple[int, ...]]:
        """Regions other than ``r`` that ``r``'s windows reach."""
        _, box_stop = self.box(r)
        ranges = [range(i, min(c, math.ceil(b / s))) for i, b, s, c in zip(r, box_stop, self.size, self.counts)]
        return [q for q in itertools.product(*ranges) if q != tuple(r)]

    def senders(self, r: Sequence[int]) -> list[tuple[int, ...]]:
        """Lower regions whose windows reach region ``r`` (it waits for them)."""
        reach = [math.ceil(w / s) + 1 for w, s in zip(self.grid.window, self.size)]
        ranges = [range(max(0, i - k), i + 1) for i, k in zip(r, reach)]
        r = tuple(r)
        return [q for q in itertools.product(*ranges) if q != r and r in self.receivers(q)]

    def overlap(self, sender: Sequence[int], receiver: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        s_start, s_stop = self.box(sender)
        r_start, r_stop = self.bounds(receiver)
        return (
            tuple(max(a, b) for a, b in zip(s_start, r_start)),
            tuple(min(a, b) for a, b in zip(s_stop, r_stop)),
        )


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    edge = DEFAULT_CHUNK[len(shape)]
    return tuple(min(edge, s) for s in shape)


def region_cost(grid: Grid, size: Sequence[int], channels_in: int, channels_out: int) -> int:
    """Bytes a region task holds besides its batches: the input box (read, then copied
    into a tensor), the weighted sums over the box, and the final values and labels."""
    box = math.prod(min(s + w, p) for s, w, p in zip(size, grid.window, grid.padded_shape))
    core = math.prod(min(s, p) for s, p in zip(size, grid.padded_shape))
    return box * 4 * (2 * channels_in + channels_out) + core * (8 * channels_out + 9)


def plan_region_size(
    grid: Grid,
    chunks: Sequence[int],
    channels_in: int,
    channels_out: int,
    batch_bytes: int,
    budget_bytes: int,
    cap: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """The largest chunk-aligned region whose working set fits ``budget_bytes``.

    ``batch_bytes`` is what one batch costs inside the model (measured); ``cap`` bounds
    the region shape (rounded down to whole chunks). Raises a clear error when even a
    one-chunk region does not fit.
    """
    size = [math.ceil(p / c) * c for p, c in zip(grid.padded_shape, chunks)]
    if cap is not None:
        if len(cap) != grid.ndim or min(cap) < 1:
            raise ValueError(f"region must be {grid.ndim} positive ints, got {tuple(cap)}")
        size = [min(s, max(c, m // c * c)) for s, c, m in zip(size, chunks, cap)]
    while region_cost(grid, size, channels_in, channels_out) + batch_bytes > budget_bytes:
        shrinkable = [a for a in range(grid.ndim) if size[a] > chunks[a]]
        if not shrinkable:
            need = region_cost(grid, size, channels_in, channels_out) + batch_bytes
            raise ValueError(
                f"memory budget {budget_bytes / 2**20:.0f} MiB is too small for windows "
                f"{'x'.join(map(str, grid.window))} (one region and one batch need about "
                f"{need / 2**20:.0f} MiB, of which {batch_bytes / 2**20:.0f} MiB for the batch); "
                f"raise the budget, or lower the batch size or the chunk size"
            )
        axis = max(shrinkable, key=lambda a: (size[a] / chunks[a], -a))
        size[axis] = max(chunks[axis], (size[axis] // 2) // chunks[axis] * chunks[axis])
    return tuple(size)


def batch_bytes(model, channels_in: int, channels_out: int, window: Sequence[int], batch_size: int,
                device: torch.device) -> int:
    """Memory one batch takes inside the model.

    CUDA: the peak allocated while one window runs, measured. CPU: an estimate (the
    window in and out with room for activations, 32 bytes a channel-voxel), not a
    measurement, so the same command always plans the same regions (and gives the same
    bytes).
    """
    voxels = math.prod(window)
    estimate = voxels * 4 * (channels_in + channels_out + 1) * 8
    if device.type != "cuda":
        return batch_size * estimate
    x = torch.zeros((1, channels_in, *window), device=device)
    with torch.no_grad():
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        model(x)
        measured = torch.cuda.max_memory_allocated(device) - before
    return batch_size * max(measured, estimate)


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


def spill_key(n: int, sender: Sequence[int], receiver: Sequence[int]) -> str:
    return f"n{n}_" + "_".join(map(str, sender)) + "_to_" + "_".join(map(str, receiver))


def run_region(job: Job, task: tuple[int, ...], cancelled: Callable[[], bool] | None = None) -> int:
    """Compute, hand over and finish one region of one image; returns windows run."""
    n, r = task[0], task[1:]
    grid = job.grid
    regions = Regions(grid, job.region_size)
    store = OutputStore(job.store_path)
    weights = _weights(job)
    device = torch.device(job.device)
    start, stop = regions.bounds(r)
    box_start, box_stop = regions.box(r)
    positions = regions.owned(r)
    acc = Accumulator(weights, 1, job.channels_out, start=box_start, stop=box_stop, device=device)
    if positions.size:
        model = load_model(job.model, device) if isinstance(job.model, (ModelSpec, str)) else job.model
        post = POSTPROCESS[job.postprocess] if job.postprocess else None
        x = read_region(job.source, n, box_start, box_stop, grid)
        origins = grid.origins()
        with torch.no_grad():
            for i in range(0, len(positions), job.batch_size):
                if cancelled is not None and cancelled():
                    raise Cancelled()
                chunk = positions[i : i + job.batch_size]
                batch = torch.stack([
                    x[(slice(None), *(slice(o - a, o - a + w) for o, a, w in zip(origins[k], box_start, grid.window)))]
                    for k in chunk
                ]).to(device)
                out = run_with_oom_backoff(model, batch)  # halves the batch on out-of-memory
                check_output(out, batch, grid)
                if post is not None:
                    out = post(out)
                acc.add(out, chunk)
        del x
    sums = acc.sum
    for receiver in regions.receivers(r):
        a, b = regions.overlap(r, receiver)
        part = sums[(0, slice(None), *(slice(lo - s, hi - s) for lo, hi, s in zip(a, b, box_start)))]
        store.write_spill(spill_key(n, r, receiver), part)
    core = sums[(0, slice(None), *(slice(0, b - a) for a, b in zip(start, stop)))]
    senders = regions.senders(r)
    for sender in senders:
        a, b = regions.overlap(sender, r)
        target = core[(slice(None), *(slice(lo - s, hi - s) for lo, hi, s in zip(a, b, start)))]
        target += store.read_spill(spill_key(n, sender, r)).to(device=device, dtype=core.dtype)
    final = normalise_(core.unsqueeze(0), weights, start)[0]
    keep = tuple(slice(0, max(0, min(b, s) - a)) for a, b, s in zip(start, stop, grid.shape))
    store.write_region(n, start, final[(slice(None), *keep)])
    store.mark_finished(task)
    for sender in senders:
        store.delete_spill(spill_key(n, sender, r))
    return int(positions.size)


class Cancelled(Exception):
    """The run was asked to stop; finished regions stay finished."""


# -- the run -----------------------------------------------------------------------------
def parse_bytes(text: str | int | None) -> int | None:
    """'2GiB', '500MB', '1.5G' or a number of bytes."""
    if text is None or isinstance(text, int):
        return text
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
             "g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40}
    s = str(text).strip().lower().replace(" ", "")
    number = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"memory budget must look like 2GiB, 500MB or a number of bytes, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"memory budget must be > 0, got {text!r}")
    return int(value)


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def iter_predict(
    model: ModelSpec | str | torch.nn.Module | Callable,
    source,
    grid: Grid,
    output: str | Path,
    *,
    weighting: Weighting = Weighting(),
    batch_size: int = 4,
    device: str = "auto",
    memory_budget: str | int | None = None,
    probabilities: bool = True,
    labels: bool = True,
    dtype: str = "float32",
    postprocess: str | None = None,
    chunks: Sequence[int] | None = None,
    workers: int = 1,
    scheduler: str | object | None = None,
    overwrite: bool = False,
    axes: str | None = None,
    region: Sequence[int] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[Event]:
    """Run ``model`` over every window of ``source`` into the zarr store ``output``.

    ``source`` is anything :func:`napari_qlty.io.sources.open_source` opens (zarr, OME-Zarr,
    TIFF, MRC, npy, URL, dask/numpy/torch arrays); ``model`` a module, a callable, or a
    file (:class:`ModelSpec`). ``memory_budget`` bounds the working set ('2GiB'); the
    default is half the available memory, at most 4 GiB. ``workers`` > 1 runs regions on
    threads; ``scheduler`` (an address or a ``distributed.Client``) runs them on a dask
    cluster (source and model must then be files). ``region`` caps the region shape
    (rounded down to whole chunks; smaller regions stream results sooner). ``cancelled``
    is polled between batches: when it returns True the run stops with
    :class:`Cancelled`, and rerunning resumes. Yields :class:`Event` objects.
    """
    t0 = time.perf_counter()
    if not (probabilities or labels):
        raise ValueError("nothing to write: ask for probabilities, labels or both")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if postprocess is not None and postprocess not in POSTPROCESS:
        raise ValueError(f"postprocess must be one of {sorted(POSTPROCESS)} or None, got {postprocess!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    src = source if isinstance(source, Source) else open_source(source, axes=axes)
    if len(src.shape) != 2 + grid.ndim:
        raise ValueError(
            f"the input is {src.shape} ({len(src.shape) - 2} spatial axes) but the grid tiles {grid.ndim}"
        )
    grid.check_image_shape(src.shape[2:], "the input")
    WindowWeights(grid, weighting)  # a weighting that leaves voxels without weight fails here
    dev = resolve_device(device)
    if isinstance(model, str):
        model = ModelSpec.parse(model)
    if scheduler is not None and not isinstance(model, ModelSpec):
        raise ValueError("a cluster run needs the model as a file (ModelSpec or path), not an object")
    live_model = load_model(model, dev) if isinstance(model, ModelSpec) else on_device(model, dev)
    channels_out = check_model_output(live_model, src.shape[1], grid.window, dev)
    budget = parse_bytes(memory_budget) or min(4 << 30, available_memory() // 2)
    per_batch = batch_bytes(live_model, src.shape[1], channels_out, grid.window, batch_size, dev)
    chunks = tuple(chunks) if chunks is not None else default_chunks(grid.shape)
    if len(chunks) != grid.ndim or min(chunks) < 1:
        raise ValueError(f"chunks must be {grid.ndim} positive ints, got {chunks}")

    params = {
        "input": src.fingerprint,
        "model": model.fingerprint() if isinstance(model, ModelSpec) else model_fingerprint(model),
        "grid": {"shape": grid.shape, "window": grid.window, "step": grid.step, "border": grid.border,
                 "pad": grid.pad},
        "weighting": {"mode": weighting_id(weighting), "border_weight": weighting.border_weight,
                      "sigma": weighting.sigma},
        "outputs": {"probabilities": probabilities, "labels": labels, "dtype": dtype},
        "postprocess": postprocess,
    }
    layout = {
        "n_images": src.shape[0],
        "channels": channels_out,
        "shape": grid.shape,
        "chunks": chunks,
        "region": plan_region_size(grid, chunks, src.shape[1], channels_out, per_batch, budget, region),
        "region_counts": None,
        "probabilities": probabilities,
        "labels": labels,
        "dtype": dtype,
        "axes": [a for a in getattr(src, "axes", "")[2:]] or None,
    }
    layout["region_counts"] = Regions(grid, layout["region"]).counts
    store = OutputStore.open_for_run(output, params, layout, overwrite=overwrite)
    region_size = tuple(store.layout["region"])
    regions = Regions(grid, region_size)
    tasks = [(n, *r) for n in range(src.shape[0]) for r in itertools.product(*(range(c) for c in regions.counts))]
    windows_total = len(grid) * src.shape[0]
    if store.complete:
        yield Event("done", windows_total, windows_total, len(tasks), len(tasks), 0.0,
                    message=f"{output} is already complete")
        return
    finished = store.finished_regions()
    per_task = {t: int(regions.owned(t[1:]).size) for t in tasks}
    done_windows = sum(per_task[t] for t in finished)
    todo = [t for t in tasks if t not in finished]
    job = Job(src, model if scheduler is not None else live_model, grid, weighting, str(output),
              region_size, channels_out, batch_size, str(dev), postprocess)
    yield Event("start", done_windows, windows_total, len(finished), len(tasks), time.perf_counter() - t0,
                message=f"{len(todo)} of {len(tasks)} regions to run ({len(finished)} finished before)")
    deps = {t: {(t[0], *s) for s in regions.senders(t[1:])} - finished for t in todo}
    regions_done = len(finished)
    for task in _execute(job, todo, deps, workers, scheduler, cancelled):
        regions_done += 1
        done_windows += per_task[task]
        start, stop = regions.bounds(task[1:])
        yield Event("region", done_windows, windows_total, regions_done, len(tasks),
                    time.perf_counter() - t0, region=task, start=start,
                    stop=tuple(min(b, s) for b, s in zip(stop, grid.shape)))
    store.mark_complete()
    yield Event("done", done_windows, windows_total, regions_done, len(tasks), time.perf_counter() - t0,
                message=f"wrote {output}")


def on_device(model, device: torch.device):
    """A module whose parameters live elsewhere is copied to ``device``; the caller's stays put."""
    if isinstance(model, torch.nn.Module):
        tensors = list(model.parameters()) + list(model.buffers())
        if any(t.device != device for t in tensors):
            model = copy.deepcopy(model).to(device)
    return model


def model_fingerprint(model) -> str:
    """A module is known by its class and the bytes of its weights; other callables by name."""
    if isinstance(model, torch.nn.Module):
        digest = hashlib.sha256(type(model).__qualname__.encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return "module:" + digest.hexdigest()
    return "callable:" + getattr(model, "__qualname__", type(model).__qualname__)


def weighting_id(weighting: Weighting) -> str:
    """The mode, and for a user map a digest of it (so a rerun with another map is refused)."""
    if weighting.mode == "map":
        m = np.asarray(weighting.weight_map, dtype=np.float64)
        return "map:" + hashlib.sha256(m.tobytes() + str(m.shape).encode()).hexdigest()[:16]
    return weighting.mode


def predict(*args, on_event: Callable[[Event], None] | None = None, **kwargs) -> Event:
    """Run :func:`iter_predict` to the end; returns the last event."""
    last = None
    for event in iter_predict(*args, **kwargs):
        if on_event is not None:
            on_event(event)
        last = event
    assert last is not None
    return last


class ReadyQueue:
    """Tasks handed out as soon as all the regions they wait for are finished."""

    def __init__(self, deps: dict) -> None:
        self.waiting = {t: set(d) for t, d in deps.items()}

    def pop_ready(self) -> list:
        ready = [t for t, d in self.waiting.items() if not d]
        for t in ready:
            del self.waiting[t]
        return ready

    def finished(self, task) -> None:
        for d in self.waiting.values():
            d.discard(task)


def _execute(job: Job, todo: list, deps: dict, workers: int, scheduler, cancelled=None) -> Iterator[tuple]:
    """Run tasks as their senders finish; yield each task as it finishes."""
    if scheduler is not None:
        yield from _execute_distributed(job, todo, deps, scheduler)
        return
    if workers == 1:
        for task in todo:  # C order: senders always come first
            run_region(job, task, cancelled)
            yield task
        return
    stop = threading.Event()

    def should_stop() -> bool:
        return stop.is_set() or (cancelled is not None and bool(cancelled()))

    queue = ReadyQueue(deps)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running = {}
        try:
            while True:
                for t in queue.pop_ready():
                    running[pool.submit(run_region, job, t, should_stop)] = t
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    task = running.pop(future)
                    future.result()
                    queue.finished(task)
                    yield task
        finally:
            stop.set()


def _execute_distributed(job: Job, todo: list, deps: dict, scheduler) -> Iterator[tuple]:
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        queue = ReadyQueue(deps)
        job_future = client.scatter(job, broadcast=True)
        futures = as_completed()
        keys = {}

        def submit_ready():
            for t in queue.pop_ready():
                f = client.submit(run_region, job_future, t, pure=False)
                keys[f.key] = t
                futures.add(f)

        submit_ready()
        for future in futures:
            task = keys.pop(future.key)
            future.result()
            queue.finished(task)
            yield task
            submit_ready()
    finally:
        if not isinstance(scheduler, Client):
            client.close()


__all__ = ["Event", "Job", "Regions", "iter_predict", "plan_region_size", "predict", "run_region"]
