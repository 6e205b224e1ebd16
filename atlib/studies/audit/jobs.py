"""Chapter 05's cached jobs, for a job session (:mod:`atlib.training.schedule`, ``python -m atlib compute``).

Apart from :mod:`atlib.studies.audit.runs`, whose import closure keys every audit: these jobs load chapter 02's
models and chapter 04's students, and their code must not enter the audits' keys.
"""
from __future__ import annotations

from typing import Any

from atlib.studies import context as cx
from atlib.studies.audit import runs, views
from atlib.studies.distillation import runs as dr
from atlib.studies.shrinkage import runs as shrinkage
from atlib.training import schedule


def audit_spec_job(ctx: Any, spec: Any) -> None:
    """A pool job: the audit of chapter 02's side-seed models of one spec (their models must be in the store)."""
    models = shrinkage.training_runs(ctx, (spec,), progress=False, seeds=ctx.profile.side_seed_list)
    runs.audit_runs(ctx, models, progress=False)


def audit_student_job(ctx: Any, ablation: str, T: float | None, seed: int) -> None:
    """A pool job: the audit of one of chapter 04's students (or PGD-AT students, ``ablation="pgd_at"``)."""
    r = dr.ceiling_run(ctx, seed, progress=False) if ablation == "pgd_at" else \
        dr.student_run(ctx, ablation, T, seed, progress=False)
    ceiling = ablation == "pgd_at"
    one = dr.Grid([] if ceiling else [r], [r] if ceiling else [], {}, {}, ctx.profile.distill.temperatures, (seed,),
                  len(dr.eval_set(ctx)[1]), 0.0)
    runs.audit_students(ctx, one, seeds=(seed,), progress=False)


def precompute_models(ctx: Any) -> None:
    """Chapter 05's jobs on chapter 02's models: every side-seed model audited, one job per spec, then the
    diagnosis of the flagged ones (in this process: a few models at most)."""
    models = shrinkage.training_runs(ctx, progress=False, seeds=ctx.profile.side_seed_list)  # waits for them
    specs = list(dict.fromkeys(r.spec for r in models))
    cx.fill(ctx, [(audit_spec_job, (sp,)) for sp in specs], "audits", order=lambda job: (schedule.BULK, 0.0))
    views.diagnose_runs(ctx, models, runs.audit_runs(ctx, models, progress=False))  # flagged models, here


def precompute_students(ctx: Any, grid: Any) -> None:
    """Chapter 05's jobs on chapter 04's students (the grid loaded): one audit job per audited student."""
    keep = set(ctx.profile.side_seed_list[:ctx.profile.audit.student_seeds])
    jobs = [(audit_student_job, (r.ablation, r.T, r.seed)) for r in [*grid.students, *grid.ceiling] if r.seed in keep]
    cx.fill(ctx, jobs, "student audits", order=lambda job: (schedule.BULK, 0.0))
    views.diagnose_students(ctx, grid, runs.audit_students(ctx, grid, progress=False))  # flagged students, here
