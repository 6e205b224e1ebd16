"""What every chapter starts from: a profile bound to its data, evaluation subset, store and workers.

``context(profile, ...)`` loads the profile's data onto the compute device (memoised), fixes the evaluation
subset and opens the artifact store; ``fill`` hands cache-filling jobs to worker processes; ``write_section``
writes one chapter's part of ``summary.json``.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atlib.core import data
from atlib.core.runtime import pick_device, progress_default, strict_determinism
from atlib.core.store import Store
from atlib.studies.profiles import Profile, get_profile
from atlib.training import distributed, pool

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


def context(profile: str | Profile, cache_dir: str | None = None, data_root: str | None = None,
            device: str | None = None, workers: int | None = None) -> Context:
    """Load the profile's data onto the device and open the store (data loading is memoised).

    ``workers``: default ``$ATLIB_WORKERS``, else one per CPU core (at most 8) on the CPU for a profile
    whose jobs are worth a process (``Profile.pool_jobs``), else 1 (and always 1 on CUDA unless set).
    """
    p = get_profile(profile)
    dev = pick_device(device)
    if os.environ.get("ATLIB_DETERMINISTIC"):
        strict_determinism()
    d = _load_data(p.dataset, data_root, str(dev)).subset(p.train_subset)
    idx = data.eval_indices(len(d.test_y), p.eval_subset)
    n = pool.default_workers(dev, p.pool_jobs) if workers is None else pool.parse_workers(workers)
    return Context(p, d, d.test_x[idx.to(dev)], d.test_y[idx.to(dev)], idx, Store(cache_dir), dev,
                   None if data_root is None else str(data_root), n)


def fill(ctx: Context, jobs: Sequence[pool.Job], desc: str, progress: bool | None = None) -> int:
    """Compute the jobs not yet in the store in ``ctx.workers`` single-thread processes (see :mod:`atlib.training.pool`);
    returns how many ran. A no-op with one worker: the caller's own calls then compute in-process."""
    if ctx.workers <= 1 or distributed.rank_world()[1] > 1:  # under torchrun the ranks share each job
        return 0
    todo = pool.missing(ctx.store, ctx, jobs)
    progress = progress_default() if progress is None else progress
    pool.run(todo, ctx.workers, context, (ctx.profile, str(ctx.store.root), ctx.data_root, str(ctx.device), 1),
             desc=f"{ctx.profile.name}: {desc}", progress=progress)
    return len(todo)


@functools.lru_cache(maxsize=4)
def _load_data(name: str, data_root: str | None, device: str) -> data.Data:
    return data.load_dataset(name, data_root).to(device)


def write_section(results_dir: str | os.PathLike | None, section: str, payload: Any) -> Path | None:
    """Write one chapter's part of ``summary.json`` (merged by the book runner)."""
    if results_dir is None:
        return None
    out = Path(results_dir) / f"{section}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float))
    os.replace(tmp, out)
    return out
