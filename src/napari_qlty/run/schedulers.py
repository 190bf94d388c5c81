"""Running tasks as their lower neighbours finish: in order, on threads, or on a dask cluster."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .regions import Regions
from .task import Job, compute_region, finish_region, hand_over, read_input, run_region
from .view import ViewOrder


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


def execute(job: Job, todo: list, deps: dict, workers: int, scheduler, cancelled=None, view=None,
            view_only: bool = False) -> Iterator[tuple]:
    """Run tasks as their senders finish; yield ``(task, (windows run, values saturated))``
    as each finishes. ``view`` (one worker only) puts the regions on screen first."""
    if scheduler is not None:
        yield from _execute_distributed(job, todo, deps, scheduler)
        return
    if workers == 1:
        yield from _execute_pipelined(job, todo, cancelled, view, view_only)
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
                    result = future.result()
                    queue.finished(task)
                    yield task, result
        finally:
            stop.set()


def _execute_pipelined(job: Job, todo: list, cancelled=None, view=None, view_only: bool = False) -> Iterator[tuple]:
    """Regions one after another, each one's input read while the one before it computes,
    and its hand-over and values written while the one after it computes.

    The order is :class:`~napari_qlty.run.view.ViewOrder`'s: C order, or the regions on
    screen first. A region computed before all its senders have handed over keeps its
    sums in the store and is finished by the writer once they have. At most one region
    is read ahead and one written behind, so a run holds two regions at a time
    (:func:`~napari_qlty.run.regions.region_cost` counts them). A region is yielded once
    written; a cancelled or failed run still finishes the writes in flight.
    """
    regions = Regions(job.grid, job.region_size)
    order = ViewOrder(regions, todo, view, view_only)
    waiting = set(todo)  # not yet handed over
    held: set[tuple[int, ...]] = set()  # handed over, waiting for their senders
    windows: dict[tuple[int, ...], int] = {}

    def written(future) -> Iterator[tuple]:
        for task, saturated in future.result():
            yield task, (windows.pop(task), saturated)

    task = order.pop()
    if task is None:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="qlty-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="qlty-write") as writer:
        ahead = reader.submit(read_input, job, task)
        behind = None  # the writer's work for the region before
        try:
            while task is not None:
                x = ahead.result()
                following = order.pop()
                if following is not None:
                    ahead = reader.submit(read_input, job, following)
                sums, windows[task] = compute_region(job, task, x, cancelled)
                del x
                if behind is not None:
                    done, behind = behind, None
                    yield from written(done)
                # one writer, in order: a region's senders have handed over before it finishes
                waiting.discard(task)
                ready = not any(s in waiting for s in order.senders(task))
                freed = sorted(h for h in held if not any(s in waiting for s in order.senders(h)))
                held.difference_update(freed)
                if not ready:
                    held.add(task)
                behind = writer.submit(_write_behind, job, task, sums, ready, freed)
                del sums
                task = following
        except Exception:  # cancelled or failed: the writes in flight finish and are reported
            if behind is not None:
                yield from written(behind)
            raise
        if behind is not None:
            yield from written(behind)


def _write_behind(job: Job, task, sums, ready: bool, freed: list) -> list[tuple]:
    """Hand ``task`` over (and finish it if ``ready``), then finish the held regions
    ``freed`` by it; returns (task, values saturated) of each region finished."""
    core = hand_over(job, task, sums, hold=not ready)
    del sums
    finished = [(task, finish_region(job, task, core))] if ready else []
    return finished + [(h, finish_region(job, h, None)) for h in freed]


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
            result = future.result()
            queue.finished(task)
            yield task, tuple(result)
            submit_ready()
    finally:
        if not isinstance(scheduler, Client):
            client.close()
