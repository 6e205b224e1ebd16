"""Validity gates (atlib.studies.validity) and the AT ε fade-in that keeps large-ε AT from collapsing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atlib.core.attacks import AttackConfig
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.studies import validity
from atlib.studies.shrinkage.rules import RULE
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.shrinkage.runs import ModelRun
from atlib.studies.verdict import Verdict
from atlib.training import train as tr

LABELS = torch.arange(1000) % 10  # balanced: the constant predictor scores 10%


def onehot(labels: torch.Tensor, scale: float = 5.0) -> torch.Tensor:
    return scale * torch.nn.functional.one_hot(labels, 10).float()


def test_a_good_model_passes_and_planted_broken_models_fail():
    good = validity.learned("good", onehot(LABELS) + 0.1 * torch.randn(1000, 10), LABELS, RULE.learned_margin)
    assert good.passed and "100.0%" in good.reason
    constant = validity.learned("constant", torch.zeros(1000, 10), LABELS, RULE.learned_margin)
    assert not constant.passed and "1 predicted class" in constant.reason and "constant logits" in constant.reason
    rand = validity.learned("random", torch.randn(1000, 10, generator=torch.Generator().manual_seed(0)), LABELS,
                            RULE.learned_margin)
    assert not rand.passed  # ~10% correct, ten classes predicted: only the accuracy margin catches it
    # a constant *prediction* with varying logits (the collapse a model falls into): one class, 10% correct
    collapsed = torch.randn(1000, 10) * 0.01 + torch.tensor([1.0] + [0.0] * 9)
    assert not validity.learned("collapsed", collapsed, LABELS, RULE.learned_margin).passed


def test_the_margin_is_over_the_constant_predictor_not_over_one_over_k():
    labels = torch.cat([torch.zeros(600, dtype=torch.long), torch.arange(400) % 9 + 1])  # class 0 is 60%
    always_zero = onehot(torch.zeros(1000, dtype=torch.long)) + 0.01 * torch.randn(1000, 10)
    gate = validity.learned("always_zero", always_zero, labels, RULE.learned_margin)
    assert validity.constant_accuracy(labels) == 0.6
    assert not gate.passed  # 60% correct, far above 1/K + 10 pp, yet it learned nothing


def test_robust_gate_and_gated_outcome():
    assert validity.robust("at", 0.72, 0.01, RULE.robust_margin).passed
    weak = validity.robust("at", 0.106, 0.02, RULE.robust_margin)
    assert not weak.passed and "10.6%" in weak.reason
    ok = validity.gated(Verdict.SUPPORTED, [validity.robust("at", 0.72, 0.01, 0.1)])
    assert ok["outcome"] == Verdict.SUPPORTED and ok["valid"]
    bad = validity.gated(Verdict.SUPPORTED, [validity.robust("at", 0.72, 0.01, 0.1), weak])
    assert bad["outcome"] == Verdict.INVALID and not bad["valid"]
    assert bad["invalid_reason"].startswith("robust: at (robust 10.6%")
    assert [g["passed"] for g in bad["gates"]] == [True, False]


def fake_run(spec: ModelSpec, seed: int, clean: torch.Tensor, robust_acc: float) -> ModelRun:
    """A ModelRun whose robust accuracy under linf_ce is ``robust_acc`` (its attacked logits are planted)."""
    k = int(robust_acc * len(LABELS))
    attacked = onehot((LABELS + (torch.arange(len(LABELS)) >= k).long()) % 10)
    return ModelRun(spec, seed, None, [], {"clean": clean, "linf_ce": attacked}, LABELS, 0.0, True)


def test_model_gates_flag_a_collapsed_main_at_model():
    std, at = ModelSpec("standard"), ModelSpec("at", "linf", 0.3)
    runs = [fake_run(std, s, onehot(LABELS), 0.0) for s in (0, 1)]
    healthy = runs + [fake_run(at, s, onehot(LABELS), 0.7) for s in (0, 1)]
    assert all(g.passed for g in RULE.model_gates(healthy, (std, at), at))
    # issue 25's MNIST run: every main AT model at 10.6% clean and robust, one class predicted
    constant = torch.tensor([[1.0] + [0.0] * 9]).repeat(1000, 1)
    broken = runs + [fake_run(at, s, constant, 0.106) for s in (0, 1)]
    gates = RULE.model_gates(broken, (std, at), at)
    bad = validity.failed(gates)
    assert {g.name for g in bad} == {"learned: at_linf_0.3_s0", "learned: at_linf_0.3_s1",
                                     "robust: at_linf_0.3_s0", "robust: at_linf_0.3_s1"}


def test_gate_text_states_the_thresholds_written_once():
    text = RULE.text("gates")
    assert f"{100 * RULE.learned_margin:g} pp" in text and f"{100 * RULE.robust_margin:g} pp" in text


# ---------------------------------------------------------------- the ε fade-in

def test_eps_ramp_is_linear_then_flat():
    assert [tr.eps_ramp(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert tr.eps_ramp(0, 0) == 1.0


@pytest.mark.parametrize("bad", [-1, 4, 1.5])
def test_bad_fadein_is_refused(bad):
    with pytest.raises(ValueError, match="eps_fadein_epochs"):
        tr.TrainConfig(3, 64, 0.05, eps_fadein_epochs=bad)


def test_fadein_ramps_the_training_attack(digits, monkeypatch):
    """The attack of every step: ε and step size scaled by (step + 1) / ramp steps, then the configured attack."""
    seen = []
    real = tr.make_attack

    def spy(model, cfg):
        seen.append((cfg.eps, cfg.step_size))
        return real(model, cfg)

    monkeypatch.setattr(tr, "make_attack", spy)
    attack = AttackConfig.madry("linf", 0.2, 2, keep_best=False)
    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 16)
    tr.train(model, digits.train_x[:256], digits.train_y[:256],
             tr.TrainConfig(3, 64, 0.05, attack=attack, eps_fadein_epochs=2), seed=0, progress=False)
    ramp = seen[1:]  # seen[0] is the configured attack, built once in _setup
    assert seen[0] == (0.2, attack.step_size) and len(ramp) == 7  # 2 epochs × 4 steps, the last at full ε
    assert [e for e, _ in ramp] == pytest.approx([0.2 * (s + 1) / 8 for s in range(7)])
    assert [a for _, a in ramp] == pytest.approx([attack.step_size * (s + 1) / 8 for s in range(7)])


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_large_eps_at_collapses_without_fadein_and_learns_with_it():
    """Issue 25's collapse, reproduced on data this machine has: PGD-5 AT at L∞ ε = 0.3 on Fashion-MNIST (2,000
    training images, a width-8 small CNN, 8 epochs) falls into a constant predictor from full ε; a 3-epoch ε
    fade-in learns. The learned-gate tells them apart."""
    from atlib.core.data import load_dataset

    d = load_dataset("fashion").subset(2000)
    x, y = d.test_x[:1000], d.test_y[:1000]
    gates = {}
    for fadein in (0, 3):
        seed_everything(0)
        model = build_model("small_cnn", d.shape, 10, d.mean, d.std, 8)
        cfg = tr.TrainConfig(8, 128, 0.05, attack=AttackConfig.madry("linf", 0.3, 5, keep_best=False),
                             eps_fadein_epochs=fadein)
        tr.train(model, d.train_x, d.train_y, cfg, seed=0, progress=False)
        gates[fadein] = validity.learned(f"fadein{fadein}", tr.predict(model, x), y, RULE.learned_margin)
    assert not gates[0].passed and "1 predicted class" in gates[0].reason, gates[0]
    assert gates[3].passed, gates[3]
