"""Chapter 03: rank statistics with known answers, the interval helper's coverage, the matched control,
error paths, and the rendered chapter (it must not retrain chapter 02's models)."""
import dataclasses
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from atlib.studies.confidence import runs as cf
from atlib.studies.confidence import matched as cm
from atlib.studies.confidence import views as cp
from atlib.studies.confidence import rules
from atlib.studies import validity
from atlib.studies.verdict import Verdict
from atlib.studies.shrinkage import runs as ex
from atlib.studies import context as cx
from atlib.studies.profiles import get_profile
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.training import train


# ------------------------------------------------------------------------------------ known answers
def test_identical_rankings_give_one_and_reversed_minus_one():
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    for fn in (cf.spearman, cf.kendall):
        assert fn(x, x) == pytest.approx(1.0)
        assert fn(x, 3 * x + 7) == pytest.approx(1.0), "rank statistics ignore monotone rescaling"
        assert fn(x, -x) == pytest.approx(-1.0)
    y = torch.randn(200, generator=torch.Generator().manual_seed(1))
    assert abs(cf.spearman(x, y)) < 0.25, "independent scores are not correlated"


def test_saturated_probabilities_do_not_tie_in_log_odds():
    # gaps from 20 to 40: float32 softmax gives exactly 1.0 for all of them
    gaps = torch.linspace(20, 40, 30)
    z = torch.zeros(30, 10)
    z[:, 3] = gaps
    assert cf.saturated_fraction(z) == 1.0
    p = torch.softmax(z, dim=1).max(dim=1).values
    assert len(set(p.tolist())) == 1, "the probabilities all tie at 1.0"
    lo = cf.confidence_score(z, "log_odds")
    assert len(set(lo.tolist())) == 30, "log-odds keep every sample distinct"
    assert cf.spearman(lo, gaps) == pytest.approx(1.0) and cf.kendall(lo, gaps) == pytest.approx(1.0)
    assert math.isnan(cf.spearman(p, gaps)), "ranking by float32 probability carries no information here"
    # log-odds equals gap - log(K-1) here (all other logits equal)
    assert torch.allclose(lo, gaps - math.log(9), atol=1e-4)


def test_interval_helper_covers_at_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        v = rng.normal(1.5, 2.0, size=3)
        s = cf.summarise([(0, i + 1, float(x)) for i, x in enumerate(v)], ("a", "b"))
        hits += s["ci"][0] <= 1.5 <= s["ci"][1]
    assert 0.93 <= hits / 2000 <= 0.97, hits / 2000


def test_units_use_each_model_at_most_once():
    seeds = [0, 1, 2, 3, 4, 5]
    assert cf.cross_units(seeds, 1) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0)]
    assert cf.cross_units(seeds, 2) == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 0), (5, 1)]
    assert cf.null_units(seeds) == [(0, 1), (2, 3), (4, 5)] and cf.null_units([3, 7, 9]) == [(3, 7)]
    for units in (cf.cross_units(seeds, 1), cf.cross_units(seeds, 2)):
        a, b = zip(*units)
        assert sorted(a) == sorted(b) == seeds, "each model of each family once"
        assert all(i != j for i, j in units), "no unit pairs two models of one seed"
    vals = cf.unit_values(lambda x, y: 10 * x + y, {0: 0, 1: 1, 2: 2}, {0: 0, 1: 1, 2: 2}, offset=1)
    assert vals == [(0, 1, 1.0), (1, 2, 12.0), (2, 0, 20.0)]
    with pytest.raises(ValueError, match="same seeds"):
        cf.unit_values(lambda x, y: 0.0, {0: 0, 1: 1}, {0: 0, 2: 2})
    # Δ is formed unit by unit from the two comparisons that share the standard model
    z = {f: {s: torch.randn(50, 4, generator=torch.Generator().manual_seed(7 * s + len(f))) for s in seeds}
         for f in ("std", "at", "matched")}
    c = cf.comparisons(z, cf.spearman)
    assert set(c) == {"std_vs_at", "std_vs_matched", "matched_vs_at", "std_vs_std", "at_vs_at",
                      "matched_vs_matched", "std_at_minus_std_matched"}, "families absent (early) are skipped"
    d = c["std_at_minus_std_matched"]
    assert d["n"] == 6 and c["std_vs_std"]["n"] == 3
    for u, x, y in zip(d["units"], c["std_vs_at"]["units"], c["std_vs_matched"]["units"]):
        assert u["value"] == pytest.approx(x["value"] - y["value"]) and u["std"] == x["a"] == y["a"]
        assert u["matched"] == y["b"] and u["at"] == x["b"]


def test_jaccard_topk_and_effect_size():
    s = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    assert cf.topk_set(s, 2) == {0, 1} and cf.topk_set(s, 2, largest=False) == {3, 4}
    assert cf.topk_set(torch.ones(4), 2) == {0, 1}, "ties broken by index, deterministically"
    assert cf.jaccard({0, 1}, {1, 2}) == pytest.approx(1 / 3) and cf.jaccard(set(), set()) == 1.0
    assert cf.topk_jaccard_fn(2, True)(s, -s) == 0.0
    assert cf.effect_size([1, 2, 3], [4, 5, 6]) == pytest.approx(-3.0)
    assert cf.effect_size([1, 1], [2, 2]) == -math.inf
    assert math.isnan(cf.effect_size([1.0], [2.0]))


def test_nearest_other_class_distance_and_contrast():
    train_x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]]).reshape(3, 1, 1, 2)
    train_y = torch.tensor([0, 1, 1])
    x = torch.tensor([[0.0, 0.0], [0.0, 2.0]]).reshape(2, 1, 1, 2)
    d = cf.nearest_other_class_distance(x, torch.tensor([0, 1]), train_x, train_y)
    assert torch.allclose(d, torch.tensor([1.0, 2.0])), "same-class neighbours are ignored"
    assert torch.allclose(cf.rms_contrast(torch.tensor([[0.0, 1.0]]).reshape(1, 1, 1, 2)), torch.tensor([2 ** -0.5]))


def _iv(value, hw, n=3):
    return {"value": value, "ci": [value - hw, value + hw], "n": n}


@pytest.mark.parametrize("cross,null_n,m_null,matched,delta,outcome,abc", [
    (0.80, 3, 0.95, True, -0.05, "supported", (True, True, True)),
    (0.80, 3, 0.95, True, -0.01, "not separated from accuracy", (True, True, False)),  # Δ's interval reaches 0
    (0.80, 3, 0.95, False, -0.05, "inconclusive", (True, False, None)),  # not matched
    (0.80, 3, 0.79, True, -0.05, "inconclusive", (True, False, None)),  # the control's own null is as low
    (0.96, 3, 0.79, False, -0.05, "not supported", (False, None, None)),  # (a) first: nothing else checked
    (0.80, 1, 0.95, True, -0.05, "undecided", (None, None, None)),
])
def test_verdict_applies_the_rule_in_order(cross, null_n, m_null, matched, delta, outcome, abc):
    c = {"std_vs_at": _iv(cross, 0.01, 6), "std_vs_std": _iv(0.97, 0.01, null_n), "at_vs_at": _iv(0.98, 0.01),
         "matched_vs_matched": _iv(m_null, 0.01), "std_at_minus_std_matched": _iv(delta, 0.02, 6)}
    v = rules.decide(c, matched)
    assert v["outcome"] == outcome
    assert (v["a_differs_from_nulls"], v["c_control_usable"], v["b_not_explained_by_accuracy"]) == abc
    gap = 0.5 * rules.RULE.max_gap if matched else 2 * rules.RULE.max_gap  # the rule decides "matched" from the gap
    an = SimpleNamespace(correlations={"spearman": c}, matched=SimpleNamespace(gap=-gap), gates=[])
    assert rules.verdict(an)["outcome"] == outcome and "1.5 pp" in rules.verdict(an)["rule"]
    an.gates = [validity.Gate("learned: at_s0", False, "clean 10.6% vs constant predictor 11.4% + 10 pp")]
    gated = rules.verdict(an)  # whatever the intervals say, a collapsed model makes the verdict invalid
    assert gated["outcome"] == Verdict.INVALID and gated["invalid_reason"].startswith("learned: at_s0 (clean 10.6%")


def test_grid_and_matched_schedule():
    g = cm.n_grid(10_000, 100)
    assert g[-1] == 10_000 and g[0] >= 100 and list(g) == sorted(set(g))
    assert all(b / a <= 2 ** 0.5 * 1.001 for a, b in zip(g, g[1:])), "neighbours at most √2 apart"
    assert g[0] / 100 < 2 ** 0.5, "the grid reaches down to grid_min"
    p = get_profile("fashion")
    for n in g:
        q = cm.matched_profile(p, 10_000, n)
        assert q.train_subset == n and q.width == p.width and q.lr == p.lr
        steps, steps_n = p.epochs * math.ceil(10_000 / p.batch_size), q.epochs * math.ceil(n / p.batch_size)
        assert abs(steps_n - steps) <= math.ceil(n / p.batch_size) / 2, "the same number of SGD steps"
    assert cm.matched_profile(get_profile("smoke"), 1437, 1437).train_subset is None, "the grid's top is the model"
    with pytest.raises(ValueError, match="grid_min"):
        cm.n_grid(100, 200)


def test_calibration_bisects_to_the_closest_n(monkeypatch, tmp_path):
    ctx = cx.context("smoke", cache_dir=str(tmp_path / "c"), device="cpu", workers=1)
    st = dataclasses.replace(ctx.profile.confidence, grid_min=20, calib_seeds=2)
    acc = {n: 1 - 30 / (n + 30) for n in cm.n_grid(len(ctx.data.train_y), 20)}  # rises with n
    trained = []
    monkeypatch.setattr(cm, "matched_model", lambda c, n, s: trained.append((n, s)) or n)
    monkeypatch.setattr(cm, "_select_acc", lambda ctx, models, sel: [0.9 if m == "AT" else acc[m] for m in models])
    cal = cm.calibrate(ctx, ["AT", "AT"], st)
    best = min(acc, key=lambda n: abs(acc[n] - 0.9))
    assert cal.target == 0.9 and cal.n == best and cal.monotone
    assert len(cal.evaluated) <= math.ceil(math.log2(len(cal.grid))) + 2 < len(cal.grid), "bisection, not a sweep"
    assert {s for _, s in trained} == set(ctx.profile.seeds[:2]) and cal.calib_seeds == ctx.profile.seeds[:2]
    assert cal.epochs == cm.matched_profile(ctx.profile, len(ctx.data.train_y), best).epochs


# -------------------------------------------------------------------------------------- error paths
def test_error_paths():
    with pytest.raises(ValueError, match="equal lengths"):
        cf.spearman([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 3"):
        cf.kendall([1, 2], [1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        cf.spearman([1.0, math.inf, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown confidence score"):
        cf.confidence_score(torch.zeros(2, 3), "entropy")
    with pytest.raises(ValueError, match="k must be"):
        cf.topk_set(torch.zeros(3), 4)
    with pytest.raises(ValueError, match="k must be"):
        cf.topk_set(torch.zeros(3), 0)
    with pytest.raises(ValueError, match="at least one value"):
        cf.effect_size([], [1.0])
    with pytest.raises(ValueError, match="no units"):
        cf.summarise([], ("a", "b"))
    with pytest.raises(ValueError, match="differ in length"):
        cf.nearest_other_class_distance(torch.zeros(2, 1, 1, 2), torch.zeros(3, dtype=torch.long),
                                        torch.zeros(1, 1, 1, 2), torch.zeros(1, dtype=torch.long))


def test_settings_cover_every_profile():
    from atlib.studies.profiles import PROFILES

    for name, p in PROFILES.items():
        st = p.confidence
        assert st.select_on in cx.SELECT_ON
        assert (st.select_on == "holdout") == (p.train_subset is not None), name


def test_selection_set_is_held_out_or_refused(tmp_path):
    base = get_profile("smoke")
    ctx = cx.context(base, cache_dir=str(tmp_path / "c"), device="cpu")
    with pytest.raises(ValueError, match="select_on must be"):
        cm.selection_set(ctx, "test", 100)
    with pytest.raises(ValueError, match="not available.*'train'"):
        cm.selection_set(ctx, "holdout", 100)  # smoke trains on every training image
    x, y, desc = cm.selection_set(ctx, "train", 0)
    assert torch.equal(x, ctx.data.train_x) and "training images" in desc
    sub = cx.context(dataclasses.replace(base, train_subset=1000), cache_dir=str(tmp_path / "c"), device="cpu")
    hx, hy, desc = cm.selection_set(sub, "holdout", 200)
    assert len(hy) == 200 and "held-out" in desc
    flat_train = {tuple(r) for r in sub.data.train_x.flatten(1).tolist()}
    assert sum(tuple(r) in flat_train for r in hx.flatten(1).tolist()) <= 5, "held-out images are not trained on"
    with pytest.raises(ValueError, match="not available"):
        cm.selection_set(sub, "holdout", 1000)


# ----------------------------------------------------------------------------- the chapter, end to end
@pytest.fixture(scope="module")
def warm(smoke_book):
    return smoke_book


def test_chapter_page_and_summary_section(warm):
    html = (warm["out"] / "_build" / "html" / "03_confidence.html").read_text()
    assert "seed-to-seed null" in html and "Traceback" not in html and "Not explained by accuracy" in html
    imgs = re.findall(r'<img[^>]+src="([^"]+\.png)"', html)
    assert len(imgs) >= 4, "scatter, two grids and the static browser view"
    assert "VBox(" not in html and "HBox(" not in html, "no raw widget repr in the rendered book"
    s = json.loads(warm["summary"].read_text())["confidence"]
    p = get_profile("smoke")
    assert s["n_test"] == 360 and s["seeds"] == list(p.seeds), "confidence on the whole test set"
    for metric in ("spearman", "kendall"):
        assert set(s[metric]) == {"std_vs_at", "std_vs_std", "at_vs_at", "std_vs_matched", "matched_vs_at",
                                  "matched_vs_matched", "early_vs_at", "early_vs_early", "std_at_minus_std_matched"}
        for key, c in s[metric].items():
            assert set(c) == {"value", "ci", "n", "units"} and -2 <= c["value"] <= 2 and c["n"] == len(c["units"])
            models = [m for u in c["units"] for k, m in u.items() if k != "value"]
            if key != "std_at_minus_std_matched":
                assert len(models) == len(set(models)) or len(p.seeds) <= 2, f"{key}: a model in two units"
        assert s[metric]["std_vs_std"]["n"] == len(p.seeds) // 2
    m = s["matched_control"]
    assert m["n"] in m["grid"] and str(m["n"]) in m["select_acc"] and set(m["test_acc"]) == {str(x) for x in p.seeds}
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    assert m["gap"] == pytest.approx(mean(m["test_acc"]) - mean(m["at_test_acc"]))
    assert m["matched"] == (abs(m["gap"]) <= m["max_gap"])
    v = s["verdict"]
    assert v["outcome"] in {"supported", "not separated from accuracy", "not supported", "inconclusive", "undecided"}
    assert {"a_differs_from_nulls", "c_control_usable", "b_not_explained_by_accuracy", "matched"} <= set(v)
    shown = s["shown_indices"]["std_vs_at"]
    assert len(shown["b_over_a_test_index"]) == p.confidence.n_show
    figs = {f.name for f in (warm["out"] / "results" / "figures").glob("confidence_*.png")}
    assert {"confidence_scatter.png", "confidence_grid_std_vs_at.png", "confidence_grid_std_vs_std.png",
            "confidence_browser_static.png"} <= figs


def test_chapter_does_not_retrain(warm, monkeypatch):
    ctx = cx.context("smoke", cache_dir=str(warm["cache"]), device="cpu")
    assert all(r.cached for r in ex.training_runs(ctx, progress=False))

    def no_training(*a, **k):
        raise AssertionError("chapter 03 must not train on a warm cache")

    monkeypatch.setattr("atlib.training.train.train", no_training)
    an = cf.analyse(ctx, progress=False)
    assert an.models_cached
    std = {r.seed: r for r in ex.training_runs(ctx, (ModelSpec("standard"),), progress=False)}
    x = ctx.data.test_x
    for seed in ctx.profile.seeds:
        ref = train.predict(std[seed].model, x)
        # the early-stopped snapshots are chapter 02's standard run's own: its last epoch is the model
        snap, hit = ex.std_snapshots(ctx, seed)
        assert hit and torch.equal(snap["test_logits"][-1], ref)
        e = an.early[seed]
        gaps = [abs(a - an.matched.calibration.target) for a in e.select_acc]
        assert gaps[e.epoch - 1] == min(gaps) and torch.equal(e.logits, snap["test_logits"][e.epoch - 1])
        # the matched model at the grid's top (every training image) is chapter 02's standard model itself
        assert torch.equal(train.predict(cm.matched_model(ctx, len(ctx.data.train_y), seed), x), ref)
        assert torch.equal(an.logits["std"][seed], ref)
    # the browser builds, and its static figure rejects a bad direction
    w = cp.browser(an)
    assert len(w.children) == 3
    with pytest.raises(ValueError, match="direction"):
        cp.browser_figure(an, "sideways")
    fig = cp.browser_figure(an, "std ≫ AT", (0, 3), cls=0)
    assert len(fig.axes) == 8
    measures = cf.group_measures(an)
    assert set(measures) == {"AT ≫ std", "std ≫ AT", "random"}
    assert all(iv.n == len(ctx.profile.seeds) for ms in measures.values() for iv in ms.values())
