"""``python -m atlib compute``: the book's expensive experiments without any notebook.

Fills the artifact cache (on a GPU box, say) so that a later ``python -m atlib book`` with the same cache
only loads: chapter 02's models (which chapters 01, 03 and 05 reuse), chapter 03's accuracy-matched
control, chapter 04's students and chapter 05's audit of every model. Chapter 01's linear models and
first-order checks are cheap and stay with the chapter.

Under ``torchrun --nproc_per_node N`` chapter 02's models (the bulk of the work) are trained with DDP, each
rank on a shard of every batch, and only rank 0 writes them; then rank 0 computes the rest alone (the
students, controls and audits are many small jobs, not one big one) and the other ranks exit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from atlib.book.preflight import check_run
from atlib.studies import context as cx
from atlib.studies.audit import runs as audit
from atlib.studies.confidence import runs as confidence
from atlib.studies.distillation import runs as distill_runs
from atlib.studies.profiles import Profile
from atlib.studies.shrinkage import runs as ex
from atlib.training import distributed


@dataclass(frozen=True)
class Computed:
    """What one ``compute`` run touched, and how much of it was already cached."""

    model_runs: int
    model_runs_cached: int
    students: int
    students_cached: int
    audited: int
    audited_cached: int

    def __str__(self) -> str:
        return (f"{self.model_runs} model runs ({self.model_runs_cached} already cached), {self.students} students "
                f"({self.students_cached} cached), {self.audited} models audited ({self.audited_cached} cached)")


def compute_all(profile: str | Profile, cache_dir: str | None = None, data_root: str | None = None,
                device: str | None = None, workers: int | None = None, executor: str | None = None) -> Computed:
    """Run chapters 02–05's cached experiment functions in book order; returns what was computed.

    ``executor``: where the cache-filling jobs run (``local``, ``dask-local:N``, ``tcp://HOST:PORT``; see
    :func:`atlib.studies.context.context`). Bad input raises before anything is computed
    (:func:`atlib.book.preflight.check_run`)."""
    p, dev, n_workers, engine = check_run(profile, device, data_root, workers, cache_dir, executor)  # bad input: now
    ctx = cx.context(p, cache_dir, data_root, str(dev), n_workers, engine)
    ddp = distributed.init_from_env(ctx.device)  # under torchrun: chapter 02's models with DDP, a shard per rank
    runs = ex.training_runs(ctx)  # chapter 02 (and 01, 03, 05 reuse them)
    if ddp:
        rank = distributed.rank_world()[0]
        torch.distributed.destroy_process_group()
        if rank != 0:  # rank 0 (which wrote the models) goes on alone with the rest
            return Computed(len(runs), sum(r.cached for r in runs), 0, 0, 0, 0)
    confidence.analyse(ctx, data_root)  # chapter 03: the accuracy-matched control and the early-stopped snapshots
    grid = distill_runs.run_grid(ctx)  # chapter 04
    side = [r for r in runs if r.seed in ctx.profile.side_seed_list]  # chapter 05 audits the side seeds' models
    records = audit.audit_runs(ctx, side) + audit.audit_students(ctx, grid)  # chapter 05
    students = grid.students + grid.ceiling
    return Computed(len(runs), sum(r.cached for r in runs), len(students), sum(s.cached for s in students),
                    len(records), sum(bool(r["cached"]) for r in records))
