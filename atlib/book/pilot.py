"""The convergence pilot: are the profile's models trained to convergence? (``python -m atlib pilot convergence``)

For every seed it trains (or loads) chapter 02's standard and main AT models and chapter 03's accuracy-matched
standard models at the profile's schedule and at twice its epochs (the matched models: twice their SGD steps),
and compares seed means. The profile **converges** when doubling moves each seed mean by less than its limit in
chapter 02's rule object (``atlib.studies.shrinkage.rules.RULE``: the standard and matched models' clean accuracy,
the main AT model's robust accuracy under PGD-CE and PGD-margin, and, with chapter 04's student epochs doubled, the
full students' worst-case robust accuracy at each distillation T), and no model fails a validity gate
(:mod:`atlib.studies.validity`: a collapsed model is never "converged", whatever its deltas: a constant
predictor's accuracy does not move when its epochs double). The schedule's models are the book's own (same cache
keys), so a pilot run first leaves the book warm. The result goes to ``results/<profile>/pilot_convergence.json``,
which chapter 02 quotes; the book never re-runs the pilot.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from atlib.book.preflight import BadInputError, check_run, check_writable
from atlib.book.runner import REPO, git_commit
from atlib.core import stats
from atlib.studies import context as cx
from atlib.studies.confidence import matched as mc
from atlib.studies.distillation import runs as dr
from atlib.studies.profiles import Profile
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.shrinkage import runs as ex
from atlib.studies import validity
from atlib.studies.shrinkage.convergence import criteria, schedule, student_key
from atlib.studies.shrinkage.rules import RULE
from atlib.training import train

FILENAME = "pilot_convergence.json"


def default_path(p: Profile) -> Path:
    return REPO / "results" / p.name / FILENAME


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _main_models(ctx: cx.Context, progress: bool) -> tuple[dict[str, list[float]], list[validity.Gate]]:
    """Per measure, per seed: clean accuracy (whole test set) of the standard and AT models, robust of AT; and
    the validity gates of these models (chapter 02's: learned, and the AT models robust)."""
    p, (x, y) = ctx.profile, (ctx.data.test_x, ctx.data.test_y.cpu())
    standard = ModelSpec("standard")
    runs = ex.training_runs(ctx, (standard, p.main_at), progress=progress)
    std = [r for r in runs if r.spec == standard]
    at = [r for r in runs if r.spec == p.main_at]
    gates = RULE.model_gates(runs, (standard, p.main_at), p.main_at)
    return {"standard_clean": [stats.accuracy(train.predict(r.model, x), y) for r in std],
            "at_clean": [stats.accuracy(train.predict(r.model, x), y) for r in at],
            "at_robust_linf_ce": [r.acc("linf_ce") for r in at],
            "at_robust_linf_margin": [r.acc("linf_margin") for r in at]}, gates


def _matched(ctx: cx.Context, n: int, progress: bool) -> tuple[list[float], list[validity.Gate]]:
    """Clean accuracy (whole test set) of the matched model of every seed at ``n`` images, and its learned-gates."""
    cx.fill(ctx, [(mc.matched_model, (n, s)) for s in ctx.profile.seeds], f"matched control, n = {n}", progress)
    x, y = ctx.data.test_x, ctx.data.test_y.cpu()
    z = {s: train.predict(mc.matched_model(ctx, n, s), x) for s in ctx.profile.seeds}
    gates = [validity.learned(f"matched_n{n}_s{s}", z[s], y, RULE.learned_margin) for s in z]
    return [stats.accuracy(z[s], y) for s in z], gates


def _students(ctx: cx.Context, progress: bool) -> dict[str, list[float]]:
    """Per distillation T: worst-case robust accuracy of chapter 04's ``full`` student of every seed at ``ctx``'s
    student schedule (distilled from the book's teachers, which the doubled-student run shares)."""
    temps, seeds = ctx.profile.distill.temperatures, ctx.profile.seeds
    cx.fill(ctx, [(dr.student_run, ("full", T, s)) for T in temps for s in seeds], "full students", progress)
    return {student_key(T): [dr.student_run(ctx, "full", T, s, progress=False).acc("robust") for s in seeds]
            for T in temps}


def convergence(ctx: cx.Context, progress: bool = True) -> dict[str, Any]:
    """Run the pilot for ``ctx``'s profile; returns the record (see the module docstring)."""
    t0, commit, date = time.perf_counter(), git_commit(), time.strftime("%Y-%m-%d %H:%M")  # the code it starts with
    p = ctx.profile
    ctx2 = replace(ctx, profile=replace(p, epochs=2 * p.epochs))
    (base, gates), (doubled, gates2) = _main_models(ctx, progress), _main_models(ctx2, progress)
    at = ex.training_runs(ctx, (p.main_at,), progress=progress)
    cal = mc.calibrate(ctx, [r.model for r in at], p.confidence, ctx.data_root, progress)
    (base["matched_clean"], g), (doubled["matched_clean"], g2) = _matched(ctx, cal.n, progress), \
        _matched(ctx2, cal.n, progress)
    collapsed = validity.failed([*gates, *g]) + [replace(x, name=f"{x.name} (doubled epochs)")
                                                 for x in validity.failed([*gates2, *g2])]
    ctx3 = replace(ctx, profile=replace(p, distill=replace(p.distill, epochs=2 * p.distill.epochs)))
    base |= _students(ctx, progress)
    doubled |= _students(ctx3, progress)
    deltas = {k: _mean(doubled[k]) - _mean(base[k]) for k in base}
    rule = criteria(p)
    ok = {k: abs(deltas[k]) < tol for k, tol in rule.items()}
    return {"profile": p.name, "dataset": p.dataset, "commit": commit, "date": date,
            "schedule": schedule(p) | {"doubled_epochs": 2 * p.epochs},
            "seeds": list(p.seeds), "matched_n": cal.n, "matched_epochs": cal.epochs,
            "matched_doubled_epochs": mc.matched_profile(ctx2.profile, len(ctx.data.train_y), cal.n).epochs,
            "per_seed": {"schedule": base, "doubled": doubled}, "deltas": deltas, "criteria": rule,
            "criterion_met": ok, "failed_gates": [x.as_dict() for x in collapsed],
            "converged": all(ok.values()) and not collapsed, "wall_s": round(time.perf_counter() - t0, 1)}


def write(record: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def run_pilot(profile: str | Profile, out: str | None = None, cache_dir: str | None = None,
              data_root: str | None = None, device: str | None = None, workers: int | None = None,
              executor: str | None = None) -> Path:
    """``python -m atlib pilot convergence``: run the pilot and write its record (default :func:`default_path`).
    ``executor``: where its cached jobs run, as for ``compute``. Bad input raises before anything is trained."""
    p, dev, n_workers, engine = check_run(profile, device, data_root, workers, cache_dir, executor)
    path = Path(out).resolve() if out is not None else default_path(p)
    check_writable(path.parent, "the pilot record's folder (--out)")
    if path.is_dir():
        raise BadInputError(f"the pilot record (--out) {path} is a folder; pass a file name (e.g. {FILENAME})")
    ctx = cx.context(p, cache_dir, data_root, str(dev), n_workers, engine)
    rec = convergence(ctx)
    path = write(rec, path)
    verdict = "converged" if rec["converged"] else "NOT converged"
    if rec["failed_gates"]:
        verdict += " (failed validity gates: " + "; ".join(f"{g['name']} ({g['reason']})" for g in rec["failed_gates"]) + ")"
    print(f"{p.name}: {verdict} (doubling the epochs moves: " +
          ", ".join(f"{k} {100 * v:+.2f} pp" for k, v in rec["deltas"].items()) + f"); {rec['wall_s']} s")
    return path
