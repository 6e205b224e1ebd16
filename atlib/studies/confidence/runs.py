"""Chapter 03: do standard and AT models differ in *which* samples they are confident on?

Per-sample confidence is the top-class log-odds ``log p_max − log(1 − p_max)`` computed from the logits
(``stats.top_log_odds``): it ranks samples exactly like ``p_max`` but does not saturate, whereas float32
softmax returns exactly 1.0 for many samples of a standard model, and those ties wreck rank statistics.

Agreement between two models is a rank correlation (Spearman, Kendall's τ-b) over the evaluation
subset. The unit of replication is the *seed pair*: each comparison (std vs AT, and the nulls std vs std
and AT vs AT) is a list of per-pair values, summarised by their mean and a Student-t interval over pairs.
Cross comparisons use pairs of *different* seeds only, like the nulls, so that shared initialisation and
batch order cannot make them look more alike than the nulls.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from atlib.studies.shrinkage import runs as ex

from atlib.core import stats
from atlib.core.runtime import progress_default
from atlib.core.stats import kendall, spearman
from atlib.studies import context as cx
from atlib.studies.confidence.matched import MatchedControl, matched_control
from atlib.studies.confidence.settings import ConfidenceSettings
from atlib.studies.profiles import ModelSpec

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------- per-sample scores
SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "log_odds": stats.top_log_odds, "gap": stats.logit_gap, "max_prob": stats.max_prob,
    "max_logit": stats.max_logit}


def confidence_score(z: Tensor, kind: str = "log_odds") -> Tensor:
    """Per-sample confidence of (N, K) logits: ``log_odds`` (default), ``gap``, ``max_prob`` or ``max_logit``."""
    if kind not in SCORES:
        raise ValueError(f"unknown confidence score {kind!r}; choose from {', '.join(SCORES)}")
    return SCORES[kind](z)


def saturated_fraction(z: Tensor) -> float:
    """Fraction of samples whose float32 softmax top probability is exactly 1.0."""
    return float((torch.softmax(z.float(), dim=1).max(dim=1).values == 1.0).float().mean())


# ---------------------------------------------------------------------------------- rank correlations
CORRELATIONS: dict[str, Callable[[Any, Any], float]] = {"spearman": spearman, "kendall": kendall}


def seed_pairs(a: Sequence[int], b: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """Within one family (``b`` None): every unordered pair of distinct seeds. Across two families:
    every ordered (seed of a, seed of b) with different seeds, the same condition as within."""
    if b is None:
        return list(itertools.combinations(sorted(a), 2))
    return [(i, j) for i in sorted(a) for j in sorted(b) if i != j]


def pair_values(fn: Callable[[Any, Any], float], a: Mapping[int, Any], b: Mapping[int, Any] | None = None
                ) -> list[tuple[int, int, float]]:
    """``fn`` applied to every seed pair (see ``seed_pairs``): [(seed in a, seed in b, value)]."""
    other = a if b is None else b
    return [(i, j, float(fn(a[i], other[j]))) for i, j in seed_pairs(list(a), None if b is None else list(b))]


def summarise(values: Sequence[tuple[int, int, float]], names: tuple[str, str]) -> dict[str, Any]:
    """``{value, ci, pairs}``: mean over seed pairs, its 95% t-interval, and the per-pair values."""
    if not values:
        raise ValueError("no seed pairs to summarise (a null needs at least two seeds)")
    iv = stats.mean_ci([v for _, _, v in values])
    return {"value": iv.mean, "ci": [iv.low, iv.high], "n": iv.n,
            "pairs": [{"a": f"{names[0]}_s{i}", "b": f"{names[1]}_s{j}", "value": v} for i, j, v in values]}


def interval_of(summary: Mapping[str, Any]) -> stats.Interval:
    lo, hi = summary["ci"]
    return stats.Interval(summary["value"], (hi - lo) / 2, summary["n"])


def effect_size(x: Sequence[float], y: Sequence[float]) -> float:
    """Cohen's d: (mean x − mean y) / pooled SD (NaN with fewer than 3 values in all; ±inf at zero spread)."""
    x, y = np.asarray(list(x), float), np.asarray(list(y), float)
    if x.size == 0 or y.size == 0:
        raise ValueError("effect_size needs at least one value in each group")
    dof = x.size + y.size - 2
    if dof < 1:
        return math.nan
    ss = ((x - x.mean()) ** 2).sum() + ((y - y.mean()) ** 2).sum()
    diff = float(x.mean() - y.mean())
    if ss == 0:
        return math.copysign(math.inf, diff) if diff else math.nan
    return diff / math.sqrt(ss / dof)


# -------------------------------------------------------------------------------------- top-k overlap
def topk_set(score: Tensor, k: int, largest: bool = True) -> set[int]:
    """Indices of the ``k`` highest (or lowest) scores; ties broken by index (stable sort)."""
    n = len(score)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    order = torch.sort(score if largest else -score, descending=True, stable=True).indices
    return set(order[:k].tolist())


def jaccard(a: set[int], b: set[int]) -> float:
    """|a ∩ b| / |a ∪ b| (1 for two empty sets)."""
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def topk_jaccard_fn(k: int, largest: bool) -> Callable[[Tensor, Tensor], float]:
    return lambda s, t: jaccard(topk_set(s, k, largest), topk_set(t, k, largest))


# --------------------------------------------------------------------------------------- group measures
def normalised_rank(score: Tensor) -> Tensor:
    """Rank of each sample in [0, 1] (0 = least confident), average ranks for ties."""
    r = sps.rankdata(np.asarray(score.cpu(), dtype=float))
    return torch.as_tensor((r - 1) / max(1, len(r) - 1), dtype=torch.float64)


def nearest_other_class_distance(x: Tensor, y: Tensor, train_x: Tensor, train_y: Tensor,
                                 chunk: int = 256) -> Tensor:
    """Pixel-space L2 distance from each image to its nearest training image of a *different* class."""
    if len(x) != len(y):
        raise ValueError("images and labels differ in length")
    tx, ty = train_x.flatten(1).float(), train_y
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk].flatten(1).float().to(tx.device), tx)
        d[y[i:i + chunk].to(ty.device)[:, None] == ty[None, :]] = math.inf
        out.append(d.min(dim=1).values.cpu())
    return torch.cat(out) if out else torch.zeros(0)


def rms_contrast(x: Tensor) -> Tensor:
    """Standard deviation of each image's pixel values (RMS contrast)."""
    return x.flatten(1).float().std(dim=1).cpu()


MEASURES = {
    "distance to nearest other-class training image (L2, pixels)": "nn_other",
    "RMS contrast": "contrast",
    "mean pixel intensity": "intensity",
    "standard model's margin (true-class logit minus the largest other)": "std_margin",
    "standard model correct (%)": "std_correct",
    "AT model correct (%)": "at_correct",
}


# ------------------------------------------------------------------------------------------- analysis

COMPARISONS = {  # summary key -> (family a, family b or None for a within-family null)
    "std_vs_at": ("std", "at"), "std_vs_std": ("std", None), "at_vs_at": ("at", None),
    "std_matched_vs_at": ("matched", "at"), "std_matched_vs_std_matched": ("matched", None),
}
SUMMARY_COMPARISONS = ("std_vs_at", "std_vs_std", "at_vs_at", "std_matched_vs_at")
FAMILY_NAMES = {"std": "standard", "at": "at", "matched": "standard_early"}


@dataclass
class Analysis:
    """Everything chapter 03 shows, computed once from cached models."""

    ctx: cx.Context
    settings: ConfidenceSettings
    std_spec: ModelSpec
    at_spec: ModelSpec
    logits: dict[str, dict[int, Tensor]]  # family -> seed -> (N, K) clean logits
    labels: Tensor
    images: Tensor  # (N, C, H, W) on the CPU, same order as the logits
    test_index: Tensor  # position of each sample in the test set
    matched: MatchedControl
    correlations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # metric -> comparison
    jaccard: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    models_cached: bool = True

    @property
    def seeds(self) -> list[int]:
        return sorted(self.logits["std"])

    def scores(self, family: str, kind: str = "log_odds") -> dict[int, Tensor]:
        return {s: confidence_score(z, kind) for s, z in self.logits[family].items()}

    def rank_difference(self, a: tuple[str, int], b: tuple[str, int]) -> Tensor:
        """Normalised rank of model b minus that of model a: positive where b is relatively more confident."""
        return normalised_rank(self.scores(b[0])[b[1]]) - normalised_rank(self.scores(a[0])[a[1]])


def comparisons(logits: Mapping[str, Mapping[int, Tensor]], fn: Callable[[Any, Any], float],
                kind: str = "log_odds", keys: Sequence[str] = tuple(COMPARISONS)) -> dict[str, dict[str, Any]]:
    """Every comparison of ``COMPARISONS`` (restricted to ``keys``) for a pair statistic ``fn``."""
    sc = {f: {s: confidence_score(z, kind) for s, z in by_seed.items()} for f, by_seed in logits.items()}
    out = {}
    for key in keys:
        fa, fb = COMPARISONS[key]
        vals = pair_values(fn, sc[fa], None if fb is None else sc[fb])
        out[key] = summarise(vals, (FAMILY_NAMES[fa], FAMILY_NAMES[fb or fa]))
    return out


def analyse(ctx: cx.Context, data_root: str | None = None, progress: bool | None = None,
            settings: ConfidenceSettings | None = None) -> Analysis:
    """Load chapter 02's standard and main-AT models (never trains them), build the matched control,
    and compute every rank statistic of the chapter."""
    progress = progress_default() if progress is None else progress
    st = settings or ctx.profile.confidence
    std_spec, at_spec = ModelSpec("standard"), ctx.profile.main_at
    runs = ex.training_runs(ctx, (std_spec, at_spec), progress=progress)
    std = {r.seed: r for r in runs if r.spec == std_spec}
    at = {r.seed: r for r in runs if r.spec == at_spec}
    matched = matched_control(ctx, [at[s] for s in sorted(at)], st.select_on, st.holdout, data_root, progress)
    logits = {"std": {s: r.logits["clean"] for s, r in std.items()},
              "at": {s: r.logits["clean"] for s, r in at.items()},
              "matched": {m.seed: m.logits for m in matched.runs}}
    an = Analysis(ctx, st, std_spec, at_spec, logits, ctx.eval_y.cpu(), ctx.eval_x.cpu(), ctx.eval_index.cpu(),
                  matched, models_cached=all(r.cached for r in runs))
    an.correlations = {name: comparisons(logits, fn) for name, fn in CORRELATIONS.items()}
    n = len(an.labels)
    for k in st.topk:
        if k > n:
            continue
        an.jaccard[str(k)] = {side: comparisons(logits, topk_jaccard_fn(k, side == "top"))
                              for side in ("top", "bottom")}
    return an


def groups(an: Analysis, seed: int, size: int | None = None) -> dict[str, Tensor]:
    """Sample positions of the AT ≫ std, std ≫ AT (same-seed pair by rank difference) and random groups."""
    size = size or an.settings.group_size
    size = min(size, len(an.labels) // 3)
    d = an.rank_difference(("std", seed), ("at", seed))
    order = torch.sort(d, descending=True, stable=True).indices
    g = torch.Generator().manual_seed(10_000 + seed)
    return {"AT ≫ std": order[:size], "std ≫ AT": order.flip(0)[:size],
            "random": torch.randperm(len(d), generator=g)[:size]}


def group_measures(an: Analysis) -> dict[str, dict[str, stats.Interval]]:
    """Per group and measure: the group mean per seed, then mean ± t-interval over seeds."""
    x, y, d = an.images, an.labels, an.ctx.data
    nn_other = nearest_other_class_distance(x, y, d.train_x, d.train_y)
    contrast = rms_contrast(x)
    intensity = x.flatten(1).double().mean(dim=1)
    per: dict[str, dict[str, list[float]]] = {}
    for s in an.seeds:
        zs, za = an.logits["std"][s], an.logits["at"][s]
        vals = {"nn_other": nn_other, "contrast": contrast, "intensity": intensity, "std_margin": stats.margin(zs, y),
                "std_correct": 100 * (zs.argmax(1) == y).double(), "at_correct": 100 * (za.argmax(1) == y).double()}
        for gname, idx in groups(an, s).items():
            for title, key in MEASURES.items():
                per.setdefault(gname, {}).setdefault(title, []).append(float(vals[key][idx].double().mean()))
    return {g: {m: stats.mean_ci(v) for m, v in ms.items()} for g, ms in per.items()}


def per_class(an: Analysis) -> dict[str, dict[str, Any]]:
    """Per class: within-class Spearman (std vs AT and the nulls, mean over pairs) and group membership."""
    out = {}
    y = an.labels
    gs = {s: groups(an, s) for s in an.seeds}
    for c, name in enumerate(an.ctx.data.classes):
        mask = y == c
        if int(mask.sum()) < 3:
            continue
        sub = {f: {s: z[mask] for s, z in by.items()} for f, by in an.logits.items()}
        cmp = comparisons(sub, spearman, keys=("std_vs_at", "std_vs_std", "at_vs_at"))
        row = {f"Spearman {k.replace('_', ' ')}": interval_of(v) for k, v in cmp.items()}
        for g in ("AT ≫ std", "std ≫ AT"):
            row[f"in {g} (mean count/seed)"] = float(np.mean([int(mask[gs[s][g]].sum()) for s in an.seeds]))
        row["n"] = int(mask.sum())
        out[name] = row
    return out


def shown_samples(an: Analysis) -> dict[str, Any]:
    """The samples the chapter's grids show: positions in the evaluation subset and test-set indices."""
    s0 = an.seeds[0]
    k = an.settings.n_show
    out: dict[str, Any] = {}
    pairs = {"std_vs_at": (("std", s0), ("at", s0))}
    if len(an.seeds) > 1:
        pairs["std_vs_std_null"] = (("std", s0), ("std", an.seeds[1]))
    for name, (a, b) in pairs.items():
        d = an.rank_difference(a, b)
        order = torch.sort(d, descending=True, stable=True).indices
        up, down = order[:k], order.flip(0)[:k]
        out[name] = {"a": f"{FAMILY_NAMES[a[0]]}_s{a[1]}", "b": f"{FAMILY_NAMES[b[0]]}_s{b[1]}",
                     "b_over_a": up.tolist(), "a_over_b": down.tolist(),
                     "b_over_a_test_index": an.test_index[up].tolist(),
                     "a_over_b_test_index": an.test_index[down].tolist()}
    return out


def _clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
