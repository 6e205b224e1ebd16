"""A secondary diagnostic of chapter 03: the early-stopped snapshot of the standard run (the old control).

Chapter 02's standard run of each seed keeps its clean test-set logits and selection-set accuracy after every
epoch (:class:`atlib.studies.shrinkage.runs.Snapshots`, saved by the run's own training job); the epoch whose selection
accuracy is closest to the main AT models' mean is the snapshot. It matches accuracy, but it is taken at a
high learning rate, not annealed: the chapter reports it as a diagnostic, never in the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from atlib.core import stats
from atlib.studies import context as cx
from atlib.studies.confidence.matched import STANDARD
from atlib.studies.shrinkage import runs as ex
from atlib.training import train

Tensor = torch.Tensor


@dataclass
class Snapshot:
    """The early-stopped standard model of one seed."""

    seed: int
    epoch: int  # 1-based
    logits: Tensor  # (N_test, K) clean logits at that epoch
    select_acc: list[float]  # per epoch, on the selection set
    test_acc: list[float]  # per epoch, on the test set: shown, never used to select
    lr_at_epoch_end: float  # one-cycle learning rate reached at the end of the selected epoch


def early_snapshots(ctx: cx.Context, target: float, progress: bool = False) -> dict[int, Snapshot]:
    """Per seed, the epoch of the standard run whose selection accuracy is closest to ``target``."""
    cx.fill(ctx, [(ex.model_run, (STANDARD, s)) for s in ctx.profile.seeds], "standard models", progress)
    cfg = ctx.profile.train_config(STANDARD)
    steps = -(-len(ctx.data.train_y) // cfg.batch_size)
    y = ctx.data.test_y.cpu()
    out = {}
    for seed in ctx.profile.seeds:
        snap, _ = ex.std_snapshots(ctx, seed, progress)
        acc = list(snap["select_acc"])
        e = min(range(len(acc)), key=lambda i: (abs(acc[i] - target), i))
        z = snap["test_logits"]
        lr = cfg.lr * train.one_cycle((e + 1) * steps, cfg.epochs * steps, cfg.warmup_frac)
        out[seed] = Snapshot(seed, e + 1, z[e], acc, [stats.accuracy(zi, y) for zi in z], lr)
    return out
