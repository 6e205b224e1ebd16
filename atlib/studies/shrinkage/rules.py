"""Chapter 02's rule for claim 1 (shrinkage): the seed-paired difference AT − standard of each logit statistic.

The rule, stated in the chapter before the numbers: the paired 95% t-interval of treated − base lies entirely
below 0 → "shrinks", entirely above 0 → "grows", else "no clear change".
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atlib.core import stats
from atlib.studies import validity
from atlib.studies.profiles import ModelSpec
from atlib.studies.shrinkage.runs import ModelRun
from atlib.studies.shrinkage.views import LOGIT_STATS, runs_of

# The validity gates of every model any chapter reads (chapter 02 trains them); fixed before any number was read.
GATES = validity.ModelGates(
    learned_margin=0.10,
    learned_why="over 6 binomial standard errors on 1,000 images (SE ≤ 1.6 pp), far below any model that learned: "
                "a collapsed model sits within noise of the constant predictor",
    robust_margin=0.10,
    robust_why="an AT model must be more robust than standard training by more than evaluation noise (≤ 1.6 pp SE "
               "on 1,000 images) before it can stand for AT; the paper's setting differs by ~45 pp")


def model_gates(runs: Sequence[ModelRun], read: Sequence[ModelSpec], main_at: ModelSpec,
                standard: ModelSpec = ModelSpec("standard")) -> list[validity.Gate]:
    """The gates of every model of ``read`` (learned) and of the main AT models (robust: against the standard
    models' mean under the profile's L∞ PGD-CE attack on the same evaluation images, or the constant predictor's
    accuracy there, whichever is higher: no attack moves a constant, so it is "robust" at that level)."""
    gates = [validity.learned(r.name, r.logits["clean"], r.labels, GATES.learned_margin)
             for spec in read for r in runs_of(runs, spec)]
    std = [r.acc("linf_ce") for r in runs_of(runs, standard)]
    for r in runs_of(runs, main_at):
        const = validity.constant_accuracy(r.labels)
        ref, what = (sum(std) / len(std), "standard") if std else (0.0, "standard")
        if const > ref:
            ref, what = const, "constant predictor"
        gates.append(validity.robust(r.name, r.acc("linf_ce"), ref, GATES.robust_margin, what))
    return gates


def paired_shrinkage(runs: Sequence[ModelRun], base: ModelSpec, treated: ModelSpec,
                     key: str = "clean") -> dict[str, dict[str, Any]]:
    """Per statistic: base and treated means over seeds, and the seed-paired difference treated − base."""
    b, t = {r.seed: r for r in runs_of(runs, base)}, {r.seed: r for r in runs_of(runs, treated)}
    seeds = sorted(set(b) & set(t))
    out = {}
    for name in LOGIT_STATS:
        bv = [b[s].logit_stats(key)[name] for s in seeds]
        tv = [t[s].logit_stats(key)[name] for s in seeds]
        diff = stats.mean_ci([x - y for x, y in zip(tv, bv)])
        out[name] = {"base": stats.mean_ci(bv).as_dict(), "treated": stats.mean_ci(tv).as_dict(),
                     "paired_diff": diff.as_dict(), "per_seed_diff": [x - y for x, y in zip(tv, bv)],
                     "shrinks": bool(diff.n > 1 and diff.high < 0), "grows": bool(diff.n > 1 and diff.low > 0)}
    return out


def shrinkage_text(result: dict[str, dict[str, Any]], base: str, treated: str) -> str:
    """A Markdown paragraph stating, per statistic, what the numbers say (the rule: the paired 95%
    interval of treated − base lies entirely below 0 → "shrinks", above 0 → "grows", else "no clear change")."""
    lines = []
    for name, r in result.items():
        d = r["paired_diff"]
        verdict = "**shrinks**" if r["shrinks"] else "**grows**" if r["grows"] else "shows **no clear change**"
        lines.append(f"- {stats.stat_label(name)}: {base} {r['base']['mean']:.3g}, "
                     f"{treated} {r['treated']['mean']:.3g}; paired difference {d['mean']:+.3g} "
                     f"[{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}] ({d['n']} seeds) → {verdict}")
    return "\n".join(lines)
