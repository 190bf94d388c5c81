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

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.grid import Grid
from ..core.inference import feed_dtype, fit_postprocessing, for_inference, model_normalisation
from ..core.intensity import Fitted, Normalisation
from ..core.speed import Speed
from ..core.processing import FittedProcessing, Processing, unfitted_from_json
from ..core.processing import fitted_from_json as fitted_intensity
from ..core.weights import Weighting, WindowWeights
from ..core.pyramid import downscale_factors, level_factors
from ..io.formats import canonical
from ..io.ngff import Dims, geometry
from ..io.prediction import OutputStore, levels_layout, read_meta
from ..io.sources import Source, open_source
from ..models import ModelSpec, load_model, resolve_device
from ..models.batching import available_host_memory, window_cost
from ..models.probes import check_input_channels
from .regions import Regions, default_chunks, plan_pyramid_regions
from .schedulers import execute
from ..core.uncertainty import blended_channels, gives_probabilities, kinds, spread_of
from .task import POSTPROCESS, Job
from .view import View


@dataclass(frozen=True)
class Event:
    """What happened: ``kind`` is "start", "region", "paused" (the view is done) or "done"."""

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


def iter_predict(
    model: ModelSpec | str | torch.nn.Module | Callable,
    source,
    grid: Grid,
    output: str | Path,
    *,
    weighting: Weighting = Weighting(),
    batch_size: int | str = 4,
    device: str = "auto",
    memory_budget: str | int | None = None,
    probabilities: bool = True,
    labels: bool = True,
    dtype: str = "float32",
    postprocess: str | None = None,
    threshold: float = 0.5,
    normalise: Normalisation | Fitted | Processing | FittedProcessing | str | None = None,
    chunks: Sequence[int] | None = None,
    workers: int = 1,
    scheduler: str | object | None = None,
    overwrite: bool = False,
    axes: str | None = None,
    region: Sequence[int] | None = None,
    levels: int | None = None,
    downscale: int | Sequence[int] | None = None,
    scale: Sequence[float] | None = None,
    translation: Sequence[float] | None = None,
    units: str | Sequence[str | None] | None = None,
    classes: Sequence[str] | None = None,
    cancelled: Callable[[], bool] | None = None,
    speed: Speed | None = None,
    view: Callable[[], View | None] | None = None,
    view_only: bool = False,
    uncertainty: bool = False,
) -> Iterator[Event]:
    """Run ``model`` over every window of ``source`` into the zarr store ``output``.

    ``source`` is anything :func:`napari_qlty.io.sources.open_source` opens (zarr, OME-Zarr,
    TIFF, MRC, npy, URL, dask/numpy/torch arrays), in any dtype; windows are cast to the
    model's dtype on the device. ``model`` is a module, a callable, or a file
    (:class:`ModelSpec`); it is never changed (see :func:`~napari_qlty.core.inference.for_inference`).
    ``normalise`` maps intensities with statistics of the whole input, measured once and
    kept in the store (None: the model's own normalisation, else the stored values).
    ``memory_budget`` bounds the working set ('2GiB'); the default is half the available
    memory, at most 4 GiB. ``batch_size`` may be ``"auto"``: the largest power of 2 (up to
    64) whose batch takes at most a quarter of the budget. One-channel outputs get labels
    ``value >= threshold`` (after a sigmoid unless ``postprocess="sigmoid"``), several
    channels the argmax. ``workers`` > 1 runs regions on threads; ``scheduler`` (an
    address or a ``distributed.Client``) runs them on a dask cluster (source and model
    must then be files). ``region`` caps the region shape (rounded down to whole chunks;
    smaller regions stream results sooner). ``cancelled`` is polled between batches: when
    it returns True the run stops with :class:`Cancelled`, and rerunning resumes.

    The store is an OME-Zarr image with a pyramid written as regions finish: ``levels``
    (None: until the coarsest fits a screen; 1: none), each ``downscale`` times smaller
    along the tiled axes (default 2 along space, 1 along time). ``scale``,
    ``translation`` (physical voxel size and position, one value per tiled axis) and
    ``units`` default to the input's own; ``classes`` names the labels (default: the
    model's class names, if it carries them).
    ``speed`` runs the model in lower precision, channels-last or compiled (off by
    default; a store records it, so a resume keeps it). ``view`` (a callable giving the
    :class:`~napari_qlty.run.view.View` on screen, asked again after every region) runs
    the regions it touches first, and with ``view_only`` stops there with a "paused"
    event (a rerun finishes the rest); the result is the same in any order.
    ``uncertainty`` also writes where the model is unsure (see
    :mod:`napari_qlty.core.uncertainty`: the windows' disagreement, an ensemble's
    members', the entropy), as the store's ``uncertainty`` image. Yields :class:`Event`
    objects.
    """
    t0 = time.perf_counter()
    if not (probabilities or labels):
        raise ValueError("nothing to write: ask for probabilities, labels or both")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if postprocess is not None and postprocess not in POSTPROCESS:
        raise ValueError(f"postprocess must be one of {sorted(POSTPROCESS)} or None, got {postprocess!r}")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be an int >= 1 or 'auto', got {batch_size!r}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if view is not None and (workers > 1 or scheduler is not None):
        raise ValueError("a view orders the regions of one worker: use workers=1 and no scheduler with view")
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
    # the fingerprint first: nothing that runs below may change what identifies the model
    fingerprint = model.fingerprint() if isinstance(model, ModelSpec) else model_fingerprint(model)
    live_model = load_model(model, dev) if isinstance(model, ModelSpec) else for_inference(model, dev)
    model_dtype = feed_dtype(live_model, src.dtype)
    check_input_channels(live_model, src.shape[1])
    # runs the model on windows of 1 and 2 (checking its output), once per model structure
    per_window, fixed, channels_out = window_cost(live_model, src.shape[1], grid.window, dev, model_dtype)
    if postprocess == "softmax" and channels_out == 1:
        raise ValueError("the model has one output channel, whose softmax is always 1: use sigmoid (or none)")
    budget = parse_bytes(memory_budget) or min(4 << 30, available_host_memory() // 2)
    chunks = tuple(chunks) if chunks is not None else default_chunks(grid.shape)
    if len(chunks) != grid.ndim or min(chunks) < 1:
        raise ValueError(f"chunks must be {grid.ndim} positive ints, got {chunks}")
    in_itemsize = src.dtype.itemsize
    per_window = per_window or 0
    if batch_size == "auto":
        batch_size = auto_batch(per_window, fixed, budget)
    per_batch = fixed + batch_size * per_window

    params = {
        "input": src.fingerprint,
        "model": fingerprint,
        "grid": {"shape": grid.shape, "window": grid.window, "step": grid.step, "border": grid.border,
                 "pad": grid.pad},
        "weighting": {"mode": weighting_id(weighting), "border_weight": weighting.border_weight,
                      "sigma": weighting.sigma},
        "outputs": {"probabilities": probabilities, "labels": labels, "dtype": dtype},
        "postprocess": postprocess,
    }
    speed = speed or Speed()
    if not speed.default:  # results differ a little: a resume must run the same way
        params["speed"] = speed.to_json()
    finishing = fit_postprocessing(live_model, src)  # a package's, on the blended output
    if finishing is not None:
        params["postprocessing"] = canonical(finishing.to_json())
    rule = {"kind": "argmax"}
    if channels_out == 1:
        given = postprocess == "sigmoid" or (finishing is not None and finishing.gives_probabilities)
        rule = {"kind": "threshold", "threshold": float(threshold), "probabilities": given}
        params["labels_rule"] = rule
    moments = None
    if uncertainty:
        members = spread_of(live_model) is not None
        gives = gives_probabilities(live_model, postprocess) or (finishing is not None and finishing.gives_probabilities)
        moments = {"classes": channels_out, "members": members, "probabilities": gives}
        params["outputs"]["uncertainty"] = kinds(members)
    summed = blended_channels(channels_out, moments["members"]) if moments else channels_out
    tiled = list(getattr(src, "axes", "")[2:]) or [f"d{i}" for i in range(grid.ndim)]
    factors = level_factors(grid.shape, downscale_factors(tiled, downscale), levels)
    params["pyramid"] = {"levels": len(factors), "factors": factors[1] if len(factors) > 1 else None}
    intensity = _intensity(normalise, live_model, src, output, params)
    params["normalisation"] = canonical(intensity.to_json())
    # in this process: a region read ahead or written behind the one computing (one
    # sequential run), or one region and one batch per thread; a cluster's workers each
    # hold their own
    region_size, floor = plan_pyramid_regions(grid, chunks, factors, src.shape[1], summed,
                                              per_batch * (workers if scheduler is None else 1), budget,
                                              region, in_itemsize=in_itemsize,
                                              regions_held=max(2, workers) if scheduler is None else 1)
    image_axis = getattr(src, "image_axis", "n")
    layout = {
        "n_images": src.shape[0],
        "channels": channels_out,
        "shape": grid.shape,
        "chunks": chunks,
        "region": region_size,
        "region_counts": Regions(grid, region_size).counts,
        "probabilities": probabilities,
        "labels": labels,
        "uncertainty": params["outputs"].get("uncertainty"),
        "labels_rule": rule,
        "dtype": dtype,
        "batch_size": batch_size,
        "axes": tiled,
        "image_axis": image_axis,
        "dims": Dims.plan(src.shape[0], tiled, image_axis=image_axis).to_json(),
        "label_dims": Dims.plan(src.shape[0], tiled, image_axis=image_axis, channel=False).to_json(),
        "levels": levels_layout(grid.shape, chunks, factors, floor),
        **geometry(src, tiled, scale, translation, units),
        "classes": list(classes) if classes is not None else (getattr(live_model, "napari_qlty_info", None)
                                                               or {}).get("classes"),
    }
    store = OutputStore.open_for_run(output, params, layout, overwrite=overwrite)
    try:
        job = Job(src, model if scheduler is not None else live_model, grid, weighting, str(output),
                  tuple(store.layout["region"]), summed, batch_size, str(dev), postprocess, intensity, speed,
                  finishing, moments)
        yield from _run(store, job, workers, scheduler, cancelled, view, view_only, t0)
    finally:
        store.close()


def _run(store: OutputStore, job: Job, workers, scheduler, cancelled, view, view_only, t0) -> Iterator[Event]:
    src, grid, output = job.source, job.grid, job.store_path
    regions = Regions(grid, job.region_size)
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
    yield Event("start", done_windows, windows_total, len(finished), len(tasks), time.perf_counter() - t0,
                message=f"{len(todo)} of {len(tasks)} regions to run ({len(finished)} finished before)")
    deps = {t: {(t[0], *s) for s in regions.senders(t[1:])} - finished for t in todo}
    regions_done = len(finished)
    saturated = 0
    for task, (_windows, clipped) in execute(job, todo, deps, workers, scheduler, cancelled, view, view_only):
        regions_done += 1
        done_windows += per_task[task]
        saturated += clipped
        start, stop = regions.bounds(task[1:])
        yield Event("region", done_windows, windows_total, regions_done, len(tasks),
                    time.perf_counter() - t0, region=task, start=start,
                    stop=tuple(min(b, s) for b, s in zip(stop, grid.shape)))
    if regions_done < len(tasks):  # view_only: the view is done, the rest waits for a rerun
        yield Event("paused", done_windows, windows_total, regions_done, len(tasks), time.perf_counter() - t0,
                    message=f"the view is done; {len(tasks) - regions_done} of {len(tasks)} regions are left "
                            "(run again to finish)")
        return
    store.mark_complete()
    message = f"wrote {output}"
    if saturated:
        message += (f"; {saturated:,} values beyond float16's range were saturated to +-65504 "
                    "(write float32 to keep them)")
    yield Event("done", done_windows, windows_total, regions_done, len(tasks), time.perf_counter() - t0,
                message=message)


def auto_batch(per_window: int, fixed: int, budget: int, largest: int = 64) -> int:
    """The largest power of 2 up to ``largest`` whose batch takes at most a quarter of the
    budget (the rest is for the region), and at least 1."""
    n = 1
    while n * 2 <= largest and fixed + n * 2 * per_window <= budget // 4:
        n *= 2
    return n


def _intensity(normalise, model, src, output, params) -> Fitted | FittedProcessing:
    """The normalisation with its statistics: those of the store being resumed, if it was
    made with the same recipe and everything else equal, else measured now."""
    if normalise is None:
        normalise = model_normalisation(model) or Normalisation()
    if isinstance(normalise, str):
        normalise = Normalisation(normalise)
    if isinstance(normalise, (Fitted, FittedProcessing)):
        return normalise
    stored = read_meta(output)
    if stored is not None:
        old = dict(stored.get("params") or {})
        fitted = old.pop("normalisation", None)
        if fitted and unfitted_from_json(fitted) == normalise and old == canonical(params):
            return fitted_intensity(fitted)
    return normalise.fit(src)


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


__all__ = ["Event", "iter_predict", "predict"]
