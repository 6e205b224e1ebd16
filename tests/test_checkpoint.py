"""Checkpoint/resume: a run killed by a real signal resumes bitwise-identical; NaNs name model, epoch and batch."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from atlib.core.attacks import AttackConfig
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.training.train import TrainConfig, TrainingDiverged, train

CFG = TrainConfig(4, 64, 0.05, attack=AttackConfig("linf", 0.1, 2, 0.05))
N = 512

# Run in a subprocess: train the digits MLP with a checkpoint, log each finished epoch, save the final weights.
SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from atlib.core.attacks import AttackConfig
from atlib.core.data import load_digits_data
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.training.train import TrainConfig, train
ckpt, log, out, pause = sys.argv[1], Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
d = load_digits_data()
seed_everything(0)
model = build_model("mlp", d.shape, 10, d.mean, d.std, 32)
def hook(epoch, model, rec):
    with log.open("a") as f:
        f.write(json.dumps(epoch) + "\\n")
    time.sleep(pause)  # a slow epoch: room for the test to kill the process mid-run
cfg = TrainConfig(4, 64, 0.05, attack=AttackConfig("linf", 0.1, 2, 0.05))
train(model, d.train_x[:%d], d.train_y[:%d], cfg, seed=1, progress=False, on_epoch_end=hook, checkpoint=ckpt)
torch.save(model.state_dict(), out)
""" % (N, N)


def _uninterrupted(digits) -> tuple[dict, list[dict]]:
    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    hist = train(model, digits.train_x[:N], digits.train_y[:N], CFG, seed=1, progress=False)
    return model.state_dict(), hist


@pytest.mark.slow  # kills and restarts a training subprocess
def test_killed_run_resumes_bitwise(digits, tmp_path):
    ckpt, log, out = tmp_path / "run.ckpt", tmp_path / "epochs.log", tmp_path / "final.pt"
    cmd = [sys.executable, "-c", SCRIPT, str(ckpt), str(log), str(out)]
    proc = subprocess.Popen(cmd + ["3"])
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists():  # the first epoch's checkpoint
            assert proc.poll() is None, "the training subprocess died before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    saved = torch.load(ckpt, weights_only=True)
    assert 1 <= saved["epoch"] < CFG.epochs
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no partial files behind
    log.write_text("")
    subprocess.run(cmd + ["0"], check=True, timeout=300)  # the same command again: resumes
    resumed = [json.loads(line) for line in log.read_text().split()]
    assert resumed == list(range(saved["epoch"] + 1, CFG.epochs + 1))  # it did not start over
    final = torch.load(out, weights_only=True)
    ref, hist = _uninterrupted(digits)
    assert final.keys() == ref.keys() and all(torch.equal(final[k], ref[k]) for k in ref)
    done = torch.load(ckpt, weights_only=True)
    assert done["epoch"] == CFG.epochs
    assert [h["train_loss"] for h in done["history"]] == [h["train_loss"] for h in hist]


def test_checkpoint_of_another_run_is_ignored(digits, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    x, y = digits.train_x[:128], digits.train_y[:128]
    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    train(model, x, y, TrainConfig(1, 64, 0.05), seed=1, progress=False, checkpoint=ckpt)
    seed_everything(0)
    fresh = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    with pytest.warns(UserWarning, match="another run"):
        hist = train(fresh, x, y, TrainConfig(1, 64, 0.05), seed=2, progress=False, checkpoint=ckpt)
    assert len(hist) == 1
    seed_everything(0)
    plain = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    train(plain, x, y, TrainConfig(1, 64, 0.05), seed=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), plain.state_dict().values()))


def test_nan_names_model_epoch_and_batch(digits, tmp_path):
    x, y = digits.train_x[:256].clone(), digits.train_y[:256]
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(0))  # train()'s first-epoch order, seed 0
    x[perm[100]] = float("nan")  # one poisoned image, in batch 100 // 32 + 1 = 4 of 8
    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(TrainingDiverged, match=r"digits-mlp: .* at epoch 1, first at batch 4 of 8"):
        train(model, x, y, TrainConfig(2, 32, 0.05), seed=0, progress=False, name="digits-mlp", checkpoint=ckpt)
    assert not ckpt.exists()  # nothing from a diverged epoch is saved


def test_cached_model_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """``experiments.trained_model`` checkpoints every epoch: an interrupted call resumes on the next call,
    ends equal to an uninterrupted run, and leaves no checkpoint behind once the model is stored."""
    import dataclasses

    from atlib.training import checkpoint as ckpt
    from atlib.studies.shrinkage import runs as ex
    from atlib.studies import context as cx
    from atlib.studies.profiles import get_profile

    p = dataclasses.replace(get_profile("smoke"), epochs=3, seeds=(0,), side_seeds=None)
    spec = p.main_at
    ctx = cx.context(p, tmp_path / "interrupted", workers=1)
    real_save, saves = ckpt.save, []

    def save_then_interrupt(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if len(saves) == 1:
            raise KeyboardInterrupt  # as if the user stopped the kernel after epoch 1

    monkeypatch.setattr(ckpt, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ex.trained_model(ctx, spec, 0, progress=False)
    assert len(list((tmp_path / "interrupted" / "checkpoints").glob("*.pt"))) == 1
    model, payload, key, hit = ex.trained_model(ctx, spec, 0, progress=False)
    assert not hit and saves == [1, 2, 3]  # resumed after epoch 1: epochs 2 and 3 only
    assert not ex.checkpoint_path(ctx, key).exists()

    monkeypatch.setattr(ckpt, "save", real_save)
    ref, ref_payload, _, _ = ex.trained_model(cx.context(p, tmp_path / "straight", workers=1), spec, 0, progress=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert [h["train_loss"] for h in payload["history"]] == [h["train_loss"] for h in ref_payload["history"]]
