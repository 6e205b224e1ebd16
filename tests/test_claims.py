"""The claims ledger on synthetic summaries: every verdict branch, robustness to missing sections, the page."""
import json
import re

import numpy as np
import pytest

from atlib.book import claims
from atlib.book import pages
from atlib.book.claims import INCONCLUSIVE, NOT_RUN, NOT_SUPPORTED, SUPPORTED
from atlib.studies.distillation import rules


def iv(mean, lo, hi, n=3):
    return {"mean": mean, "ci": [lo, hi], "half_width": (hi - lo) / 2, "n": n}


def shrink_stat(mean, lo, hi, n=3):
    return {"paired_diff": iv(mean, lo, hi, n), "shrinks": n > 1 and hi < 0, "grows": n > 1 and lo > 0}


def shrinkage(gap, max_logit, n=3):
    return {"shrinkage": {"clean": {"mean_logit_gap": shrink_stat(*gap, n), "mean_max_logit": shrink_stat(*max_logit, n),
                                    "mean_centred_max_logit": shrink_stat(-1.0, -1.5, -0.5, n)}}}


def confidence(outcome, n_units=6):
    rho = {"value": 0.8, "ci": [0.78, 0.82], "n": n_units, "units": [{"a": "x", "b": "y", "value": 0.8}] * n_units}
    keys = ("std_vs_at", "std_vs_std", "at_vs_at", "std_vs_matched", "matched_vs_matched", "std_at_minus_std_matched")
    return {"confidence": {"spearman": {k: dict(rho) for k in keys}, "verdict": {"outcome": outcome}}}


PATTERN = np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5])  # a seed-to-seed spread with mean 0
# per outcome of claim 3 at one T, the arms' mean robust accuracies that give it under chapter 04's rule
ARMS = {"supported": {"class_permuted_nonmax": 0.08, "uniform_confidence": 0.08},  # both remove
        "not supported": {"full": 0.11},  # A refuted: full − standard_teacher below E
        "inconclusive": {"class_permuted_nonmax": 0.175, "uniform_confidence": 0.08}}  # B: c's interval straddles 0


def distillation(*outcomes):
    """A chapter 04 section whose verdict at T = 4 (and 30) the real rule computes from synthetic seeds."""
    by_T = {}
    for T, o in zip(["4", "30"], outcomes):
        means = {"full": 0.25, "standard_teacher": 0.10, "hard_labels": 0.05} | ARMS.get(o, {})
        robust = {k: list(means.get(k, 0.2) + 0.005 * np.roll(PATTERN, i)) for i, k in enumerate(
            ("full", "standard_teacher", "hard_labels", "class_permuted_nonmax", "uniform_confidence"))}
        by_T[T] = rules.claim3_at_T(robust, list(0.5 + 0.005 * PATTERN[::-1]))
        by_T[T]["claim3"] = by_T[T]["claim3"] if o in ARMS else o
    return {"distillation": {"verdict": {"by_T": by_T}}}


def verdicts(summary):
    return {e.claim: e.verdict for e in claims.judge(summary)}


@pytest.mark.parametrize("gap, max_logit, n, expected", [
    ((-1.0, -1.5, -0.5), (-2.0, -3.0, -1.0), 3, SUPPORTED),
    ((+1.0, +0.5, +1.5), (-2.0, -3.0, -1.0), 3, NOT_SUPPORTED),  # AT raises the gap
    ((-1.0, -1.5, -0.5), (+0.5, +0.1, +0.9), 3, NOT_SUPPORTED),  # AT raises the max logit
    ((-1.0, -1.5, -0.5), (-0.2, -0.9, +0.5), 3, INCONCLUSIVE),  # max logit interval straddles 0
    ((-1.0, -1.5, -0.5), (-2.0, -3.0, -1.0), 1, INCONCLUSIVE),  # a single seed has no interval
])
def test_shrinkage_rule(gap, max_logit, n, expected):
    e = claims.judge_shrinkage(shrinkage(gap, max_logit, n))
    assert e.verdict == expected, e.reason
    assert set(e.values) >= {"Δ logit gap", "Δ max logit"}
    if n > 1:
        assert f"[{gap[1]:+.3g}, {gap[2]:+.3g}]" in e.values["Δ logit gap"]
    else:
        assert "no interval" in e.values["Δ logit gap"]


@pytest.mark.parametrize("outcome, expected", [
    ("supported", SUPPORTED), ("not supported", NOT_SUPPORTED),
    ("not separated from accuracy", INCONCLUSIVE), ("inconclusive", INCONCLUSIVE), ("undecided", INCONCLUSIVE),
    ("something new", NOT_RUN)])
def test_confidence_mapping(outcome, expected):
    e = claims.judge_confidence(confidence(outcome))
    assert e.verdict == expected
    if expected != NOT_RUN:
        assert e.values["ρ std vs AT"] == "0.8 [0.78, 0.82] (6 units)"
        assert e.values["Δ = ρ(std, AT) − ρ(std, matched)"] == "+0.8 [+0.78, +0.82] (6 units)"


@pytest.mark.parametrize("outcomes, expected", [
    (("supported", "supported"), SUPPORTED),
    (("not supported", "not supported"), NOT_SUPPORTED),
    (("supported", "not supported"), INCONCLUSIVE),
    (("inconclusive", "supported"), INCONCLUSIVE),
    (("supported", "a new outcome"), NOT_RUN),
    (("supported", "contradicted"), NOT_RUN),  # the first round's outcome: an older chapter 04
])
def test_distillation_rule(outcomes, expected):
    s = distillation(*outcomes)
    assert [v["claim3"] for v in s["distillation"]["verdict"]["by_T"].values()] == list(outcomes)
    e = claims.judge_distillation(s)
    assert e.verdict == expected, e.reason
    if expected == NOT_RUN:
        return
    by_T = s["distillation"]["verdict"]["by_T"]
    for T, o in zip(["4", "30"], outcomes):
        v = by_T[T]
        if o == "not supported":  # decided by A: the ledger quotes D and E, not the ablations
            assert v["decided_by"] == ["A"]
            d = v["D"]
            assert e.values[f"T={T}: D = full − standard_teacher"] == (
                f"{100 * d['mean']:+.1f} pp [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] (6 seeds)")
            assert f"T={T}: E (refutation bound)" in e.values
            assert not any(k.startswith(f"T={T}: class_permuted") for k in e.values)
        else:  # decided by B (and C): the decisive ablation with its adjusted level
            key = next(k for k in e.values if k.startswith(f"T={T}: class_permuted_nonmax − full"))
            assert e.values[key].endswith("(6 seeds) at 97.5%")
    for value in e.values.values():  # one precision: every number with one decimal
        assert all(len(x.split(".")[1]) == 1 for x in re.findall(r"[+-]\d+\.\d+", value)), value


def test_missing_or_malformed_sections_show_not_run():
    assert set(verdicts({}).values()) == {NOT_RUN}
    broken = {"shrinkage": {"clean": {}}, "confidence": {"spearman": {}}, "distillation": {"verdict": {}}}
    entries = claims.judge(broken)
    assert [e.verdict for e in entries] == [NOT_RUN] * 3
    assert all("lacks" in e.reason for e in entries)


def test_summary_section_carries_rule_and_verdict():
    s = shrinkage((-1.0, -1.5, -0.5), (-2.0, -3.0, -1.0)) | confidence("supported") | distillation("supported")
    section = claims.summary_section(s)
    assert [c["claim"] for c in section] == ["shrinkage", "confidence", "distillation"]
    assert all(c["verdict"] == SUPPORTED and c["rule"] and c["statistic"] and c["values"] for c in section)
    json.dumps(section)  # JSON-safe


def test_ledger_page_rules_before_table_and_one_column_per_profile():
    a = {"profile": "smoke", "dataset": "digits", "git_commit": "abc", "executed_at": "2026-01-01 00:00",
         "elapsed_s": 90.0} | shrinkage((-1.0, -1.5, -0.5), (-2.0, -3.0, -1.0))
    b = {"profile": "fashion", "dataset": "fashion"} | confidence("not supported")
    md = claims.ledger_markdown({"smoke": a, "fashion": b}, {"smoke": "`results/smoke/summary.json`"})
    assert md.index("## The rules") < md.index("## The ledger") < md.index("| claim |")
    header = next(line for line in md.splitlines() if line.startswith("| claim |"))
    assert header == "| claim | smoke · digits | fashion · fashion |"
    row = next(line for line in md.splitlines() if line.startswith("| **1. Shrinkage**"))
    assert "**supported**" in row and "**not run**" in row
    assert "**not supported**" in next(line for line in md.splitlines() if line.startswith("| **2. Confidence"))
    assert "`results/smoke/summary.json`" in md and "`abc`" in md
    assert "No profile has a committed summary yet" in claims.ledger_markdown({}, {})


def test_write_ledger_reads_committed_summaries_and_the_current_build(tmp_path):
    results = tmp_path / "results"
    for name, outcome in (("smoke", "supported"), ("fashion", "undecided")):
        (results / name).mkdir(parents=True)
        (results / name / "summary.json").write_text(json.dumps({"profile": name, "dataset": name} | confidence(outcome)))
    current = {"profile": "smoke", "dataset": "digits"} | confidence("not supported")
    page = pages.write_ledger(tmp_path, current, ("smoke", "fashion"), results=results).read_text()
    row = next(line for line in page.splitlines() if line.startswith("| **2. Confidence"))
    assert row.index("not supported") < row.index("inconclusive"), "smoke (this build) first, then fashion"
    assert "| smoke · digits | this build |" in page
    (tmp_path / "x.json").write_text('{"profile": "mnist"}')
    rec = pages.record_summary(tmp_path / "x.json", "mnist", results)
    assert rec == results / "mnist" / "summary.json" and json.loads(rec.read_text()) == {"profile": "mnist"}


def test_the_ledger_states_the_level_the_intervals_have():
    import inspect

    from atlib.core import stats

    assert inspect.signature(stats.mean_ci).parameters["level"].default == 0.95, "update the '95%' in atlib/book/claims.py"
    assert "95% Student-t" in claims.CLAIMS["shrinkage"].statistic


def test_a_failed_validity_gate_shows_invalid_on_every_claim_and_apart_in_the_table():
    """Issue 25's run: every main AT model collapsed, yet the ledger said supported / not supported. Behind the
    gates, each claim that reads those models is invalid, with the failed gate, in its own cell form."""
    from atlib.studies import validity
    from atlib.studies.shrinkage import rules as shrink_rules
    from atlib.studies.verdict import Verdict

    bad = [validity.Gate("learned: at_linf_0.3_s0", False, "clean 10.6% vs constant predictor 11.4% + 10 pp")]
    s = shrinkage((-15.8, -16.0, -15.6), (-9.0, -9.5, -8.5))  # the collapsed model's "shrinkage": large and sure
    s["shrinkage"]["claim"] = shrink_rules.RULE.decide(s["shrinkage"]["clean"], bad)
    c = confidence(Verdict.NOT_SUPPORTED)
    c["confidence"]["verdict"] |= validity.gated(Verdict.NOT_SUPPORTED, bad)
    d = distillation("not supported", "not supported")
    for v in d["distillation"]["verdict"]["by_T"].values():
        v |= {"claim3": Verdict.INVALID, "decided_by": [], "invalid_reason": validity.invalid_reason(bad)}
    summary = {"profile": "mine", "dataset": "mnist"} | s | c | d
    entries = {e.claim: e for e in claims.judge(summary)}
    assert {k: e.verdict for k, e in entries.items()} == dict.fromkeys(("shrinkage", "confidence", "distillation"),
                                                                       claims.INVALID)
    assert all(e.reason == "invalid: learned: at_linf_0.3_s0 (clean 10.6% vs constant predictor 11.4% + 10 pp)"
               for e in entries.values())
    md = claims.ledger_markdown({"mine": summary}, {"mine": "`mine.toml`"})
    assert md.count("⚠ **invalid** — invalid: learned: at_linf_0.3_s0") == 3
    # the same sections with passing gates keep their verdicts
    s["shrinkage"]["claim"] = shrink_rules.RULE.decide(s["shrinkage"]["clean"], [])
    assert verdicts(s)["shrinkage"] == SUPPORTED
