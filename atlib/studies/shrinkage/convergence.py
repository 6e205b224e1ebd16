"""Chapter 02's account of convergence: the recorded pilot (``python -m atlib pilot convergence``), quoted.

The book never re-runs the pilot (it trains every model twice as long); chapter 02 reads the record committed
in ``results/<profile>/pilot_convergence.json`` and checks that it was run for the schedule the book uses now.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atlib.studies.profiles import Profile
from atlib.studies.shrinkage import rules

RESULTS = Path(__file__).resolve().parents[3] / "results"
STUDENT_PREFIX = "full_student_robust_T"  # + T: the record's key of those students
LABELS = {"standard_clean": "standard, clean accuracy", "at_clean": "main AT, clean accuracy", "at_robust_linf_ce": "main AT, robust accuracy (PGD-CE)",
          "at_robust_linf_margin": "main AT, robust accuracy (PGD-margin)",
          "matched_clean": "matched control, clean accuracy"}


def student_key(T: float) -> str:
    """The record's key of the full students' robust accuracy at distillation temperature ``T``."""
    return f"{STUDENT_PREFIX}{T:g}"


def criteria(p: Profile) -> dict[str, float]:
    """The pilot's limits for ``p`` (the rule's ``convergence``) and the full students' at each of its temperatures."""
    r = rules.RULE
    return dict(r.convergence) | {student_key(T): r.student_convergence for T in p.distill.temperatures}


def label(key: str) -> str:
    if key.startswith(STUDENT_PREFIX):
        return f"chapter 04's full student at T = {key.removeprefix(STUDENT_PREFIX)}, worst-case robust accuracy"
    return LABELS.get(key, key)


def schedule(p: Profile) -> dict[str, Any]:
    """What a pilot record must have been run with to vouch for ``p``'s models (chapter 04's students too)."""
    return {"epochs": p.epochs, "batch_size": p.batch_size, "lr": p.lr, "train_subset": p.train_subset,
            "train_steps": p.train_steps, "main_at": p.main_at.label, "student_epochs": p.distill.epochs,
            "student_temperatures": list(p.distill.temperatures), "eps_fadein_epochs": p.eps_fadein_epochs,
            "precision": p.precision}


# Schedule settings added after some pilots were recorded, with the value every run had before they existed
PREDATES = {"eps_fadein_epochs": 0,  # AT trained from full ε until the fade-in was added
            "precision": "fp32"}  # every model trained in float32 until the precision became a setting


def pilot_record(p: Profile, root: Path = RESULTS) -> dict[str, Any] | None:
    """The recorded pilot of ``p`` (by profile name), or None when there is none."""
    path = root / p.name / "pilot_convergence.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run python -m atlib pilot convergence "
                         f"--profile {p.name}") from None


def stale_fields(rec: dict[str, Any], p: Profile) -> list[str]:
    """The schedule settings in which the record differs from ``p`` (seeds included); empty when it applies."""
    now = schedule(p) | {"seeds": list(p.seeds)}
    then = {k: rec.get("schedule", {}).get(k, PREDATES.get(k)) for k in schedule(p)} | {"seeds": rec.get("seeds")}
    return [k for k in now if now[k] != then[k]]


def convergence_text(rec: dict[str, Any] | None, p: Profile) -> str:
    """Markdown: what the pilot says about this profile's schedule, with its commit and date."""
    cmd = f"`python -m atlib pilot convergence --profile {p.name}`"
    if rec is None:
        return (f"**No convergence pilot is recorded for profile `{p.name}`**: that its models are trained to "
                f"convergence is not shown. Run {cmd} to record one.")
    stale = stale_fields(rec, p)
    if stale:
        return (f"**The recorded pilot (commit `{rec['commit'][:12]}`, {rec['date']}) was run for another "
                f"schedule** (differs in {', '.join(stale)}): convergence of these models is not shown. Re-run {cmd}.")
    rows = [f"- {label(k)}: {100 * d:+.2f} pp " + (
            f"(limit ±{100 * rec['criteria'][k]:g} pp) → {'met' if rec['criterion_met'][k] else '**not met**'}"
            if k in rec["criteria"] else "(reported, no criterion)") for k, d in rec["deltas"].items()]
    s = rec["schedule"]
    head = (f"Convergence pilot ({cmd}, commit `{rec['commit'][:12]}`, {rec['date']}, seeds "
            f"{', '.join(map(str, rec['seeds']))}): every model trained at {s['epochs']} epochs and again at "
            f"{s['doubled_epochs']} (the matched control at n = {rec['matched_n']}: {rec['matched_epochs']} and "
            f"{rec['matched_doubled_epochs']} epochs; chapter 04's full students at {s['student_epochs']} and "
            f"{2 * s['student_epochs']} epochs). Doubling moves the seed means by:")
    bad = rec.get("failed_gates", [])
    gates = [f"- **failed validity gate** {g['name']}: {g['reason']}" for g in bad]
    tail = ("The schedule **converges** by the pilot's criterion." if rec["converged"] else
            "The schedule does **not** converge by the pilot's criterion: these models are not trained to convergence"
            + (" (a model that failed a validity gate, e.g. one collapsed to a constant, never counts as converged)."
               if bad else "."))
    return "\n".join([head, *rows, *gates, "", tail])


def convergence_section(rec: dict[str, Any] | None, p: Profile) -> dict[str, Any]:
    """summary.json's ``convergence``: the schedule, the doubled-epoch deltas and the pilot's commit."""
    if rec is None:
        return {"schedule": schedule(p), "recorded": False}
    return {"schedule": schedule(p), "recorded": True, "applies": not stale_fields(rec, p),
            "commit": rec["commit"], "date": rec["date"], "doubled_epochs": rec["schedule"]["doubled_epochs"],
            "deltas": rec["deltas"], "criteria": rec["criteria"], "converged": rec["converged"],
            "matched_n": rec["matched_n"], "failed_gates": rec.get("failed_gates", [])}
