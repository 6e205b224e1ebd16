"""The attack audit: atlib PGD vs torchattacks from a shared start, worst case, flags, masking checks."""
import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from atlib.studies.audit import runs as audit
from atlib.studies.audit import rules
from atlib.studies.audit import views as audit_report
from atlib.training import evaluate
from atlib.training import masking
from atlib.core.attacks import AttackConfig, PGDL2, PGDLinf, attack_loss, make_attack
from atlib.core.models import build_model
from atlib.studies.profiles import PROFILES
from atlib.core import oracles
from atlib.core.store import Store, model_hash
from atlib.training.train import correct

SETTINGS = replace(PROFILES["smoke"].audit, student_seeds=None)  # every test below changes only what it names

LOSS_TOL = 1e-4  # nats: float32 summation order (atlib sums the loss, torchattacks averages it)


def _torchattacks():
    import atlib.core.compat

    atlib.core.compat.import_torchvision()
    import torchattacks

    return torchattacks


@pytest.fixture(scope="module")
def other_digits_mlp(digits):
    """A second standard MLP (another seed): the transfer surrogate of the masking tests."""
    from atlib.core.runtime import seed_everything
    from atlib.training.train import TrainConfig, train

    seed_everything(1)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 64)
    train(model, digits.train_x, digits.train_y, TrainConfig(15, 64, 0.05), seed=1, progress=False)
    return model.eval()


class Quantise(nn.Module):
    """round(x·k)/k: a step function whose gradient is zero almost everywhere (no straight-through)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.round(x * self.k) / self.k

    def extra_repr(self) -> str:
        return f"k={self.k}"


# ---------------------------------------------------------------- atlib PGD vs torchattacks, shared start

def _shared_start(norm: str, x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """The random start torchattacks draws after torch.manual_seed(seed), replayed op for op."""
    torch.manual_seed(seed)
    if norm == "linf":  # torchattacks.PGD.forward
        return torch.empty_like(x).uniform_(-eps, eps)
    delta = torch.empty_like(x).normal_()  # torchattacks.PGDL2.forward
    n = delta.view(x.size(0), -1).norm(p=2, dim=1).view(x.size(0), 1, 1, 1)
    r = torch.zeros_like(n).uniform_(0, 1)
    return delta * (r / n * eps)


@pytest.mark.parametrize("norm,eps,steps", [("linf", 0.1, 10), ("linf", 0.2, 5), ("l2", 0.5, 10)])
def test_atlib_pgd_at_least_as_strong_as_torchattacks_from_shared_start(std_digits_mlp, digits, norm, eps, steps):
    ta = _torchattacks()
    model = std_digits_mlp.eval()
    x, y = digits.test_x[:200], digits.test_y[:200]
    alpha = 2.5 * eps / steps
    seed = 123
    with torch.random.fork_rng(devices=[]):
        delta0 = _shared_start(norm, x, eps, seed)
    base = PGDLinf if norm == "linf" else PGDL2
    fixed = type("FixedStart", (base,), {"init_delta": lambda self, x_, g: delta0.clone()})

    def oracle(n_steps):
        cls = ta.PGD if norm == "linf" else ta.PGDL2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(model, eps=eps, alpha=alpha, steps=n_steps, random_start=True)(x, y)

    # both really start at the same point
    start_atlib = fixed(model, AttackConfig(norm, eps, 0, alpha))(x, y)
    assert torch.allclose(start_atlib, oracle(0), atol=1e-6, rtol=0)
    assert not torch.allclose(start_atlib, x)  # and it is a random start, not x

    xo = oracle(steps)
    with torch.no_grad():
        l_start = attack_loss(model(start_atlib), y, "ce")
        l_oracle = attack_loss(model(xo), y, "ce")
    for keep in (False, True):  # the last iterate (same algorithm) and the best iterate (what atlib reports)
        xa = fixed(model, AttackConfig(norm, eps, steps, alpha, keep_best=keep))(x, y)
        with torch.no_grad():
            l_atlib = attack_loss(model(xa), y, "ce")
        worst = float((l_oracle - l_atlib).max())
        assert torch.all(l_atlib >= l_oracle - LOSS_TOL), f"keep_best={keep}: oracle ahead by {worst:.3g} nats"
    assert float((l_oracle - l_start).mean()) > 0.5, "the attack climbs the loss at all"


def test_the_shared_start_test_can_fail(std_digits_mlp, digits):
    """The same comparison catches a weaker attack: atlib with a third of the steps loses to the oracle."""
    ta = _torchattacks()
    model = std_digits_mlp.eval()
    x, y = digits.test_x[:200], digits.test_y[:200]
    eps, steps, alpha = 0.1, 10, 0.025
    with torch.random.fork_rng(devices=[]):
        delta0 = _shared_start("linf", x, eps, 7)
        torch.manual_seed(7)
        xo = ta.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    fixed = type("FixedStart", (PGDLinf,), {"init_delta": lambda self, x_, g: delta0.clone()})
    weak = fixed(model, AttackConfig("linf", eps, 3, alpha, keep_best=False))(x, y)
    with torch.no_grad():
        l_weak, l_oracle = attack_loss(model(weak), y, "ce"), attack_loss(model(xo), y, "ce")
    assert not torch.all(l_weak >= l_oracle - LOSS_TOL)


# ---------------------------------------------------------------- oracles

@pytest.mark.parametrize("name", ["ta_pgd", "apgd_ce", "apgd_dlr"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_oracles_reproducible_in_threat_and_rng_untouched(std_digits_mlp, digits, name, norm, eps):
    model = std_digits_mlp.train()  # the oracle must switch to eval mode and restore the mode
    x, y = digits.test_x[:100], digits.test_y[:100]
    cfg = AttackConfig.madry(norm, eps, 5)
    state = torch.get_rng_state()
    a = oracles.run_oracle(name, model, x, y, cfg, 5, 1, seed=3, batch_size=64)
    assert torch.equal(torch.get_rng_state(), state), "the caller's random state is left alone"
    assert model.training
    model.eval()
    b = oracles.run_oracle(name, model, x, y, cfg, 5, 1, seed=3, batch_size=64)
    assert torch.equal(a, b)
    audit._check_in_threat(a, x, cfg, name)  # raises if outside the box or the ball
    assert (correct(model, a, y).float().mean() < correct(model, x, y).float().mean() - 0.1)


def test_threat_check_catches_an_escape(digits):
    x = digits.test_x[:4]
    cfg = AttackConfig.madry("linf", 0.1, 5)
    with pytest.raises(RuntimeError, match="left the threat model"):
        audit._check_in_threat((x + 0.2).clamp(0, 1), x, cfg, "bad")
    with pytest.raises(RuntimeError, match="left the threat model"):
        audit._check_in_threat(x + 0.05 + 2.0 * (x > 0.97), x, cfg, "bad")  # in the ball, out of the box
    with pytest.raises(ValueError, match="unknown oracle"):
        oracles.oracle("cw", nn.Linear(2, 2), cfg, 5, 1, 0)


# ---------------------------------------------------------------- worst case, flags, noise

def test_worst_case_is_per_sample():
    a = torch.tensor([1, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 1], dtype=torch.bool)
    w = audit.worst_case({"a": a, "b": b})
    assert w.tolist() == [True, False, False, True]
    assert w.float().mean() < min(a.float().mean(), b.float().mean())  # below the smaller accuracy
    assert a.tolist() == [True, True, False, True]  # inputs untouched
    with pytest.raises(ValueError, match="at least one"):
        audit.worst_case({})
    with pytest.raises(ValueError, match="different lengths"):
        audit.worst_case({"a": a, "b": b[:3]})


def test_attack_flags():
    ok = {"atlib_pgd_ce": 0.50, "atlib_pgd_margin": 0.50, "ta_pgd": 0.49, "apgd_ce": 0.48, "apgd_dlr": 0.49}
    assert rules.RULE.flags(ok) == []  # exactly +1 pp and +2 pp: not "more than"
    assert rules.RULE.flags(ok | {"ta_pgd": 0.485}) == ["pgd_ce_vs_torchattacks"]
    assert rules.RULE.flags(ok | {"apgd_dlr": 0.47}) == ["pgd_ce_vs_apgd", "pgd_margin_vs_apgd"]
    assert rules.RULE.flags(ok | {"atlib_pgd_margin": 0.505}) == ["pgd_margin_vs_apgd"]


def test_noise_threshold():
    assert masking.noise_threshold(0.5, 400) == pytest.approx(0.05)
    assert masking.noise_threshold(0.0, 500) == pytest.approx(3 / 500)  # floor: three samples
    for p, n in ((-0.1, 10), (1.1, 10), (0.5, 0)):
        with pytest.raises(ValueError, match="noise_threshold"):
            masking.noise_threshold(p, n)


# ---------------------------------------------------------------- masking checks

def test_masking_checks_flag_quantised_model_and_pass_honest_one(std_digits_mlp, other_digits_mlp, digits):
    x, y = digits.test_x[:200], digits.test_y[:200]
    s = replace(SETTINGS, main_subset=None, masking_subset=200, apgd_steps=5)
    threat = AttackConfig.madry("linf", 0.1, 20)
    masked = nn.Sequential(Quantise(4), std_digits_mlp).eval()
    assert correct(masked, x, y).float().mean() > 0.8, "quantisation keeps the model accurate"
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(masked(xg), y), xg)
    assert torch.count_nonzero(g) == 0, "the masked model gives the attacker zero gradients"

    honest = masking.masking_checks(std_digits_mlp, x, y, threat, s, 0, 10, surrogate=other_digits_mlp)
    bad = masking.masking_checks(masked, x, y, threat, s, 0, 10, surrogate=other_digits_mlp)
    assert honest["flags"] == [], honest["checks"]
    assert len(honest["checks"]) == 5 and all(c["passed"] for c in honest["checks"])
    assert "transfer_stronger" in bad["flags"], bad["checks"]
    assert bad["raw"]["transfer"] < bad["raw"]["whitebox"] - 0.2  # by far, not by noise
    # without a surrogate there is no transfer check
    assert all(c["flag"] != "transfer_stronger" for c in
               masking.masking_checks(std_digits_mlp, x[:50], y[:50], threat, s, 0, 10)["checks"])
    with pytest.raises(ValueError, match="num_classes"):
        masking.masking_checks(std_digits_mlp, x, y, threat, s, 0, 1)


def test_judge_rules_on_synthetic_numbers():
    s = replace(SETTINGS, main_subset=None, masking_subset=100, apgd_steps=5)
    threat = AttackConfig.madry("linf", 0.1, 20)
    good = {"linf_grid": list(s.linf_grid), "sweep": [0.9, 0.7, 0.5, 0.2, 0.05, 0.0],
            "few": 0.5, "many": 0.49, "restarts": 0.48, "whitebox": 0.5, "transfer": 0.6}
    assert all(c["passed"] for c in masking._judge(good, 500, 10, s, threat))

    def flags(**kw):
        return [c["flag"] for c in masking._judge(good | kw, 500, 10, s, threat) if not c["passed"]]

    assert flags(sweep=[0.9, 0.7, 0.5, 0.6, 0.05, 0.0]) == ["eps_not_monotone"]
    assert flags(sweep=[0.9, 0.7, 0.5, 0.4, 0.3, 0.3]) == ["above_chance_at_eps_0.5"]
    assert flags(many=0.56) == ["more_steps_raise_acc"]
    assert flags(restarts=0.56) == ["restarts_raise_acc"]
    assert flags(transfer=0.4) == ["transfer_stronger"]
    assert flags(many=0.52, transfer=0.48) == []  # within two standard errors (4.5 pp at p=0.5, n=500)


# ---------------------------------------------------------------- the list API and the cache

def test_audit_pairs_cached_and_given_logits(std_digits_mlp, other_digits_mlp, digits, tmp_path):
    x, y = digits.test_x[:120], digits.test_y[:120]
    s = replace(SETTINGS, main_subset=100, masking_subset=50, apgd_steps=5)
    threat = AttackConfig.madry("linf", 0.1, 10)
    store = Store(tmp_path / "c")
    pairs = [("a", std_digits_mlp), ("b", other_digits_mlp)]
    first = audit.audit(pairs, x, y, s, 10, threat=threat, store=store, progress=False)
    again = audit.audit(pairs, x, y, s, 10, threat=threat, store=store, progress=False)
    assert [r["name"] for r in first] == ["a", "b"] and all(r["n"] == 100 for r in first)
    assert not any(r["cached"] for r in first) and all(r["cached"] for r in again)
    for r, q in zip(first, again):
        assert r["acc"] == q["acc"]
        acc = r["acc"]
        assert acc["worst_case"] <= min(acc[k] for k in ("clean", *audit.ATTACKS)) + 1e-12
    # a different model (here: quantised) is a different cache entry
    masked = [("a", nn.Sequential(Quantise(4), std_digits_mlp))]
    assert not audit.audit(masked, x, y, s, 10, threat=threat, store=store, progress=False)[0]["cached"]

    # handing in atlib's own logits gives the same result as computing them
    given = {k: evaluate.adversarial_logits(std_digits_mlp, x[:100], y[:100], c, 0, s.batch_size)
             for k, c in (("ce", threat), ("margin", AttackConfig.madry("linf", 0.1, 10, loss="margin")))}
    r1 = audit.audit_model(std_digits_mlp, x[:100], y[:100], threat, s, 0)
    r2 = audit.audit_model(std_digits_mlp, x[:100], y[:100], threat, s, 0, atlib_logits=given)
    for k in r1["robust"]:
        assert torch.equal(r1["robust"][k], r2["robust"][k]), k

    # Target with masking: the masking flags join the model's flags
    t = audit.Target("m", nn.Sequential(Quantise(4), std_digits_mlp).eval(), threat, surrogate=other_digits_mlp,
                     masking=True)
    (rec,) = audit.audit([t], x, y, s, 10, progress=False)
    assert rec["masking"]["n"] == 50 and "transfer_stronger" in rec["flags"]
    json.dumps(audit_report.section([rec], s))  # the summary entry is plain JSON


def test_audit_bad_inputs(std_digits_mlp, digits):
    x, y = digits.test_x[:20], digits.test_y[:20]
    s = replace(SETTINGS, main_subset=None, masking_subset=10, apgd_steps=2)
    threat = AttackConfig.madry("linf", 0.1, 2)
    with pytest.raises(ValueError, match="need a threat"):
        audit.audit([("a", std_digits_mlp)], x, y, s, 10, progress=False)
    with pytest.raises(ValueError, match="unique"):
        audit.audit([("a", std_digits_mlp), ("a", std_digits_mlp)], x, y, s, 10, threat=threat, progress=False)
    with pytest.raises(ValueError, match="PGD-CE"):
        audit.audit_model(std_digits_mlp, x, y, AttackConfig.madry("linf", 0.1, 2, loss="margin"), s, 0)
    with pytest.raises(ValueError, match="labels"):
        audit.audit_model(std_digits_mlp, x, y[:5], threat, s, 0)
    with pytest.raises(ValueError, match="one row per sample"):
        audit.audit_model(std_digits_mlp, x, y, threat, s, 0, atlib_logits={"ce": torch.zeros(3, 10)})


# ---------------------------------------------------------------- settings

def test_settings_for_every_profile_and_errors():
    for p in PROFILES.values():
        assert p.audit.linf_grid[-1] == 0.5
    f = PROFILES["fashion"].audit
    assert f.main_subset >= 1000 and f.masking_subset <= f.main_subset
    for bad, frag in ((dict(linf_grid=(0.0, 0.1)), "linf_grid"), (dict(linf_grid=(0.0, 0.3, 0.1, 0.5)), "linf_grid"),
                      (dict(few_steps=50, many_steps=10), "few_steps"), (dict(masking_subset=0), "masking_subset"),
                      (dict(main_subset=0), "main_subset"), (dict(restarts=1), "restarts"),
                      (dict(student_seeds=0), "student_seeds")):
        with pytest.raises(ValueError, match=frag):
            replace(SETTINGS, **({"main_subset": None, "masking_subset": 10, "apgd_steps": 5} | bad))


def test_model_hash_tracks_weights_and_structure(std_digits_mlp):
    import copy

    h = model_hash(std_digits_mlp)
    m2 = copy.deepcopy(std_digits_mlp)
    assert model_hash(m2) == h
    with torch.no_grad():
        next(m2.parameters())[0, 0] += 1e-3
    assert model_hash(m2) != h
    assert model_hash(nn.Sequential(Quantise(4), std_digits_mlp)) != \
        model_hash(nn.Sequential(Quantise(8), std_digits_mlp))


# ---------------------------------------------------------------- the chapter in the smoke book

def test_evaluation_chapter_in_smoke_book(smoke_book):
    html = smoke_book["out"] / "_build" / "html" / "05_evaluation.html"
    text = html.read_text()
    assert "how strong are the attacks" in text.lower() and "Traceback" not in text
    assert "APGD-DLR" in text and "worst case" in text
    s = json.loads(smoke_book["summary"].read_text())
    ev = s["evaluation"]
    side = set(PROFILES["smoke"].side_seed_list)
    names = {m["name"] for m in s["models"] if m["seed"] in side}
    assert names < {m["name"] for m in s["models"]}, "chapter 02 trains more seeds of its main models"
    assert {m["name"] for m in ev["models"]} == names, "every model of chapter 02 of the side seeds is audited"
    kinds = {(m["meta"]["kind"], m["meta"]["norm"], m["meta"]["eps"]) for m in ev["models"]}
    assert sum(1 for m in ev["models"] if "masking" in m) == len(kinds), "one masking-checked model per kind"
    for m in ev["models"]:
        assert set(m["robust_acc"]) == set(audit.ATTACKS)
        assert 0 <= m["worst_case"] <= min(m["robust_acc"].values()) + 1e-12
        assert m["worst_case"] <= m["clean_acc"] and isinstance(m["flags"], list)
        if "masking" in m:
            assert m["masking"]["raw"]["sweep"][-1] <= 0.1 + 0.05, "chance at ε=0.5"
    std = [m for m in ev["models"] if m["meta"]["kind"] == "standard"]
    at = [m for m in ev["models"] if m["meta"]["kind"] == "at" and m["meta"]["eps"] == 0.1]
    assert max(m["worst_case"] for m in std) < min(m["worst_case"] for m in at)
    assert ev["flagged"] == [m["name"] for m in ev["models"] if m["flags"]]
    assert (smoke_book["out"] / "results" / "figures" / "attack_strength_sweep.png").stat().st_size > 5_000
    assert math.isfinite(ev["groups"]["standard"]["worst_case"]["mean"])
    # chapter 04's students get the same oracles: every student of the distillation summary is audited
    st = ev["students"]
    first = PROFILES["smoke"].audit.student_seeds  # the students of the first seed(s), every recipe
    seeds = sorted({r["seed"] for r in s["distillation"]["students"]})[:first]
    want = {(r["ablation"], r["T"], r["seed"]) for r in s["distillation"]["students"] if r["seed"] in seeds}
    got = {(m["meta"]["ablation"], m["meta"]["T"], m["seed"]) for m in st["models"] if m["meta"]["ablation"] != "pgd_at"}
    assert got == want and len(st["models"]) == len(want) + len(seeds)
    assert len({m["n"] for m in st["models"]}) == 1, "every student is attacked on the same samples"
    for m in st["models"]:
        assert set(m["robust_acc"]) == set(audit.ATTACKS) and "masking" not in m
        assert 0 <= m["worst_case"] <= min(m["robust_acc"].values()) + 1e-12 <= m["clean_acc"] + 1e-12
    assert st["flagged"] == [m["name"] for m in st["models"] if m["flags"]]


# ---------------------------------------------------------------- diagnosis of a flag (audit_report)

@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_cosine_pgd_in_threat_and_diagnose_table(std_digits_mlp, digits, norm, eps):
    x, y = digits.test_x[:100], digits.test_y[:100]
    cfg = AttackConfig.madry(norm, eps, 10)
    cos = AttackConfig.cosine(norm, eps, 10)
    xa = make_attack(std_digits_mlp, cos)(x, y, torch.Generator().manual_seed(0))
    audit._check_in_threat(xa, x, cos, "cosine")
    with torch.no_grad():
        assert attack_loss(std_digits_mlp(xa), y, "ce").mean() > attack_loss(std_digits_mlp(x), y, "ce").mean() + 0.5
    s = replace(SETTINGS, main_subset=None, masking_subset=50, apgd_steps=5, restarts=2)
    rec = audit.audit_model(std_digits_mlp, x, y, cfg, s, 0)
    table = audit_report.diagnose(std_digits_mlp, x, y, cfg, rec["robust"], s, 0)
    assert table.index[-1] == "min(APGD-CE, APGD-DLR)" and len(table) == 7
    assert table.iloc[-1, 1] == 0 and table.iloc[-1, 2] == 0  # APGD against itself: no disagreement
    assert "APGD minimum" in audit_report.diagnosis_text("m", table)


def test_diagnose_flagged_picks_only_apgd_flags(std_digits_mlp, digits):
    x, y = digits.test_x[:60], digits.test_y[:60]
    s = replace(SETTINGS, main_subset=None, masking_subset=30, apgd_steps=3, restarts=2, diagnose_max=1)
    cfg = AttackConfig.madry("linf", 0.1, 3)
    rec = audit.audit_model(std_digits_mlp, x, y, cfg, s, 0)
    base = {"n": 60, "robust": rec["robust"], "acc": rec["acc"]}
    recs = [base | {"name": "a", "flags": ["transfer_stronger"]}, base | {"name": "b", "flags": ["pgd_ce_vs_apgd"]},
            base | {"name": "c", "flags": ["pgd_margin_vs_apgd"]}]
    targets = [audit.Target(n, std_digits_mlp, cfg) for n in "abc"]
    assert list(audit_report.diagnose_flagged(recs, targets, x, y, s)) == ["b"]  # c: beyond diagnose_max
    assert "flagged: **3**" in audit_report.verdict_text(recs)
    assert "flagged: **0**" in audit_report.verdict_text([base | {"name": "d", "flags": []}])
