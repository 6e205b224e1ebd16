"""Chapter 03's pre-registered rule for claim 2 (issue 14's rule, fixed before the numbers): (a), then (c), then (b).

One rule object, :data:`RULE` (:class:`ConfidenceRule`): its constant (when the accuracy-matched control counts as
matched), its text, its decision on the interval summaries, and the ledger's reading of its outcomes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atlib.studies import validity
from atlib.studies.confidence.matched import MatchedControl
from atlib.studies.confidence.runs import DELTA, Analysis, effect_size, interval_of
from atlib.studies.rule import Rule, const, pp
from atlib.studies.verdict import Verdict


@dataclass(frozen=True, kw_only=True)
class ConfidenceRule(Rule):
    """Claim 2: standard and AT models differ in which samples are confident, beyond seed noise and beyond what AT's
    lower accuracy explains (an accuracy-matched control)."""

    TITLE = "Claim 2: standard and AT models differ in which samples are confident"
    CHAPTER = "03_confidence"
    TEXT = {
        "statistic": (
            "Primary statistic: Spearman's ρ of the top-class log-odds over the whole test set, one value per unit, "
            "a Student-t interval over units in which each model appears at most once (std vs AT: std$_i$ against "
            "AT$_{{i+1}}$; std vs matched: std$_i$ against M$_{{i+2}}$; Δ = ρ(std$_i$, AT$_{{i+1}}$) − ρ(std$_i$, "
            "M$_{{i+2}}$); each null: the disjoint seed pairs (0, 1), (2, 3), …). It is checked in this order:"),
        "steps": (
            "> **(a) Standard and AT differ beyond seed noise:** the upper end of the $\\rho(\\text{{std}}, "
            "\\text{{AT}})$ interval lies below the lower ends of both null intervals (std vs std, AT vs AT). If (a) "
            "fails: claim 2 is **not supported**, and nothing below is checked.\n>\n"
            "> **(c) The control is usable:** it is matched (its mean clean accuracy on the whole test set within "
            "{max_gap} pp of the AT models') and the lower end of the matched-vs-matched null interval lies above the "
            "upper end of the $\\rho(\\text{{std}}, \\text{{AT}})$ interval (a control whose own seeds disagree as "
            "much as std and AT do cannot separate anything). If (c) fails: **inconclusive**.\n>\n"
            "> **(b) Not explained by accuracy:** AT reorders the standard models' confidences more than a standard "
            "model of AT's accuracy does: the interval of $\\Delta = \\rho(\\text{{std}}, \\text{{AT}}) - "
            "\\rho(\\text{{std}}, \\text{{matched}})$ lies entirely below zero. If (b) holds: **supported**; "
            "otherwise: **not separated from accuracy**.\n>\n"
            "> **Undecided** if an interval the rule needs rests on fewer than two units."),
    }
    OUTCOMES = {Verdict.SUPPORTED: "(a) std vs AT below both nulls, (c) a control matched within {max_gap} pp whose own "
                                   "null lies above std vs AT, (b) Δ = ρ(std, AT) − ρ(std, matched) below 0",
                Verdict.NOT_SUPPORTED: "(a) fails",
                Verdict.INCONCLUSIVE: "(c) fails", Verdict.NOT_SEPARATED: "(b) fails",
                Verdict.UNDECIDED: "an interval on fewer than two units", Verdict.INVALID: validity.INVALID_WHEN}
    LEDGER = {Verdict.SUPPORTED: Verdict.SUPPORTED, Verdict.NOT_SUPPORTED: Verdict.NOT_SUPPORTED,
              Verdict.NOT_SEPARATED: Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE: Verdict.INCONCLUSIVE,
              Verdict.UNDECIDED: Verdict.INCONCLUSIVE, Verdict.INVALID: Verdict.INVALID}
    GATED = ("the standard, main AT and matched models and the early-stopped snapshots of every seed (learned, on the "
             "whole test set), and the main AT models (robust)")

    max_gap: float = const(0.015, "(c): the control is matched if |clean acc(matched) − clean acc(AT)| ≤ this "
                                  "(seed means, whole test set)")

    def terms(self) -> dict[str, str]:
        return {"max_gap": pp(self.max_gap)}

    def matched(self, control: MatchedControl) -> bool:
        """Whether the accuracy-matched control is matched (the first half of (c))."""
        return abs(control.gap) <= self.max_gap

    def control_record(self, control: MatchedControl) -> dict[str, Any]:
        """The control's ``summary.json`` entry: what it is, and whether it is matched by this rule."""
        return control.record() | {"max_gap": self.max_gap, "matched": self.matched(control)}


RULE = ConfidenceRule()


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
    out = {"rule": RULE.text(), "metric": metric, "score": "top-class log-odds", **decide(c, RULE.matched(an.matched))}
    return out | validity.gated(out["outcome"], an.gates)
