"""One pass over every chapter's jobs (issue 26): the shared queue, the snapshots the standard runs save as they
train, chapter 05 auditing chapter 04's own PGD results, and a book after ``compute`` that computes nothing."""
import threading
import time

import pytest
import torch

from atlib.studies import context as cx
from atlib.studies.shrinkage import runs as ex
from atlib.training import pool, schedule, train


def stamp(ctx, tag: str, pause: float = 0.0) -> None:
    """A job: sleep ``pause`` s, then store when it finished."""
    def go() -> dict:
        time.sleep(pause)
        return {"ns": time.monotonic_ns()}
    ctx.store.get_or_compute(f"stamp-{tag}", go)


def broken(ctx, tag: str) -> None:
    """A job that always fails."""
    raise FloatingPointError(f"job {tag} diverged")


def die(ctx, tag: str) -> None:
    """A job whose worker process dies (as if killed)."""
    import os
    os._exit(1)


@pytest.fixture(autouse=True)
def _fresh_pool():
    yield
    pool.shutdown()


def _session(ctx, workers: int):
    return schedule.session(workers, cx.context, cx.factory_args(ctx), progress=False)


@pytest.mark.slow  # spawns a worker process
def test_the_queue_starts_jobs_by_tier_then_longest_first_and_runs_a_shared_job_once(tmp_path):
    ctx = cx.context("smoke", cache_dir=str(tmp_path), device="cpu", workers=1)
    bulk = [(stamp, ("short",)), (stamp, ("long",))]
    cost = {"short": 1.0, "long": 5.0}
    with _session(ctx, 1) as q:
        first = threading.Thread(target=q.run, args=([(stamp, ("blocker", 1.0))],))
        first.start()  # holds the only worker while the others queue up
        time.sleep(0.2)
        planners = {"a": lambda: q.run(bulk, lambda job: (schedule.BULK, -cost[job[1][0]])),
                    "b": lambda: q.run([(stamp, ("chain",))], lambda job: (schedule.CHAIN, 0.0)),
                    "c": lambda: q.run([(stamp, ("long",))], lambda job: (schedule.BULK, -5.0))}
        schedule.together(planners)
        first.join()
        assert q.submitted == 4  # "long", asked for by two planners, is one job
    done = {t: ctx.store.load(f"stamp-{t}")["ns"] for t in ("blocker", "chain", "long", "short")}
    assert sorted(done, key=done.get) == ["blocker", "chain", "long", "short"]


@pytest.mark.slow  # spawns a worker process
def test_a_failing_job_fails_its_planner_by_name_after_the_others_finish(tmp_path):
    ctx = cx.context("smoke", cache_dir=str(tmp_path), device="cpu", workers=1)
    with _session(ctx, 1) as q:
        with pytest.raises(FloatingPointError, match="job x diverged") as err:
            schedule.together({"bad": lambda: q.run([(broken, ("x",))]), "good": lambda: q.run([(stamp, ("y",))])})
    assert any("'bad' planner" in n for n in err.value.__notes__)
    assert ctx.store.load("stamp-y") is not None  # the other planner's work is kept


@pytest.mark.slow  # spawns worker processes
def test_a_dead_worker_fails_every_waiting_planner_with_what_to_do(tmp_path):
    ctx = cx.context("smoke", cache_dir=str(tmp_path), device="cpu", workers=1)
    with _session(ctx, 1) as q:
        with pytest.raises(RuntimeError, match="a worker process died"):
            schedule.together({"dies": lambda: q.run([(die, ("x",))]),
                               "waits": lambda: (time.sleep(0.5), q.run([(stamp, ("never",))]))})


def test_a_session_is_one_at_a_time(tmp_path):
    ctx = cx.context("smoke", cache_dir=str(tmp_path), device="cpu", workers=1)
    with _session(ctx, 1):
        with pytest.raises(RuntimeError, match="already open"):
            with _session(ctx, 1):
                pass


def test_the_standard_run_saves_its_snapshots_and_its_weights_are_bitwise_unchanged(tmp_path):
    ctx = cx.context("smoke", cache_dir=str(tmp_path), device="cpu", workers=1)
    model, payload, _, hit = ex.trained_model(ctx, ex.STANDARD, 0, progress=False)
    assert not hit
    plain = ex.build(ctx, 0)  # the same run without the snapshot hook
    hist = train.train(plain, ctx.data.train_x, ctx.data.train_y, ctx.profile.train_config(ex.STANDARD), 0,
                       monitor=(ctx.eval_x, ctx.eval_y), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in payload["history"]]
    snap = ctx.store.load(ex.snapshot_key(ctx, 0))  # saved by the run itself: loading it trains nothing
    assert snap is not None and len(snap["select_acc"]) == ctx.profile.epochs
    assert torch.equal(snap["test_logits"][-1], train.predict(model, ctx.data.test_x))
    again, hit = ex.std_snapshots(ctx, 0)
    assert hit and torch.equal(again["test_logits"], snap["test_logits"])


def test_the_book_after_compute_computes_nothing(smoke_book):
    done, before, after = smoke_book["computed"], smoke_book["artifacts_after_compute"], smoke_book["artifacts_after_book"]
    assert done.model_runs > 0 and done.students > 0 and before  # compute made the artifacts (its workers did)
    assert sorted(after.keys() - before.keys()) == []  # no artifact made: every chapter only loaded
    assert {n: after[n] for n in before} == before  # and none rewritten


def test_a_whole_pass_leaves_a_receipt_that_a_code_edit_or_a_lost_artifact_voids(smoke_book, monkeypatch):
    ctx = cx.context("smoke", cache_dir=str(smoke_book["cache"]), device="cpu", workers=2)
    monkeypatch.setattr(cx, "_COMPLETE", {})
    assert cx.complete(ctx)
    keys = cx.receipt(ctx)["keys"]
    assert {k.split("-")[0] for k in keys} >= {"model", "evaluation", "distill_student", "audit", "predict"}
    assert cx.fill(ctx, [(stamp, ("unasked",))], "x") == 0 and ctx.store.load("stamp-unasked") is None  # no probe
    with monkeypatch.context() as m:  # any edit to atlib: the receipt is another one, not found
        m.setattr(cx, "package_version", lambda: "edited")
        m.setattr(cx, "_COMPLETE", {})
        assert not cx.complete(ctx)
    lost = ctx.store.path(next(k for k in keys if k.startswith("distill_student")))
    lost.rename(lost.with_suffix(".away"))
    try:
        monkeypatch.setattr(cx, "_COMPLETE", {})
        assert not cx.complete(ctx)  # a listed artifact is gone: probe job by job again
    finally:
        lost.with_suffix(".away").rename(lost)
