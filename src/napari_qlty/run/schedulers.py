"""Running tasks as their lower neighbours finish: in order, on threads, or on a dask cluster."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .task import Job, run_region


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
        for task in todo:  # C order: senders always come first
            yield task, run_region(job, task, cancelled)
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
