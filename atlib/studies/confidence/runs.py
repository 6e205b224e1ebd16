"""Chapter 03: do standard and AT models differ in *which* samples they are confident on?

Per-sample confidence is the top-class log-odds ``log p_max − log(1 − p_max)`` computed from the logits
(``stats.top_log_odds``): it ranks samples exactly like ``p_max`` but does not saturate, whereas float32
softmax returns exactly 1.0 for many samples of a standard model, and those ties wreck rank statistics.

Agreement between two models is a rank correlation (Spearman, Kendall's τ-b) over the **whole test set**
(clean forward passes only). The unit of replication is a pair of models, and every interval is a Student-t
interval over units in which **each model appears at most once**: with the k seeds in order, a cross
comparison of families A and B at offset o uses the k units (A_i, B_{i+o mod k}) (std vs AT: o = 1; std vs
matched: o = 2), a within-family null the disjoint pairs (0, 1), (2, 3), ...; the difference Δ of two cross
comparisons that share A is formed unit by unit.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from atlib.core import stats
from atlib.core.runtime import progress_default
from atlib.core.stats import kendall, spearman
from atlib.studies import context as cx, validity
from atlib.studies.confidence.early import Snapshot, early_snapshots
from atlib.studies.confidence.matched import MatchedControl, matched_control
from atlib.studies.confidence.settings import ConfidenceSettings
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.shrinkage import runs as ex
from atlib.studies.shrinkage.rules import RULE as GATES_RULE  # the validity gates' thresholds, written once there

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
CROSS = {  # summary key -> (family a, family b, offset): unit i is (a of seed i, b of seed i + offset, mod k)
    "std_vs_at": ("std", "at", 1), "std_vs_matched": ("std", "matched", 2), "matched_vs_at": ("matched", "at", 1),
    "early_vs_at": ("early", "at", 1)}
NULLS = {"std_vs_std": "std", "at_vs_at": "at", "matched_vs_matched": "matched", "early_vs_early": "early"}
DELTA = ("std_at_minus_std_matched", "std_vs_at", "std_vs_matched")  # Δ = ρ(std, AT) − ρ(std, matched), per unit
FAMILY_NAMES = {"std": "standard", "at": "at", "matched": "matched", "early": "standard_early"}


def cross_units(seeds: Sequence[int], offset: int) -> list[tuple[int, int]]:
    """(seed of a, seed of b) per unit: position i against position i + ``offset`` (mod k), k units."""
    k = len(seeds)
    return [(seeds[i], seeds[(i + offset) % k]) for i in range(k)]


def null_units(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """Disjoint pairs of one family: positions (0, 1), (2, 3), ...; each model in at most one unit."""
    return [(seeds[2 * j], seeds[2 * j + 1]) for j in range(len(seeds) // 2)]


def unit_values(fn: Callable[[Any, Any], float], a: Mapping[int, Any], b: Mapping[int, Any] | None = None,
                offset: int = 1) -> list[tuple[int, int, float]]:
    """``fn`` on every unit: the disjoint null pairs of ``a`` (``b`` None), else the cross units at ``offset``."""
    seeds = sorted(a)
    if b is not None and sorted(b) != seeds:
        raise ValueError(f"cross units need the same seeds in both families, got {seeds} and {sorted(b)}")
    units = null_units(seeds) if b is None else cross_units(seeds, offset)
    other = a if b is None else b
    return [(i, j, float(fn(a[i], other[j]))) for i, j in units]


def summarise(values: Sequence[tuple[int, int, float]], names: tuple[str, str]) -> dict[str, Any]:
    """``{value, ci, n, units}``: mean over units, its 95% t-interval (NaN with one unit), the per-unit values."""
    if not values:
        raise ValueError("no units to summarise (a null needs at least two seeds)")
    iv = stats.mean_ci([v for _, _, v in values])
    return {"value": iv.mean, "ci": [iv.low, iv.high], "n": iv.n,
            "units": [{"a": f"{names[0]}_s{i}", "b": f"{names[1]}_s{j}", "value": v} for i, j, v in values]}


def delta(cmp: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Δ = ρ(std_i, AT_{i+1}) − ρ(std_i, M_{i+2}) per unit i, summarised like a comparison."""
    _, first, second = DELTA
    u1, u2 = cmp[first]["units"], cmp[second]["units"]
    vals = [x["value"] - y["value"] for x, y in zip(u1, u2, strict=True)]
    iv = stats.mean_ci(vals)
    return {"value": iv.mean, "ci": [iv.low, iv.high], "n": iv.n,
            "units": [{"std": x["a"], "at": x["b"], "matched": y["b"], "value": v} for x, y, v in zip(u1, u2, vals)]}


def interval_of(summary: Mapping[str, Any]) -> stats.Interval:
    lo, hi = summary["ci"]
    half = (hi - lo) / 2 if lo is not None and hi is not None else math.nan
    return stats.Interval(summary["value"], half, summary["n"])


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

KEYS = (*CROSS, *NULLS)
PRIMARY = ("std_vs_at", "std_vs_std", "at_vs_at", "std_vs_matched", "matched_vs_matched", "matched_vs_at")


@dataclass
class Analysis:
    """Everything chapter 03 shows, computed once from cached models."""

    ctx: cx.Context
    settings: ConfidenceSettings
    std_spec: ModelSpec
    at_spec: ModelSpec
    logits: dict[str, dict[int, Tensor]]  # family -> seed -> (N, K) clean logits on the whole test set
    labels: Tensor
    images: Tensor  # (N, C, H, W) on the CPU, same order as the logits
    test_index: Tensor  # position of each sample in the test set
    matched: MatchedControl
    early: dict[int, Snapshot]  # the early-stopped snapshots (a diagnostic)
    correlations: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # metric -> comparison
    jaccard: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    models_cached: bool = True
    gates: list[validity.Gate] = field(default_factory=list)  # every model's validity gates (chapter 02's thresholds)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.logits["std"])

    def scores(self, family: str, kind: str = "log_odds") -> dict[int, Tensor]:
        return {s: confidence_score(z, kind) for s, z in self.logits[family].items()}

    def rank_difference(self, a: tuple[str, int], b: tuple[str, int]) -> Tensor:
        """Normalised rank of model b minus that of model a: positive where b is relatively more confident."""
        return normalised_rank(self.scores(b[0])[b[1]]) - normalised_rank(self.scores(a[0])[a[1]])


def comparisons(logits: Mapping[str, Mapping[int, Tensor]], fn: Callable[[Any, Any], float],
                kind: str = "log_odds", keys: Sequence[str] = KEYS) -> dict[str, dict[str, Any]]:
    """Every comparison of ``CROSS`` and ``NULLS`` among ``keys`` whose families are present, for a pair
    statistic ``fn``; with both of its comparisons, Δ too (``DELTA``)."""
    sc = {f: {s: confidence_score(z, kind) for s, z in by_seed.items()} for f, by_seed in logits.items()}
    out = {}
    for key in keys:
        fa, fb, off = CROSS[key] if key in CROSS else (NULLS[key], None, 0)
        if fa not in sc or (fb is not None and fb not in sc):
            continue
        out[key] = summarise(unit_values(fn, sc[fa], None if fb is None else sc[fb], off),
                             (FAMILY_NAMES[fa], FAMILY_NAMES[fb or fa]))
    if DELTA[1] in out and DELTA[2] in out:
        out[DELTA[0]] = delta(out)
    return out


def test_logits(ctx: cx.Context, runs: Sequence[ex.ModelRun]) -> dict[int, Tensor]:
    """Clean logits of each run's model on the whole test set (cached), by seed."""
    return {r.seed: ex.predict(ctx, r.model, ctx.data.test_x, "test") for r in runs}


def precompute(ctx: cx.Context) -> None:
    """Chapter 03's jobs (for a job session): chapter 02's main AT models, waited for, then the matched control's
    bisection and models, and every model's test-set logits. The early-stopped snapshots come with chapter 02's
    standard models."""
    at = ex.training_runs(ctx, (ctx.profile.main_at,), progress=False)
    matched_control(ctx, {r.seed: r.model for r in at}, ctx.profile.confidence, ctx.data_root)
    test_logits(ctx, ex.training_runs(ctx, (ex.STANDARD, ctx.profile.main_at), progress=False))  # cached here once


def analyse(ctx: cx.Context, data_root: str | None = None, progress: bool | None = None,
            settings: ConfidenceSettings | None = None) -> Analysis:
    """Load chapter 02's standard and main-AT models, build (or load) the matched control and the early-stopped
    snapshots, and compute every rank statistic of the chapter on the whole test set."""
    progress = progress_default() if progress is None else progress
    st = settings or ctx.profile.confidence
    std_spec, at_spec = ModelSpec("standard"), ctx.profile.main_at
    runs = ex.training_runs(ctx, (std_spec, at_spec), progress=progress)
    std = [r for r in runs if r.spec == std_spec]
    at = [r for r in runs if r.spec == at_spec]
    matched = matched_control(ctx, {r.seed: r.model for r in at}, st, data_root, progress)
    early = early_snapshots(ctx, matched.calibration.target, progress)
    d = ctx.data
    logits = {"std": test_logits(ctx, std), "at": test_logits(ctx, at), "matched": matched.logits,
              "early": {s: e.logits for s, e in early.items()}}
    an = Analysis(ctx, st, std_spec, at_spec, logits, d.test_y.cpu(), d.test_x.cpu(), torch.arange(len(d.test_y)),
                  matched, early, models_cached=all(r.cached for r in runs))
    an.gates = model_gates(runs, at_spec, logits, an.labels)
    an.correlations = {name: comparisons(logits, fn) for name, fn in CORRELATIONS.items()}
    for k in st.topk:
        if k <= len(an.labels):
            an.jaccard[str(k)] = {side: comparisons(logits, topk_jaccard_fn(k, side == "top"), keys=PRIMARY)
                                  for side in ("top", "bottom")}
    return an


def model_gates(runs: Sequence[ex.ModelRun], at_spec: ModelSpec, logits: Mapping[str, Mapping[int, Tensor]],
                labels: Tensor) -> list[validity.Gate]:
    """Every model's *learned* gate on the whole test set (standard, AT, matched, early snapshots) and the main AT
    models' *robust* gate on chapter 02's evaluation subset, with chapter 02's thresholds (its rule object)."""
    name = {"std": "standard", "at": at_spec.name, "matched": "matched", "early": "early_stopped"}
    out = [validity.learned(f"{name.get(family, family)}_s{s}", z, labels, GATES_RULE.learned_margin)
           for family, by_seed in logits.items() for s, z in sorted(by_seed.items())]
    return out + [g for g in GATES_RULE.model_gates(runs, (), at_spec) if g.name.startswith("robust")]


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
    """Per class: within-class Spearman (std vs AT and the nulls, mean over units) and group membership."""
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
