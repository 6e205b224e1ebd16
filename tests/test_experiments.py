"""Profiles, the cached experiment function, and the command line's error paths."""
import dataclasses
import subprocess
import sys
import warnings

import pytest
import torch

from atlib.studies.shrinkage import runs as ex

from atlib.studies import context as cx
from atlib.book.runner import REPO
from atlib.core.models import build_model
from atlib.studies.profiles import PROFILES, UnknownProfileError, get_profile
from atlib.core.store import CorruptArtifactWarning


def test_profiles_are_complete():
    assert {"smoke", "fashion", "mnist", "cifar10"} <= set(PROFILES)
    for p in PROFILES.values():
        assert 0.0 in p.linf_sweep and p.linf_eps in p.linf_sweep
        specs = p.model_specs()
        assert specs[0].kind == "standard" and p.main_at in specs and any(s.norm == "l2" for s in specs)
        for s in specs:
            cfg = p.train_config(s)
            assert (cfg.attack is None) == (s.kind == "standard")
        assert set(p.eval_attacks()) == {"linf_ce", "linf_margin", "l2_ce", "l2_margin"}
    assert len(PROFILES["fashion"].seeds) >= 3 and PROFILES["fashion"].eval_subset >= 1000
    c = PROFILES["cifar10"]
    assert c.arch == "preact_resnet18" and abs(c.linf_eps - 8 / 255) < 1e-12 and c.train_steps == 10
    assert abs(c.train_config(c.main_at).attack.step_size - 2 / 255) < 1e-12


def test_cifar_model_forward():
    m = build_model("preact_resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3, width=8)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(UnknownProfileError) as e:
        get_profile("cifar100")
    for name in PROFILES:
        assert name in str(e.value)


def _tiny(tmp_path):
    p = dataclasses.replace(get_profile("smoke"), epochs=2, seeds=(0,), side_seeds=None, eval_steps=3)
    return cx.context(p, cache_dir=str(tmp_path / "cache"), device="cpu")


def test_model_run_is_cached_and_deterministic(tmp_path, monkeypatch):
    ctx = _tiny(tmp_path)
    spec = ctx.profile.main_at
    first = ex.model_run(ctx, spec, 0, progress=False)
    second = ex.model_run(ctx, spec, 0, progress=False)
    assert not first.cached and second.cached
    for k in first.logits:
        assert torch.equal(first.logits[k], second.logits[k])
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    # the loaded model really is the trained one: its clean logits reproduce the stored ones
    assert torch.allclose(ex.train.predict(second.model, ctx.eval_x), second.logits["clean"], atol=1e-5)

    # an evaluation-code change re-attacks the stored model without retraining it
    calls = []
    real_train = ex.train.train
    monkeypatch.setattr(ex.train, "train", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    monkeypatch.setattr(ex, "EVAL_CODE", "another-eval-code")
    evaluated = ex.model_run(ctx, spec, 0, progress=False)
    assert evaluated.cached and not calls, "an evaluation change must not retrain"
    assert len(list((tmp_path / "cache").glob("evaluation-*.pt"))) == 2
    for k in first.logits:
        assert torch.equal(evaluated.logits[k], first.logits[k])

    # a training-code change retrains; the recomputation on CPU reproduces the same logits exactly
    monkeypatch.setattr(ex, "TRAIN_CODE", "another-code-version")
    third = ex.model_run(ctx, spec, 0, progress=False)
    assert not third.cached and calls
    assert torch.equal(third.logits["clean"], first.logits["clean"])


def test_corrupt_cache_entry_is_recomputed(tmp_path):
    ctx = _tiny(tmp_path)
    spec = ctx.profile.model_specs()[0]
    first = ex.model_run(ctx, spec, 0, progress=False)
    (path,) = list((tmp_path / "cache").glob("model-*.pt"))
    path.write_bytes(path.read_bytes()[:-100])  # truncated, as after a crash mid-copy
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        again = ex.model_run(ctx, spec, 0, progress=False)
    assert any(issubclass(x.category, CorruptArtifactWarning) for x in w)
    assert not again.cached and torch.equal(again.logits["clean"], first.logits["clean"])
    assert path.with_suffix(".corrupt").exists(), "the bad file is kept aside, not deleted"


def _cli(*args, env_extra=None):
    import os

    env = dict(os.environ, ATLIB_NO_DOWNLOAD="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "atlib", *args], capture_output=True, text=True, cwd=REPO, env=env)


@pytest.mark.slow  # runs the CLI in a fresh interpreter
def test_cli_unknown_profile():
    r = _cli("book", "--profile", "imagenet", "--out", "/tmp/never-written")
    assert r.returncode == 2
    assert "unknown profile 'imagenet'" in r.stderr and "fashion" in r.stderr and "smoke" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # runs the CLI in a fresh interpreter
def test_cli_missing_data_says_how_to_get_it(tmp_path):
    r = _cli("compute", "--profile", "mnist", "--data-root", str(tmp_path), "--cache-dir", str(tmp_path / "c"),
             env_extra={"ATLIB_DATA": str(tmp_path)})
    assert r.returncode == 2  # bad input: an explicit data root without the data stops before anything runs
    assert "holds none of the mnist files" in r.stderr and "internet" in r.stderr and "--data-root" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # runs the CLI in a fresh interpreter
def test_cli_bad_workers():
    r = _cli("compute", "--profile", "smoke", "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr and "whole number >= 1" in r.stderr
    assert "Traceback" not in r.stderr
