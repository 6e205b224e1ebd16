"""Figures of the book: logit histograms, training curves, ε sweeps. Plain data in, a Figure out."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from atlib.core import stats

STATS = {stats.STAT_LABELS[k]: fn for k, fn in stats.LOGIT_STATISTICS.items()}  # label -> per-sample statistic
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
BOOK_WIDTH = 7.8  # inches: at the dpi of ``save`` this is about the book's text column, so 8-pt text stays legible


def panel_grid(n: int, ncols: int = 3, panel_height: float = 2.3, width: float = BOOK_WIDTH,
               **kw) -> tuple[plt.Figure, list[plt.Axes]]:
    """``n`` panels in rows of ``ncols`` (unused cells hidden), the figure as wide as the book's text column."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_height * nrows), squeeze=False, **kw)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def shared_legend(fig: plt.Figure, ax: plt.Axes, ncol: int | None = None) -> None:
    """One legend above all panels (``ax``'s entries), then a tight layout that leaves room for it."""
    handles, labels = ax.get_legend_handles_labels()
    ncol = ncol or min(len(labels), 3)
    rows = math.ceil(len(labels) / ncol)
    top = 1 - (0.22 * rows + 0.08) / fig.get_figheight()
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))


def logit_histograms(rows: Mapping[str, Mapping[str, torch.Tensor]], bins: int = 40) -> plt.Figure:
    """One row per input condition (clean, attacked, ...; named on the left), one column per statistic, one
    histogram per model.

    ``rows[condition][model_label]`` is an (N, K) tensor of logits (seeds pooled); dashed lines mark the means.
    """
    fig, flat = panel_grid(len(rows) * len(STATS), len(STATS), 2.3)
    for r, (cond, by_model) in enumerate(rows.items()):
        for c, (sname, fn) in enumerate(STATS.items()):
            ax = flat[r * len(STATS) + c]
            vals = {m: fn(z).numpy() for m, z in by_model.items()}
            lo = min(float(v.min()) for v in vals.values())
            hi = max(float(v.max()) for v in vals.values())
            edges = np.linspace(lo, hi, bins + 1)
            for i, (m, v) in enumerate(vals.items()):
                ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.35, color=COLORS[i % len(COLORS)],
                        label=m)
                ax.axvline(v.mean(), color=COLORS[i % len(COLORS)], lw=1.2, ls="--")
            if r == 0:
                ax.set_title(sname, fontsize=9)
            if c == 0:
                ax.set_ylabel(textwrap.fill(cond, 22), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
    shared_legend(fig, flat[0])
    return fig


def training_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, float]]]],
                    keys: Mapping[str, str]) -> plt.Figure:
    """Per-epoch mean over seeds (line) and min–max over seeds (band) of history entries.

    ``curves[model_label]`` is a list (one per seed) of per-epoch history records; ``keys`` maps a
    history key to the panel title.
    """
    fig, flat = panel_grid(len(keys), 2, 2.4)
    for ax, (key, title) in zip(flat, keys.items()):
        for i, (label, hists) in enumerate(curves.items()):
            arr = np.array([[rec[key] for rec in h] for h in hists])
            ep = np.arange(1, arr.shape[1] + 1)
            col = COLORS[i % len(COLORS)]
            ax.plot(ep, arr.mean(0), color=col, label=label, marker="o", ms=3)
            ax.fill_between(ep, arr.min(0), arr.max(0), color=col, alpha=0.2)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    shared_legend(fig, flat[0])
    return fig


def eps_sweep(eps: Sequence[float], series: Mapping[str, Sequence[stats.Interval]], xlabel: str) -> plt.Figure:
    """One panel per statistic: mean over seeds with its t-interval as error bars, against training ε."""
    fig, flat = panel_grid(len(series), 3, 2.2)
    for c, (ax, (name, ivs)) in enumerate(zip(flat, series.items())):
        means = np.array([iv.mean for iv in ivs])
        hw = np.nan_to_num(np.array([iv.half_width for iv in ivs]))
        ax.errorbar(eps, means, yerr=hw, marker="o", capsize=3, color=COLORS[c % len(COLORS)])
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
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
