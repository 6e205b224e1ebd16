"""``train(fast=True)``: CUDA-only speed-ups; on the CPU it is exactly the default float32, eager path."""
import pytest
import torch

from atlib.core.attacks import AttackConfig
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.training.train import TrainConfig, train

CFG = TrainConfig(2, 64, 0.05, augment=True, attack=AttackConfig("linf", 0.1, 2, 0.05))


def _snapshot(model: torch.nn.Module) -> dict:
    """A copy of the weights: ``state_dict()`` alone aliases the live parameters and changes with training."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(digits, device: str, **kw) -> tuple[dict, dict, list[dict]]:
    """(initial weights, trained weights, history) of a seeded small CNN trained with PGD on digits."""
    seed_everything(0)
    model = build_model("small_cnn", digits.shape, 10, digits.mean, digits.std, 8).to(device)
    x, y = digits.train_x[:256].to(device), digits.train_y[:256].to(device)
    before = _snapshot(model)
    history = train(model, x, y, CFG, seed=1, progress=False, **kw)
    return before, _snapshot(model), history


def test_fast_changes_nothing_on_cpu(digits):
    (a0, a, ha), (b0, b, hb) = _run(digits, "cpu"), _run(digits, "cpu", fast=True)
    assert a0.keys() == a.keys() == b0.keys() == b.keys()
    assert all(torch.equal(a0[k], b0[k]) for k in a0)  # the same start...
    assert not all(torch.equal(a0[k], a[k]) for k in a0)  # ...training moved the weights...
    assert all(torch.equal(a[k], b[k]) for k in a), "fast=True changed the trained weights on the CPU"  # ...equally
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fast path's tricks are CUDA-only")
@pytest.mark.parametrize("compile_model", [False, True])
def test_fast_path_trains_on_cuda(digits, compile_model):
    (_, _, ha), (_, _, hb) = _run(digits, "cuda"), _run(digits, "cuda", fast=True, compile_model=compile_model)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hb)
    assert hb[-1]["train_loss"] == pytest.approx(ha[-1]["train_loss"], rel=0.1)  # bf16: close, not equal
