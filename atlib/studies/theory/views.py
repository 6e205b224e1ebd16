"""Tables, figures, verdicts, the ε slider and the summary section of chapter 01 (theory).

Plain results in (from ``atlib.studies.theory.runs`` and ``atlib.studies.theory.controls``), DataFrames / Figures / dicts out.
Every verdict rule is a function here with its threshold as an argument, so the chapter states the
rule in prose and the code applies it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from atlib.core import plots, stats
from atlib.core.plots import BOOK_WIDTH, panel_grid, shared_legend
from atlib.studies.prose import fmt
from atlib.studies.theory import runs as theory

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
CHECK_TOL = 1e-5  # the closed form must match PGD, and the binary bound be exact, to this (float64)
BOUND_STEPS = 50  # PGD-CE steps (random start) of the shifted-logit bound check
CONTROL_REPRODUCES = 0.5  # a control "reproduces" AT if it closes at least this fraction of the robustness gap ...
CONTROL_NONE = 0.25  # ... with its interval above this; it gives "no" robustness if its interval lies below this
LINEAR_STATS = {f"mean_{k}": label for k, label in stats.STAT_LABELS.items()} | {
                "weight_norm": "‖W‖_F", "clean_acc": "clean acc", "exact_robust_acc": "exact robust acc"}
METHODS = {"closed_form": "closed-form worst case (shifted-logit CE)", "pgd": "PGD-AT"}


# ------------------------------------------------------------------------------------------ Gaussian

def gaussian_rows(g: dict[str, Any]) -> list[dict[str, Any]]:
    """Per ε: predicted values and t-intervals over seeds of the trained ones."""
    out = []
    for r in g["rows"]:
        tr = {k: stats.mean_ci([t[k] for t in r["trained"]]) for k in r["trained"][0]}
        out.append({"eps": r["eps"], "predicted": r["predicted"], "trained": tr})
    return out


def gaussian_verdict(g: dict[str, Any], rel_tol: float = 0.1) -> dict[str, Any]:
    """The prediction holds at ε if |mean trained scale − c*(ε)| ≤ rel_tol·c*(ε); the shrinkage trend
    holds if the mean trained scale falls monotonically over the sweep."""
    rows = gaussian_rows(g)
    per = [{"eps": r["eps"], "predicted": r["predicted"]["scale"], "trained": r["trained"]["scale"].mean,
            "rel_err": abs(r["trained"]["scale"].mean - r["predicted"]["scale"]) / max(r["predicted"]["scale"], 1e-12)}
           for r in rows]
    for p in per:
        p["holds"] = bool(p["rel_err"] <= rel_tol)
    return {"per_eps": per, "all_hold": all(p["holds"] for p in per),
            "trend": theory.trend([p["trained"] for p in per]), "rel_tol": rel_tol}


def gaussian_frame(g: dict[str, Any]) -> pd.DataFrame:
    rows = gaussian_rows(g)
    return pd.DataFrame({f"ε={r['eps']:.3g}": {
        "c*(ε) predicted": f"{r['predicted']['scale']:.4g}", "‖w‖ trained": fmt(r["trained"]["scale"], 4),
        "cos(w, μ)": fmt(r["trained"]["cos_to_mu"], 4),
        "mean margin predicted": f"{r['predicted']['mean_margin']:.4g}", "mean margin trained": fmt(r["trained"]["mean_margin"], 4),
        "mean gap predicted": f"{r['predicted']['mean_logit_gap']:.4g}", "mean gap trained": fmt(r["trained"]["mean_logit_gap"], 4),
        "mean max logit predicted": f"{r['predicted']['mean_max_logit']:.4g}",
        "mean max logit trained": fmt(r["trained"]["mean_max_logit"], 4),
    } for r in rows}).T


def gaussian_figure(g: dict[str, Any]) -> plt.Figure:
    rows = gaussian_rows(g)
    eps = [r["eps"] for r in rows]
    fig, axes = panel_grid(3, 3, 2.5)
    for ax, (pk, tk, title) in zip(axes, [("scale", "scale", "scale ‖w‖"), ("mean_margin", "mean_margin", "mean margin"),
                                          ("mean_max_logit", "mean_max_logit", "mean max logit")]):
        ax.plot(eps, [r["predicted"][pk] for r in rows], "k--", label="predicted (1-D minimisation)")
        ax.errorbar(eps, [r["trained"][tk].mean for r in rows],
                    yerr=np.nan_to_num([r["trained"][tk].half_width for r in rows]), fmt="o", color=COLORS[1],
                    capsize=3, label="trained by gradient descent")
        ax.set_xlabel("ε (L2)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
    shared_legend(fig, axes[0])
    return fig


# ------------------------------------------------------------------------------------------ checks

def linear_checks(lin: dict[str, Any], x: torch.Tensor, y: torch.Tensor, n: int = 200, steps: int = 20) -> dict[str, Any]:
    """The closed-form checks, on the stored weights of the closed-form model at the largest ε (seed
    index 0) and the first ``n`` evaluation samples, in float64."""
    eps = lin["eps"][-1]
    rec = lin["closed_form"][-1][0]
    W, b = rec["weight"].double(), rec["bias"].double()
    x, y = x[:n].flatten(1).double().cpu(), y[:n].cpu()
    err = theory.closed_form_vs_pgd(W, b, x, y, eps, "linf", True, steps)
    multi = theory.bound_check(W, b, x, y, eps, BOUND_STEPS)
    # binary: the two most frequent classes among the n samples, with the two rows of W
    cls = torch.bincount(y, minlength=W.shape[0]).topk(2).indices
    keep = (y == cls[0]) | (y == cls[1])
    y2 = (y[keep] == cls[1]).long()
    binary = theory.bound_check(W[cls], b[cls], x[keep], y2, eps, BOUND_STEPS)
    return {"eps": eps, "n": int(n), "classes_binary": [int(c) for c in cls], "tol": CHECK_TOL,
            "bound_steps": BOUND_STEPS,
            "closed_form_vs_pgd_max_abs_err": err,
            "binary_exact_max_abs_err": binary["max_abs_diff"],
            "multiclass_max_violation": multi["max_violation"], "multiclass_mean_slack": multi["mean_gap"],
            "bound_holds": bool(multi["max_violation"] <= 1e-6 and binary["max_violation"] <= 1e-6),
            "closed_form_matches_pgd": bool(err <= CHECK_TOL), "binary_exact": bool(binary["max_abs_diff"] <= CHECK_TOL)}


# ------------------------------------------------------------------------------------------ linear sweep

def linear_frame(lin: dict[str, Any], method: str) -> pd.DataFrame:
    ser = theory.linear_series(lin, method)
    return pd.DataFrame({f"ε={e:.3g}": {LINEAR_STATS[k]: fmt(ser[k][i]) for k in LINEAR_STATS}
                         for i, e in enumerate(lin["eps"])}).T


def linear_figure(lin: dict[str, Any]) -> plt.Figure:
    keys = ["mean_margin_correct", "mean_logit_gap", "mean_max_logit", "mean_centred_max_logit", "weight_norm",
            "exact_robust_acc"]
    fig, axes = panel_grid(len(keys), 3, 2.3)
    for i, method in enumerate(METHODS):
        ser = theory.linear_series(lin, method)
        for ax, k in zip(axes, keys):
            ax.errorbar(np.array(lin["eps"]) + 0.002 * i, [iv.mean for iv in ser[k]],
                        yerr=np.nan_to_num([iv.half_width for iv in ser[k]]), marker="o", ms=3, capsize=2,
                        color=COLORS[i], label=METHODS[method] if k == keys[0] else None)
            ax.set_title(LINEAR_STATS[k], fontsize=9)
            ax.set_xlabel("training ε (L∞)", fontsize=8)
            ax.tick_params(labelsize=7)
    shared_legend(fig, axes[0])
    return fig


def linear_verdicts(lin: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method and statistic: the trend of the seed means over the sweep, and the seed-paired
    difference largest ε − (ε = 0) with its t-interval ("shrinks" if entirely below 0)."""
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        out[method] = {}
        for k in ("mean_max_logit", "mean_centred_max_logit", "mean_logit_gap", "mean_margin_correct", "weight_norm"):
            means = [stats.mean_ci([r[k] for r in recs]).mean for recs in lin[method]]
            diff = stats.mean_ci([b[k] - a[k] for a, b in zip(lin[method][0], lin[method][-1])])
            out[method][k] = {"trend": theory.trend(means), "paired_diff": diff.as_dict(),
                              "shrinks": bool(diff.n > 1 and diff.high < 0), "means": means}
    return out


def verdict_text(v: dict[str, dict[str, Any]], eps: Sequence[float]) -> str:
    lines = []
    for method, per in v.items():
        for k, r in per.items():
            d = r["paired_diff"]
            lines.append(f"- {METHODS[method]}, {LINEAR_STATS.get(k, k)}: {r['trend']} over ε ∈ "
                         f"{{{', '.join(f'{e:.3g}' for e in eps)}}}; ε={eps[-1]:.3g} − ε=0 paired by seed: "
                         f"{d['mean']:+.3g} [{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}] ({d['n']} seeds) → "
                         f"{'**shrinks**' if r['shrinks'] else '**no clear shrinkage**'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ ε slider

def _hist_row(axes: Sequence[plt.Axes], lin: dict[str, Any], i: int, method: str, edges: dict[str, np.ndarray]) -> None:
    z = torch.cat([r["logits"] for r in lin[method][i]])
    for ax, (name, fn) in zip(axes, plots.STATS.items()):
        v = fn(z).numpy()
        ax.hist(v, bins=edges[name], density=True, color=COLORS[0], alpha=0.6)
        ax.axvline(v.mean(), color="k", ls="--", lw=1)
        ax.set_title(f"{name}, ε={lin['eps'][i]:.3g} (mean {v.mean():.2f})", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)


def _edges(lin: dict[str, Any], method: str) -> dict[str, np.ndarray]:
    z = torch.cat([r["logits"] for recs in lin[method] for r in recs])
    return {name: np.linspace(float(fn(z).min()), float(fn(z).max()), 41) for name, fn in plots.STATS.items()}


def slider_static(lin: dict[str, Any], method: str = "closed_form") -> plt.Figure:
    """The static version of the slider: one row of histograms per ε (seeds pooled), shared bins."""
    n = len(lin["eps"])
    fig, axes = plt.subplots(n, 3, figsize=(BOOK_WIDTH, 1.5 * n), squeeze=False, sharex="col")
    edges = _edges(lin, method)
    for i in range(n):
        _hist_row(axes[i], lin, i, method, edges)
    fig.tight_layout()
    return fig


def epsilon_slider(lin: dict[str, Any], method: str = "closed_form"):  # noqa: ANN201 - an ipywidgets VBox
    """A live slider over the ε sweep that redraws the linear model's logit histograms (JupyterLab)."""
    import ipywidgets as widgets

    edges = _edges(lin, method)
    slider = widgets.SelectionSlider(options=[(f"{e:.3g}", i) for i, e in enumerate(lin["eps"])], value=0,
                                     description="training ε", continuous_update=False)
    out = widgets.Output()
    drawn: list[int] = []

    def draw(change: Any = None) -> None:
        drawn.append(slider.value)
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, 3, figsize=(BOOK_WIDTH, 2.2))
            _hist_row(axes, lin, slider.value, method, edges)
            fig.tight_layout()
            plt.show()
            plt.close(fig)

    slider.observe(draw, names="value")
    draw()
    box = widgets.VBox([slider, out])
    box.drawn = drawn  # the ε indices drawn so far (for tests: outputs are only captured inside a kernel)
    return box


# ------------------------------------------------------------------------------------------ flip radius

def flip_figure(results: dict[str, list[dict[str, Any]]], eps_max: float) -> plt.Figure:
    fig, axes = panel_grid(len(results), 2, 3.4)
    for ax, (label, per_seed) in zip(axes, results.items()):
        for i, r in enumerate(per_seed):
            p, t = r["predicted"].numpy(), r["bisection"].numpy()
            ax.scatter(p, t, s=6, alpha=0.5, color=COLORS[i % len(COLORS)], label=f"seed {i}")
        lo = max(1e-4, min(float(min(r["predicted"].min(), r["bisection"].min())) for r in per_seed))
        ax.plot([lo, eps_max], [lo, eps_max], "k--", lw=1, label="prediction = bisection")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted flip radius margin / ‖∇ₓ margin‖₁", fontsize=8)
        ax.set_ylabel("bisection ε (PGD flips)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def flip_frame(summaries: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    cols = {"spearman": "Spearman ρ", "median_ratio": "median bisection / predicted", "median_predicted":
            "median predicted radius", "median_bisection": "median bisection radius", "censored_frac": "censored fraction"}
    return pd.DataFrame({label: {t: fmt(stats.mean_ci([s[k] for s in ss])) for k, t in cols.items()} | {
        "samples per seed": str(ss[0]["n"])} for label, ss in summaries.items()}).T


def flip_verdict(ss: list[dict[str, float]], rho_min: float = 0.5, ratio_band: tuple[float, float] = (0.67, 1.5)) -> dict[str, Any]:
    rho = stats.mean_ci([s["spearman"] for s in ss])
    ratio = stats.mean_ci([s["median_ratio"] for s in ss])
    low = rho.low if rho.n > 1 else rho.mean
    return {"spearman": rho.as_dict(), "median_ratio": ratio.as_dict(), "ranks_well": bool(low >= rho_min),
            "calibrated": bool(ratio_band[0] <= ratio.mean <= ratio_band[1]), "rho_min": rho_min,
            "ratio_band": list(ratio_band)}


# ------------------------------------------------------------------------------------------ controls

def controls_frame(rows: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    cols = {f"mean_{k}": stats.STAT_LABELS[k] for k in stats.LOGIT_STATISTICS} | {
            "clean": "clean acc (%)", "pgd_ce": "PGD-CE acc (%)", "pgd_margin": "PGD-margin acc (%)",
            "worst": "acc under both (%)"}
    pct = {"clean", "pgd_ce", "pgd_margin", "worst"}
    return pd.DataFrame({label: {t: fmt(stats.mean_ci([(100 if k in pct else 1) * r[k] for r in rs])) for k, t in cols.items()}
                         for label, rs in rows.items()}).T


def gap_closed(ctrl: list[dict[str, float]], std: list[dict[str, float]], at: list[dict[str, float]]) -> stats.Interval:
    """Per seed: (control − standard) / (AT − standard) of the accuracy under both attacks; t-interval."""
    return stats.mean_ci([(c["worst"] - s["worst"]) / max(a["worst"] - s["worst"], 1e-9)
                          for c, s, a in zip(ctrl, std, at)])


def control_verdict(iv: stats.Interval, enough: float = CONTROL_REPRODUCES, none: float = CONTROL_NONE) -> str:
    """"reproduces" if the mean fraction of the robustness gap closed is ≥ ``enough`` and its interval's
    low end > ``none``; "no" if the interval's high end < ``none``; else "partial"."""
    hi = iv.high if iv.n > 1 else iv.mean
    lo = iv.low if iv.n > 1 else iv.mean
    if iv.mean >= enough and lo > none:
        return "reproduces"
    if hi < none:
        return "no"
    return "partial"


# ------------------------------------------------------------------------------------------ summary

def summary_section(ctx: Any, gauss: dict[str, Any], gauss_verdict: dict[str, Any], linear: dict[str, Any],
                    checks: dict[str, Any], flip_radius: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
    """Chapter 01's part of ``summary.json``: the Gaussian prediction per ε, the linear models' series and
    verdicts, the closed-form checks, the flip radius and the controls."""
    p, G = ctx.profile, ctx.profile.theory.gaussian
    per_eps = [{"eps": r["eps"], "predicted_scale": r["predicted"]["scale"],
                "trained_scale": r["trained"]["scale"].as_dict(),
                "predicted_mean_margin": r["predicted"]["mean_margin"],
                "mean_margin": r["trained"]["mean_margin"].as_dict(),
                "predicted_mean_max_logit": r["predicted"]["mean_max_logit"],
                "mean_max_logit": r["trained"]["mean_max_logit"].as_dict(),
                "mean_centred_max_logit": r["trained"]["mean_centred_max_logit"].as_dict(),
                "mean_logit_gap": r["trained"]["mean_logit_gap"].as_dict(),
                "weight_norm": r["trained"]["weight_norm"].as_dict()} for r in gaussian_rows(gauss)]
    return {"theory": {
        "gaussian": {"settings": {k: getattr(G, k) for k in G.__dataclass_fields__}, "per_eps": per_eps,
                     "verdict": gauss_verdict},
        "linear": {"dataset": ctx.data.name, "n_train": p.theory.linear.n_train, "norm": "linf",
                   "seeds": list(p.side_seed_list), **linear},
        "checks": checks, "flip_radius": flip_radius, "controls": controls}}
