"""Chapter 03's pre-registered rule for claim 2, applied to the seed-pair intervals of the rank correlations."""
from __future__ import annotations

from typing import Any

from atlib.studies.confidence.runs import Analysis, effect_size, interval_of
from atlib.studies.verdict import Verdict


RULE = ("Primary statistic: Spearman's ρ of the top-class log-odds over the evaluation subset, one value per "
        "seed pair, 95% Student-t interval over pairs. (a) Standard and AT models **differ** in which samples "
        "are confident if the upper end of the std-vs-AT interval lies below the lower ends of both null "
        "intervals (std vs std and AT vs AT). (b) The difference **persists at matched accuracy** if the upper "
        "end of the early-stopped-std-vs-AT interval lies below the lower ends of the AT-vs-AT interval and of "
        "the early-stopped-std-vs-early-stopped-std null. Claim 2 is **supported** if (a) and (b) hold; "
        "**not separated from accuracy** if (a) holds but (b) does not; **not supported** if (a) fails; "
        "**undecided** if any of these intervals rests on fewer than two seed pairs.")


def effect_sizes(an: Analysis, metric: str = "spearman") -> dict[str, float]:
    """Cohen's d of std-vs-AT (and of matched-vs-AT) against each null, over the per-pair values."""
    c = an.correlations[metric]

    def vals(key: str) -> list[float]:
        return [p["value"] for p in c[key]["pairs"]]

    return {"std_vs_at_minus_std_vs_std": effect_size(vals("std_vs_at"), vals("std_vs_std")),
            "std_vs_at_minus_at_vs_at": effect_size(vals("std_vs_at"), vals("at_vs_at")),
            "std_matched_vs_at_minus_at_vs_at": effect_size(vals("std_matched_vs_at"), vals("at_vs_at"))}


def verdict(an: Analysis, metric: str = "spearman") -> dict[str, Any]:
    """Apply ``RULE`` to the computed intervals."""
    c = {k: interval_of(v) for k, v in an.correlations[metric].items()}
    used = ["std_vs_at", "std_vs_std", "at_vs_at", "std_matched_vs_at", "std_matched_vs_std_matched"]
    if any(c[k].n < 2 for k in used):
        differs = persists = None
        outcome = Verdict.UNDECIDED
    else:
        differs = bool(c["std_vs_at"].high < min(c["std_vs_std"].low, c["at_vs_at"].low))
        persists = bool(c["std_matched_vs_at"].high < min(c["at_vs_at"].low, c["std_matched_vs_std_matched"].low))
        outcome = (Verdict.SUPPORTED if differs and persists else Verdict.NOT_SEPARATED if differs
                   else Verdict.NOT_SUPPORTED)
    return {"rule": RULE, "metric": metric, "score": "top-class log-odds", "outcome": outcome,
            "differs_from_nulls": differs, "persists_at_matched_accuracy": persists,
            "matched_null": an.correlations[metric]["std_matched_vs_std_matched"]}
