"""Figures of the book: logit histograms, training curves, ε sweeps. Plain data in, a Figure out."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from . import stats

STATS = {"max logit": stats.max_logit, "centred max logit": stats.centred_max_logit, "logit gap": stats.logit_gap}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def logit_histograms(rows: Mapping[str, Mapping[str, torch.Tensor]], bins: int = 40) -> plt.Figure:
    """One row per input condition (clean, attacked, ...), one column per statistic, one histogram per model.

    ``rows[condition][model_label]`` is an (N, K) tensor of logits (seeds pooled).
    """
    fig, axes = plt.subplots(len(rows), len(STATS), figsize=(4.2 * len(STATS), 3.0 * len(rows)), squeeze=False)
    for r, (cond, by_model) in enumerate(rows.items()):
        for c, (sname, fn) in enumerate(STATS.items()):
            ax = axes[r][c]
            vals = {m: fn(z).numpy() for m, z in by_model.items()}
            lo = min(float(v.min()) for v in vals.values())
            hi = max(float(v.max()) for v in vals.values())
            edges = np.linspace(lo, hi, bins + 1)
            for i, (m, v) in enumerate(vals.items()):
                ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=COLORS[i % len(COLORS)],
                        label=f"{m} (mean {v.mean():.2f})")
                ax.axvline(v.mean(), color=COLORS[i % len(COLORS)], lw=1.2, ls="--")
            ax.set_title(f"{sname} — {cond}", fontsize=9)
            ax.legend(fontsize=7)
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def training_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                    keys: Mapping[str, str]) -> plt.Figure:
    """Per-epoch mean over seeds (line) and min–max over seeds (band) of history entries.

    ``curves[model_label]`` is a list (one per seed) of per-epoch history records; ``keys`` maps a
    history key to the panel title.
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.0), squeeze=False)
    for c, (key, title) in enumerate(keys.items()):
        ax = axes[0][c]
        for i, (label, hists) in enumerate(curves.items()):
            arr = np.array([[rec[key] for rec in h] for h in hists])
            ep = np.arange(1, arr.shape[1] + 1)
            col = COLORS[i % len(COLORS)]
            ax.plot(ep, arr.mean(0), color=col, label=label, marker="o", ms=3)
            ax.fill_between(ep, arr.min(0), arr.max(0), color=col, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def eps_sweep(eps: Sequence[float], series: Mapping[str, Sequence[stats.Interval]], xlabel: str) -> plt.Figure:
    """One panel per statistic: mean over seeds with its t-interval as error bars, against training ε."""
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.0), squeeze=False)
    for c, (name, ivs) in enumerate(series.items()):
        ax = axes[0][c]
        means = np.array([iv.mean for iv in ivs])
        hw = np.nan_to_num(np.array([iv.half_width for iv in ivs]))
        ax.errorbar(eps, means, yerr=hw, marker="o", capsize=3, color=COLORS[c % len(COLORS)])
        ax.set_xlabel(xlabel)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, results_dir: str | Path | None, name: str) -> Path | None:
    """Save ``fig`` as ``<results_dir>/figures/<name>.png`` (for the README and for reuse)."""
    if results_dir is None:
        return None
    out = Path(results_dir) / "figures" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out
