"""Chapter 04: every target ablation keeps what it claims and destroys what it claims (the identity must
fail the destroy checks), the distillation loss and its large-T limit, the verdict rule, error paths, and
the rendered chapter (it must not retrain chapter 02's teachers)."""
import json
import math
import re
from dataclasses import replace

import pytest
import torch

from atlib.studies.verdict import Verdict

from atlib.training import distill as D
from atlib.studies.distillation import rules
from atlib.studies.distillation import runs as dr
from atlib.studies.distillation import targets as dt
from atlib.studies.shrinkage import runs as ex
from atlib.studies import context as cx
from atlib.core import stats
from atlib.training import train
from atlib.studies.distillation.settings import DistillSettings
from atlib.studies.profiles import get_profile

N, K = 4000, 10


@pytest.fixture(scope="module")
def teachers():
    """Synthetic teachers with a realistic structure: AT logits small, standard logits larger and
    correlated with them, labels mostly equal to the AT argmax."""
    g = torch.Generator().manual_seed(0)
    at = torch.randn(N, K, generator=g) * 1.5
    std = 2.5 * at + torch.randn(N, K, generator=g) * 2.0
    y = at.argmax(1).clone()
    flip = torch.rand(N, generator=g) < 0.2
    y[flip] = torch.randint(0, K, (int(flip.sum()),), generator=g)
    return dt.TeacherLogits(at, std, y)


def identity(t, T, seed=0):
    return dt.soften(t.at, T)


def top(p):
    return p.max(dim=1)


def nonmax_sorted(p):
    """Each sample's non-max probabilities, sorted (the multiset)."""
    return p.scatter(1, p.argmax(1, keepdim=True), -1.0).sort(dim=1).values[:, 1:]


def check_destroys_order(fn, t, T=4.0):
    """The shuffle's destroy check: over many samples, the non-max ordering has Kendall τ ≈ 0 with AT's."""
    tau = float(dt.nonmax_kendall(dt.soften(t.at, T), fn(t, T, 0)).mean())
    assert abs(tau) < 0.05, f"non-max ordering kept: mean Kendall τ = {tau:.3f}"


# ------------------------------------------------------------------------------------ keeps / destroys
@pytest.mark.parametrize("T", [1.0, 4.0, 30.0])
def test_every_ablation_is_a_distribution_and_pure(teachers, T):
    for name in dt.ABLATIONS:
        p = dt.targets(name, teachers, T, seed=3)
        assert p.shape == (N, K) and p.dtype == torch.float64
        assert torch.all(p >= 0) and torch.allclose(p.sum(1), torch.ones(N, dtype=torch.float64), atol=1e-9), name
        assert torch.equal(p, dt.targets(name, teachers, T, seed=3)), f"{name} is not deterministic for a seed"


def test_full_and_standard_are_the_softened_teachers(teachers):
    assert torch.allclose(dt.full(teachers, 4.0), torch.softmax(teachers.at.double() / 4, 1))
    assert torch.allclose(dt.standard_teacher(teachers, 4.0), torch.softmax(teachers.std.double() / 4, 1))
    assert not torch.allclose(dt.full(teachers, 4.0), dt.full(teachers, 30.0)), "T matters"


def test_standard_rescaled_keeps_std_ordering_and_takes_at_mean_confidence(teachers):
    T = 4.0
    p, std, at = dt.standard_rescaled(teachers, T), dt.soften(teachers.std, T), dt.soften(teachers.at, T)
    assert torch.equal(p.argsort(1), std.argsort(1)), "every sample keeps the standard ordering"
    # one temperature for all samples: the confidence ranking is nearly (not exactly) kept
    assert stats.spearman(top(p).values, top(std).values) > 0.95
    assert float(top(p).values.mean()) == pytest.approx(float(top(at).values.mean()), abs=1e-6)
    assert float(top(std).values.mean()) > float(top(at).values.mean()) + 0.05, "the mean actually moved"


def test_hard_labels_are_one_hot_and_marked_plain_ce(teachers):
    p = dt.hard_labels(teachers, 4.0)
    assert torch.equal(p.argmax(1), teachers.labels) and torch.all(p.max(1).values == 1)
    assert dt.ABLATIONS["hard_labels"].plain_ce and not dt.ABLATIONS["full"].plain_ce


def test_uniform_nonmax_keeps_top_exactly_and_flattens_the_rest(teachers):
    T = 4.0
    ref, p = dt.soften(teachers.at, T), dt.uniform_nonmax(teachers, T)
    assert torch.equal(p.argmax(1), ref.argmax(1))
    assert torch.equal(top(p).values, top(ref).values), "top probability kept exactly"
    rest = nonmax_sorted(p)
    assert float(rest.var(dim=1).max()) < 1e-30, "zero variance among the non-max probabilities"
    assert float(nonmax_sorted(ref).var(dim=1).mean()) > 1e-4, "the reference had some"


def test_shuffle_nonmax_keeps_values_and_destroys_the_ordering(teachers):
    T = 4.0
    ref, p = dt.soften(teachers.at, T), dt.shuffle_nonmax(teachers, T, seed=0)
    assert torch.equal(p.argmax(1), ref.argmax(1)), "argmax kept"
    assert torch.equal(top(p).values, top(ref).values), "top probability kept exactly"
    assert torch.equal(nonmax_sorted(p), nonmax_sorted(ref)), "the multiset of the rest kept"
    check_destroys_order(dt.shuffle_nonmax, teachers, T)
    # the permutation is drawn once per seed: same seed, same target (every epoch); another seed differs
    assert torch.equal(p, dt.shuffle_nonmax(teachers, T, seed=0))
    assert not torch.equal(p, dt.shuffle_nonmax(teachers, T, seed=1))


def test_the_order_check_fails_on_the_identity(teachers):
    """The destroy check is not vacuous: the identity keeps the ordering (τ = 1) and must fail it."""
    assert float(dt.nonmax_kendall(dt.soften(teachers.at, 4.0), identity(teachers, 4.0)).mean()) == pytest.approx(1.0)
    with pytest.raises(AssertionError, match="ordering kept"):
        check_destroys_order(identity, teachers)


def test_uniform_confidence_keeps_ordering_and_removes_sample_confidence(teachers):
    for T in (4.0, 30.0):
        ref, p = dt.soften(teachers.at, T), dt.uniform_confidence(teachers, T)
        assert torch.equal(p.argsort(1), ref.argsort(1)), "every sample's full ordering kept"
        m = float(top(ref).values.mean())
        assert torch.allclose(top(p).values, torch.full((N,), m, dtype=torch.float64), atol=1e-9), "top = population mean"
        assert float(top(ref).values.std()) > 0.001, "the reference varied from sample to sample"
    # and the ratio-keeping construction would have broken the ordering on some samples
    assert dt.ratio_rescale_inverts(dt.soften(teachers.at, 1.0), 0.3) > 0


def test_smoothed_labels_match_at_mean_confidence(teachers):
    T = 4.0
    p, m = dt.smoothed_labels(teachers, T), float(top(dt.soften(teachers.at, T)).values.mean())
    assert torch.equal(p.argmax(1), teachers.labels)
    assert torch.allclose(top(p).values, torch.full((N,), m, dtype=torch.float64), atol=1e-12)
    assert float(nonmax_sorted(p).var(1).max()) < 1e-30, "no incorrect-class information"


def test_swap_confidence_takes_at_ordering_and_std_confidence(teachers):
    T = 4.0
    at, p = dt.soften(teachers.at, T), dt.swap_confidence(teachers, T)
    want = top(dt.standard_rescaled(teachers, T)).values
    assert torch.equal(p.argsort(1), at.argsort(1)), "AT's ordering kept"
    assert torch.allclose(top(p).values, want, atol=1e-9), "the standard teacher's (rescaled) confidence"
    rho_at = stats.spearman(top(p).values, top(at).values)
    assert rho_at < 0.95 and rho_at == pytest.approx(stats.spearman(want, top(at).values), abs=1e-6), \
        "AT's own confidence pattern is replaced"


def test_properties_report_what_is_kept(teachers):
    pr = dt.properties(dt.shuffle_nonmax(teachers, 4.0), teachers, 4.0)
    assert pr["argmax_eq_at"] == 1.0 and pr["rho_top_at"] == pytest.approx(1.0) and abs(pr["tau_nonmax_at"]) < 0.05
    pr = dt.properties(dt.uniform_confidence(teachers, 4.0), teachers, 4.0)
    assert pr["tau_nonmax_at"] == pytest.approx(1.0) and pr["sd_top"] < 1e-6


# ------------------------------------------------------------------------------------------------ loss
def test_loss_is_zero_when_student_equals_teacher():
    z = torch.randn(64, K, generator=torch.Generator().manual_seed(1)) * 3
    for T in (1.0, 4.0, 30.0):
        loss = D.distill_loss(z, torch.softmax(z / T, 1), None, T, alpha=1.0)
        assert abs(float(loss)) < 1e-4  # float32 rounding, times T²
        assert abs(float(D.distill_loss(z + 5.0, torch.softmax(z / T, 1), None, T))) < 1e-4, "a common shift is free"
    assert float(D.distill_loss(-z, torch.softmax(z / 4, 1), None, 4.0)) > 0.1


def test_loss_gradient_at_large_T_is_the_centred_logit_difference_over_K():
    g = torch.Generator().manual_seed(2)
    # float64 and T = 1e4: the first-order (Hinton) limit is then exact to ~|z|/T ≈ 1e-3 relative, far above
    # rounding, so the comparison measures the limit, not float32 noise
    zt = torch.randn(32, K, generator=g, dtype=torch.float64) * 3
    zs = (torch.randn(32, K, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    T = 1e4
    D.distill_loss(zs, torch.softmax(zt / T, 1), None, T).backward()
    centred = (zs - zs.mean(1, keepdim=True)) - (zt - zt.mean(1, keepdim=True))
    want = centred.detach() / K / len(zs)  # batchmean: averaged over the batch
    scale = float(want.abs().max())
    assert torch.allclose(zs.grad, want, rtol=0, atol=1e-2 * scale)
    # ARD's element-wise mean is the batchmean divided by K: K times smaller gradients
    batchmean_grad, zs.grad = zs.grad.clone(), None
    D.distill_loss(zs, torch.softmax(zt / T, 1), None, T, reduction="mean").backward()
    assert torch.allclose(zs.grad * K, batchmean_grad, rtol=1e-9, atol=0)
    assert torch.allclose(zs.grad * K, want, rtol=0, atol=1e-2 * scale)
    zs, zt = zs.float(), zt.float()
    # at T = 1 the gradient is bounded (softmax difference), at large T it is not
    big = zs.detach() * 100
    g1 = torch.autograd.functional.jacobian(lambda z: D.distill_loss(z, torch.softmax(zt, 1), None, 1.0), big)
    gT = torch.autograd.functional.jacobian(lambda z: D.distill_loss(z, torch.softmax(zt / T, 1), None, T), big)
    assert float(g1.abs().max()) <= 1.0 / len(zs) + 1e-6 < float(gT.abs().max())


def test_alpha_zero_is_plain_cross_entropy():
    z, y = torch.randn(16, K), torch.randint(0, K, (16,))
    loss = D.distill_loss(z, torch.softmax(torch.randn(16, K), 1), y, 4.0, alpha=0.0)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(z, y))


def test_students_pair_by_seed_and_train(digits):
    """A short distillation reduces the loss and follows its teacher; the same seed gives the same student."""
    from atlib.core.models import build_model
    from atlib.core.runtime import seed_everything

    x, y = digits.train_x[:512], digits.train_y[:512]
    tgt = torch.softmax(torch.nn.functional.one_hot(y, 10).float() * 2, 1)
    cfg = D.DistillConfig(4.0, 1.0, 8, 64, 0.05)
    outs = []
    for _ in range(2):
        seed_everything(0)
        m = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
        h = D.distill(m, x, tgt, y, cfg, seed=0, progress=False)
        outs.append(torch.cat([p.flatten() for p in m.parameters()]))
    assert h[-1]["train_loss"] < h[0]["train_loss"] and h[-1]["target_argmax_agreement"] > 0.8
    assert torch.equal(outs[0], outs[1])


def test_survivors_only_attack_the_alive_and_never_revive(std_digits_mlp, digits):
    from atlib.core.attacks import AttackConfig

    x, y = digits.test_x[:100], digits.test_y[:100]
    alive = torch.zeros(100, dtype=torch.bool)
    assert not D.survivors(std_digits_mlp, x, y, alive, AttackConfig.cosine("linf", 0.1, 5), 0).any()
    alive = train.correct(std_digits_mlp, x, y)
    out = D.survivors(std_digits_mlp, x, y, alive, AttackConfig.cosine("linf", 0.5, 10), 0)
    assert not (out & ~alive).any() and out.sum() < alive.sum()


# --------------------------------------------------------------------------------------- rule and errors
def test_error_paths(teachers):
    with pytest.raises(dt.UnknownAblationError, match="unknown ablation 'sharpen'.*full.*shuffle_nonmax"):
        dt.targets("sharpen", teachers, 4.0)
    for bad in (0, -1.0, math.inf, math.nan, "4", True):
        with pytest.raises(ValueError, match="bad temperature"):
            dt.targets("full", teachers, bad)
    with pytest.raises(ValueError, match="bad temperature"):
        D.distill_loss(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), None, 0.0)
    with pytest.raises(ValueError, match="labels are needed"):
        D.distill_loss(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), None, 2.0, alpha=0.5)
    with pytest.raises(ValueError, match="unknown reduction"):
        D.distill_loss(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), None, 2.0, reduction="sum")
    with pytest.raises(ValueError, match="two \\(N, K\\) tensors"):
        dt.TeacherLogits(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4))
    fashion = get_profile("fashion").distill
    with pytest.raises(ValueError, match="one lr per temperature"):
        replace(fashion, temperatures=(4.0, 30.0), lrs=(0.01,))
    with pytest.raises(ValueError, match="end at L∞ 0.5"):
        replace(fashion, sweep_eps=(0.2, 0.3))
    with pytest.raises(ValueError, match="not one of this profile's temperatures"):
        fashion.lr_at(7.0)
    with pytest.raises(ValueError, match="square_subset"):
        replace(fashion, eval_subset=50, square_subset=100)
    with pytest.raises(ValueError, match="apgd_steps"):
        replace(fashion, apgd_steps=0)
    with pytest.raises(TypeError, match="missing"):
        DistillSettings(temperatures=(4.0,), lrs=(0.01,))  # no setting has a default


# ----------------------------------------------------------------------------- the chapter, end to end
def test_chapter_page_and_summary_section(smoke_book):
    html = (smoke_book["out"] / "_build" / "html" / "04_distillation.html").read_text()
    assert "Traceback" not in html and "The verdict rule, fixed before the numbers" in html
    assert len(re.findall(r'<img[^>]+src="([^"]+\.png)"', html)) >= 3
    s = json.loads(smoke_book["summary"].read_text())["distillation"]
    from atlib.studies.profiles import get_profile

    p = get_profile("smoke")
    n_cfg = 1 + (len(dt.ABLATIONS) - 1) * len(p.distill.temperatures)
    assert len(s["students"]) == n_cfg * len(p.seeds) and len(s["pgd_at_students"]) == len(p.seeds)
    for r in s["students"]:
        assert set(r) >= {"ablation", "T", "alpha", "seed", "clean_acc", "robust_acc", "masking_flag", "square"}
        acc = r["robust_acc"]
        assert isinstance(r["masking_flag"], bool)
        # the worst case is the minimum over the four attacks and never above any of them
        assert 0 <= acc["worst_case"] <= min(acc["pgd_ce"], acc["pgd_margin"], acc["apgd_ce"], acc["apgd_dlr"])
        assert acc["pgd_both"] <= min(acc["pgd_ce"], acc["pgd_margin"]) <= r["clean_acc"] <= 1
        if r["ablation"] in rules.RULE.square_arms:  # Square ran, on the same images for every student
            q = r["square"]
            assert q["n"] == p.distill.square_subset and q["queries"] == p.distill.square_queries
            assert q["passed"] == (q["gradient_acc"] - q["square_acc"] <= q["threshold"])
            assert (not q["passed"]) == ("square_below_gradient" in r["masking_flags"])
        else:
            assert r["square"] is None
    assert len(s["by_config"]) == len(dt.ABLATIONS) * len(p.distill.temperatures)
    for row in s["by_config"]:
        assert set(row["robust"]) == {"mean", "ci", "half_width", "n"}
    assert len(s["targets"]) == (len(dt.ABLATIONS)) * len(p.distill.temperatures)
    assert set(s["verdict"]["by_T"]) == {f"{T:g}" for T in p.distill.temperatures}
    for v in s["verdict"]["by_T"].values():
        assert set(v) >= {"baseline", "D", "E", "A", "decisive", "descriptive", "B", "C", "claim3"}
        assert set(v["decisive"]) == set(rules.RULE.decisive) and all(e["level"] == 0.975 for e in v["decisive"].values())
        assert all(e["level"] == 0.95 for e in v["descriptive"].values())
        assert v["claim3"] in ("supported", "not supported", "inconclusive")
    # the verdict is the rule applied to the recorded students (recomputed here from the per-student rows)
    for T, v in s["verdict"]["by_T"].items():
        def arm(a):
            rows = sorted((r for r in s["students"] if r["ablation"] == a and (r["T"] is None or f"{r['T']:g}" == T)),
                          key=lambda r: r["seed"])
            return [r["robust_acc"]["worst_case"] for r in rows], [r["masking_flag"] for r in rows]
        arms = {a: arm(a) for a in dt.ABLATIONS}
        ceiling = sorted(s["pgd_at_students"], key=lambda r: r["seed"])
        again = rules.claim3_at_T({a: x for a, (x, _) in arms.items()}, [r["robust_acc"]["worst_case"] for r in ceiling],
                                  {a: f for a, (_, f) in arms.items()} | {"pgd_at": [r["masking_flag"] for r in ceiling]})
        assert again["claim3"] == v["claim3"] and again["decided_by"] == v["decided_by"]


def test_chapter_does_not_retrain(smoke_book, monkeypatch):
    ctx = cx.context("smoke", cache_dir=str(smoke_book["cache"]), device="cpu")
    assert all(r.cached for r in ex.training_runs(ctx, progress=False))

    def no_training(*a, **k):
        raise AssertionError("chapter 04 must not train on a warm cache")

    monkeypatch.setattr("atlib.training.train.train", no_training)
    monkeypatch.setattr("atlib.training.distill.distill", no_training)
    monkeypatch.setattr(dr, "_GRIDS", {})  # not the grid this process kept: load it from the store
    grid = dr.run_grid(ctx, progress=False)
    assert all(r.cached for r in grid.students + grid.ceiling)
    assert dr.run_grid(ctx, progress=False) is grid  # kept in the process: chapter 05 reads chapter 04's grid
    # the teachers are chapter 02's models: same weights as model_run's
    for seed in ctx.profile.seeds:
        at = ex.model_run(ctx, ctx.profile.main_at, seed, progress=False)
        assert torch.equal(grid.outputs[seed].at, dr.train.predict(at.model, ctx.data.train_x))
    # hard_labels is one set of students, shared by every T
    hard = [r for r in grid.students if r.ablation == "hard_labels"]
    assert len(hard) == len(ctx.profile.seeds) and all(r.T is None and r.alpha == 0 for r in hard)


def test_chapter_05_audits_chapter_04s_own_pgd_results(smoke_book):
    from atlib.studies.audit import runs as audit

    ctx = cx.context("smoke", cache_dir=str(smoke_book["cache"]), device="cpu")
    grid = dr.run_grid(ctx, progress=False)
    records = {r["name"]: r for r in audit.audit_students(ctx, grid, progress=False)}
    targets = audit.student_targets(ctx, grid, ctx.profile.side_seed_list[:ctx.profile.audit.student_seeds])
    assert targets and set(records) == {t.name for t in targets}
    students = {(r.ablation, r.T, r.seed): r for r in grid.students + grid.ceiling}
    for t in targets:  # the same PGD attacks on the same images and model: chapter 04's masks, not a re-run
        r = students[(t.meta["ablation"], t.meta["T"], t.seed)]
        for k in ("ce", "margin"):
            assert torch.equal(records[t.name]["robust"][f"atlib_pgd_{k}"], r.robust[k])


# ----------------------------------------------------------------------- Square: the gradient-free check
class _Quantised(torch.nn.Module):
    """A model whose input is rounded to 4 levels before the classifier: its input gradient is zero almost
    everywhere (the textbook gradient masking, Athalye et al. 2018), so PGD cannot move while a random search can."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


@pytest.mark.parametrize("masked", [False, True])
def test_square_flags_a_gradient_masking_model_only(std_digits_mlp, digits, masked):
    from atlib.core import oracles
    from atlib.core.attacks import AttackConfig

    model = _Quantised(std_digits_mlp).eval() if masked else std_digits_mlp
    x, y = digits.test_x[:100], digits.test_y[:100]
    cfg = AttackConfig.cosine("linf", 0.3, 20)
    clean = train.correct(model, x, y)
    grad = D.survivors(model, x, y, clean, cfg, 0)
    grad &= train.correct(model, oracles.run_oracle("apgd_ce", model, x, y, cfg, 20, 1, seed=0), y)
    square = train.correct(model, oracles.run_oracle("square", model, x, y, cfg, 20, 1, seed=0, queries=300), y) & clean
    check = dr.square_verdict(square, grad, 300)
    assert check["n"] == 100 and check["queries"] == 300
    assert check["passed"] == (not masked), check["detail"]
    if masked:  # the gradient attacks are fooled into near-clean accuracy, Square is not
        assert check["gradient_acc"] > check["square_acc"] + 0.2


# ------------------------------------------------------------------- the verdict needs paired seeds
FAKE_LABELS = torch.tensor([0, 1, 2, 3])  # the stand-in students' evaluation labels: a constant scores 25%


def _fake_grid(seeds_by_arm: dict[str, tuple[int, ...]], seeds=(0, 1, 2), ceiling_at_chance=False) -> dr.Grid:
    """A grid of stand-in students (no model): robust masks only, every arm at one T; the PGD-AT students robust on
    every image (or, ``ceiling_at_chance``, on one of the four: the constant predictor's 25%)."""
    def run(a, s):
        mask = torch.tensor([True, s % 2 == 0, False, a == "full"])
        if a == "pgd_at":
            mask = torch.tensor([True, not ceiling_at_chance, not ceiling_at_chance, not ceiling_at_chance])
        return dr.StudentRun(a, None if a == "hard_labels" else 4.0, 1.0, s, None, [], {"robust": mask}, [], 0.0, True)

    students = [run(a, s) for a in dt.ABLATIONS for s in seeds_by_arm.get(a, seeds)]
    return dr.Grid(students, [run("pgd_at", s) for s in seeds], {}, {}, (4.0,), tuple(seeds), 4, 0.0)


def test_verdict_refuses_unpaired_seeds():
    from atlib.studies.distillation import views

    v = views.claim3(_fake_grid({}), FAKE_LABELS)["by_T"]["4"]  # paired: the rule runs
    assert v["claim3"] in ("supported", "not supported", "inconclusive") and v["D"]["n"] == 3
    with pytest.raises(ValueError, match="T=4: the arms do not share the same seeds"):
        views.claim3(_fake_grid({"class_permuted_nonmax": (0, 2)}), FAKE_LABELS)


def test_a_ceiling_at_chance_makes_claim_3_invalid():
    """D is judged against the PGD-AT student: when it is no more robust than a constant predictor, nothing can be
    read, whatever the students' intervals say (issue 25: every student 0% robust gave 'A refuted')."""
    from atlib.studies.distillation import views
    from atlib.book import claims

    ok = views.claim3(_fake_grid({}), FAKE_LABELS)
    assert ok["valid"] and all(g["passed"] for g in ok["gates"])
    bad = views.claim3(_fake_grid({}, ceiling_at_chance=True), FAKE_LABELS)
    assert not bad["valid"] and {g["name"] for g in bad["gates"] if not g["passed"]} == {
        f"ceiling above chance: pgd_at_s{s}" for s in (0, 1, 2)}
    v = bad["by_T"]["4"]
    assert v["claim3"] == Verdict.INVALID and v["decided_by"] == []
    assert v["invalid_reason"].startswith("ceiling above chance: pgd_at_s0 (worst-case robust 25.0% vs constant")
    e = claims.judge_distillation({"distillation": {"verdict": bad}})
    assert e.verdict == Verdict.INVALID and e.reason.startswith("invalid: ceiling above chance")
