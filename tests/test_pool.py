"""Cache-filling jobs in worker processes: same floats as one thread in-process, probes, errors, settings."""
import dataclasses

import pytest
import torch

from atlib.studies.shrinkage import runs as ex

from atlib.studies import context as cx
from atlib.training import pool
from atlib.studies.profiles import get_profile
from atlib.core.store import CacheMiss, Store

# smoke's setting, shortened: 2 specs x 2 seeds of ~0.3 s each
TINY = dataclasses.replace(get_profile("smoke"), epochs=3, seeds=(0, 1), linf_sweep=(0.0, 0.1))


def record_threads(ctx, tag: str) -> None:
    """A job: store the torch thread count it ran with."""
    ctx.store.get_or_compute(f"threads-{tag}", lambda: {"threads": torch.get_num_threads()})


def _diverge(tag: str) -> None:
    raise FloatingPointError(f"job {tag} diverged")


def fail(ctx, tag: str) -> None:
    """A job whose computation always fails."""
    ctx.store.get_or_compute(f"fail-{tag}", lambda: _diverge(tag))


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    pool.shutdown()


@pytest.mark.slow  # spawns worker processes
def test_pooled_models_equal_one_thread_in_process(tmp_path):
    specs = TINY.model_specs()[:2]
    pooled = cx.context(TINY, tmp_path / "pooled", workers=2)
    assert cx.fill(pooled, [(ex.model_run, (s, seed)) for s in specs for seed in TINY.seeds], "models") == 4
    assert cx.fill(pooled, [(ex.model_run, (s, seed)) for s in specs for seed in TINY.seeds], "models") == 0

    serial = cx.context(TINY, tmp_path / "serial", workers=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for s in specs:
            for seed in TINY.seeds:
                a, b = ex.model_run(pooled, s, seed), ex.model_run(serial, s, seed)
                assert a.cached and not b.cached  # the parent only loads what the workers trained
                for k, v in a.model.state_dict().items():
                    assert torch.equal(v, b.model.state_dict()[k]), (s, seed, k)
                for k in a.logits:
                    assert torch.equal(a.logits[k], b.logits[k]), (s, seed, k)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # spawns worker processes
def test_workers_run_one_thread_each_and_a_warm_fill_starts_none(tmp_path):
    ctx = cx.context(TINY, tmp_path, workers=2)
    assert cx.fill(ctx, [(record_threads, ("a",)), (record_threads, ("b",))], "threads") == 2
    assert [ctx.store.load(f"threads-{t}")["threads"] for t in "ab"] == [1, 1]
    pool.shutdown()
    assert cx.fill(ctx, [(record_threads, ("a",)), (record_threads, ("b",))], "threads") == 0
    assert pool._EXECUTOR is None  # everything was cached: no process was started


def test_probe_finds_misses_without_computing(tmp_path):
    store = Store(tmp_path)
    calls = []
    with store.probing(), pytest.raises(CacheMiss):
        store.get_or_compute("k", lambda: calls.append(1) or 1)
    assert calls == [] and store.load("k") is None
    store.get_or_compute("k", lambda: 7)
    with store.probing():
        assert store.get_or_compute("k", lambda: 8) == (7, True)
    assert store.get_or_compute("j", lambda: 9) == (9, False)  # probing ends with its block

    ctx = cx.context(TINY, tmp_path, workers=2)
    record_threads(ctx, "done")
    jobs = [(record_threads, ("done",)), (record_threads, ("todo",))]
    assert pool.missing(ctx.store, ctx, jobs) == [(record_threads, ("todo",))]
    assert ctx.store.load("threads-todo") is None


@pytest.mark.slow  # spawns worker processes
def test_a_failing_job_raises_in_the_caller_and_keeps_the_others(tmp_path):
    ctx = cx.context(TINY, tmp_path, workers=2)
    with pytest.raises(FloatingPointError, match="job x diverged"):
        cx.fill(ctx, [(fail, ("x",)), (record_threads, ("ok",))], "jobs")
    assert ctx.store.load("threads-ok") == {"threads": 1}


def test_one_worker_computes_nothing_in_the_pool(tmp_path):
    ctx = cx.context(TINY, tmp_path, workers=1)
    assert cx.fill(ctx, [(record_threads, ("a",))], "jobs") == 0
    assert ctx.store.load("threads-a") is None and pool._EXECUTOR is None


def test_default_workers(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("ATLIB_WORKERS", raising=False)
    assert 1 <= pool.default_workers(cpu) <= pool.MAX_WORKERS
    assert pool.default_workers(cuda) == 1 and pool.default_workers(cpu, pooled=False) == 1
    assert cx.context("smoke", None).workers == 1  # smoke's jobs are too short to pay for a process
    monkeypatch.setenv("ATLIB_WORKERS", "3")
    assert pool.default_workers(cpu, pooled=False) == 3 and pool.default_workers(cuda) == 3
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("ATLIB_WORKERS", bad)
        with pytest.raises(ValueError, match="ATLIB_WORKERS"):
            pool.default_workers(cpu)
    with pytest.raises(ValueError, match="workers"):
        cx.context("smoke", None, workers=0)


def _die(ctx, tag: str) -> None:
    """A job whose worker process dies mid-computation (as if killed, or out of memory)."""
    import os

    ctx.store.get_or_compute(f"die-{tag}", lambda: os._exit(3))


@pytest.mark.slow  # spawns worker processes
def test_a_dead_worker_says_what_to_do(tmp_path):
    ctx = cx.context(TINY, tmp_path, workers=2)
    with pytest.raises(RuntimeError, match="worker process died.*ATLIB_WORKERS=1"):
        cx.fill(ctx, [(_die, ("x",))], "jobs")
    assert pool._EXECUTOR is None  # the broken pool is dropped: the next fill starts a fresh one
    assert cx.fill(ctx, [(record_threads, ("after",))], "jobs") == 1


def test_parse_workers():
    assert pool.parse_workers(3) == 3 and pool.parse_workers("2") == 2
    for bad in (0, -1, "0", "two", None, ""):
        with pytest.raises(ValueError, match=r"--workers=.*whole number >= 1"):
            pool.parse_workers(bad, "--workers")
