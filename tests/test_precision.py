"""The training precision (``Profile.precision``): checked, resolved per device, bf16 autocast only for the training
steps, float32 bitwise as before, part of every trained artifact's cache key, and said in the provenance box."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from atlib.book import pages, runner
from atlib.core import runtime
from atlib.core.attacks import AttackConfig, make_attack
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything, train_precision
from atlib.core.store import artifact_key
from atlib.studies import context as cx
from atlib.studies.distillation import runs as distillation
from atlib.studies.distillation.targets import TeacherLogits
from atlib.studies.profiles import PROFILES, UnknownProfileError, get_profile
from atlib.studies.shrinkage import runs as shrinkage
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.theory import controls
from atlib.training import distill as distill_mod, train as train_mod
from atlib.training.distill import DistillConfig, distill, distill_loss
from atlib.training.train import TrainConfig, one_cycle, train

CPU = torch.device("cpu")
AT = AttackConfig.madry("linf", 0.1, 2, keep_best=False)


# ------------------------------------------------------------------------------------------- the setting
def test_fashion_trains_in_bf16_since_its_parity_run_and_the_others_spell_fp32():
    assert {n: p.precision for n, p in PROFILES.items()} == {n: "bf16" if n == "fashion" else "fp32" for n in PROFILES}


def test_a_bad_precision_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match='precision = "fp16": one of "fp32", "bf16"'):
        dataclasses.replace(PROFILES["smoke"], precision="fp16")
    bad = tmp_path / "own.toml"
    bad.write_text('extends = "smoke"\nprecision = "half"\n')
    with pytest.raises(UnknownProfileError, match=r'own.toml.*precision = "half": one of "fp32", "bf16"'):
        get_profile(bad)
    good = tmp_path / "mine.toml"
    good.write_text('extends = "smoke"\nprecision = "bf16"\n')
    assert get_profile(good) == dataclasses.replace(PROFILES["smoke"], name="mine", precision="bf16")
    with pytest.raises(ValueError, match="precision = 'fp16': one of 'fp32', 'bf16'"):
        train_precision("fp16", CPU)


# ------------------------------------------------------------------------------------------- the resolver
def test_bf16_resolves_to_fp32_where_the_cpu_has_no_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert train_precision("bf16", CPU) == "bf16" and train_precision("fp32", CPU) == "fp32"
    monkeypatch.setenv("ATLIB_CPU_BF16", "0")  # the override: as a CPU without bf16 instructions
    assert train_precision("bf16", CPU) == "fp32" and not runtime.native_bf16(CPU)
    monkeypatch.delenv("ATLIB_CPU_BF16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert train_precision("bf16", CPU) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert train_precision("bf16", CPU) == "bf16"


def test_the_cuda_fast_path_is_bf16_and_fast_means_nothing_on_the_cpu(monkeypatch):
    monkeypatch.setenv("ATLIB_CPU_BF16", "0")
    assert train_precision("fp32", torch.device("cuda"), fast=True) == "bf16"  # as the fast path always trained
    assert train_precision("fp32", torch.device("cuda")) == "fp32"
    assert train_precision("bf16", CPU, fast=True) == "fp32"


# ------------------------------------------------------------------------------------------- fp32: as before
def _reference_train(model, x, y, cfg: TrainConfig, seed: int) -> None:
    """train.train's float32 loop as it was before precisions existed, written out (no augmentation, no ε ramp)."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    steps = -(-len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, cfg.epochs * steps, cfg.warmup_frac))
    shuffle, attack_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 10_000)
    attack = make_attack(model, cfg.attack) if cfg.attack is not None else None
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=shuffle)
        for b in range(steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if attack is not None:
                xb = attack(xb, yb, attack_gen, None)
            logits = model(xb)
            loss = F.cross_entropy(logits / cfg.loss_temperature, yb, label_smoothing=cfg.label_smoothing)
            if cfg.logit_squeeze:
                loss = loss + cfg.logit_squeeze * logits.pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def _reference_distill(model, x, targets, y, cfg: DistillConfig, seed: int) -> None:
    """distill.distill's float32 loop as it was before precisions existed, written out."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    steps = -(-len(y) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, cfg.epochs * steps, cfg.warmup_frac))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        for b in range(steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            loss = distill_loss(model(x[idx]), targets[idx], y[idx], cfg.T, cfg.alpha, cfg.reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def _model(digits, arch: str = "small_cnn"):
    seed_everything(0)
    return build_model(arch, digits.shape, 10, digits.mean, digits.std, 8)


def _same(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("cfg", [TrainConfig(2, 64, 0.05, logit_squeeze=0.01, label_smoothing=0.1, loss_temperature=0.7),
                                 TrainConfig(1, 64, 0.05, attack=AT)], ids=["regularised", "pgd_at"])
def test_fp32_training_is_bitwise_the_old_loop(digits, cfg):
    x, y = digits.train_x[:256], digits.train_y[:256]
    start = _model(digits)
    ref, default, fp32 = (_model(digits) for _ in range(3))
    assert _same(ref, start)
    _reference_train(ref, x, y, cfg, seed=3)
    train(default, x, y, cfg, seed=3, progress=False)
    train(fp32, x, y, cfg, seed=3, progress=False, precision="fp32")
    assert not _same(ref, start)  # training moved the weights ...
    assert _same(ref, default) and _same(ref, fp32)  # ... exactly as the old loop did


def test_fp32_distillation_is_bitwise_the_old_loop(digits):
    x, y = digits.train_x[:256], digits.train_y[:256]
    t = torch.softmax(torch.randn(256, 10, generator=torch.Generator().manual_seed(1)), 1)
    cfg = DistillConfig(4.0, 0.7, 2, 64, 0.02)
    ref, fp32 = _model(digits, "mlp"), _model(digits, "mlp")
    _reference_distill(ref, x, t, y, cfg, seed=2)
    distill(fp32, x, t, y, cfg, seed=2, progress=False, precision="fp32")
    assert _same(ref, fp32) and not _same(ref, _model(digits, "mlp"))


# ------------------------------------------------------------------------------------------- bf16: training only
def _dtype_log(model: torch.nn.Module) -> list[tuple[bool, torch.dtype]]:
    """(training mode, output dtype) of every forward through the model's last layer, from now on."""
    seen: list[tuple[bool, torch.dtype]] = []
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.register_forward_hook(lambda m, i, out: seen.append((m.training, out.dtype)))
    return seen


def test_bf16_autocasts_the_update_and_the_training_attack_never_evaluation(digits):
    x, y = digits.train_x[:256], digits.train_y[:256]
    model = _model(digits)
    seen = _dtype_log(model)
    hist = train(model, x, y, TrainConfig(1, 64, 0.05, attack=AT), seed=3, progress=False, precision="bf16",
                 monitor=(digits.test_x[:50], digits.test_y[:50]))
    update = {d for training, d in seen if training}
    eval_mode = [d for training, d in seen if not training]  # the training attack (bf16), then the monitor (fp32)
    assert update == {torch.bfloat16}
    assert torch.bfloat16 in eval_mode and eval_mode[-1] == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters()) and hist[0]["train_loss"] > 0
    seen.clear()
    z = train_mod.predict(model, digits.test_x[:50])
    make_attack(model, AttackConfig.cosine("linf", 0.1, 3))(digits.test_x[:50], digits.test_y[:50])
    assert z.dtype == torch.float32 and seen and {d for _, d in seen} == {torch.float32}
    fp32 = _model(digits)
    train(fp32, x, y, TrainConfig(1, 64, 0.05, attack=AT), seed=3, progress=False)
    assert not _same(model, fp32)  # bf16 changed the floats


def test_bf16_distillation_autocasts_the_forward(digits):
    x, y = digits.train_x[:256], digits.train_y[:256]
    t = torch.softmax(torch.randn(256, 10, generator=torch.Generator().manual_seed(1)), 1)
    model = _model(digits, "mlp")
    seen = _dtype_log(model)
    hist = distill(model, x, t, y, DistillConfig(4.0, 1.0, 1, 64, 0.02), seed=2, progress=False, precision="bf16")
    assert {d for _, d in seen} == {torch.bfloat16} and hist[0]["train_loss"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="precision = 'fp16'"):
        distill(model, x, t, y, DistillConfig(4.0, 1.0, 1, 64, 0.02), seed=2, progress=False, precision="fp16")


# ------------------------------------------------------------------------------------------- cache keys and calls
class _Called(Exception):
    """Raised by a stand-in training function, carrying the precision it was asked for."""


def _capture(*args, precision="unset", **kw):
    raise _Called(precision)


@pytest.fixture
def contexts(tmp_path, monkeypatch):
    """Contexts of the smoke profile asking for fp32 and for bf16, on a CPU said to have native bf16."""
    monkeypatch.setattr(runtime, "native_bf16", lambda dev: True)
    base = PROFILES["smoke"]
    mk = lambda p: cx.context(p, str(tmp_path / "cache"), device="cpu", workers=1)  # noqa: E731
    return mk(base), mk(dataclasses.replace(base, name="smoke-bf16", precision="bf16"))


def test_precision_is_in_every_trained_artifacts_key(contexts, monkeypatch):
    fp, bf = contexts
    std, key = ModelSpec("standard"), lambda kind, cfg: artifact_key(kind, cfg, "code", "data")
    assert shrinkage.precision(fp) == "fp32" and shrinkage.precision(bf) == "bf16"
    for kind, of in (("model", lambda c: shrinkage.run_config(c, std, 0)),
                     ("distill_student", lambda c: distillation.student_config(c, "hard_labels", None, 0, {})),
                     ("distill_pgd_at", lambda c: distillation.ceiling_config(c, 0))):
        a, b = of(fp), of(bf)
        assert (a["precision"], b["precision"]) == ("fp32", "bf16") and key(kind, a) != key(kind, b), kind
        assert a == b | {"precision": "fp32"}, kind  # nothing else differs
    monkeypatch.setattr(runtime, "native_bf16", lambda dev: False)  # a CPU without bf16: the fp32 artifacts serve
    assert shrinkage.run_config(bf, std, 0) == shrinkage.run_config(fp, std, 0)


def test_every_training_call_gets_the_resolved_precision(contexts, monkeypatch):
    _, bf = contexts
    monkeypatch.setattr(train_mod, "train", _capture)
    monkeypatch.setattr(distill_mod, "distill", _capture)
    tl = TeacherLogits(torch.zeros(len(bf.data.train_y), 10), torch.zeros(len(bf.data.train_y), 10),
                       bf.data.train_y.cpu())
    calls = {"model": lambda: shrinkage.trained_model(bf, ModelSpec("standard"), 0, progress=False, light=True),
             "control": lambda: controls.control_model(bf, "label_smoothing", 0.01, 0),
             "student": lambda: distillation.student_run(bf, "hard_labels", None, 0, progress=False, tea={"x": None},
                                                         tl=tl),
             "pgd_at_student": lambda: distillation.ceiling_run(bf, 0, progress=False, tea={"x": None})}
    for name, call in calls.items():
        with pytest.raises(_Called) as e:
            call()
        assert e.value.args == ("bf16",), name


# ------------------------------------------------------------------------------------------- provenance
def test_provenance_says_which_precision_trained_the_models(monkeypatch):
    monkeypatch.setenv("ATLIB_CPU_BF16", "0")
    p = dataclasses.replace(PROFILES["smoke"], name="smoke-bf16", precision="bf16")
    resolved = train_precision(p.precision, CPU)
    prov = runner.provenance(p, "cpu (2 cores)", "0123abc", resolved, 1.0)
    assert "**training precision** bf16 requested; this CPU has no native bf16: fp32" in prov.markdown()
    assert prov.as_dict()["precision"] == "fp32" and prov.as_dict()["precision_requested"] == "bf16"
    same = pages.Provenance("smoke", "d", "digits", "mlp", "cpu (2 cores)", (0,), "abc", "now", 1.0, "bf16", "bf16")
    assert "**training precision** bf16  \n" in same.markdown()
    gpu = pages.Provenance("cifar10", "d", "cifar10", "resnet", "cuda: H100", (0,), "abc", "now", 1.0, "bf16", "fp32")
    assert "**training precision** bf16 (the profile's CUDA fast path; fp32 requested)" in gpu.markdown()
