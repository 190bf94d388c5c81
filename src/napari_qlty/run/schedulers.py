"""Running tasks as their lower neighbours finish: in order, on threads, or on a dask cluster."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .task import Job, compute_region, finish_region, read_input, run_region


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


def execute(job: Job, todo: list, deps: dict, workers: int, scheduler, cancelled=None) -> Iterator[tuple]:
    """Run tasks as their senders finish; yield ``(task, run_region's result)`` as each finishes."""
    if scheduler is not None:
        yield from _execute_distributed(job, todo, deps, scheduler)
        return
    if workers == 1:
        yield from _execute_pipelined(job, todo, cancelled)
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


def _execute_pipelined(job: Job, todo: list, cancelled=None) -> Iterator[tuple]:
    """Tasks in C order (senders always come first), each region's input read while the
    one before it computes, and its hand-over and values written while the one after it
    computes.

    At most one region is read ahead and one written behind, so a run holds two regions
    at a time (:func:`~napari_qlty.run.regions.region_cost` counts them). A region is
    yielded once written; a cancelled or failed run still finishes the write in flight.
    """
    if not todo:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="qlty-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="qlty-write") as writer:
        ahead = reader.submit(read_input, job, todo[0])
        behind = None  # (task, windows, future) of the region being written
        try:
            for i, task in enumerate(todo):
                x = ahead.result()
                if i + 1 < len(todo):
                    ahead = reader.submit(read_input, job, todo[i + 1])
                sums, windows = compute_region(job, task, x, cancelled)
                del x
                if behind is not None:
                    done, behind = behind, None
                    yield done[0], (done[1], done[2].result())
                # one writer, in C order: a region's senders have handed over before it finishes
                behind = (task, windows, writer.submit(finish_region, job, task, sums))
                del sums
        except Exception:  # cancelled or failed: the region in flight is written and reported
            if behind is not None:
                yield behind[0], (behind[1], behind[2].result())
            raise
        yield behind[0], (behind[1], behind[2].result())


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
