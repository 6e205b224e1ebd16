"""DDP on the CPU: 2 gloo ranks (launched as torchrun would) train like one process on the same global batch."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from atlib.core.attacks import AttackConfig, make_attack
from atlib.training.distributed import rank_world, shard
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.training.train import TrainConfig, train

N = 265  # 5 global batches of 64, the last of 9 rows: shards of 5 and 4
CFG = TrainConfig(2, 64, 0.05, augment=True, attack=AttackConfig("linf", 0.1, 3, 0.05))

RANK = """
import sys
import torch
torch.set_num_threads(1)
from atlib.core.attacks import AttackConfig
from atlib.core.data import load_digits_data
from atlib.training.distributed import init_from_env, rank_world
from atlib.core.models import build_model
from atlib.core.runtime import seed_everything
from atlib.training.train import TrainConfig, train
assert init_from_env()
d = load_digits_data()
seed_everything(0)
model = build_model("mlp", d.shape, 10, d.mean, d.std, 32)
cfg = TrainConfig(2, 64, 0.05, augment=True, attack=AttackConfig("linf", 0.1, 3, 0.05))
hist = train(model, d.train_x[:%d], d.train_y[:%d], cfg, seed=1, progress=False)
rank, world = rank_world()
torch.save({"state": model.state_dict(), "hist": hist, "world": world}, sys.argv[1] + f".{rank}")
torch.distributed.destroy_process_group()
""" % (N, N)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(script: str, arg: str, world: int) -> None:
    """Run ``script`` as ``world`` gloo ranks on this machine, as torchrun would; each must exit 0."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", script, arg],
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world)})
             for r in range(world)]
    try:
        assert [p.wait(timeout=300) for p in procs] == [0] * world
    finally:
        for p in procs:
            p.kill()


@pytest.mark.slow  # two gloo ranks under torchrun
def test_two_gloo_ranks_match_one_process(digits, tmp_path):
    out, world = tmp_path / "params", 2
    _run_ranks(RANK, str(out), world)
    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    hist = train(model, digits.train_x[:N], digits.train_y[:N], CFG, seed=1, progress=False)
    ref = model.state_dict()
    for r in range(world):
        got = torch.load(f"{out}.{r}", weights_only=True)
        assert got["world"] == world
        for k in ref:
            torch.testing.assert_close(got["state"][k], ref[k], rtol=0, atol=1e-5, msg=f"rank {r}: {k}")
        assert [h["train_loss"] for h in got["hist"]] == pytest.approx([h["train_loss"] for h in hist], abs=1e-5)
        assert [h["train_acc"] for h in got["hist"]] == [h["train_acc"] for h in hist]


def test_shards_cover_the_batch():
    assert rank_world() == (0, 1)  # no process group in the test process: single-process training
    for total, world in ((64, 2), (9, 2), (10, 3), (3, 3)):
        parts = [shard(total, r, world) for r in range(world)]
        assert parts[0].start == 0 and parts[-1].stop == total
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_sharded_random_start_is_the_global_batch_sliced(digits):
    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 32)
    atk = make_attack(model, AttackConfig("linf", 0.1, 0, 0.05, keep_best=False))  # 0 steps: the start itself
    x, y = digits.train_x[:9], digits.train_y[:9]
    full = atk(x, y, torch.Generator().manual_seed(5))
    parts = [shard(9, r, 2) for r in range(2)]
    pieces = [atk(x[p.start:p.stop], y[p.start:p.stop], torch.Generator().manual_seed(5), p) for p in parts]
    assert torch.equal(torch.cat(pieces), full)


def test_too_small_a_global_batch_for_the_ranks_is_refused(monkeypatch, digits):
    """A global batch with fewer samples than ranks would leave a rank without data: a clear error, before
    any process-group call (the world size is faked, so no group is needed)."""
    from atlib.training import train as T
    from atlib.core.models import build_model

    monkeypatch.setattr(T.ddp, "rank_world", lambda: (0, 4))
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 8)
    with pytest.raises(ValueError, match="at least one sample per rank"):
        T.train(model, digits.train_x[:10], digits.train_y[:10], T.TrainConfig(1, 3, 0.1), seed=0, progress=False)


RUNS = """
import sys, dataclasses
import torch
torch.set_num_threads(1)
from atlib.studies.shrinkage import runs as ex
from atlib.studies import context as cx
from atlib.training.distributed import init_from_env
from atlib.studies.profiles import get_profile
assert init_from_env()
p = dataclasses.replace(get_profile("smoke"), epochs=2, seeds=(0,), side_seeds=None, linf_sweep=(0.0, 0.1), train_subset=265)
ctx = cx.context(p, sys.argv[1])
runs = ex.training_runs(ctx, progress=False)
assert len(runs) == 3 and not any(r.cached for r in runs)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow  # two gloo ranks under torchrun
def test_training_runs_under_two_ranks_store_one_copy_equal_to_one_process(tmp_path):
    """``torchrun -m atlib compute`` in small: both ranks train every model with DDP, only rank 0 writes."""
    import dataclasses

    from atlib.studies import context as cx
    from atlib.studies.shrinkage import runs as ex
    from atlib.studies.profiles import get_profile

    cache, world = tmp_path / "cache", 2
    _run_ranks(RUNS, str(cache), world)
    p = dataclasses.replace(get_profile("smoke"), epochs=2, seeds=(0,), side_seeds=None, linf_sweep=(0.0, 0.1), train_subset=265)
    written = sorted(f.name.split("-")[0] for f in cache.glob("*.pt"))
    # one copy each (the standard run's chapter-03 snapshots too), no stray temp files
    assert written == ["evaluation"] * 3 + ["model"] * 3 + ["stdsnapshots"], written
    assert not list(cache.glob(".*.tmp")) and not list((cache / "checkpoints").glob("*"))
    ddp_ctx, one_ctx = cx.context(p, cache, workers=1), cx.context(p, tmp_path / "one", workers=1)
    for spec in p.model_specs():
        got, ref = ex.model_run(ddp_ctx, spec, 0), ex.model_run(one_ctx, spec, 0)
        assert got.cached and not ref.cached
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(got.model.state_dict()[k], v, rtol=0, atol=1e-5, msg=f"{spec.name}: {k}")


def test_only_rank_zero_writes_the_store(tmp_path, monkeypatch):
    from atlib.core.store import Store

    store = Store(tmp_path)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    store.save("k", {"a": 1})
    assert store.load("k") is None and not list(tmp_path.iterdir())
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    store.save("k", {"a": 1})
    assert store.load("k") == {"a": 1}
