"""Chapter 04's pre-registered rule: how each ablation's paired difference is classified, and claim 3 at each T.

Stated in the chapter before the numbers (``RULE``) and applied here mechanically to the seed intervals.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atlib.core import stats
from atlib.studies.context import Context
from atlib.studies.verdict import Verdict


OUTCOMES = ("removes robustness", "keeps robustness", "reduces robustness", "raises robustness", "inconclusive",
            "flagged: gradient masking")


def classify(diff: stats.Interval, remove: float, equiv: float) -> str:
    """The rule for one ablation, on the paired difference ablation − full of robust accuracy (fractions)."""
    if diff.n < 2:
        return "inconclusive"
    if diff.mean < -remove and diff.high < 0:
        return "removes robustness"
    if -equiv <= diff.low and diff.high <= equiv:
        return "keeps robustness"
    if diff.high < 0:
        return "reduces robustness"
    if diff.low > 0:
        return "raises robustness"
    return "inconclusive"


def claim3(ctx: Context, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Claim 3 at each T by the chapter's rule: (A) robustness distils, (B) incorrect-class information is
    essential, (C) sample-wise confidence is essential."""
    s = ctx.profile.distill
    out: dict[str, Any] = {"rule": RULE.format(remove=100 * s.remove_margin, equiv=100 * s.equivalence_margin),
                           "by_T": {}}
    for T in sorted({r["T"] for r in rows}):
        at = {r["ablation"]: r for r in rows if r["T"] == T}
        d = at["hard_labels"]["diff_vs_full"]["robust"]  # hard − full
        a = d["n"] > 1 and -d["mean"] > s.remove_margin and d["ci"][1] < 0 and not at["full"]["flagged_seeds"]

        def part(names: Sequence[str]) -> str:
            vs = [at[n]["verdict"] for n in names]
            if all(v == "removes robustness" for v in vs):
                return Verdict.SUPPORTED
            if any(v in ("keeps robustness", "raises robustness") for v in vs):
                return Verdict.CONTRADICTED
            return Verdict.INCONCLUSIVE

        b, c = part(("uniform_nonmax", "shuffle_nonmax")), part(("uniform_confidence",))
        if not a:
            overall = Verdict.NOTHING_TO_ABLATE
        elif b == c == Verdict.SUPPORTED:
            overall = Verdict.SUPPORTED
        elif Verdict.CONTRADICTED in (b, c):
            overall = Verdict.CONTRADICTED
        else:
            overall = Verdict.INCONCLUSIVE
        out["by_T"][f"{T:g}"] = {"A_robustness_distils": a, "B_incorrect_classes_essential": b,
                                 "C_sample_confidence_essential": c, "claim3": overall,
                                 "per_ablation": {n: at[n]["verdict"] for n in at if n != "full"}}
    return out


RULE = ("Primary measure: robust accuracy under both evaluation PGD attacks (a sample counts only if it survives "
        "the CE and the margin attack). For each ablation and T, the seed-paired difference Δ = ablation − full, mean with a Student-t "
        "95% interval over seeds. 'removes robustness': mean Δ below −{remove:g} pp and the interval below 0; "
        "'keeps robustness': the interval inside ±{equiv:g} pp; otherwise 'reduces' (interval below 0), 'raises' "
        "(interval above 0) or 'inconclusive'. A flagged student (gradient-masking check failed) is never credited "
        "with robustness: its row becomes 'flagged' unless it already removes or reduces robustness. Claim 3 at a T: "
        "(A) full − hard_labels above {remove:g} pp with its interval above 0; (B) uniform_nonmax and shuffle_nonmax "
        "both remove robustness; (C) uniform_confidence removes it. Supported if A, B and C hold; contradicted if A "
        "holds and one of those three ablations keeps or raises robustness; otherwise inconclusive.")
