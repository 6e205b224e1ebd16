"""The accuracy-matched control of chapter 03: standard models trained to convergence on fewer images.

AT models are less accurate than standard ones, so "AT reorders the standard model's confidences" could
just be what any less accurate model does. The control is chapter 02's standard recipe made weaker by one
knob only, the training-subset size n: the first n images of the fixed permutation (the same for every
seed, a prefix of the profile's own training subset), the same width and the same number of SGD steps
(so more epochs on fewer images), hence trained to convergence like the standard model.

n is **calibrated once, on clean accuracy only**: n comes from a log grid (neighbours √2 apart, from the
profile's training-set size down to ``grid_min``), and the chosen n is the one whose mean clean accuracy
over the first ``calib_seeds`` seeds on a **selection set** is closest to the main AT models' mean on the same
set. The selection set is training images that no model trains on (the slice of the fixed permutation after
the profile's training subset), or, where a profile has no spare images, the training images themselves
(the chapter says so). Accuracy grows with n, so the grid is searched by bisection (about log2 of its
length models per calibration seed); every evaluated point is recorded.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from atlib.core import stats
from atlib.studies import context as cx
from atlib.studies.context import selection_set  # noqa: F401 - chapter 03's name for it
from atlib.studies.confidence.settings import ConfidenceSettings
from atlib.studies.profiles import Profile
from atlib.studies.shrinkage import runs as ex
from atlib.training import schedule

Tensor = torch.Tensor
STANDARD = ex.STANDARD


def n_grid(n_train: int, n_min: int) -> tuple[int, ...]:
    """The log grid of training-subset sizes, ascending: n_train, then each next n = ⌈previous / √2⌉ (so no two
    neighbours are more than √2 apart) while it stays at or above ``n_min``."""
    if n_min < 1 or n_min > n_train:
        raise ValueError(f"grid_min={n_min} must be between 1 and the training-set size {n_train}")
    grid = [n_train]
    while (nxt := math.ceil(grid[-1] / math.sqrt(2))) >= n_min and nxt < grid[-1]:
        grid.append(nxt)
    return tuple(reversed(grid))


def matched_profile(p: Profile, n_train: int, n: int) -> Profile:
    """``p``'s standard recipe on the first ``n`` of its ``n_train`` training images, with as many SGD steps."""
    steps = p.epochs * math.ceil(n_train / p.batch_size)
    epochs = max(1, round(steps / math.ceil(n / p.batch_size)))
    return replace(p, train_subset=None if n >= n_train and p.train_subset is None else n, epochs=epochs)


def matched_context(ctx: cx.Context, n: int) -> cx.Context:
    """``ctx`` with the matched profile for ``n`` and the first ``n`` training images (a prefix of the fixed
    permutation, hence of the profile's own training subset)."""
    n_train = len(ctx.data.train_y)
    pn = matched_profile(ctx.profile, n_train, n)
    full = cx._load_data(ctx.profile.dataset, ctx.data_root, str(ctx.device))
    return replace(ctx, profile=pn, data=full.subset(pn.train_subset))


def matched_model(ctx: cx.Context, n: int, seed: int) -> torch.nn.Module:
    """The standard model of ``seed`` trained on the first ``n`` images (cached like chapter 02's models; below
    the full training set without per-epoch monitor and checkpoints: their epochs are many and tiny)."""
    light = n < len(ctx.data.train_y)  # at the grid's top it is chapter 02's standard model, monitored as there
    return ex.trained_model(matched_context(ctx, n), STANDARD, seed, progress=False, light=light)[0]


def _select_acc(ctx: cx.Context, models: Sequence[torch.nn.Module], sel: tuple[Tensor, Tensor, str]) -> list[float]:
    return [stats.accuracy(ex.predict(ctx, m, sel[0], sel[2]), sel[1].cpu()) for m in models]


@dataclass
class Calibration:
    """The one-off choice of n: target accuracy, grid, every evaluated point, the chosen n."""

    target: float  # main AT models' mean clean accuracy on the selection set
    at_select_acc: list[float]  # per AT seed
    selection: str
    grid: tuple[int, ...]
    calib_seeds: tuple[int, ...]
    evaluated: dict[int, list[float]]  # n -> selection accuracy per calibration seed
    n: int
    epochs: int  # the matched models' epochs (same SGD steps as the standard model)
    monotone: bool  # the evaluated points rise with n (what bisection assumes)

    def mean_acc(self, n: int) -> float:
        return sum(self.evaluated[n]) / len(self.evaluated[n])


def calibrate(ctx: cx.Context, at_models: Sequence[torch.nn.Module], st: ConfidenceSettings,
              data_root: str | None = None, progress: bool = False) -> Calibration:
    """Bisect the grid for the n whose mean selection accuracy (first ``calib_seeds`` seeds) is closest to AT's."""
    sel_x, sel_y, desc = selection_set(ctx, st.select_on, st.holdout, data_root)
    at_acc = _select_acc(ctx, at_models, (sel_x, sel_y, desc))
    target = sum(at_acc) / len(at_acc)
    n_train = len(ctx.data.train_y)
    grid = n_grid(n_train, min(st.grid_min, n_train))
    seeds = ctx.profile.seeds[:st.calib_seeds]
    evaluated: dict[int, list[float]] = {}

    def acc(i: int) -> float:
        n = grid[i]
        if n not in evaluated:
            cx.fill(ctx, [(matched_model, (n, s)) for s in seeds], f"matched control, n = {n}", progress,
                    order=lambda job: (schedule.STEP, 0.0))  # a step of a chain: ahead of the bulk
            evaluated[n] = _select_acc(ctx, [matched_model(ctx, n, s) for s in seeds], (sel_x, sel_y, desc))
        return sum(evaluated[n]) / len(evaluated[n])

    lo, hi = 0, len(grid) - 1
    if acc(lo) < target < acc(hi):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if acc(mid) > target else (mid, hi)
    n = min(evaluated, key=lambda m: (abs(sum(evaluated[m]) / len(evaluated[m]) - target), m))
    pts = [sum(evaluated[m]) / len(evaluated[m]) for m in sorted(evaluated)]
    return Calibration(target, at_acc, desc, grid, tuple(seeds), dict(sorted(evaluated.items())), n,
                       matched_profile(ctx.profile, n_train, n).epochs, all(a <= b for a, b in zip(pts, pts[1:])))


@dataclass
class MatchedControl:
    """The calibrated n and, per seed, the matched model's clean logits on the test set."""

    calibration: Calibration
    logits: dict[int, Tensor]  # seed -> (N_test, K)
    test_acc: dict[int, float]  # seed -> clean accuracy on the whole test set
    at_test_acc: dict[int, float]  # seed -> the main AT model's, same set

    @property
    def gap(self) -> float:
        """Mean clean accuracy of the matched models minus that of the AT models (whole test set)."""
        return (sum(self.test_acc.values()) / len(self.test_acc)
                - sum(self.at_test_acc.values()) / len(self.at_test_acc))

    def record(self) -> dict[str, Any]:
        c = self.calibration
        return {"n": c.n, "epochs": c.epochs, "grid": list(c.grid), "calib_seeds": list(c.calib_seeds),
                "selection": c.selection, "target_select_acc": c.target, "at_select_acc": c.at_select_acc,
                "select_acc": {str(n): v for n, v in c.evaluated.items()}, "monotone": c.monotone,
                "test_acc": {str(s): a for s, a in self.test_acc.items()},
                "at_test_acc": {str(s): a for s, a in self.at_test_acc.items()},
                "gap": self.gap}


def matched_control(ctx: cx.Context, at_models: dict[int, torch.nn.Module], st: ConfidenceSettings,
                    data_root: str | None = None, progress: bool = False) -> MatchedControl:
    """Calibrate n, then train (or load) the matched model of every seed and score it on the whole test set."""
    cal = calibrate(ctx, [at_models[s] for s in sorted(at_models)], st, data_root, progress)
    seeds = ctx.profile.seeds
    cx.fill(ctx, [(matched_model, (cal.n, s)) for s in seeds], f"matched control, n = {cal.n}", progress,
            order=lambda job: (schedule.BULK, -ex.cost(ctx, STANDARD)))
    x, y = ctx.data.test_x, ctx.data.test_y.cpu()
    logits = {s: ex.predict(ctx, matched_model(ctx, cal.n, s), x, "test") for s in seeds}
    at_acc = {s: stats.accuracy(ex.predict(ctx, m, x, "test"), y) for s, m in at_models.items()}
    return MatchedControl(cal, logits, {s: stats.accuracy(z, y) for s, z in logits.items()}, at_acc)
