"""The convergence pilot at a tiny size: its record, its rule, the CLI, and chapter 02's reading of it."""
import json
from dataclasses import replace

import pytest

from atlib.book import cli, pilot
from atlib.studies import context as cx
from atlib.studies.profiles import get_profile
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.distillation import findings as fx, runs as dr
from atlib.studies.shrinkage import convergence as conv, runs as ex

TINY = """extends = "smoke"
name = "tinypilot"
seeds = [0, 1]
side_seeds = 1
epochs = 3

[confidence]
grid_min = 200
calib_seeds = 1
"""


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    root = tmp_path_factory.mktemp("pilot")
    prof = root / "tinypilot.toml"
    prof.write_text(TINY)
    out = root / "pilot.json"
    code = cli.main(["pilot", "convergence", "--profile", str(prof), "--cache-dir", str(root / "cache"),
                     "--out", str(out), "--device", "cpu", "--workers", "1"])
    assert code == 0 and out.exists()
    return json.loads(out.read_text()), prof, root / "cache"


@pytest.mark.slow
def test_record_follows_its_rule(record):
    rec, prof, _ = record
    p = get_profile(prof)
    assert rec["profile"] == "tinypilot" and rec["seeds"] == [0, 1] and rec["schedule"]["epochs"] == 3
    assert rec["schedule"]["doubled_epochs"] == 6 and rec["commit"]
    crit = conv.criteria(p)
    students = {conv.student_key(T) for T in p.distill.temperatures}  # chapter 04's full students, per T
    assert students <= set(crit) and students <= set(rec["deltas"])
    assert rec["schedule"]["student_epochs"] == p.distill.epochs
    for k, d in rec["deltas"].items():
        base, doubled = rec["per_seed"]["schedule"][k], rec["per_seed"]["doubled"][k]
        assert len(base) == len(doubled) == len(p.seeds)
        assert d == pytest.approx(sum(doubled) / len(doubled) - sum(base) / len(base))
        if k in crit:
            assert rec["criterion_met"][k] == (abs(d) < crit[k])
    assert set(rec["criterion_met"]) == set(crit) and "at_clean" in rec["deltas"]
    assert all(not g["passed"] and g["name"] and g["reason"] for g in rec["failed_gates"])
    assert rec["converged"] == (all(rec["criterion_met"].values()) and not rec["failed_gates"])
    assert rec["matched_epochs"] >= rec["schedule"]["epochs"] and rec["matched_doubled_epochs"] > rec["matched_epochs"]


@pytest.mark.slow
def test_pilot_models_are_the_books(record, monkeypatch):
    """The schedule's models the pilot trained are the book's own cache entries: the book then loads them."""
    _, prof, cache = record
    ctx = cx.context(get_profile(prof), str(cache), None, "cpu", workers=1)

    def no_training(*a, **k):
        raise AssertionError("the pilot should have left these models in the cache")

    monkeypatch.setattr("atlib.training.train.train", no_training)
    runs = ex.training_runs(ctx, (ModelSpec("standard"), ctx.profile.main_at), progress=False)
    assert len(runs) == 4 and all(r.cached for r in runs)
    monkeypatch.setattr("atlib.training.distill.distill", no_training)
    for T in ctx.profile.distill.temperatures:  # and chapter 04's full students
        assert all(dr.student_run(ctx, "full", T, s, progress=False).cached for s in ctx.profile.seeds)


def test_chapter_04_quotes_the_students_part(tmp_path, monkeypatch):
    p = get_profile("smoke")
    keys = [conv.student_key(T) for T in p.distill.temperatures]
    rec = {"commit": "abc123" * 7, "date": "2026-12-03 05:00", "seeds": list(p.seeds),
           "schedule": conv.schedule(p) | {"doubled_epochs": 2 * p.epochs},
           "deltas": {keys[0]: 0.004, keys[1]: -0.025}, "criterion_met": {keys[0]: True, keys[1]: False}}
    monkeypatch.setattr(fx, "pilot_record", lambda prof: rec)
    ctx = type("Ctx", (), {"profile": p})()
    text = fx.student_convergence_text(ctx)
    assert "+0.40 pp (met)" in text and "-2.50 pp (**not met**)" in text and "do **not** converge" in text
    monkeypatch.setattr(fx, "pilot_record", lambda prof: rec | {"deltas": {}})
    assert "does not cover these students" in fx.student_convergence_text(ctx)
    monkeypatch.setattr(fx, "pilot_record", lambda prof: None)
    assert "No convergence pilot" in fx.student_convergence_text(ctx)


def test_chapter_02_reads_the_record_and_checks_its_schedule(tmp_path):
    p = get_profile("smoke")
    assert "No convergence pilot" in conv.convergence_text(conv.pilot_record(p, tmp_path), p)
    assert conv.convergence_section(None, p) == {"schedule": conv.schedule(p), "recorded": False}
    rec = {"commit": "abc123" * 7, "date": "2026-12-02 22:00", "seeds": list(p.seeds),
           "schedule": conv.schedule(p) | {"doubled_epochs": 2 * p.epochs}, "matched_n": 700, "matched_epochs": 40,
           "matched_doubled_epochs": 80, "deltas": {"standard_clean": 0.004, "at_robust_linf_ce": 0.031},
           "criteria": {"standard_clean": 0.01, "at_robust_linf_ce": 0.02},
           "criterion_met": {"standard_clean": True, "at_robust_linf_ce": False}, "converged": False}
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "pilot_convergence.json").write_text(json.dumps(rec))
    text = conv.convergence_text(conv.pilot_record(p, tmp_path), p)
    assert "+3.10 pp" in text and "**not met**" in text and "does **not** converge" in text and "abc123abc123" in text
    assert conv.convergence_section(rec, p)["applies"] and not conv.convergence_section(rec, p)["converged"]
    longer = replace(p, epochs=p.epochs + 1)
    assert "another schedule" in conv.convergence_text(rec, longer) and "epochs" in conv.stale_fields(rec, longer)
    assert not conv.convergence_section(rec, longer)["applies"]
    # a record from before the ε fade-in existed vouches for fade-in 0 (every run then), not for another
    old = rec | {"schedule": {k: v for k, v in rec["schedule"].items() if k != "eps_fadein_epochs"}}
    assert conv.stale_fields(old, p) == [] and conv.stale_fields(old, replace(p, eps_fadein_epochs=2)) == [
        "eps_fadein_epochs"]
    # a pilot whose models failed a validity gate says so, and never converged
    failed = rec | {"failed_gates": [{"name": "learned: at_linf_0.1_s0", "passed": False, "reason": "clean 10.0%"}]}
    text = conv.convergence_text(failed, p)
    assert "**failed validity gate** learned: at_linf_0.1_s0: clean 10.0%" in text and "never counts" in text
    (tmp_path / "smoke" / "pilot_convergence.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*pilot convergence"):
        conv.pilot_record(p, tmp_path)


def test_pilot_refuses_bad_input(tmp_path, capsys):
    assert cli.main(["pilot", "convergence", "--profile", "nosuch"]) == 2
    assert "unknown profile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["pilot", "divergence"])
