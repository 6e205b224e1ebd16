"""One pass over every chapter's cached jobs: planner threads share one priority queue of worker processes.

``python -m atlib compute`` (and the book, before its first chapter) runs each chapter's *planner* (the
function that asks for the chapter's jobs with ``fill`` and loads their results) in its own thread of the
parent. While a :func:`session` is open, ``fill`` hands its missing jobs to the session's queue instead of
running them itself, and waits for those jobs only. The queue keeps ``workers`` jobs in flight and always
starts the ready job that ranks first (``order``: a tier, then the longest first), so a planner that waits on
a chain (chapter 03's bisection, chapter 04's teachers) never leaves a core idle while another planner has
work. A job asked for by two planners runs once. Each job runs in :mod:`atlib.training.pool`'s single-thread
worker processes, so its floats are those of a plain ``fill``.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tqdm.auto import tqdm

from atlib.training import pool

Order = tuple[int, float]  # (tier, -cost): smaller starts first
CHAIN, STEP, BULK = 0, 1, 2  # tiers: jobs others wait on, steps of a chain, the rest


def job_key(job: pool.Job) -> Hashable:
    """Two planners asking for the same function with the same arguments ask for the same job."""
    fn, args = job
    return fn.__module__, fn.__qualname__, args


class Queue:
    """The shared queue of one session: ``submit`` from any thread, jobs start by ``order``."""

    def __init__(self, workers: int, factory: Callable[..., Any], factory_args: tuple, progress: bool):
        self.workers, self._factory, self._factory_args = workers, factory, factory_args
        self._lock = threading.RLock()  # a done-callback may run inside _dispatch (a future done at once)
        self._heap: list[tuple[Order, int, Hashable]] = []
        self._jobs: dict[Hashable, pool.Job] = {}
        self._futures: dict[Hashable, Future] = {}
        self._running = 0
        self._seq = itertools.count()
        # on a terminal a live bar; in a log one line a minute (every line of a live bar would flood it)
        self._bar = tqdm(total=0, desc=f"all jobs ({workers} workers)", disable=not progress,
                         mininterval=1.0 if sys.stderr.isatty() else 60.0)

    @property
    def submitted(self) -> int:
        """How many distinct jobs this session was asked for."""
        return len(self._futures)

    def submit(self, jobs: Sequence[pool.Job], order: Callable[[pool.Job], Order] | None = None) -> list[Future]:
        """Queue the jobs (each once per session); their futures, in order."""
        out = []
        with self._lock:
            for job in jobs:
                k = job_key(job)
                if k not in self._futures:
                    self._futures[k], self._jobs[k] = Future(), job
                    heapq.heappush(self._heap, (order(job) if order else (BULK, 0.0), next(self._seq), k))
                    self._bar.total += 1
                out.append(self._futures[k])
            self._dispatch()
        return out

    def _dispatch(self) -> None:
        with self._lock:
            while self._running < self.workers and self._heap:
                *_, k = heapq.heappop(self._heap)
                fn, args = self._jobs[k]
                self._running += 1
                try:
                    f = pool._executor(self.workers).submit(pool._run, self._factory, self._factory_args, fn, args)
                except BaseException as e:  # a broken pool: this job fails, the planners see it
                    self._finish(k, e)
                    continue
                f.add_done_callback(lambda f, k=k: self._finish(k, f.exception()))

    def _finish(self, k: Hashable, error: BaseException | None) -> None:
        with self._lock:
            self._running -= 1
            self._bar.update(1)
            if isinstance(error, BrokenProcessPool):  # every queued job would fail the same way: fail them now
                broken, error = error, RuntimeError(pool.DEAD_WORKER)
                error.__cause__ = broken
                for *_, q in self._heap:
                    self._futures[q].set_exception(error)
                self._heap.clear()
            if error is None:
                self._futures[k].set_result(None)
            elif not self._futures[k].done():
                self._futures[k].set_exception(error)
            self._dispatch()

    def run(self, jobs: Sequence[pool.Job], order: Callable[[pool.Job], Order] | None = None) -> None:
        """Queue the jobs and wait for them; the first failure is raised (after the others finished)."""
        futures = self.submit(jobs, order)
        wait(futures)
        for f in futures:
            if f.exception() is not None:
                raise f.exception()  # type: ignore[misc]

    def close(self) -> None:
        self._bar.close()


_CURRENT: Queue | None = None


def current() -> Queue | None:
    """The open session's queue (None outside :func:`session`)."""
    return _CURRENT


@contextlib.contextmanager
def session(workers: int, factory: Callable[..., Any], factory_args: tuple, progress: bool = True) -> Iterator[Queue]:
    """While open, every ``fill`` of any thread goes through one shared :class:`Queue`."""
    global _CURRENT
    if _CURRENT is not None:
        raise RuntimeError("a job session is already open")
    _CURRENT = Queue(workers, factory, factory_args, progress)
    try:
        yield _CURRENT
    finally:
        _CURRENT.close()
        _CURRENT = None


def together(planners: dict[str, Callable[[], Any]], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the planners in threads of this process at once; their results by name. If one raises, the others
    still run to the end (what they computed is cached), then the first error is raised with its planner's name.
    ``log`` gets a line as each planner finishes (the phases of a pass, with their wall times)."""
    results: dict[str, Any] = {}
    errors: list[tuple[str, BaseException]] = []
    t0 = time.perf_counter()

    def go(name: str, fn: Callable[[], Any]) -> None:
        try:
            results[name] = fn()
            if log is not None:
                log(f"{name}: done at {time.perf_counter() - t0:.0f}s")
        except BaseException as e:  # noqa: BLE001 - reported below, with the planner's name
            errors.append((name, e))

    threads = [threading.Thread(target=go, args=(n, f), name=f"planner {n}", daemon=True) for n, f in planners.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        name, e = errors[0]
        e.add_note(f"(in the {name!r} planner of a job session)")
        raise e
    return results
