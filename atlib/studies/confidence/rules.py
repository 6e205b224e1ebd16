"""Chapter 03's pre-registered rule for claim 2 (issue 14's rule, fixed before the numbers): (a), then (c), then (b)."""
from __future__ import annotations

from typing import Any

from atlib.studies.confidence.runs import DELTA, Analysis, effect_size, interval_of
from atlib.studies.verdict import Verdict

RULE = ("Primary statistic: Spearman's ρ of the top-class log-odds over the whole test set, one value per unit, "
        "95% Student-t interval over units in which each model appears at most once (std vs AT: std_i against "
        "AT_(i+1); std vs matched: std_i against M_(i+2); Δ = ρ(std_i, AT_(i+1)) − ρ(std_i, M_(i+2)); each null: "
        "the disjoint seed pairs (0,1), (2,3), (4,5)). Checked in this order: **(a)** standard and AT differ beyond "
        "seed noise if the upper end of the ρ(std, AT) interval lies below the lower ends of both null intervals "
        "(std vs std, AT vs AT); if not: **not supported**, nothing else checked. **(c)** The control is usable if "
        "it is matched (its mean clean accuracy on the whole test set within {gap} pp of the AT models') and the "
        "lower end of the matched-vs-matched null lies above the upper end of the ρ(std, AT) interval; if not: "
        "**inconclusive**. **(b)** Not explained by accuracy if Δ's interval lies entirely below 0: **supported**; "
        "otherwise **not separated from accuracy**. **Undecided** if an interval the rule needs rests on fewer "
        "than two units.")


def rule_text(max_gap: float) -> str:
    return RULE.replace("{gap}", f"{100 * max_gap:g}")


def effect_sizes(an: Analysis, metric: str = "spearman") -> dict[str, float]:
    """Cohen's d of std-vs-AT against each null and of std-vs-AT against std-vs-matched, over unit values."""
    c = an.correlations[metric]

    def vals(key: str) -> list[float]:
        return [u["value"] for u in c[key]["units"]]

    return {"std_vs_at_minus_std_vs_std": effect_size(vals("std_vs_at"), vals("std_vs_std")),
            "std_vs_at_minus_at_vs_at": effect_size(vals("std_vs_at"), vals("at_vs_at")),
            "std_vs_at_minus_std_vs_matched": effect_size(vals("std_vs_at"), vals("std_vs_matched"))}


def decide(c: dict[str, Any], matched: bool) -> dict[str, Any]:
    """The rule on interval summaries ``c`` (comparison key -> {value, ci, n}) and the control's matched flag."""
    iv = {k: interval_of(v) for k, v in c.items()}
    out: dict[str, Any] = {"a_differs_from_nulls": None, "c_control_usable": None, "matched": matched,
                           "b_not_explained_by_accuracy": None}

    def few(*keys: str) -> bool:
        return any(iv[k].n < 2 for k in keys)

    if few("std_vs_at", "std_vs_std", "at_vs_at"):
        return out | {"outcome": Verdict.UNDECIDED}
    sa = iv["std_vs_at"]
    out["a_differs_from_nulls"] = bool(sa.high < min(iv["std_vs_std"].low, iv["at_vs_at"].low))
    if not out["a_differs_from_nulls"]:
        return out | {"outcome": Verdict.NOT_SUPPORTED}
    if few("matched_vs_matched"):
        return out | {"outcome": Verdict.UNDECIDED}
    out["c_control_usable"] = bool(matched and iv["matched_vs_matched"].low > sa.high)
    if not out["c_control_usable"]:
        return out | {"outcome": Verdict.INCONCLUSIVE}
    if few(DELTA[0]):
        return out | {"outcome": Verdict.UNDECIDED}
    out["b_not_explained_by_accuracy"] = bool(iv[DELTA[0]].high < 0)
    return out | {"outcome": Verdict.SUPPORTED if out["b_not_explained_by_accuracy"] else Verdict.NOT_SEPARATED}


def verdict(an: Analysis, metric: str = "spearman") -> dict[str, Any]:
    """Apply the rule to the analysis' intervals."""
    c = an.correlations[metric]
    return {"rule": rule_text(an.matched.max_gap), "metric": metric, "score": "top-class log-odds",
            **decide(c, an.matched.matched)}
