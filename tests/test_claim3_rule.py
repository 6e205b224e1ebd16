"""Chapter 04, round 2 (issue 15): the pre-registered claim-3 rule on synthetic per-seed robust accuracies.

Every outcome of every part is reached: A holds / refuted (either way) / undecided; each decisive outcome and
the precedence among them; B and C supported / contradicted / inconclusive; claim 3's order; flagged students;
Bonferroni-adjusted versus unadjusted intervals; bad input."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from atlib.core import stats
from atlib.studies.distillation import rules as R
from atlib.studies.verdict import Verdict

PATTERN = np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5])  # mean 0: a seed-to-seed spread around each arm's mean
SCALE = 0.005  # paired differences then have 95% half-widths of ≈ 1.5 pp
MEANS = {"full": 0.25, "standard_teacher": 0.10, "hard_labels": 0.05, "class_permuted_nonmax": 0.08,
         "uniform_confidence": 0.08, "uniform_nonmax": 0.38, "smoothed_labels": 0.30}


def arms(**means):
    """Six paired seeds per arm: ``MEANS`` updated by ``means`` (a value or ``(mean, noise scale)``); each arm
    has its own rotation of ``PATTERN``, so every paired difference has a non-zero spread and mean exactly
    the difference of the means."""
    spec = MEANS | means
    out = {}
    for i, (name, v) in enumerate(spec.items()):
        m, scale = v if isinstance(v, tuple) else (v, SCALE)
        out[name] = list(m + scale * np.roll(PATTERN, i))
    return out


CEILING = list(0.50 + SCALE * np.roll(PATTERN, 3)[::-1])  # E = 0.1 × (0.50 − 0.10) = 4 pp


def iv(mean, hw):
    return stats.Interval(mean, hw, 6)


# --------------------------------------------------------------------------------------------- part A
def test_a_holds_and_the_numbers_that_must_appear():
    v = R.claim3_at_T(arms(), CEILING)
    assert set(v) >= {"baseline", "D", "E", "A", "decisive", "descriptive", "B", "C", "claim3"}
    assert v["A"]["outcome"] == R.HOLDS
    assert v["baseline"]["ablation"] == "standard_teacher" and v["baseline"]["robust"]["mean"] == pytest.approx(0.10)
    assert v["D"]["mean"] == pytest.approx(0.15) and v["D"]["ci"][0] > 0 and v["D"]["level"] == 0.95
    assert v["E"] == pytest.approx(0.04)
    assert v["A"]["full_minus_hard_labels"]["mean"] == pytest.approx(0.20)


@pytest.mark.parametrize("means,below,above", [
    ({"full": 0.11}, "full_minus_baseline", "full_minus_hard_labels"),
    ({"hard_labels": 0.26}, "full_minus_hard_labels", "full_minus_baseline"),
])
def test_a_refuted_means_claim3_not_supported_whatever_b_and_c(means, below, above):
    """Either interval's upper end below E refutes A, even when the other lies far above it."""
    v = R.claim3_at_T(arms(**means), CEILING)
    assert v["A"][below]["ci"][1] < v["E"] < v["A"][above]["ci"][0]
    assert v["A"]["outcome"] == R.REFUTED
    assert v["claim3"] == Verdict.NOT_SUPPORTED and v["decided_by"] == ["A"]
    assert v["B"] == v["C"] == R.NOT_EVALUATED


def test_a_undecided_means_claim3_inconclusive_and_b_c_not_evaluated():
    """full − standard_teacher = +3 pp ± ~9 pp: neither above 0 nor below E = 4 pp."""
    v = R.claim3_at_T(arms(full=(0.13, 0.03)), CEILING)
    lo, hi = v["D"]["ci"]
    assert lo < 0 < v["E"] < hi
    assert v["A"]["outcome"] == R.UNDECIDED and v["claim3"] == Verdict.INCONCLUSIVE and v["decided_by"] == ["A"]
    assert v["B"] == v["C"] == R.NOT_EVALUATED
    assert v["decisive"]["class_permuted_nonmax"]["outcome"] in R.OUTCOMES, "still reported"


def test_a_holds_before_refuted_when_both_apply():
    """A small distilled robustness that is clearly above 0 but clearly below E: the rule's order decides."""
    v = R.claim3_at_T(arms(full=0.12, class_permuted_nonmax=0.09, uniform_confidence=0.09), CEILING)
    assert v["D"]["ci"][0] > 0 and v["D"]["ci"][1] < v["E"]
    assert v["A"]["outcome"] == R.HOLDS


# ------------------------------------------------------------------------------- decisive outcomes
@pytest.mark.parametrize("delta,c,outcome", [
    (iv(-0.17, 0.02), iv(-0.10, 0.02), R.REMOVES),  # c below 0 (and Δ below 0): removes before reduces
    (iv(0.05, 0.01), iv(-0.05, 0.01), R.REMOVES),  # c below 0 beats Δ above 0 (possible when D < 0)
    (iv(0.10, 0.02), iv(0.17, 0.02), R.RAISES),  # Δ above 0 (and c above 0): raises before keeps
    (iv(-0.05, 0.02), iv(0.03, 0.02), R.REDUCES),  # Δ below 0, c above 0: reduces before keeps
    (iv(0.00, 0.02), iv(0.07, 0.02), R.KEEPS),
    (iv(-0.03, 0.05), iv(0.03, 0.05), R.INCONCLUSIVE),
    (stats.Interval(-0.2, math.nan, 1), stats.Interval(-0.2, math.nan, 1), R.INCONCLUSIVE),  # one seed
])
def test_decisive_outcomes_and_their_precedence(delta, c, outcome):
    assert R.ablation_outcome(delta, c, "class_permuted_nonmax") == outcome


@pytest.mark.parametrize("delta,c,flagged,outcome", [
    (iv(0.10, 0.02), iv(0.17, 0.02), {"class_permuted_nonmax"}, R.FLAGGED),  # raises/keeps credit the ablation
    (iv(0.00, 0.02), iv(0.07, 0.02), {"class_permuted_nonmax"}, R.FLAGGED),
    (iv(-0.17, 0.02), iv(-0.10, 0.02), {"class_permuted_nonmax"}, R.REMOVES),  # a flagged a only loses more
    (iv(-0.17, 0.02), iv(-0.10, 0.02), {"full"}, R.FLAGGED),  # removes and reduces credit the full student
    (iv(-0.17, 0.02), iv(-0.10, 0.02), {"standard_teacher"}, R.REDUCES),  # removes credits b; reduces does not
    (iv(0.10, 0.02), iv(0.17, 0.02), {"full"}, R.RAISES),  # an overstated full only makes Δ smaller
    (iv(-0.03, 0.05), iv(0.03, 0.05), {"class_permuted_nonmax"}, R.INCONCLUSIVE),  # nothing to credit
])
def test_a_flagged_student_is_never_credited_with_robustness(delta, c, flagged, outcome):
    assert R.ablation_outcome(delta, c, "class_permuted_nonmax", flagged) == outcome


def test_decisive_intervals_are_bonferroni_adjusted_and_descriptive_ones_are_not():
    robust = arms()
    v = R.claim3_at_T(robust, CEILING)
    d = np.subtract(robust["class_permuted_nonmax"], robust["full"])
    got = v["decisive"]["class_permuted_nonmax"]
    assert got["level"] == pytest.approx(1 - 0.05 / 2) and got["delta"]["level"] == pytest.approx(0.975)
    se = d.std(ddof=1) / math.sqrt(6)
    assert got["delta"]["half_width"] == pytest.approx(sps.t.ppf(1 - 0.05 / 4, df=5) * se)
    c = np.subtract(robust["class_permuted_nonmax"], (np.add(robust["full"], robust["standard_teacher"])) / 2)
    assert got["c"]["mean"] == pytest.approx(c.mean()) and got["c"]["half_width"] == pytest.approx(
        stats.mean_ci(c, 0.975).half_width)
    assert set(v["decisive"]) == {"class_permuted_nonmax", "uniform_confidence"}
    assert set(v["descriptive"]) == {"hard_labels", "uniform_nonmax", "smoothed_labels"}
    un = v["descriptive"]["uniform_nonmax"]
    d = np.subtract(robust["uniform_nonmax"], robust["full"])
    assert un["level"] == 0.95 and un["delta"]["half_width"] == pytest.approx(stats.mean_ci(d, 0.95).half_width)
    assert un["outcome"] == R.RAISES


# ------------------------------------------------------------------------------ B, C and claim 3
@pytest.mark.parametrize("cp,uc,b,c,claim,decided", [
    (0.08, 0.08, Verdict.SUPPORTED, Verdict.SUPPORTED, Verdict.SUPPORTED, ["B", "C"]),  # both remove
    (0.25, 0.08, Verdict.CONTRADICTED, Verdict.SUPPORTED, Verdict.NOT_SUPPORTED, ["B"]),  # B keeps
    (0.08, 0.35, Verdict.SUPPORTED, Verdict.CONTRADICTED, Verdict.NOT_SUPPORTED, ["C"]),  # C raises
    (0.35, 0.25, Verdict.CONTRADICTED, Verdict.CONTRADICTED, Verdict.NOT_SUPPORTED, ["B", "C"]),
    (0.20, 0.08, Verdict.INCONCLUSIVE, Verdict.SUPPORTED, Verdict.INCONCLUSIVE, ["B"]),  # B only reduces
    (0.08, (0.20, 0.05), Verdict.SUPPORTED, Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE, ["C"]),  # C too noisy
    ((0.20, 0.05), 0.35, Verdict.INCONCLUSIVE, Verdict.CONTRADICTED, Verdict.NOT_SUPPORTED, ["C"]),
])
def test_b_c_and_claim3(cp, uc, b, c, claim, decided):
    v = R.claim3_at_T(arms(class_permuted_nonmax=cp, uniform_confidence=uc), CEILING)
    assert v["A"]["outcome"] == R.HOLDS
    assert (v["B"], v["C"], v["claim3"], v["decided_by"]) == (b, c, claim, decided)


def test_the_outcomes_behind_b_and_c():
    v = R.claim3_at_T(arms(class_permuted_nonmax=0.20, uniform_confidence=(0.20, 0.05)), CEILING)
    assert v["decisive"]["class_permuted_nonmax"]["outcome"] == R.REDUCES
    assert v["decisive"]["uniform_confidence"]["outcome"] == R.INCONCLUSIVE
    v = R.claim3_at_T(arms(class_permuted_nonmax=0.25), CEILING)
    assert v["decisive"]["class_permuted_nonmax"]["outcome"] == R.KEEPS


def test_a_flagged_ablation_cannot_contradict_the_claim():
    """class_permuted_nonmax keeps robustness, but one of its students is flagged: not credited, so B is not
    contradicted and claim 3 is inconclusive instead of not supported."""
    robust = arms(class_permuted_nonmax=0.25)
    flags = {"class_permuted_nonmax": [False, False, True, False, False, False], "full": [False] * 6}
    v = R.claim3_at_T(robust, CEILING, flags)
    assert v["decisive"]["class_permuted_nonmax"]["outcome"] == R.FLAGGED
    assert v["decisive"]["class_permuted_nonmax"]["flagged"] and v["flagged"] == ["class_permuted_nonmax"]
    assert v["B"] == Verdict.INCONCLUSIVE and v["claim3"] == Verdict.INCONCLUSIVE
    assert R.claim3_at_T(robust, CEILING)["claim3"] == Verdict.NOT_SUPPORTED, "unflagged, the same numbers decide"


def test_a_flagged_full_student_cannot_make_robustness_distil():
    v = R.claim3_at_T(arms(), CEILING, {"full": [True] + [False] * 5})
    assert v["A"]["outcome"] == R.UNDECIDED and v["claim3"] == Verdict.INCONCLUSIVE
    assert v["decisive"]["class_permuted_nonmax"]["outcome"] == R.FLAGGED


@pytest.mark.parametrize("arm,means,outcome", [
    ("standard_teacher", {"full": 0.11}, R.UNDECIDED),  # a flagged b would make the refutation easier
    ("pgd_at", {"full": 0.11}, R.UNDECIDED),  # so would a flagged ceiling (E overstated)
    ("hard_labels", {"full": 0.11}, R.REFUTED),  # refuted by full − b; hard_labels does not enter it
    ("full", {"full": 0.11}, R.REFUTED),  # an overstated full only makes full − b larger
])
def test_flags_and_the_refutation_of_a(arm, means, outcome):
    assert R.claim3_at_T(arms(**means), CEILING, {arm: [True] * 6})["A"]["outcome"] == outcome


def test_one_seed_decides_nothing():
    robust = {k: v[:1] for k, v in arms().items()}
    v = R.claim3_at_T(robust, CEILING[:1])
    assert v["A"]["outcome"] == R.UNDECIDED and v["claim3"] == Verdict.INCONCLUSIVE
    assert all(d["outcome"] == R.INCONCLUSIVE for d in v["descriptive"].values())


def test_bad_input_is_refused():
    robust = arms()
    with pytest.raises(ValueError, match="needs the students of class_permuted_nonmax"):
        R.claim3_at_T({k: v for k, v in robust.items() if k != "class_permuted_nonmax"}, CEILING)
    with pytest.raises(ValueError, match="one value per seed"):
        R.claim3_at_T(robust | {"uniform_nonmax": robust["uniform_nonmax"][:5]}, CEILING)
    with pytest.raises(ValueError, match="one value per seed"):
        R.claim3_at_T(robust, CEILING[:5])


def test_the_rule_text_states_the_constants():
    text = R.RULE.text()
    assert "97.5%" in text and "0.1 ×" in text and "`class_permuted_nonmax` (for B)" in text
    assert R.RULE.bonferroni_level == 0.975 and R.RULE.square_arms == ("full", "standard_teacher", *R.RULE.decisive)
