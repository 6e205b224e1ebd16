"""Chapter 01's theory: closed-form worst cases vs PGD, the shifted-logit bound, the Gaussian optimal
scale, the flip-radius tools, the verdict rules, and a mutation check that the checks can fail."""
import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from atlib.core import attacks
from atlib.studies.theory import controls
from atlib.studies.theory import runs as theory
from atlib.studies.theory import views as V
from atlib.studies.profiles import get_profile
from atlib.studies.theory import rules

CHECKS = replace(get_profile("smoke").theory.linear, check_n=60)  # the closed-form checks on 60 samples


def _random_linear(K=5, D=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, D, generator=g, dtype=torch.float64)
    b = torch.randn(K, generator=g, dtype=torch.float64)
    return W, b, g


def _box_inputs(g, n=40, D=30):
    """Pixels in [0, 1] with a third of them on the box edges, where clamping matters."""
    x = torch.rand(n, D, generator=g, dtype=torch.float64)
    edge = torch.rand(n, D, generator=g) < 0.33
    return torch.where(edge, (x > 0.5).double(), x)


def _interior(g, n=40, D=30):
    return 0.4 + 0.2 * torch.rand(n, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_linf_box_closed_form_equals_sign_pgd(eps):
    W, b, g = _random_linear()
    x = _box_inputs(g)
    y = torch.randint(0, 5, (40,), generator=g)
    assert theory.closed_form_vs_pgd(W, b, x, y, eps, "linf", box=True) <= 1e-5


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.3)])
def test_no_box_closed_form_equals_pgd_away_from_the_edges(norm, eps):
    W, b, g = _random_linear()
    x = _interior(g)  # ε is too small to reach the box: the box is inactive
    y = torch.randint(0, 5, (40,), generator=g)
    assert theory.closed_form_vs_pgd(W, b, x, y, eps, norm, box=False) <= 1e-5


def test_box_matters_near_the_edges():
    """Ignoring the box on edge pixels overstates the attacker: the no-box formula no longer matches PGD."""
    W, b, g = _random_linear()
    x = _box_inputs(g)
    y = torch.randint(0, 5, (40,), generator=g)
    assert theory.closed_form_vs_pgd(W, b, x, y, 0.3, "linf", box=False) > 1e-2


def test_shifted_logit_bound_exact_in_binary_and_strict_in_multiclass():
    W, b, g = _random_linear(K=5)
    x = _box_inputs(g)
    y = torch.randint(0, 5, (40,), generator=g)
    multi = theory.bound_check(W, b, x, y, 0.1)
    assert multi["max_violation"] <= 1e-9, "the shifted-logit CE upper-bounds the attacked CE"
    assert multi["mean_gap"] > 1e-3, "with 5 classes the bound is not attained"
    y2 = torch.randint(0, 2, (40,), generator=g)
    binary = theory.bound_check(W[:2], b[:2], x, y2, 0.1)
    assert binary["max_abs_diff"] <= 1e-5, "with 2 classes the bound is the attacked loss"


def _fake_lin(W, b, eps):
    rec = {"weight": W.float(), "bias": b.float()}
    return {"eps": [0.0, eps], "closed_form": [[rec], [rec]], "pgd": [[rec], [rec]]}


def test_chapter_checks_pass_on_correct_math():
    W, b, g = _random_linear(K=10, D=30)
    x, y = _box_inputs(g, 60), torch.randint(0, 10, (60,), generator=g)
    res = V.linear_checks(_fake_lin(W, b, 0.1), x, y, CHECKS)
    assert res["closed_form_matches_pgd"] and res["bound_holds"] and res["binary_exact"]


@pytest.mark.parametrize("wrong", [{"linf": 2.0, "l2": 2.0}, {"linf": 1.0, "l2": 1.0}])
def test_mutation_wrong_dual_norm_makes_the_checks_fail(monkeypatch, wrong):
    """The same checks with the wrong dual norm (L2 where L1 is due, or L1 where L2 is due) must fail."""
    W, b, g = _random_linear(K=10, D=30)
    x, y = _box_inputs(g, 60), torch.randint(0, 10, (60,), generator=g)
    xi = _interior(g, 60)
    monkeypatch.setattr(theory, "DUAL_NORM", wrong)
    if wrong["linf"] != 1.0:
        assert theory.closed_form_vs_pgd(W, b, x, y, 0.1, "linf", box=True) > 1e-2
        assert theory.closed_form_vs_pgd(W, b, xi, y, 0.08, "linf", box=False) > 1e-2
        res = V.linear_checks(_fake_lin(W, b, 0.1), x, y, CHECKS)
        assert not res["closed_form_matches_pgd"]
        assert not res["bound_holds"], "a too-small shift (‖·‖₂ ≤ ‖·‖₁) lets PGD beat the 'bound'"
    else:
        assert theory.closed_form_vs_pgd(W, b, xi, y, 0.3, "l2", box=False) > 1e-2


def test_optimal_scale_matches_the_well_specified_closed_form():
    for eps in (0.0, 0.2, 0.5, 0.9):
        assert theory.optimal_scale(eps, 1.0, 0.75) == pytest.approx(2 * (1.0 - eps) / 0.75 ** 2, rel=1e-5)
    assert theory.optimal_scale(1.2, 1.0, 0.75) == 0.0
    # the scale minimises the loss: a 10% larger or smaller scale is worse
    c = theory.optimal_scale(0.3)
    assert theory.gaussian_scale_loss(c, 0.3, 1.0, 0.75) < min(theory.gaussian_scale_loss(c * f, 0.3, 1.0, 0.75)
                                                               for f in (0.9, 1.1))


def test_gradient_descent_reaches_the_predicted_scale():
    st = replace(get_profile("smoke").theory.gaussian, n_train=3000, n_test=3000, steps=400, eps_sweep=(0.0, 0.5))
    g = theory.gaussian_experiment(st, (0,))
    v = V.gaussian_verdict(g)
    assert v["all_hold"], v
    assert v["trend"] == "falls monotonically"
    # a wrong prediction (σ mistaken for 0.5) is caught by the same rule
    g["rows"][0]["predicted"]["scale"] = theory.optimal_scale(0.0, 1.0, 0.5)
    assert not V.gaussian_verdict(g)["per_eps"][0]["holds"]


def test_batched_gaussian_descent_equals_one_eps_at_a_time():
    """The ε sweep trains in one batched descent; each row must be the run of its own ε alone."""
    st = replace(get_profile("smoke").theory.gaussian, n_train=500, n_test=10, steps=100, eps_sweep=(0.0, 0.3, 0.7))
    x, y = theory.gaussian_sample(st.n_train, st, torch.Generator().manual_seed(3))
    W = theory.train_gaussian(x, y, st.eps_sweep, st, seed=1)
    assert W.shape == (3, st.dim)
    for row, eps in zip(W, st.eps_sweep):
        assert torch.allclose(row, theory.train_gaussian(x, y, eps, st, seed=1), rtol=0, atol=1e-12)
    assert W[0].norm() > W[1].norm() > W[2].norm(), "a larger ε trains a smaller scale"


def test_bad_inputs_raise():
    W, b, g = _random_linear()
    x, y = _box_inputs(g), torch.zeros(40, dtype=torch.long)
    with pytest.raises(ValueError, match="only L∞ has a closed-form"):
        theory.worst_case_shifts(W, x, y, 0.1, "l2", box=True)
    with pytest.raises(ValueError, match="bad ε"):
        theory.worst_case_shifts(W, x, y, -0.1)
    with pytest.raises(ValueError, match="unknown norm"):
        theory.dual_norm(W, "l3")
    with pytest.raises(ValueError, match="unknown training method"):
        theory.train_linear(x.float(), y, 5, 0.1, "fgsm", get_profile("smoke").theory.linear, 0)
    from atlib.studies import context as cx

    ctx = cx.context("smoke", device="cpu")
    with pytest.raises(ValueError, match="unknown control"):
        controls.control_config(ctx, "dropout", 0.1)


def test_trend():
    assert theory.trend([3, 2, 2, 1]) == "falls monotonically"
    assert theory.trend([1, 2, 3]) == "rises monotonically"
    assert theory.trend([1, 2, 1]) == "is not monotone"
    assert theory.trend([1, 1, 1]) == "is not monotone"


def test_per_sample_pgd_equals_atlib_pgd(std_digits_mlp, digits):
    x, y = digits.test_x[:64], digits.test_y[:64]
    cfg = attacks.AttackConfig.madry("linf", 0.1, 7, loss="margin", random_start=False, keep_best=False)
    ref = attacks.PGDLinf(std_digits_mlp, cfg)(x, y)
    mine, _ = controls.pgd_linf_per_sample(std_digits_mlp, x, y, torch.full((64,), 0.1), 7, random_start=False)
    assert torch.allclose(mine, ref, atol=1e-6)


def test_first_order_radius_and_bisection_on_a_binary_linear_model():
    """For a linear 2-class model away from the box the first-order radius is exact, and bisection finds it."""
    torch.manual_seed(0)
    lin = nn.Linear(30, 2).double()
    with torch.no_grad():
        lin.bias.zero_()
    x = 0.45 + 0.1 * torch.rand(50, 30, dtype=torch.float64)
    y = lin(x).argmax(1).detach()
    m, pred = controls.first_order_radius(lin, x, y)
    d = (lin.weight[y] - lin.weight[1 - y]).detach()
    assert torch.allclose(pred, m / d.abs().sum(1))
    st = replace(get_profile("smoke").theory.deep, n_flip=50, flip_steps=10, bisect_iters=12, eps_max=0.4, n_calib=10)
    keep = pred < 0.35  # inside the box for these inputs: exact
    true, censored = controls.bisection_radius(lin, x[keep], y[keep], st, seed=0)
    assert not censored.any()
    assert torch.all(true >= pred[keep] - 1e-9) and torch.all(true <= pred[keep] + 2 * 0.4 / 2 ** 12)


def test_verdict_rules():
    from atlib.core.stats import Interval

    assert rules.control_verdict(Interval(0.8, 0.1, 3)) == "reproduces"
    assert rules.control_verdict(Interval(0.05, 0.1, 3)) == "no"
    assert rules.control_verdict(Interval(0.3, 0.2, 3)) == "partial"
    std = [{"worst": 0.1}, {"worst": 0.2}]
    at = [{"worst": 0.6}, {"worst": 0.7}]
    iv = rules.gap_closed([{"worst": 0.35}, {"worst": 0.45}], std, at)
    assert iv.mean == pytest.approx(0.5)
    ss = [{"spearman": 0.9, "median_ratio": 1.1}, {"spearman": 0.92, "median_ratio": 1.2}]
    v = rules.flip_verdict(ss)
    assert v["ranks_well"] and v["calibrated"]
    assert not rules.flip_verdict([{"spearman": 0.2, "median_ratio": 3.0}] * 2)["ranks_well"]


def test_epsilon_slider_redraws():
    g = torch.Generator().manual_seed(0)
    lin = {"eps": [0.0, 0.1], "closed_form": [[{"logits": torch.randn(50, 10, generator=g)}],
                                               [{"logits": 0.5 * torch.randn(50, 10, generator=g)}]]}
    box = V.epsilon_slider(lin)
    slider, _out = box.children
    assert box.drawn == [0]
    slider.value = 1  # triggers a redraw through the observer
    assert box.drawn == [0, 1]
    fig = V.slider_static(lin)
    assert len(fig.axes) == 6


def test_chapter_page_and_summary(smoke_book):
    html = smoke_book["out"] / "_build" / "html" / "01_theory.html"
    text = html.read_text()
    assert "theory of logit shrinkage" in text.lower() and "Traceback" not in text
    figs = {p.name for p in (smoke_book["out"] / "results" / "figures").glob("theory_*.png")}
    assert {"theory_gaussian.png", "theory_linear_sweep.png", "theory_linear_histograms.png",
            "theory_flip_radius.png"} <= figs
    t = json.loads(smoke_book["summary"].read_text())["theory"]
    per_eps = t["gaussian"]["per_eps"]
    assert len(per_eps) >= 5 and per_eps[0]["eps"] == 0
    for key in ("mean_max_logit", "mean_centred_max_logit", "mean_logit_gap", "weight_norm", "trained_scale"):
        assert key in per_eps[0]
    lin = t["linear"]["closed_form"]
    assert len(lin) >= 5 and lin[0]["eps"] == 0 and len(t["linear"]["pgd"]) == len(lin)
    assert t["checks"]["closed_form_vs_pgd_max_abs_err"] <= 1e-5 and t["checks"]["bound_holds"] is True
    for label, f in t["flip_radius"].items():
        assert -1 <= f["spearman"]["mean"] <= 1, label
    rows = t["controls"]["rows"]
    assert len(rows) == 5 and all(math.isfinite(r["per_seed"][0]["pgd_ce"]) for r in rows.values())
