"""Cache-filling jobs in parallel single-thread worker processes (CPU), their results passed through the store.

A small CNN barely uses a second core from inside one process: on this project's 2-core CPU, one 2-thread
process trains 1.66× as fast as one thread, two 1-thread processes side by side 2×. So on the CPU the book
hands independent cached jobs (train and attack one model, one student, one control) to ``workers``
spawned processes of one thread each; every job writes its artifact to the store, and the caller then
calls the same functions in-process, which load. Jobs already in the store are found by a *probe* (the
function run with the store refusing to compute) and never leave the parent, so a warm re-run starts no
worker. On CUDA (one device, one stream of work) and with ``workers=1`` everything stays in-process.

Each pooled job runs on exactly one thread, so its floats do not depend on how many workers ran it.
"""
from __future__ import annotations

import atexit
import os
import signal
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

import torch
from tqdm.auto import tqdm

from atlib.core.store import CacheMiss, Store

Job = tuple[Callable[..., Any], tuple]  # (module-level function fn(ctx, *args) that fills the store, args)
MAX_WORKERS = 8
DEAD_WORKER = ("a worker process died (killed, or out of memory?); what finished is cached: re-run, or set "
               "ATLIB_WORKERS=1 to compute in-process. From a script, call atlib under `if __name__ == '__main__':` "
               "(workers are spawned processes that import the main module)")


def parse_workers(value: Any, what: str = "workers") -> int:
    """``value`` as a number of workers; anything but a whole number >= 1 raises a ValueError naming ``what``."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{what}={value!r}: need a whole number >= 1 (1 runs every job in-process)")
    return n


def default_workers(device: torch.device, pooled: bool = True) -> int:
    """``$ATLIB_WORKERS`` if set; else one per usable core (at most 8) on the CPU when ``pooled``, else 1."""
    raw = os.environ.get("ATLIB_WORKERS")
    if raw:
        return parse_workers(raw, "ATLIB_WORKERS")
    if device.type != "cpu" or not pooled:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))


def probe(store: Store, ctx: Any, jobs: Sequence[Job]) -> list[tuple[Job, list[str]]]:
    """The jobs whose artifacts are not all in ``store`` yet (each probed in-process, nothing computed), each with
    the keys of the stored artifacts its probe read (a Dask worker gets them: :mod:`atlib.training.executor`)."""
    out = []
    for fn, args in jobs:
        reads: list[str] = []
        try:
            with store.probing(), store.recording(reads):
                fn(ctx, *args)
        except CacheMiss:
            out.append(((fn, args), list(dict.fromkeys(reads))))
    return out


def missing(store: Store, ctx: Any, jobs: Sequence[Job]) -> list[Job]:
    """The jobs whose artifacts are not all in ``store`` yet (each probed in-process, nothing computed)."""
    return [job for job, _ in probe(store, ctx, jobs)]


# ------------------------------------------------------------------------------------------ workers
_EXECUTOR: tuple[int, ProcessPoolExecutor] | None = None
_CONTEXTS: dict[Hashable, Any] = {}


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is the parent's to handle (it drops pending jobs)
    torch.set_num_threads(1)  # one thread per job: parallelism comes from the processes
    os.environ["ATLIB_PROGRESS"] = "0"  # the parent shows one bar over the jobs


def _run(factory: Callable[..., Any], factory_args: tuple, fn: Callable[..., Any], args: tuple) -> None:
    key = (factory, factory_args)
    if key not in _CONTEXTS:  # built once per worker: data loaded onto the device once
        _CONTEXTS[key] = factory(*factory_args)
    fn(_CONTEXTS[key], *args)


def _executor(workers: int) -> ProcessPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None or _EXECUTOR[0] != workers:
        shutdown()
        # spawn, not fork: a forked child of a process that already ran OpenMP/torch threads can hang
        _EXECUTOR = (workers, ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker))
    return _EXECUTOR[1]


def shutdown() -> None:
    """Stop the worker processes (they are kept between calls: one start per process, not per call)."""
    global _EXECUTOR
    if _EXECUTOR is not None:
        _EXECUTOR[1].shutdown(wait=True, cancel_futures=True)
        _EXECUTOR = None


atexit.register(shutdown)


def run(jobs: Sequence[Job], workers: int, factory: Callable[..., Any], factory_args: tuple,
        desc: str = "jobs", progress: bool = True) -> None:
    """Run ``fn(factory(*factory_args), *args)`` for every job in ``workers`` single-thread processes.

    ``factory`` and every ``fn`` must be module-level (they are pickled by name). If a job raises, the
    others still run to the end (their artifacts are cached), then the first exception is re-raised here
    with the worker's traceback attached.
    """
    if not jobs:
        return
    ex = _executor(workers)
    futures = [ex.submit(_run, factory, factory_args, fn, args) for fn, args in jobs]
    failed: BaseException | None = None
    try:
        for f in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} workers)",
                      disable=not progress):
            if f.exception() is not None and failed is None:
                failed = f.exception()  # the other jobs still finish: their work is valid and cached
    except BaseException:  # an interrupt: drop what has not started, keep what finishes
        for f in futures:
            f.cancel()
        raise
    if isinstance(failed, BrokenProcessPool):
        shutdown()
        raise RuntimeError(DEAD_WORKER) from failed
    if failed is not None:
        raise failed
