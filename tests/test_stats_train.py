"""Logit statistics on hand-made logits; training on digits: accuracy, history, determinism, AT's effect."""
import math

import pytest
import torch

from atlib.core import stats
from atlib.core.attacks import AttackConfig
from atlib.training.evaluate import accuracies, adversarial_logits, evaluate
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.training.train import TrainConfig, TrainingDiverged, one_cycle, predict, train

# ---------------------------------------------------------------- statistics

Z = torch.tensor([[1.0, 5.0, 3.0],
                  [2.0, 2.0, 0.0],
                  [-1.0, -4.0, -2.0]])
Y = torch.tensor([1, 0, 2])


def test_basic_statistics():
    assert torch.equal(stats.max_logit(Z), torch.tensor([5.0, 2.0, -1.0]))
    assert torch.equal(stats.logit_gap(Z), torch.tensor([2.0, 0.0, 1.0]))
    assert torch.allclose(stats.centred_max_logit(Z), torch.tensor([2.0, 2 / 3, 4 / 3]))
    assert torch.equal(stats.margin(Z, Y), torch.tensor([2.0, 0.0, -1.0]))  # tie: margin 0; wrong: negative
    assert stats.accuracy(Z, Y) == pytest.approx(2 / 3)  # argmax of the tied row is index 0 = its label
    # shift invariance: centred max logit, gap and margin ignore a per-sample constant; max logit does not
    shifted = Z + torch.tensor([[10.0], [-3.0], [0.5]])
    assert torch.allclose(stats.centred_max_logit(shifted), stats.centred_max_logit(Z))
    assert torch.allclose(stats.logit_gap(shifted), stats.logit_gap(Z))
    assert torch.allclose(stats.margin(shifted, Y), stats.margin(Z, Y))
    assert not torch.allclose(stats.max_logit(shifted), stats.max_logit(Z))


def test_margin_equals_gap_on_correct_samples():
    z = torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * 3
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1))
    correct = z.argmax(1) == y
    assert correct.any() and (~correct).any()
    assert torch.allclose(stats.margin(z, y)[correct], stats.logit_gap(z)[correct])
    assert torch.all(stats.margin(z, y)[~correct] <= 0)


def test_logit_summary():
    s = stats.logit_summary(Z, Y)
    assert s["mean_max_logit"] == pytest.approx(2.0)
    assert s["mean_logit_gap"] == pytest.approx(1.0)
    assert s["mean_centred_max_logit"] == pytest.approx(4 / 3)
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["mean_margin_correct"] == pytest.approx(1.0)  # rows 0 and 1: margins 2 and 0
    assert "accuracy" not in stats.logit_summary(Z)
    assert math.isnan(stats.logit_summary(Z, torch.tensor([0, 2, 1]))["mean_margin_correct"])  # none correct


def test_top_log_odds_matches_float64():
    z = torch.randn(100, 10, generator=torch.Generator().manual_seed(0)) * 3
    p = torch.softmax(z.double(), dim=1).max(dim=1).values
    expected = torch.log(p / (1 - p))
    got = stats.top_log_odds(z)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(stats.max_prob(z).double(), p, atol=1e-6)


def test_top_log_odds_beyond_float32_saturation():
    gaps = torch.tensor([30.0, 40.0, 50.0])
    z = torch.zeros(3, 10)
    z[:, 3] = gaps
    p32 = torch.softmax(z, dim=1).max(dim=1).values
    assert torch.all(p32 == 1.0)  # float32 softmax saturates: the probabilities tie ...
    assert torch.all(stats.max_prob(z) == 1.0)
    lo = stats.top_log_odds(z)  # ... but the log-odds keep the order
    assert torch.all(torch.isfinite(lo))
    assert lo[0] < lo[1] < lo[2]
    assert torch.allclose(lo, gaps - math.log(9), atol=1e-5)  # exact: gap - log(number of other classes)


def test_mean_ci():
    iv = stats.mean_ci([1.0, 2.0, 3.0])
    assert iv.mean == pytest.approx(2.0) and iv.n == 3
    assert iv.half_width == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)  # t(0.975, 2 d.o.f.) = 4.303
    assert iv.low == pytest.approx(2.0 - iv.half_width) and iv.high == pytest.approx(2.0 + iv.half_width)
    assert iv.as_dict()["ci"] == [iv.low, iv.high] and "3 seeds" in str(iv)
    wide = stats.mean_ci([1.0, 2.0, 3.0], level=0.99)
    assert wide.half_width > iv.half_width
    many = stats.mean_ci([0.0, 1.0] * 50)  # large n: t -> 1.96
    assert many.half_width == pytest.approx(1.984 * float(torch.tensor([0.0, 1.0] * 50).std()) / 10, rel=1e-3)
    one = stats.mean_ci([0.7])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.half_width)
    with pytest.raises(ValueError, match="at least one"):
        stats.mean_ci([])


# ---------------------------------------------------------------- training

def small_mlp(digits, seed=0, width=32):
    seed_everything(seed)
    return build_model("mlp", digits.shape, 10, digits.mean, digits.std, width)


def test_standard_training_learns_digits(digits):
    model = small_mlp(digits)
    hist = train(model, digits.train_x, digits.train_y, TrainConfig(3, 64, 0.05), seed=0,
                 monitor=(digits.test_x[:100], digits.test_y[:100]), progress=False)
    assert not model.training  # left in eval mode
    acc = stats.accuracy(predict(model, digits.test_x), digits.test_y)
    assert acc > 0.85
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "lr_peak", "seconds", "monitor_mean_max_logit", "monitor_mean_logit_gap",
                "monitor_mean_centred_max_logit", "monitor_accuracy", "monitor_mean_margin_correct"):
        assert all(key in r for r in hist), key
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["monitor_mean_logit_gap"] > hist[0]["monitor_mean_logit_gap"]
    assert 0 <= hist[-1]["train_acc"] <= 1 and hist[-1]["train_acc"] > 0.85
    assert "monitor_accuracy" not in train(small_mlp(digits), digits.train_x[:64], digits.train_y[:64],
                                           TrainConfig(1, 64, 0.05), seed=0, progress=False)[0]


@pytest.mark.parametrize("cfg", [
    TrainConfig(1, 64, 0.05),  # only the batch order depends on the training seed here
    TrainConfig(2, 64, 0.05, augment=True),
    TrainConfig(1, 128, 0.05, attack=AttackConfig("linf", 0.1, 2, 0.05)),
])
def test_training_is_deterministic(digits, cfg):
    x, y = digits.train_x[:512], digits.train_y[:512]
    states, hists = [], []
    for _ in range(2):
        model = small_mlp(digits, seed=3)
        hists.append(train(model, x, y, cfg, seed=1, progress=False))
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert [h["train_loss"] for h in hists[0]] == [h["train_loss"] for h in hists[1]]
    other = small_mlp(digits, seed=3)  # a different training seed (batch order, attack starts) differs
    train(other, x, y, cfg, seed=2, progress=False)
    assert not all(torch.equal(states[0][k], other.state_dict()[k]) for k in states[0])


@pytest.mark.parametrize("kw", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=-1.0), dict(lr=math.nan)])
def test_bad_train_config(kw):
    args = dict(epochs=1, batch_size=32, lr=0.1) | kw
    with pytest.raises(ValueError, match="bad training config"):
        TrainConfig(**args)


def test_divergence_is_reported(digits):
    model = small_mlp(digits)
    with pytest.raises(TrainingDiverged, match="lower the learning rate") as e:
        train(model, digits.train_x[:256], digits.train_y[:256], TrainConfig(2, 32, 1e6), seed=0, progress=False)
    assert "lr=1000000.0" in str(e.value)
    assert isinstance(e.value, FloatingPointError)


def test_one_cycle_schedule():
    total = 100
    lrs = [one_cycle(s, total, 0.2) for s in range(total + 1)]
    assert lrs[0] == 0 and lrs[20] == 1 and lrs[100] == 0
    assert max(lrs) == 1 and all(0 <= v <= 1 for v in lrs)
    assert lrs[10] == pytest.approx(0.5) and lrs[60] == pytest.approx(0.5)


def test_evaluate_chunks_and_accuracies(std_digits_mlp, digits):
    x, y = digits.test_x[:120], digits.test_y[:120]
    cfg = AttackConfig("linf", 0.1, 5, 0.03, random_start=False)
    whole = adversarial_logits(std_digits_mlp, x, y, cfg, seed=0, batch_size=1000)
    chunked = adversarial_logits(std_digits_mlp, x, y, cfg, seed=0, batch_size=50)
    assert whole.shape == (120, 10) and whole.dtype == torch.float32
    assert torch.allclose(whole, chunked, atol=1e-5)
    res = evaluate(std_digits_mlp, x, y, {"pgd": cfg}, seed=0)
    assert set(res) == {"clean", "pgd"} and torch.allclose(res["pgd"], whole, atol=1e-5)
    acc = accuracies(res, y)
    assert acc["clean"] == pytest.approx(stats.accuracy(res["clean"], y))
    assert acc["pgd"] < acc["clean"]


# ---------------------------------------------------------------- adversarial training does its job

def test_adversarial_training_is_robust_and_shrinks_the_gap(std_digits_mlp, digits):
    seed_everything(0)
    at_model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 64)
    train(at_model, digits.train_x, digits.train_y,
          TrainConfig(15, 64, 0.05, attack=AttackConfig.madry("linf", 0.1, 5, keep_best=False)), seed=0,
          progress=False)
    pgd20 = AttackConfig.madry("linf", 0.1, 20)
    res = {}
    for name, model in (("std", std_digits_mlp), ("at", at_model)):
        z = evaluate(model, digits.test_x, digits.test_y, {"pgd20": pgd20}, seed=0)
        res[name] = accuracies(z, digits.test_y) | {"gap": float(stats.logit_gap(z["clean"]).mean())}
    assert res["std"]["clean"] > 0.9 and res["at"]["clean"] > 0.9
    assert res["at"]["pgd20"] >= res["std"]["pgd20"] + 0.20, res
    assert res["at"]["gap"] < res["std"]["gap"], res


def test_strict_determinism_switch(monkeypatch):
    from atlib.core.runtime import strict_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        assert strict_determinism(True) and torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("ATLIB_DETERMINISTIC", "0")
        assert not strict_determinism() and not torch.are_deterministic_algorithms_enabled()
    finally:
        strict_determinism(False)
