"""Chapter 04's pre-registered rules: how each ablation's paired difference is classified, and claim 3 at each T.

Stated in the chapter before the numbers and applied here mechanically to the seed intervals: ``PAIRED_RULE``
(the second round's rule, which replaced the first round's fixed −10 pp threshold against hard labels): a
baseline from the standard teacher, two decisive ablations with Bonferroni-adjusted intervals, the others
descriptive. Pure functions of per-seed numbers, so every outcome is unit-tested on synthetic values.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from atlib.core import stats
from atlib.studies.verdict import Verdict


FULL, BASELINE, HARD, CEILING = "full", "standard_teacher", "hard_labels", "pgd_at"
DECISIVE = {"class_permuted_nonmax": "B", "uniform_confidence": "C"}  # ablation -> the part of claim 3 it decides
SQUARE_ARMS = (FULL, BASELINE, *DECISIVE)  # the students that also face the gradient-free Square attack
ALPHA = 0.05  # family-wise error of the decisive tests (Bonferroni over ``DECISIVE``)
CEILING_FRACTION = 0.1  # E: A is refuted below this fraction of the ceiling's robustness over the baseline
REMOVES, RAISES, REDUCES, KEEPS, INCONCLUSIVE, FLAGGED = (
    "removes robustness", "raises robustness", "reduces robustness", "keeps robustness", "inconclusive",
    "flagged: gradient masking")
OUTCOMES = (REMOVES, RAISES, REDUCES, KEEPS, INCONCLUSIVE, FLAGGED)
HOLDS, REFUTED, UNDECIDED = "holds", "refuted", str(Verdict.UNDECIDED)
NOT_EVALUATED = "not evaluated"


def _ci(values: Sequence[float], level: float) -> tuple[stats.Interval, dict[str, Any]]:
    """Student-t interval (df = n − 1) at ``level``, and its summary form with the level recorded."""
    iv = stats.mean_ci(values, level)
    return iv, iv.as_dict() | {"level": level}


def ablation_outcome(delta: stats.Interval, c: stats.Interval, ablation: str, flagged: Collection[str] = ()) -> str:
    """The first outcome that applies, on Δa = a − full and cᵢ = aᵢ − (fullᵢ + bᵢ)/2 (c < 0: a lost more than
    half of the distilled robustness). An outcome that would credit a flagged student with robustness (one
    whose accuracy enters its test on the side that makes the outcome easier) is skipped; if one was skipped
    and no other applies, the outcome is 'flagged: gradient masking'. With NaN intervals (one seed) nothing applies."""
    tests = ((REMOVES, c.high < 0, {FULL, BASELINE}), (RAISES, delta.low > 0, {ablation}),
             (REDUCES, delta.high < 0, {FULL}), (KEEPS, c.low > 0, {ablation}))
    skipped = False
    for outcome, applies, credited in tests:
        if applies and not credited & set(flagged):
            return outcome
        skipped |= applies
    return FLAGGED if skipped else INCONCLUSIVE


def _ablation_entry(robust: Mapping[str, Sequence[float]], name: str, level: float, flagged: Collection[str]) -> dict:
    a, f, b = (np.asarray(robust[k], dtype=float) for k in (name, FULL, BASELINE))
    delta, delta_d = _ci(a - f, level)
    c, c_d = _ci(a - (f + b) / 2, level)
    return {"delta": delta_d, "c": c_d, "level": level, "outcome": ablation_outcome(delta, c, name, flagged),
            "flagged": name in flagged}


def robustness_distils(robust: Mapping[str, Sequence[float]], ceiling: Sequence[float],
                       flagged: Collection[str] = ()) -> dict[str, Any]:
    """(A): holds if full − standard_teacher and full − hard_labels both have 95% intervals above 0 (never
    with a flagged full student); refuted if either interval's upper end is below E = 0.1 × (ceiling − b)
    (never through a flagged student on the side it helps); otherwise undecided. Checked in that order."""
    f, b, h = (np.asarray(robust[k], dtype=float) for k in (FULL, BASELINE, HARD))
    d, d_d = _ci(f - b, 1 - ALPHA)
    dh, dh_d = _ci(f - h, 1 - ALPHA)
    e = CEILING_FRACTION * float(np.mean(np.asarray(ceiling, dtype=float) - b))
    if d.low > 0 and dh.low > 0 and FULL not in flagged:
        outcome = HOLDS
    elif (d.high < e and not {BASELINE, CEILING} & set(flagged)) or (dh.high < e and not {HARD, CEILING} & set(flagged)):
        outcome = REFUTED
    else:
        outcome = UNDECIDED
    return {"outcome": outcome, "full_minus_baseline": d_d, "full_minus_hard_labels": dh_d, "E": e}


def _part(outcome: str) -> str:
    """B or C from its decisive ablation's outcome."""
    if outcome == REMOVES:
        return Verdict.SUPPORTED
    if outcome in (KEEPS, RAISES):
        return Verdict.CONTRADICTED
    return Verdict.INCONCLUSIVE


def _claim3(a: str, b: str, c: str) -> tuple[str, list[str]]:
    """Claim 3 from A, B and C in the rule's order, and the parts that decided it."""
    if a == REFUTED:
        return Verdict.NOT_SUPPORTED, ["A"]
    if a != HOLDS:
        return Verdict.INCONCLUSIVE, ["A"]
    if b == c == Verdict.SUPPORTED:
        return Verdict.SUPPORTED, ["B", "C"]
    against = [k for k, v in (("B", b), ("C", c)) if v == Verdict.CONTRADICTED]
    if against:
        return Verdict.NOT_SUPPORTED, against
    return Verdict.INCONCLUSIVE, [k for k, v in (("B", b), ("C", c)) if v != Verdict.SUPPORTED]


def _check_paired(robust: Mapping[str, Sequence[float]], ceiling: Sequence[float]) -> None:
    missing = [k for k in (FULL, BASELINE, HARD, *DECISIVE) if k not in robust]
    if missing:
        raise ValueError(f"claim 3's rule needs the students of {', '.join(missing)} (got {', '.join(robust)})")
    n = {k: len(v) for k, v in robust.items()} | {CEILING: len(ceiling)}
    if len(set(n.values())) != 1:
        raise ValueError(f"paired seeds: every arm needs one value per seed, in the same seed order; got {n}")


def claim3_at_T(robust: Mapping[str, Sequence[float]], ceiling: Sequence[float],
                flags: Mapping[str, Sequence[bool]] | None = None) -> dict[str, Any]:
    """Claim 3 at one T by ``PAIRED_RULE``. ``robust``: ablation -> robust accuracy per seed (index i = seed i's
    student, for every arm); ``ceiling``: the PGD-AT students' per seed; ``flags``: arm (an ablation or
    ``"pgd_at"``) -> whether each seed's student was flagged for gradient masking (one flagged seed flags the arm)."""
    _check_paired(robust, ceiling)
    flagged = {k for k, v in (flags or {}).items() if any(v)}
    a = robustness_distils(robust, ceiling, flagged)
    level = 1 - ALPHA / len(DECISIVE)
    decisive = {n: _ablation_entry(robust, n, level, flagged) for n in DECISIVE}
    descriptive = {n: _ablation_entry(robust, n, 1 - ALPHA, flagged) for n in robust
                   if n not in (FULL, BASELINE, *DECISIVE)}
    parts = {p: _part(decisive[n]["outcome"]) if a["outcome"] == HOLDS else NOT_EVALUATED for n, p in DECISIVE.items()}
    verdict, decided_by = _claim3(a["outcome"], parts["B"], parts["C"])
    return {"baseline": {"ablation": BASELINE, "robust": _ci(robust[BASELINE], 1 - ALPHA)[1]},
            "D": a["full_minus_baseline"], "E": a["E"], "A": a, "decisive": decisive, "descriptive": descriptive,
            "B": parts["B"], "C": parts["C"], "claim3": verdict, "decided_by": decided_by,
            "flagged": sorted(flagged)}


PAIRED_RULE = (
    "Primary measure: each student's robust accuracy. At each T, with paired seeds and Student-t intervals "
    "(df = seeds − 1): the baseline b is the standard_teacher student and D = full − b. (A) robustness distils: "
    "holds if the 95% intervals of full − standard_teacher and of full − hard_labels both lie above 0; refuted if "
    "either upper end lies below E = {frac:g} × (PGD-AT student − b); otherwise undecided. Decisive ablations: "
    "class_permuted_nonmax (for B) and uniform_confidence (for C), with Bonferroni-adjusted intervals at level "
    "{level:g}. For each, with Δa = a − full and cᵢ = aᵢ − (fullᵢ + bᵢ)/2, the first that applies: 'removes' if "
    "c's interval lies below 0; 'raises' if Δa's lies above 0; 'reduces' if Δa's lies below 0; 'keeps' if c's "
    "lies above 0; otherwise 'inconclusive'. B (incorrect-class information essential) is supported if "
    "class_permuted_nonmax removes, contradicted if it keeps or raises, otherwise inconclusive; C the same with "
    "uniform_confidence. Claim 3 at T: not supported if A is refuted; inconclusive if A is undecided (B and C not "
    "evaluated); supported if B and C are supported; not supported if B or C is contradicted; otherwise "
    "inconclusive. Every other ablation is descriptive: the same outcomes with unadjusted 95% intervals. A flagged "
    "student is never credited with robustness: an outcome that would rest on its accuracy is not given."
).format(frac=CEILING_FRACTION, level=1 - ALPHA / len(DECISIVE))
