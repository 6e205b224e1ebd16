"""Chapter 02's tables: accuracies and logit statistics per model kind, seeds aggregated with t-intervals."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch

from atlib.core import stats
from atlib.studies import validity
from atlib.studies.context import Context
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.prose import fmt
from atlib.studies.shrinkage import convergence, rules
from atlib.studies.shrinkage.runs import ModelRun, model_record, runs_of

def specs_of(runs: Sequence[ModelRun]) -> list[ModelSpec]:
    seen: list[ModelSpec] = []
    for r in runs:
        if r.spec not in seen:
            seen.append(r.spec)
    return seen


def interval(runs: Sequence[ModelRun], fn: Callable[[ModelRun], float]) -> stats.Interval:
    return stats.mean_ci([fn(r) for r in runs])


def accuracy_table(ctx: Context, runs: Sequence[ModelRun]) -> pd.DataFrame:
    """Clean and robust accuracy (%) of every spec, mean ± 95% t-interval over seeds."""
    atk = ctx.profile.eval_attacks()
    cols = {"clean": "clean"} | {k: c.label for k, c in atk.items()}
    table = {}
    for spec in specs_of(runs):
        rs = runs_of(runs, spec)
        table[spec.label] = {title: fmt(interval(rs, lambda r, k=k: 100 * r.acc(k))) for k, title in cols.items()}
    return pd.DataFrame(table).T


def logit_table(runs: Sequence[ModelRun], key: str = "clean") -> pd.DataFrame:
    """Mean max logit, centred max logit, gap and margin (correct samples) per spec, over seeds."""
    names = {f"mean_{k}": label for k, label in stats.STAT_LABELS.items()}
    table = {}
    for spec in specs_of(runs):
        rs = runs_of(runs, spec)
        table[spec.label] = {t: fmt(interval(rs, lambda r, k=k: r.logit_stats(key)[k])) for k, t in names.items()}
    return pd.DataFrame(table).T


def pooled_logits(runs: Sequence[ModelRun], specs: Sequence[ModelSpec], key: str) -> dict[str, torch.Tensor]:
    """Logits of each spec with its seeds stacked, for histograms."""
    return {s.label: torch.cat([r.logits[key] for r in runs_of(runs, s)]) for s in specs}


def eps_sweep(ctx: Context, runs: Sequence[ModelRun]) -> tuple[list[float], dict[str, list[stats.Interval]]]:
    """Per training ε of the L∞ sweep (0 = standard): clean logit statistics and accuracies over the side seeds
    (every ε on the same seeds, so the dose–response compares like with like)."""
    p = ctx.profile
    runs = [r for r in runs if r.seed in p.side_seed_list]
    specs = [ModelSpec("standard") if e == 0 else ModelSpec("at", "linf", e) for e in p.linf_sweep]
    series: dict[str, list[stats.Interval]] = {stats.STAT_LABELS[k]: [] for k in stats.LOGIT_STATISTICS}
    series |= {"clean acc (%)": [], "PGD-CE L∞ acc (%)": []}
    for s in specs:
        rs = runs_of(runs, s)
        for k in stats.LOGIT_STATISTICS:
            series[stats.STAT_LABELS[k]].append(interval(rs, lambda r, k=k: r.logit_stats()[f"mean_{k}"]))
        series["clean acc (%)"].append(interval(rs, lambda r: 100 * r.acc("clean")))
        series["PGD-CE L∞ acc (%)"].append(interval(rs, lambda r: 100 * r.acc("linf_ce")))
    return list(p.linf_sweep), series


def eps_sweep_frame(eps: Sequence[float], series: dict[str, list[stats.Interval]]) -> pd.DataFrame:
    """The ε sweep as a table: one row per training ε, one column per statistic (mean ± interval over seeds)."""
    return pd.DataFrame({k: [fmt(iv) for iv in v] for k, v in series.items()}, index=[f"ε={e:.4g}" for e in eps])


def gates(ctx: Context, runs: Sequence[ModelRun]) -> list[validity.Gate]:
    """Claim 1's validity gates: the standard and main AT models learned, the main AT models robust."""
    p = ctx.profile
    return rules.RULE.model_gates(runs, (p.model_specs()[0], p.main_at), p.main_at)


def gates_text(ctx: Context, runs: Sequence[ModelRun]) -> str:
    """The gates as the chapter shows them, before claim 1 is read."""
    return validity.gates_markdown(gates(ctx, runs), "the standard and main AT models of every seed")


def summary(ctx: Context, runs: Sequence[ModelRun], shrink: dict[str, Any], eps: Sequence[float],
            series: dict[str, list[stats.Interval]], pilot: dict[str, Any] | None) -> dict[str, Any]:
    """Chapter 02's part of ``summary.json``: every model, claim 1's paired differences (clean and attacked), the ε
    sweep and the convergence pilot it quotes."""
    p = ctx.profile
    return {
        "models": [model_record(ctx, r) for r in runs],
        "shrinkage": {"base": "standard", "treated": p.main_at.name, "clean": shrink,
                      "attacked_linf_ce": rules.paired_shrinkage(runs, p.model_specs()[0], p.main_at, "linf_ce"),
                      "claim": rules.RULE.decide(shrink, gates(ctx, runs))},
        "eps_sweep": [{"eps": e} | {k: iv.as_dict() for k, iv in zip(series, ivs)}
                      for e, ivs in zip(eps, zip(*series.values()))],
        "convergence": convergence.convergence_section(pilot, p),
    }
