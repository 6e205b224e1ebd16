"""What every chapter starts from: a profile bound to its data, evaluation subset, store and workers.

``context(profile, ...)`` loads the profile's data onto the compute device (memoised), fixes the evaluation
subset and opens the artifact store; ``fill`` hands cache-filling jobs to worker processes (or to Dask:
``$ATLIB_EXECUTOR``, :mod:`atlib.training.executor`); ``write_section`` writes one chapter's part of ``summary.json``.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from atlib.core import data
from atlib.core.runtime import pick_device, progress_default, strict_determinism
from atlib.core.store import Store, artifact_key, costs, package_version, reset_costs
from atlib.studies.confidence.settings import SELECT_ON
from atlib.studies.profiles import Profile, get_profile
from atlib.training import distributed, pool, schedule
from atlib.training import executor as engine

Tensor = torch.Tensor


@dataclass(frozen=True)
class Context:
    """A profile bound to its data (on the compute device), the evaluation subset and the store."""

    profile: Profile
    data: data.Data
    eval_x: Tensor
    eval_y: Tensor
    eval_index: Tensor
    store: Store
    device: torch.device
    data_root: str | None = None
    workers: int = 1  # processes for cache-filling jobs (atlib.training.pool); 1: everything in-process
    executor: str = engine.LOCAL  # or dask-local:N / tcp://HOST:PORT: the jobs go to Dask (atlib.training.executor)


def context(profile: str | Profile, cache_dir: str | None = None, data_root: str | None = None,
            device: str | None = None, workers: int | None = None, executor: str | None = None) -> Context:
    """Load the profile's data onto the device and open the store (data loading is memoised).

    ``workers``: default ``$ATLIB_WORKERS``, else one per CPU core (at most 8) on the CPU for a profile
    whose jobs are worth a process (``Profile.pool_jobs``), else 1 (and always 1 on CUDA unless set).
    ``executor``: ``local`` (the process pool), ``dask-local:N`` or ``tcp://HOST:PORT``; default
    ``$ATLIB_EXECUTOR``, else ``local``. With Dask, every job not yet cached goes to the cluster, whatever ``workers``.
    """
    p = get_profile(profile)
    dev = pick_device(device)
    reset_costs()  # a chapter starts here: what its artifacts cost is counted from now (write_section)
    if os.environ.get("ATLIB_DETERMINISTIC"):
        strict_determinism()
    d = _load_data(p.dataset, data_root, str(dev)).subset(p.train_subset)
    idx = data.eval_indices(len(d.test_y), p.eval_subset)
    n = pool.default_workers(dev, p.pool_jobs) if workers is None else pool.parse_workers(workers)
    ex = engine.default_executor() if executor is None else engine.parse_executor(executor)
    return Context(p, d, d.test_x[idx.to(dev)], d.test_y[idx.to(dev)], idx, Store(cache_dir), dev,
                   None if data_root is None else str(data_root), n, ex)


def fill(ctx: Context, jobs: Sequence[pool.Job], desc: str, progress: bool | None = None,
         order: Callable[[pool.Job], schedule.Order] | None = None) -> int:
    """Compute the jobs not yet in the store in ``ctx.workers`` single-thread processes (:mod:`atlib.training.pool`),
    or on the Dask executor ``ctx.executor`` (:mod:`atlib.training.executor`); returns how many ran. A no-op with
    the local executor and one worker: the caller's own calls then compute in-process. Inside a job session
    (:mod:`atlib.training.schedule`, how ``compute`` runs every chapter at once) the jobs join its shared queue,
    ranked by ``order`` (a tier, then the longest first), and this call waits for them only."""
    if distributed.rank_world()[1] > 1 or (ctx.executor == engine.LOCAL and ctx.workers <= 1):
        return 0  # under torchrun the ranks share each job
    if complete(ctx):
        return 0  # a whole pass of this code over this profile filled the store: nothing to probe
    todo = pool.probe(ctx.store, ctx, jobs)
    if (queue := schedule.current()) is not None and ctx.executor == engine.LOCAL:
        queue.run([job for job, _ in todo], order)
        return len(todo)
    progress = progress_default() if progress is None else progress
    desc = f"{ctx.profile.name}: {desc}"
    if ctx.executor == engine.LOCAL:
        pool.run([job for job, _ in todo], ctx.workers, context, factory_args(ctx), desc=desc, progress=progress)
    else:  # a worker's own GPU is "cuda" (its CUDA_VISIBLE_DEVICES), whichever the client uses
        engine.run(ctx.store, todo, ctx.executor, worker_context, (ctx.profile, ctx.data_root, ctx.device.type),
                   ctx.data.fingerprint, gpu=ctx.device.type == "cuda", desc=desc, progress=progress)
    return len(todo)


# ------------------------------------------------------------------------------ receipts of a whole pass
def receipt_key(ctx: Context) -> str:
    """The receipt of a whole ``compute`` pass for this profile, device type and data, by this exact atlib code."""
    return artifact_key("receipt", {"profile": ctx.profile, "device": ctx.device.type}, package_version(),
                        ctx.data.fingerprint)


def write_receipt(ctx: Context, keys: Sequence[str], counts: Sequence[int]) -> None:
    """Record that every job of every chapter is in the store (``keys``: the artifacts the pass loaded or wrote;
    ``counts``: its model runs and students, as ``compute`` reports them)."""
    ctx.store.save(receipt_key(ctx), {"keys": sorted(keys), "counts": list(counts)})
    _COMPLETE.pop(receipt_key(ctx) + str(ctx.store.root), None)


def receipt(ctx: Context) -> dict[str, Any] | None:
    """The receipt of this code's whole pass over ``ctx``'s profile, if the store holds one."""
    return ctx.store.load(receipt_key(ctx))


def complete(ctx: Context) -> bool:
    """Whether a whole pass of this code over this profile filled this store and each artifact it listed is still
    there (a few thousand file checks, once per process): then no job can be missing and ``fill`` probes none.
    With any edit to atlib the receipt no longer matches and the jobs are probed one by one, as always."""
    memo = receipt_key(ctx) + str(ctx.store.root)
    if memo not in _COMPLETE:
        found = receipt(ctx)
        _COMPLETE[memo] = found is not None and all(ctx.store.path(k).exists() for k in found["keys"])
    return _COMPLETE[memo]


_COMPLETE: dict[str, bool] = {}


def factory_args(ctx: Context) -> tuple:
    """How a worker process rebuilds ``ctx`` (single-thread, in-process jobs): the arguments of :func:`context`."""
    return ctx.profile, str(ctx.store.root), ctx.data_root, str(ctx.device), 1, engine.LOCAL


def selection_set(ctx: Context, select_on: str, holdout: int, data_root: str | None = None
                  ) -> tuple[Tensor, Tensor, str]:
    """(x, y, description) of the images the control is calibrated on (never the test set).

    ``holdout``: the ``holdout`` training images that follow the profile's training subset in the fixed
    permutation (``Data.subset`` takes the first N of it), i.e. images no model of the book trained on.
    ``train``: the training images themselves (clean, eval mode).
    """
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    p = ctx.profile
    if select_on == "train":
        return ctx.data.train_x, ctx.data.train_y, (f"the {len(ctx.data.train_y)} training images (clean, eval "
                                                    f"mode): this profile has no spare training images")
    full = _load_data(p.dataset, data_root, str(ctx.device))
    n_full = len(full.train_y)
    used = n_full if p.train_subset is None else min(p.train_subset, n_full)
    if holdout < 1 or used + holdout > n_full:
        raise ValueError(f"profile {p.name!r} trains on {used} of {n_full} training images: {holdout} held-out "
                         f"images are not available; select on 'train' instead")
    idx = data.fixed_permutation(n_full, seed=0)[used:used + holdout].to(full.train_x.device)
    return (full.train_x[idx], full.train_y[idx],
            f"{holdout} held-out training images (positions {used}–{used + holdout - 1} of the fixed permutation, "
            f"not in the {used}-image training subset)")


def worker_context(store: Store, profile: Profile, data_root: str | None, device: str) -> Context:
    """A Dask worker's context for one job: its private scratch store, its own data, everything in-process."""
    ctx = context(profile, str(store.root), data_root, device, workers=1, executor=engine.LOCAL)
    return replace(ctx, store=store)


@functools.lru_cache(maxsize=4)
def _load_data(name: str, data_root: str | None, device: str) -> data.Data:
    return data.load_dataset(name, data_root).to(device)


COST_SUFFIX = ".cost"


def write_section(results_dir: str | os.PathLike | None, section: str, payload: Any) -> Path | None:
    """Write one chapter's part of ``summary.json`` (merged by the book runner), and beside it (``<section>.cost``)
    what the artifacts behind it cost to compute when they were computed (:func:`atlib.core.store.costs`, counted
    since :func:`context`), which the chapter's provenance box shows."""
    if results_dir is None:
        return None
    out = Path(results_dir) / f"{section}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    out.with_suffix(COST_SUFFIX).write_text(json.dumps(costs()))
    os.replace(tmp, out)
    return out
