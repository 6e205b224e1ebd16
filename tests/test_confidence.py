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
from atlib.studies.shrinkage import runs as ex
from atlib.studies import context as cx
from atlib.studies.profiles import ModelSpec, get_profile


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


def test_seed_pairs_never_pair_a_seed_with_itself():
    assert cf.seed_pairs([2, 0, 1]) == [(0, 1), (0, 2), (1, 2)]
    cross = cf.seed_pairs([0, 1, 2], [0, 1, 2])
    assert len(cross) == 6 and all(i != j for i, j in cross)
    vals = cf.pair_values(lambda a, b: a * 10 + b, {0: 0, 1: 1}, {0: 0, 1: 1})
    assert vals == [(0, 1, 1.0), (1, 0, 10.0)]


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
    return {"value": value, "ci": [value - hw, value + hw], "n": n, "pairs": []}


@pytest.mark.parametrize("cross,matched,matched_null,n,outcome", [
    (0.80, 0.80, 0.95, 3, "supported"),
    (0.80, 0.97, 0.95, 3, "not separated from accuracy"),
    (0.80, 0.80, 0.70, 3, "not separated from accuracy"),
    (0.96, 0.80, 0.95, 3, "not supported"),
    (0.80, 0.80, 0.95, 1, "undecided"),
])
def test_verdict_applies_the_rule(cross, matched, matched_null, n, outcome):
    c = {"std_vs_at": _iv(cross, 0.01), "std_vs_std": _iv(0.97, 0.01, n), "at_vs_at": _iv(0.98, 0.01),
         "std_matched_vs_at": _iv(matched, 0.01), "std_matched_vs_std_matched": _iv(matched_null, 0.01)}
    v = rules.verdict(SimpleNamespace(correlations={"spearman": c}))
    assert v["outcome"] == outcome
    assert v["rule"] == rules.RULE


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
    with pytest.raises(ValueError, match="no seed pairs"):
        cf.summarise([], ("a", "b"))
    with pytest.raises(ValueError, match="differ in length"):
        cf.nearest_other_class_distance(torch.zeros(2, 1, 1, 2), torch.zeros(3, dtype=torch.long),
                                        torch.zeros(1, 1, 1, 2), torch.zeros(1, dtype=torch.long))


def test_settings_cover_every_profile():
    from atlib.studies.profiles import PROFILES

    for name, p in PROFILES.items():
        st = p.confidence
        assert st.select_on in cm.SELECT_ON
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
    assert "seed-to-seed null" in html and "Traceback" not in html
    imgs = re.findall(r'<img[^>]+src="([^"]+\.png)"', html)
    assert len(imgs) >= 4, "scatter, two grids and the static browser view"
    assert "VBox(" not in html and "HBox(" not in html, "no raw widget repr in the rendered book"
    s = json.loads(warm["summary"].read_text())["confidence"]
    assert set(s) == {"spearman", "kendall", "effect_size", "topk_jaccard", "verdict", "shown_indices"}
    for metric in ("spearman", "kendall"):
        assert set(s[metric]) == {"std_vs_at", "std_vs_std", "at_vs_at", "std_matched_vs_at"}
        for c in s[metric].values():
            assert set(c) == {"value", "ci", "pairs"} and -1 <= c["value"] <= 1 and c["pairs"]
            assert all(p["a"] != p["b"] for p in c["pairs"])
    assert s["verdict"]["outcome"] in {"supported", "not separated from accuracy", "not supported", "undecided"}
    shown = s["shown_indices"]["std_vs_at"]
    assert len(shown["b_over_a_test_index"]) == get_profile("smoke").confidence.n_show
    figs = {p.name for p in (warm["out"] / "results" / "figures").glob("confidence_*.png")}
    assert {"confidence_scatter.png", "confidence_grid_std_vs_at.png", "confidence_grid_std_vs_std.png",
            "confidence_browser_static.png"} <= figs


def test_chapter_does_not_retrain(warm, monkeypatch):
    ctx = cx.context("smoke", cache_dir=str(warm["cache"]), device="cpu")
    assert all(r.cached for r in ex.training_runs(ctx, progress=False))

    def no_training(*a, **k):
        raise AssertionError("chapter 03 must not train on a warm cache")

    monkeypatch.setattr("atlib.training.train.train", no_training)
    an = cf.analyse(ctx, progress=False)
    assert an.models_cached and all(m.cached for m in an.matched.runs)
    # the early-stopped control is chapter 02's standard run: its last epoch reproduces the cached model
    std = {r.seed: r for r in ex.training_runs(ctx, (ModelSpec("standard"),), progress=False)}
    for seed in ctx.profile.seeds:
        snap, hit = cm.std_snapshots(ctx, seed, "train", 0)
        assert hit and torch.equal(snap["eval_logits"][-1], std[seed].logits["clean"])
    # the selected epoch is the one whose selection accuracy is closest to the AT target
    for m in an.matched.runs:
        gaps = [abs(a - an.matched.target) for a in m.select_acc]
        assert gaps[m.epoch - 1] == min(gaps)
        assert torch.equal(m.logits, cm.std_snapshots(ctx, m.seed, "train", 0)[0]["eval_logits"][m.epoch - 1])
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
