"""The claims ledger on synthetic summaries: every verdict branch, robustness to missing sections, the page."""
import json

import pytest

from atlib.book import claims
from atlib.book import pages
from atlib.book.claims import INCONCLUSIVE, NOT_RUN, NOT_SUPPORTED, SUPPORTED


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


def distillation(*outcomes):
    temps = ["4", "30"][:len(outcomes)]
    rows = []
    for T in temps:
        rows.append({"ablation": "full", "T": float(T), "diff_vs_full": None})
        rows.append({"ablation": "hard_labels", "T": float(T), "diff_vs_full": {"robust": iv(-0.3, -0.4, -0.2)}})
        for name in ("uniform_nonmax", "shuffle_nonmax", "uniform_confidence"):
            rows.append({"ablation": name, "T": float(T), "diff_vs_full": {"robust": iv(-0.15, -0.2, -0.1)}})
    return {"distillation": {"verdict": {"by_T": {T: {"claim3": o} for T, o in zip(temps, outcomes)}},
                             "by_config": rows}}


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
    (("contradicted", "no distilled robustness to ablate"), NOT_SUPPORTED),
    (("supported", "contradicted"), INCONCLUSIVE),
    (("inconclusive", "inconclusive"), INCONCLUSIVE),
    (("supported", "a new outcome"), NOT_RUN),
])
def test_distillation_rule(outcomes, expected):
    e = claims.judge_distillation(distillation(*outcomes))
    assert e.verdict == expected, e.reason
    if expected != NOT_RUN:
        assert e.values["T=4: full − hard labels"] == "+30 pp [+20, +40] (3 seeds)"
        assert e.values["T=30: non-max shuffled − full"] == "-15 pp [-20, -10] (3 seeds)"


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
