"""``python -m atlib compute``: every chapter's cached experiments in one pass, without any notebook.

Fills the artifact cache so that a later ``python -m atlib book`` with the same cache only loads (the book calls
this itself before its first chapter): chapter 01's controls and flip radii, chapter 02's models (which chapters
01, 03, 04 and 05 reuse; the standard runs save chapter 03's early-stopped snapshots as they train), chapter 03's
accuracy-matched control, chapter 04's teachers' outputs and students, and chapter 05's audits.

On the CPU with worker processes the chapters' *planners* run at once, in threads, over one shared job queue
(:mod:`atlib.training.schedule`): a job starts as soon as its inputs exist, the models every chain waits on
first, then the longest first. With one worker, or with a Dask executor, the planners run one after another.

Under ``torchrun --nproc_per_node N`` chapter 02's models (the bulk of the work) are trained with DDP, each
rank on a shard of every batch, and only rank 0 writes them; then rank 0 computes the rest alone (the
students, controls and audits are many small jobs, not one big one) and the other ranks exit.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from atlib.book.preflight import check_run
from atlib.core.runtime import progress_default
from atlib.core.store import touched
from atlib.studies import context as cx
from atlib.studies.audit import jobs as audit_jobs
from atlib.studies.confidence import runs as confidence
from atlib.studies.distillation import runs as distill_runs
from atlib.studies.profiles import Profile
from atlib.studies.shrinkage import runs as ex
from atlib.studies.theory import controls
from atlib.training import distributed, executor as engines, pool, schedule


@dataclass(frozen=True)
class Computed:
    """What one ``compute`` run touched, and how much of it was already cached."""

    model_runs: int
    model_runs_cached: int
    students: int
    students_cached: int

    def __str__(self) -> str:
        return (f"{self.model_runs} model runs ({self.model_runs_cached} already cached), {self.students} students "
                f"({self.students_cached} cached), with chapter 01's controls, chapter 03's matched control and "
                f"chapter 05's audits")


def _students_and_audits(ctx: cx.Context) -> distill_runs.Grid:
    grid = distill_runs.run_grid(ctx, progress=False)  # chapter 04
    audit_jobs.precompute_students(ctx, grid)  # chapter 05's audits of its students
    return grid


def planners(ctx: cx.Context) -> dict[str, Callable[[], Any]]:
    """Every chapter's planner, in book order (the order they run in without a job session)."""
    return {"02 models": lambda: ex.training_runs(ctx, progress=False),
            "01 controls": lambda: controls.precompute(ctx),
            "03 matched control": lambda: confidence.precompute(ctx),
            "04 students, 05 their audits": lambda: _students_and_audits(ctx),
            "05 model audits": lambda: audit_jobs.precompute_models(ctx)}


def compute_context(ctx: cx.Context, progress: bool | None = None) -> Computed:
    """Run every planner for ``ctx``: at once over one job queue when jobs go to local worker processes, else in
    book order."""
    progress = progress_default() if progress is None else progress
    if cx.complete(ctx):  # this code's whole pass over this profile is in the store already: all cached
        models, _, students, _ = cx.receipt(ctx)["counts"]
        return Computed(models, models, students, students)
    plans = planners(ctx)
    if ctx.executor == engines.LOCAL and ctx.workers > 1 and distributed.rank_world()[1] == 1:
        with schedule.session(ctx.workers, cx.context, cx.factory_args(ctx), progress):
            done = schedule.together(plans, log=(lambda line: print(f"    {line}", flush=True)) if progress else None)
        pool.shutdown()  # the chapters that follow only load: no idle worker processes kept
    else:
        done = {name: plan() for name, plan in plans.items()}
    runs, grid = done["02 models"], done["04 students, 05 their audits"]
    students = grid.students + grid.ceiling
    counts = (len(runs), sum(r.cached for r in runs), len(students), sum(s.cached for s in students))
    cx.write_receipt(ctx, touched(), counts)
    return Computed(*counts)


def compute_all(profile: str | Profile, cache_dir: str | None = None, data_root: str | None = None,
                device: str | None = None, workers: int | None = None, executor: str | None = None) -> Computed:
    """Run every chapter's cached experiments; returns what was computed.

    ``executor``: where the cache-filling jobs run (``local``, ``dask-local:N``, ``tcp://HOST:PORT``; see
    :func:`atlib.studies.context.context`). Bad input raises before anything is computed
    (:func:`atlib.book.preflight.check_run`)."""
    p, dev, n_workers, engine = check_run(profile, device, data_root, workers, cache_dir, executor)  # bad input: now
    ctx = cx.context(p, cache_dir, data_root, str(dev), n_workers, engine)
    if distributed.init_from_env(ctx.device):  # under torchrun: chapter 02's models with DDP, a shard per rank
        runs = ex.training_runs(ctx)
        rank = distributed.rank_world()[0]
        torch.distributed.destroy_process_group()
        if rank != 0:  # rank 0 (which wrote the models) goes on alone with the rest
            return Computed(len(runs), sum(r.cached for r in runs), 0, 0)
    return compute_context(ctx)
