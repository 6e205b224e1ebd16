"""A secondary diagnostic of chapter 03: the early-stopped snapshot of the standard run (the old control).

Chapter 02's standard recipe is re-run per seed (same configuration and seed, hence the same run) and its
clean test-set logits and selection-set accuracy are kept after every epoch; the epoch whose selection
accuracy is closest to the main AT models' mean is the snapshot. It matches accuracy, but it is taken at a
high learning rate, not annealed: the chapter reports it as a diagnostic, never in the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from atlib.core import stats
from atlib.core.keys import code_version_without
from atlib.core.store import artifact_key
from atlib.studies import context as cx
from atlib.studies.confidence.matched import STANDARD, selection_set
from atlib.studies.shrinkage import runs as ex
from atlib.training import train

SCHEMA = 2  # 2: test-set logits (was the evaluation subset)

Tensor = torch.Tensor


def std_snapshots(ctx: cx.Context, seed: int, select_on: str, holdout: int, data_root: str | None = None,
                  progress: bool = False) -> tuple[dict[str, Any], bool]:
    """Chapter 02's standard run for ``seed``, re-trained with per-epoch test logits and selection accuracy."""
    cfg = {"schema": SCHEMA, "std_run": ex.run_config(ctx, STANDARD, seed), "select_on": select_on,
           "holdout": holdout if select_on == "holdout" else 0}
    key = artifact_key("stdsnapshots", cfg, code_version_without(__name__), ctx.data.fingerprint)
    sel_x, sel_y, _ = selection_set(ctx, select_on, holdout, data_root)

    def compute() -> dict[str, Any]:
        model = ex.build(ctx, seed)
        test_logits: list[Tensor] = []
        sel_acc: list[float] = []

        def snapshot(epoch: int, m: torch.nn.Module, rec: dict) -> None:
            test_logits.append(train.predict(m, ctx.data.test_x))
            sel_acc.append(stats.accuracy(train.predict(m, sel_x), sel_y.cpu()))

        hist = train.train(model, ctx.data.train_x, ctx.data.train_y, ctx.profile.train_config(STANDARD), seed,
                           name=f"standard seed {seed} (snapshots)", progress=progress, on_epoch_end=snapshot,
                           precision=cfg["std_run"]["precision"])  # chapter 02's run, at its precision
        return {"test_logits": torch.stack(test_logits), "select_acc": sel_acc, "history": hist}

    return ctx.store.get_or_compute(key, compute, meta=cfg)


def _snapshot_job(ctx: cx.Context, seed: int, select_on: str, holdout: int, data_root: str | None) -> None:
    std_snapshots(ctx, seed, select_on, holdout, data_root)


@dataclass
class Snapshot:
    """The early-stopped standard model of one seed."""

    seed: int
    epoch: int  # 1-based
    logits: Tensor  # (N_test, K) clean logits at that epoch
    select_acc: list[float]  # per epoch, on the selection set
    test_acc: list[float]  # per epoch, on the test set: shown, never used to select
    lr_at_epoch_end: float  # one-cycle learning rate reached at the end of the selected epoch


def early_snapshots(ctx: cx.Context, target: float, select_on: str, holdout: int, data_root: str | None = None,
                    progress: bool = False) -> dict[int, Snapshot]:
    """Per seed, the epoch of the standard run whose selection accuracy is closest to ``target``."""
    cx.fill(ctx, [(_snapshot_job, (s, select_on, holdout, data_root)) for s in ctx.profile.seeds],
            "early-stopped snapshots", progress)
    cfg = ctx.profile.train_config(STANDARD)
    steps = -(-len(ctx.data.train_y) // cfg.batch_size)
    y = ctx.data.test_y.cpu()
    out = {}
    for seed in ctx.profile.seeds:
        snap, _ = std_snapshots(ctx, seed, select_on, holdout, data_root, progress)
        acc = list(snap["select_acc"])
        e = min(range(len(acc)), key=lambda i: (abs(acc[i] - target), i))
        z = snap["test_logits"]
        lr = cfg.lr * train.one_cycle((e + 1) * steps, cfg.epochs * steps, cfg.warmup_frac)
        out[seed] = Snapshot(seed, e + 1, z[e], acc, [stats.accuracy(zi, y) for zi in z], lr)
    return out
