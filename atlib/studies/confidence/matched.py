"""The accuracy-matched control of chapter 03: a standard model stopped early at the AT model's accuracy.

AT models are less accurate than standard ones, so low std-vs-AT agreement in *which* samples are
confident could just be what any less-trained model does. The control re-runs the standard recipe of
chapter 02 (same configuration, same seed, hence the same run) and records, after every epoch, the
model's logits on the evaluation subset and its clean accuracy on a **selection set**. The epoch whose
selection-set accuracy is closest to the AT models' mean accuracy on the *same* selection set is the
matched model. The selection set is never the evaluation subset (that would be selecting on the test
set): it is a held-out slice of the training set that the profile's training subset leaves unused,
or, where the profile trains on the whole training set, the training images themselves.

This module is its own cache code version: editing the chapter's statistics or plots never retrains it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from atlib.core import data, stats
from atlib.core.store import artifact_key, code_version_of
from atlib.studies import context as cx
from atlib.studies.confidence.settings import SELECT_ON
from atlib.studies.profiles import ModelSpec
from atlib.studies.shrinkage import runs as ex
from atlib.training import train

SCHEMA = 1

Tensor = torch.Tensor


def code() -> str:
    """The snapshots are trained and scored by this module: its import closure (chapter 02's runs, data,
    train, evaluate, stats)."""
    return code_version_of(__name__)


def selection_set(ctx: cx.Context, select_on: str, holdout: int, data_root: str | None = None
                  ) -> tuple[Tensor, Tensor, str]:
    """(x, y, description) of the images the early-stopping epoch is selected on (never the test set).

    ``holdout``: the ``holdout`` training images that follow the profile's training subset in the fixed
    permutation (``Data.subset`` takes the first N of it), i.e. images no model of the book trained on.
    ``train``: the training images themselves (clean, eval mode).
    """
    if select_on not in SELECT_ON:
        raise ValueError(f"select_on must be one of {SELECT_ON}, got {select_on!r}")
    p = ctx.profile
    if select_on == "train":
        return ctx.data.train_x, ctx.data.train_y, f"the {len(ctx.data.train_y)} training images (clean, eval mode)"
    full = cx._load_data(p.dataset, data_root, str(ctx.device))
    n_full = len(full.train_y)
    used = n_full if p.train_subset is None else min(p.train_subset, n_full)
    if holdout < 1 or used + holdout > n_full:
        raise ValueError(f"profile {p.name!r} trains on {used} of {n_full} training images: {holdout} held-out "
                         f"images are not available; select on 'train' instead")
    idx = data.fixed_permutation(n_full, seed=0)[used:used + holdout].to(full.train_x.device)
    return (full.train_x[idx], full.train_y[idx],
            f"{holdout} held-out training images (positions {used}–{used + holdout - 1} of the fixed permutation, "
            f"not in the {used}-image training subset)")


def std_snapshots(ctx: cx.Context, seed: int, select_on: str, holdout: int, data_root: str | None = None,
                  progress: bool = False) -> tuple[dict[str, Any], bool]:
    """Chapter 02's standard run for ``seed``, re-trained with per-epoch logits and selection accuracy (cached)."""
    spec = ModelSpec("standard")
    cfg = {"schema": SCHEMA, "std_run": ex.run_config(ctx, spec, seed), "select_on": select_on,
           "holdout": holdout if select_on == "holdout" else 0}
    key = artifact_key("stdsnapshots", cfg, code(), ctx.data.fingerprint)
    sel_x, sel_y, _ = selection_set(ctx, select_on, holdout, data_root)

    def compute() -> dict[str, Any]:
        model = ex.build(ctx, seed)
        eval_logits: list[Tensor] = []
        sel_acc: list[float] = []

        def snapshot(epoch: int, m: torch.nn.Module, rec: dict) -> None:
            eval_logits.append(train.predict(m, ctx.eval_x))
            sel_acc.append(stats.accuracy(train.predict(m, sel_x), sel_y.cpu()))

        hist = train.train(model, ctx.data.train_x, ctx.data.train_y, ctx.profile.train_config(spec), seed,
                           name=f"standard seed {seed} (snapshots)", progress=progress, on_epoch_end=snapshot)
        return {"eval_logits": torch.stack(eval_logits), "select_acc": sel_acc, "history": hist}

    return ctx.store.get_or_compute(key, compute, meta=cfg)


@dataclass
class Matched:
    """The early-stopped standard model of one seed."""

    seed: int
    epoch: int  # 1-based
    logits: Tensor  # (N, K) clean logits on the evaluation subset at that epoch
    select_acc: list[float]  # per epoch, on the selection set
    eval_acc: list[float]  # per epoch, on the evaluation subset: shown, never used to select
    lr_at_epoch_end: float  # one-cycle learning rate reached at the end of the selected epoch
    cached: bool


@dataclass
class MatchedControl:
    target: float  # AT models' mean accuracy on the selection set
    at_select_acc: list[float]
    selection: str
    runs: list[Matched]


def matched_control(ctx: cx.Context, at_runs: Sequence[ex.ModelRun], select_on: str, holdout: int,
                    data_root: str | None = None, progress: bool = False) -> MatchedControl:
    """Per seed, the epoch of the standard run whose selection accuracy is closest to the AT mean."""
    if not at_runs:
        raise ValueError("matched_control needs at least one AT run")
    sel_x, sel_y, desc = selection_set(ctx, select_on, holdout, data_root)
    at_acc = [stats.accuracy(train.predict(r.model, sel_x), sel_y.cpu()) for r in at_runs]
    target = sum(at_acc) / len(at_acc)
    tcfg = ctx.profile.train_config(ModelSpec("standard"))
    out = []
    for seed in ctx.profile.seeds:
        snap, hit = std_snapshots(ctx, seed, select_on, holdout, data_root, progress)
        acc = list(snap["select_acc"])
        e = min(range(len(acc)), key=lambda i: (abs(acc[i] - target), i))
        ev = [stats.accuracy(z, ctx.eval_y.cpu()) for z in snap["eval_logits"]]
        out.append(Matched(seed, e + 1, snap["eval_logits"][e], acc, ev, _lr_after_epoch(tcfg, len(ctx.data.train_y), e + 1),
                           hit))
    return MatchedControl(target, at_acc, desc, out)


def _lr_after_epoch(cfg: train.TrainConfig, n_train: int, epoch: int) -> float:
    steps = -(-n_train // cfg.batch_size)
    return cfg.lr * train.one_cycle(epoch * steps, cfg.epochs * steps, cfg.warmup_frac)
