"""Pure logit statistics: the quantities the paper talks about, and intervals over seeds.

Everything here takes a ``(N, K)`` tensor of logits (and labels where needed) and has no state.
Names follow the paper: the *max logit*, the *logit gap* (top-1 minus top-2) and the *margin*
(true-class logit minus the largest other one; equal to the gap on correctly classified samples).
Softmax ignores a common shift of a sample's logits, so the raw max logit is not pinned down by the
loss; the *centred* max logit (max minus the mean logit) is. Rank correlations of per-sample scores
(Spearman, Kendall; ties get average ranks) close the module.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats as _sps

Tensor = torch.Tensor


def max_logit(z: Tensor) -> Tensor:
    """Largest logit per sample."""
    return z.max(dim=1).values


def logit_gap(z: Tensor) -> Tensor:
    """Top-1 minus top-2 logit per sample (always >= 0)."""
    top2 = z.topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def centred_max_logit(z: Tensor) -> Tensor:
    """Max logit minus the sample's mean logit: the shift-invariant version of the max logit."""
    return z.max(dim=1).values - z.mean(dim=1)


# The per-sample logit statistics the book compares, and their names in every table and figure
# (``logit_summary`` reports each as ``mean_<key>``).
LOGIT_STATISTICS: dict[str, Callable[[Tensor], Tensor]] = {
    "max_logit": max_logit, "centred_max_logit": centred_max_logit, "logit_gap": logit_gap}
STAT_LABELS = {"max_logit": "max logit", "centred_max_logit": "centred max logit", "logit_gap": "logit gap",
               "margin_correct": "margin (correct only)"}


def stat_label(key: str) -> str:
    """The display name of a logit statistic, by key (``logit_gap``) or summary key (``mean_logit_gap``)."""
    return STAT_LABELS[key.removeprefix("mean_")]


def margin(z: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j: positive iff the sample is classified correctly."""
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return true - other


def top_log_odds(z: Tensor) -> Tensor:
    """log p_max - log(1 - p_max), computed without forming p (float32 softmax saturates at 1.0)."""
    top = z.max(dim=1, keepdim=True)
    rest = z.scatter(1, top.indices, float("-inf"))
    return top.values.squeeze(1) - torch.logsumexp(rest, dim=1)


def max_prob(z: Tensor) -> Tensor:
    """Largest softmax probability per sample."""
    return torch.softmax(z.double(), dim=1).max(dim=1).values.to(z.dtype)


def accuracy(z: Tensor, y: Tensor) -> float:
    """Fraction of samples whose argmax logit is the label."""
    return float((z.argmax(dim=1) == y).float().mean())


def logit_summary(z: Tensor, y: Tensor | None = None) -> dict[str, float]:
    """Means of the statistics above over a set of samples (plus accuracy when labels are given)."""
    out = {
        "mean_max_logit": float(max_logit(z).mean()),
        "mean_centred_max_logit": float(centred_max_logit(z).mean()),
        "mean_logit_gap": float(logit_gap(z).mean()),
    }
    if y is not None:
        out["accuracy"] = accuracy(z, y)
        correct = z.argmax(dim=1) == y
        out["mean_margin_correct"] = float(margin(z[correct], y[correct]).mean()) if correct.any() else float("nan")
    return out


@dataclass(frozen=True)
class Interval:
    """Mean with a two-sided confidence interval over ``n`` replicates (seeds)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __str__(self) -> str:
        return f"{self.mean:.3g} ± {self.half_width:.2g} ({self.n} seeds)"

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {"mean": self.mean, "ci": [self.low, self.high], "half_width": self.half_width, "n": self.n}


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval for the mean of a few replicates (t = 4.30 at 2 d.o.f., not 1.96).

    With one value the half-width is NaN: one seed gives no interval.
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    if x.size == 1:
        return Interval(float(x[0]), math.nan, 1)
    t = float(_sps.t.ppf(0.5 + level / 2, df=x.size - 1))
    return Interval(float(x.mean()), t * float(x.std(ddof=1)) / math.sqrt(x.size), int(x.size))


# ---------------------------------------------------------------------------------- rank correlations
def _check_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a.cpu() if isinstance(a, Tensor) else a, dtype=float).ravel()
    y = np.asarray(b.cpu() if isinstance(b, Tensor) else b, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"rank correlation needs equal lengths, got {x.size} and {y.size}")
    if x.size < 3:
        raise ValueError(f"rank correlation needs at least 3 samples, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("rank correlation got non-finite scores (use log-odds, not log of a saturated p)")
    return x, y


def spearman(a: Any, b: Any) -> float:
    """Spearman's ρ (ties get average ranks); NaN if one input is constant."""
    x, y = _check_pair(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_sps.spearmanr(x, y).statistic)


def kendall(a: Any, b: Any) -> float:
    """Kendall's τ-b (corrected for ties); NaN if one input is constant."""
    x, y = _check_pair(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(_sps.kendalltau(x, y).statistic)
