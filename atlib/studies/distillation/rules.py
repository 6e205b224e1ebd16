"""Chapter 04's pre-registered rule: how each ablation's paired difference is classified, and claim 3 at each T.

One rule object, :data:`RULE` (:class:`PairedRule`): the arms it reads, its decisive ablations and its constants,
its text (stated in the chapter before the numbers) and the ledger's reading of its outcome. It is the second
round's rule, which replaced the first round's fixed −10 pp threshold against hard labels: a baseline from the
standard teacher, two decisive ablations with Bonferroni-adjusted intervals, the others descriptive. The functions
below apply it mechanically to per-seed numbers, so every outcome is unit-tested on synthetic values.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlib.core import stats
from atlib.studies import validity
from atlib.studies.distillation.targets import ABLATIONS
from atlib.studies.rule import Rule, const
from atlib.studies.verdict import Verdict

REMOVES, RAISES, REDUCES, KEEPS, INCONCLUSIVE, FLAGGED = (
    "removes robustness", "raises robustness", "reduces robustness", "keeps robustness", "inconclusive",
    "flagged: gradient masking")
OUTCOMES = (REMOVES, RAISES, REDUCES, KEEPS, INCONCLUSIVE, FLAGGED)
HOLDS, REFUTED, UNDECIDED = "holds", "refuted", str(Verdict.UNDECIDED)
NOT_EVALUATED = "not evaluated"


@dataclass(frozen=True, kw_only=True)
class PairedRule(Rule):
    """Claim 3 at each distillation temperature T, on the students' worst-case robust accuracy, seeds paired."""

    TITLE = "Claim 3: robustness distils on clean inputs, and the teacher's incorrect-class information is essential"
    CHAPTER = "04_distillation"
    TEXT = {"paired": (
        "> At each $T$, with paired seeds $i$ and Student-t intervals (degrees of freedom: seeds − 1), on the "
        "worst-case robust accuracy:\n>\n"
        "> - The **baseline** $b$ is the {baseline} student at the same $T$: the same distillation from a teacher "
        "with no robustness. $D$ = {full} − $b$.\n"
        "> - **(A) Robustness distils** *holds* if the {level} intervals of {full} − {baseline} and of {full} − "
        "{hard} both lie above zero; it is *refuted* if either interval's upper end lies below $E$ = "
        "{ceiling_fraction} × ({ceiling} − $b$); otherwise it is *undecided*.\n"
        "> - The **decisive** ablations are {decisive_B} (for B) and {decisive_C} (for C); their intervals are "
        "Bonferroni-adjusted over the {n_decisive}, at level {bonf_level}. For each decisive ablation $a$, with "
        "$\\Delta_a$ = $a$ − {full} and the contrast $c_i = a_i - (\\text{{full}}_i + b_i)/2$ (negative: $a$ lost "
        "more than half of the distilled robustness), the outcome is the first that applies: **removes** if $c$'s "
        "interval lies below zero; **raises** if $\\Delta_a$'s interval lies above zero; **reduces** if "
        "$\\Delta_a$'s interval lies below zero; **keeps** if $c$'s interval lies above zero; otherwise "
        "**inconclusive**.\n"
        "> - **(B) Incorrect-class information is essential**: supported if {decisive_B} removes; contradicted if it "
        "keeps or raises; otherwise inconclusive. **(C) Sample-wise confidence is essential**: the same with "
        "{decisive_C}.\n"
        "> - **Claim 3 at $T$**, in this order: *not supported* if A is refuted; *inconclusive* if A is undecided "
        "(B and C are then not evaluated); *supported* if B and C are supported; *not supported* if B or C is "
        "contradicted; otherwise *inconclusive*.\n"
        "> - Every other ablation ({descriptive}) is **descriptive**: the same outcomes with unadjusted {level} intervals, in a "
        "separate table, never part of the verdict.\n"
        "> - A **flagged** student is never credited with robustness: an outcome that would rest on the accuracy of "
        "a flagged arm, on the side that makes it easier, is not given."),
        "across": ("Across temperatures: **supported** if supported at every $T$, **not supported** if not supported "
                   "at every $T$, **inconclusive** otherwise."),
    }
    OUTCOMES = {Verdict.SUPPORTED: "A holds, and B and C are supported",
                Verdict.NOT_SUPPORTED: "A refuted: an interval below E = {ceiling_fraction} × (the ceiling − b); or B "
                                       "or C contradicted",
                Verdict.INCONCLUSIVE: "A undecided, or B or C inconclusive",
                Verdict.INVALID: validity.INVALID_WHEN + ", or the PGD-AT student is at chance"}
    LEDGER = {Verdict.SUPPORTED: Verdict.SUPPORTED, Verdict.NOT_SUPPORTED: Verdict.NOT_SUPPORTED,
              Verdict.INCONCLUSIVE: Verdict.INCONCLUSIVE, Verdict.INVALID: Verdict.INVALID}
    GATED = ("the teachers (chapter 02's standard and main AT models of every seed: learned, and the AT teachers "
             "robust) and the PGD-AT students (the ceiling: worst-case robust accuracy at least chapter 02's "
             "`learned_margin` above the constant predictor's, or D has nothing to be a fraction of)")

    full: str = const("full", "the student distilled from the AT teacher's full output")
    baseline: str = const("standard_teacher", "b: the student of a teacher with no robustness, the baseline of D")
    hard: str = const("hard_labels", "the hard-label student (plain CE), the second comparison of A")
    ceiling: str = const("pgd_at", "the PGD-AT student: the ceiling that E is a fraction of")
    teacher_free: str = const("smoothed_labels", "the teacher-free control the findings set beside A (descriptive)")
    decisive: Mapping[str, str] = const({"class_permuted_nonmax": "B", "uniform_confidence": "C"},
                                        "ablation -> the part of claim 3 it decides (the other ablations are descriptive)")
    alpha: float = const(0.05, "family-wise error of A and of the decisive tests (Bonferroni over the decisive ones)")
    ceiling_fraction: float = const(0.1, "E: A is refuted below this fraction of the ceiling's robustness over b")

    @property
    def bonferroni_level(self) -> float:
        """The level of each decisive ablation's interval."""
        return 1 - self.alpha / len(self.decisive)

    @property
    def square_arms(self) -> tuple[str, ...]:
        """The students that also face the gradient-free Square attack: the arms the decisive tests read."""
        return (self.full, self.baseline, *self.decisive)

    def across_temperatures(self, verdicts: Mapping[str, str]) -> tuple[str, str]:
        """Claim 3 over every T from the ledger verdicts at each T (the ``across`` part): verdict, and how."""
        if any(v == Verdict.INVALID for v in verdicts.values()):
            return Verdict.INVALID, "invalid: a model the rule reads failed a validity gate"
        if all(v == Verdict.SUPPORTED for v in verdicts.values()):
            return Verdict.SUPPORTED, "supported at every temperature"
        if all(v == Verdict.NOT_SUPPORTED for v in verdicts.values()):
            return Verdict.NOT_SUPPORTED, "not supported at any temperature"
        return Verdict.INCONCLUSIVE, "mixed or inconclusive across temperatures"

    def part_ablation(self, part: str) -> str:
        """The decisive ablation that decides ``part`` (B or C)."""
        return next(a for a, p in self.decisive.items() if p == part)

    def terms(self) -> dict[str, str]:
        names = {f"decisive_{p}": f"`{a}`" for a, p in self.decisive.items()}
        descriptive = [f"`{a}`" for a in ABLATIONS if a not in (self.full, self.baseline, *self.decisive)]
        return {"full": f"`{self.full}`", "baseline": f"`{self.baseline}`", "hard": f"`{self.hard}`",
                "ceiling": "PGD-AT student", "teacher_free": f"`{self.teacher_free}`", **names,
                "descriptive": ", ".join(descriptive), "square_arms": ", ".join(f"`{a}`" for a in self.square_arms),
                "n_decisive": str(len(self.decisive)), "level": f"{1 - self.alpha:.0%}",
                "bonf_level": f"{100 * self.bonferroni_level:.1f}%", "ceiling_fraction": f"{self.ceiling_fraction:g}"}


RULE = PairedRule()


def _ci(values: Sequence[float], level: float) -> tuple[stats.Interval, dict[str, Any]]:
    """Student-t interval (df = n − 1) at ``level``, and its summary form with the level recorded."""
    iv = stats.mean_ci(values, level)
    return iv, iv.as_dict() | {"level": level}


def ablation_outcome(delta: stats.Interval, c: stats.Interval, ablation: str, flagged: Collection[str] = ()) -> str:
    """The first outcome that applies, on Δa = a − full and cᵢ = aᵢ − (fullᵢ + bᵢ)/2 (c < 0: a lost more than
    half of the distilled robustness). An outcome that would credit a flagged student with robustness (one
    whose accuracy enters its test on the side that makes the outcome easier) is skipped; if one was skipped
    and no other applies, the outcome is 'flagged: gradient masking'. With NaN intervals (one seed) nothing applies."""
    r = RULE
    tests = ((REMOVES, c.high < 0, {r.full, r.baseline}), (RAISES, delta.low > 0, {ablation}),
             (REDUCES, delta.high < 0, {r.full}), (KEEPS, c.low > 0, {ablation}))
    skipped = False
    for outcome, applies, credited in tests:
        if applies and not credited & set(flagged):
            return outcome
        skipped |= applies
    return FLAGGED if skipped else INCONCLUSIVE


def _ablation_entry(robust: Mapping[str, Sequence[float]], name: str, level: float, flagged: Collection[str]) -> dict:
    a, f, b = (np.asarray(robust[k], dtype=float) for k in (name, RULE.full, RULE.baseline))
    delta, delta_d = _ci(a - f, level)
    c, c_d = _ci(a - (f + b) / 2, level)
    return {"delta": delta_d, "c": c_d, "level": level, "outcome": ablation_outcome(delta, c, name, flagged),
            "flagged": name in flagged}


def robustness_distils(robust: Mapping[str, Sequence[float]], ceiling: Sequence[float],
                       flagged: Collection[str] = ()) -> dict[str, Any]:
    """(A): holds if full − baseline and full − hard labels both have (1 − α) intervals above 0 (never with a
    flagged full student); refuted if either interval's upper end is below E = ceiling_fraction × (ceiling − b)
    (never through a flagged student on the side it helps); otherwise undecided. Checked in that order."""
    r = RULE
    f, b, h = (np.asarray(robust[k], dtype=float) for k in (r.full, r.baseline, r.hard))
    d, d_d = _ci(f - b, 1 - r.alpha)
    dh, dh_d = _ci(f - h, 1 - r.alpha)
    e = r.ceiling_fraction * float(np.mean(np.asarray(ceiling, dtype=float) - b))
    if d.low > 0 and dh.low > 0 and r.full not in flagged:
        outcome = HOLDS
    elif (d.high < e and not {r.baseline, r.ceiling} & set(flagged)) or \
            (dh.high < e and not {r.hard, r.ceiling} & set(flagged)):
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
    r = RULE
    missing = [k for k in (r.full, r.baseline, r.hard, *r.decisive) if k not in robust]
    if missing:
        raise ValueError(f"claim 3's rule needs the students of {', '.join(missing)} (got {', '.join(robust)})")
    n = {k: len(v) for k, v in robust.items()} | {r.ceiling: len(ceiling)}
    if len(set(n.values())) != 1:
        raise ValueError(f"paired seeds: every arm needs one value per seed, in the same seed order; got {n}")


def claim3_at_T(robust: Mapping[str, Sequence[float]], ceiling: Sequence[float],
                flags: Mapping[str, Sequence[bool]] | None = None) -> dict[str, Any]:
    """Claim 3 at one T by :data:`RULE`. ``robust``: ablation -> robust accuracy per seed (index i = seed i's
    student, for every arm); ``ceiling``: the PGD-AT students' per seed; ``flags``: arm (an ablation or the
    rule's ``ceiling``) -> whether each seed's student was flagged for gradient masking (one flagged seed flags the
    arm)."""
    r = RULE
    _check_paired(robust, ceiling)
    flagged = {k for k, v in (flags or {}).items() if any(v)}
    a = robustness_distils(robust, ceiling, flagged)
    decisive = {n: _ablation_entry(robust, n, r.bonferroni_level, flagged) for n in r.decisive}
    descriptive = {n: _ablation_entry(robust, n, 1 - r.alpha, flagged) for n in robust
                   if n not in (r.full, r.baseline, *r.decisive)}
    parts = {p: _part(decisive[n]["outcome"]) if a["outcome"] == HOLDS else NOT_EVALUATED
             for n, p in r.decisive.items()}
    verdict, decided_by = _claim3(a["outcome"], parts["B"], parts["C"])
    return {"baseline": {"ablation": r.baseline, "robust": _ci(robust[r.baseline], 1 - r.alpha)[1]},
            "D": a["full_minus_baseline"], "E": a["E"], "A": a, "decisive": decisive, "descriptive": descriptive,
            "B": parts["B"], "C": parts["C"], "claim3": verdict, "decided_by": decided_by,
            "flagged": sorted(flagged)}
