"""Tables, figures, verdicts, the ε slider and the summary section of chapter 01 (theory).

Plain results in (from ``atlib.studies.theory.runs`` and ``atlib.studies.theory.controls``), DataFrames / Figures /
Markdown / dicts out. The verdicts come from :mod:`atlib.studies.theory.rules`, whose text the chapter glues.
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
from atlib.studies.theory import rules, runs as theory
from atlib.studies.theory.controls import KIND_LABELS
from atlib.studies.theory.settings import LinearSettings

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
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


def gaussian_verdict(g: dict[str, Any]) -> dict[str, Any]:
    """Section 2's rule (:func:`rules.gaussian_verdict`) on the Gaussian experiment."""
    return rules.gaussian_verdict(gaussian_rows(g))


def gaussian_text(gv: dict[str, Any]) -> str:
    """Markdown: at how many ε the prediction holds, the largest error, and the trend of the trained scale."""
    worst = max(gv["per_eps"], key=lambda p: p["rel_err"])
    held = sum(p["holds"] for p in gv["per_eps"])
    return (f"The prediction holds at {held} of {len(gv['per_eps'])} values of ε (largest relative error "
            f"{worst['rel_err']:.1%}, at ε={worst['eps']:.3g}); the trained scale {gv['trend']} with ε.")


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

def linear_checks(lin: dict[str, Any], x: torch.Tensor, y: torch.Tensor, st: LinearSettings) -> dict[str, Any]:
    """The closed-form checks, on the stored weights of the closed-form model at the largest ε (seed
    index 0) and the first ``st.check_n`` evaluation samples, in float64, judged by section 3's rule."""
    eps, n = lin["eps"][-1], st.check_n
    rec = lin["closed_form"][-1][0]
    W, b = rec["weight"].double(), rec["bias"].double()
    x, y = x[:n].flatten(1).double().cpu(), y[:n].cpu()
    err = theory.closed_form_vs_pgd(W, b, x, y, eps, "linf", True, st.check_steps)
    multi = theory.bound_check(W, b, x, y, eps, st.bound_steps)
    # binary: the two most frequent classes among the n samples, with the two rows of W
    cls = torch.bincount(y, minlength=W.shape[0]).topk(2).indices
    keep = (y == cls[0]) | (y == cls[1])
    y2 = (y[keep] == cls[1]).long()
    binary = theory.bound_check(W[cls], b[cls], x[keep], y2, eps, st.bound_steps)
    v = rules.check_verdicts(err, binary, multi)
    return {"eps": eps, "n": int(n), "classes_binary": [int(c) for c in cls], "tol": v.pop("tol"),
            "bound_steps": st.bound_steps, "closed_form_vs_pgd_max_abs_err": err,
            "binary_exact_max_abs_err": binary["max_abs_diff"],
            "multiclass_max_violation": multi["max_violation"], "multiclass_mean_slack": multi["mean_gap"], **v}


def checks_frame(checks: dict[str, Any]) -> pd.DataFrame:
    """Section 3's checks as a table, with the rule's tolerance."""
    tol = rules.RULE.terms()["check_tol"]
    return pd.DataFrame({"value": {
        "ε (L∞, with box)": f"{checks['eps']:.3g}",
        "max |closed form − PGD| of pairwise margins": f"{checks['closed_form_vs_pgd_max_abs_err']:.2e}",
        "binary: max |shifted-logit CE − PGD CE|": f"{checks['binary_exact_max_abs_err']:.2e}",
        "multiclass: max (PGD CE − bound), must be ≤ 0": f"{checks['multiclass_max_violation']:.3g}",
        "multiclass: mean slack of the bound": f"{checks['multiclass_mean_slack']:.3g}",
        f"closed form matches PGD (≤ {tol})": str(checks["closed_form_matches_pgd"]),
        "bound holds": str(checks["bound_holds"]),
    }})


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
    """Section 4's rule (:func:`rules.linear_verdicts`) for both training methods."""
    return rules.linear_verdicts(lin, tuple(METHODS))


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


def flip_text(summaries: dict[str, list[dict[str, float]]], verdicts: dict[str, dict[str, Any]], flip_steps: int) -> str:
    """Markdown, per model kind: section 6's verdicts with the numbers behind them, and which way PGD departs from
    the first-order prediction."""
    def line(label: str, v: dict[str, Any]) -> str:
        rho = fmt(stats.mean_ci([s["spearman"] for s in summaries[label]]))
        side = (f" — PGD needs a *larger* ε than predicted: the margin falls slower than linearly (or the box and the "
                f"{flip_steps}-step probe limit the attacker)" if v["median_ratio"]["mean"] > 1 else
                " — PGD flips at a *smaller* ε than predicted: the margin bends down faster than its gradient at the "
                "sample says (curvature; a locally flattened loss surface at the data)")
        return (f"- {label}: Spearman ρ {rho} → {'ranks samples **well**' if v['ranks_well'] else 'does **not** rank samples well'}"
                f"; median ratio {v['median_ratio']['mean']:.3g} → "
                f"{'**calibrated**' if v['calibrated'] else '**not calibrated**'}{side}")
    return "\n".join(line(label, v) for label, v in verdicts.items())


def flip_frame(summaries: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    cols = {"spearman": "Spearman ρ", "median_ratio": "median bisection / predicted", "median_predicted":
            "median predicted radius", "median_bisection": "median bisection radius", "censored_frac": "censored fraction"}
    return pd.DataFrame({label: {t: fmt(stats.mean_ci([s[k] for s in ss])) for k, t in cols.items()} | {
        "samples per seed": str(ss[0]["n"])} for label, ss in summaries.items()}).T


# ------------------------------------------------------------------------------------------ controls

def controls_frame(rows: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    cols = {f"mean_{k}": stats.STAT_LABELS[k] for k in stats.LOGIT_STATISTICS} | {
            "clean": "clean acc (%)", "pgd_ce": "PGD-CE acc (%)", "pgd_margin": "PGD-margin acc (%)",
            "worst": "acc under both (%)"}
    pct = {"clean", "pgd_ce", "pgd_margin", "worst"}
    return pd.DataFrame({label: {t: fmt(stats.mean_ci([(100 if k in pct else 1) * r[k] for r in rs])) for k, t in cols.items()}
                         for label, rs in rows.items()}).T


def calibration_frame(cal: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Every strength of every control's grid with its calibration gap; the chosen one marked, and flagged when
    section 7's rule does not count it as matched."""
    miss = f" (NOT within {rules.RULE.terms()['calib_tol']} of the target)"
    return pd.DataFrame([{"control": KIND_LABELS[k], "strength": f"{s:g}", "mean clean gap (calibration images)": f"{g:.3g}",
                          "chosen": "← chosen" + ("" if c["matched"] else miss) if s == c["chosen"] else ""}
                         for k, c in cal.items() for s, g in zip(c["grid"], c["calib_gap"])])


def controls_text(closed: dict[str, stats.Interval], verdicts: dict[str, str]) -> str:
    """Markdown: each control's fraction of the robustness gap closed and its verdict, then what they say together."""
    lines = [f"- {name}: fraction of the robustness gap closed {fmt(iv)} → **{verdicts[name]}**" for name, iv in closed.items()]
    if any(v == "reproduces" for v in verdicts.values()):
        lines.append("\nAt least one control reproduces AT's robustness under these attacks: on this setting shrinkage "
                     "may be part of the cause — or the control masks gradients; a stronger attack must decide.")
    else:
        lines.append("\nNo control reproduces AT's robustness although each was matched to AT's logit gap: shrinking "
                     "the logits is **not sufficient** for robustness here. That is what one expects if shrinkage is a "
                     "*symptom* of AT (the finite optimal scale of the adversarial loss, section 1) rather than its "
                     "cause; whether shrinkage is *necessary* for robustness is not tested here.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ findings, summary

def findings_text(gv: dict[str, Any], checks: dict[str, Any], lv: dict[str, dict[str, Any]],
                  flip_v: dict[str, dict[str, Any]], ctrl_verdicts: dict[str, str]) -> str:
    """Markdown: what held and what did not, one line per section, from this run's verdicts."""
    held = sum(p["holds"] for p in gv["per_eps"])
    return "\n".join([
        f"- Gaussian $L_2$: predicted optimal scale matched training within {rules.RULE.terms()['gauss_tol']} at "
        f"{held}/{len(gv['per_eps'])} ε; trained scale {gv['trend']}.",
        f"- Closed form vs PGD (L∞ with box): max error {checks['closed_form_vs_pgd_max_abs_err']:.1e}; binary exactness "
        f"error {checks['binary_exact_max_abs_err']:.1e}; multiclass bound holds: {checks['bound_holds']}.",
        *[f"- Linear, {METHODS[m]}: " + "; ".join(f"{LINEAR_STATS[k]} {r['trend']}" for k, r in lv[m].items()) for m in lv],
        "- Deep nets: first-order flip radius ranks samples well — " + ", ".join(
            f"{label}: {v['ranks_well']} (ρ {v['spearman']['mean']:.2f})" for label, v in flip_v.items()),
        "- Controls: " + ", ".join(f"{n}: {v}" for n, v in ctrl_verdicts.items()),
    ])


def controls_record(target: float, cal: dict[str, dict[str, Any]], attacks: dict[str, Any],
                    rows: dict[str, list[dict[str, float]]], closed: dict[str, stats.Interval],
                    verdicts: dict[str, str]) -> dict[str, Any]:
    """Section 7's part of ``summary.json``: the calibration target and choice, the attacks, every model's per-seed
    rows, the fraction of the gap each control closed and its verdict."""
    return {"target_gap": target, "calibration": cal, "attacks": {k: a.label for k, a in attacks.items()},
            "rows": {name: {"per_seed": r} for name, r in rows.items()},
            "gap_closed": {n: iv.as_dict() for n, iv in closed.items()}, "verdicts": verdicts}


def summary(ctx: Any, gauss: dict[str, Any], gauss_verdict: dict[str, Any], lin: dict[str, Any],
            lin_verdicts: dict[str, Any], checks: dict[str, Any], flips: dict[str, list[dict[str, float]]],
            flip_verdicts: dict[str, dict[str, Any]], controls: dict[str, Any]) -> dict[str, Any]:
    """Chapter 01's part of ``summary.json``: the Gaussian prediction per ε, the linear models' series and
    verdicts, the closed-form checks, the flip radius and the controls (:func:`controls_record`)."""
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
    series = {m: [{"eps": e} | {k: stats.mean_ci([r[k] for r in recs]).as_dict() for k in theory.STAT_NAMES}
                  for e, recs in zip(lin["eps"], lin[m])] for m in METHODS}
    return {"theory": {
        "gaussian": {"settings": {k: getattr(G, k) for k in G.__dataclass_fields__}, "per_eps": per_eps,
                     "verdict": gauss_verdict},
        "linear": {"dataset": ctx.data.name, "n_train": p.theory.linear.n_train, "norm": "linf",
                   "seeds": list(p.side_seed_list), **series, "verdicts": lin_verdicts},
        "checks": checks, "flip_radius": {label: {"per_seed": ss, **flip_verdicts[label]} for label, ss in flips.items()},
        "controls": controls}}
