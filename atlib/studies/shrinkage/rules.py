"""Chapter 02's rule for claim 1 (shrinkage): the seed-paired difference AT − standard of each logit statistic.

The rule, stated in the chapter before the numbers: the paired 95% t-interval of treated − base lies entirely
below 0 → "shrinks", entirely above 0 → "grows", else "no clear change".
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atlib.core import stats
from atlib.studies.profiles import ModelSpec
from atlib.studies.shrinkage.runs import ModelRun
from atlib.studies.shrinkage.views import LOGIT_STATS, runs_of


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
