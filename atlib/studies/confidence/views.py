"""Figures and tables of chapter 03: density scatter plots, image grids, the per-sample browser."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from atlib.core import stats
from atlib.studies.confidence import rules
from atlib.studies.confidence.runs import (
    CORRELATIONS, DELTA, FAMILY_NAMES, KEYS, Analysis, _clean, confidence_score, interval_of, saturated_fraction,
    shown_samples, spearman)
from atlib.core.plots import BOOK_WIDTH, panel_grid
from atlib.studies.prose import fmt
from atlib.studies.rule import pp

LABELS = {"std": "standard", "at": "AT", "matched": "matched standard (n images)",
          "early": "early-stopped standard (diagnostic)"}
DIRECTIONS = {"AT ≫ std": ("std", "at"), "std ≫ AT": ("at", "std")}  # (a, b): b relatively more confident
BROWSER_RANKS = (0, 7)  # the rank range the browser (and its static view in the book) starts on


def fmt_pairs(iv: stats.Interval, digits: int = 3) -> str:
    """``prose.fmt`` for an interval over *units* (pairs of models, each model in at most one unit)."""
    return fmt(iv, digits).replace(" seeds)", " units)").replace(" seed)", " unit)")


# ------------------------------------------------------------------------------------------- tables
def score_table(an: Analysis) -> pd.DataFrame:
    """Per family: accuracy, mean top-class log-odds, gap, max prob, and the share of saturated softmax."""
    rows = {}
    y = an.labels
    for fam, by_seed in an.logits.items():
        zs = [by_seed[s] for s in sorted(by_seed)]
        rows[LABELS[fam]] = {
            "clean acc (%)": fmt(stats.mean_ci([100 * stats.accuracy(z, y) for z in zs])),
            "mean log-odds": fmt(stats.mean_ci([float(confidence_score(z).mean()) for z in zs])),
            "mean logit gap": fmt(stats.mean_ci([float(stats.logit_gap(z).mean()) for z in zs])),
            "mean max prob": fmt(stats.mean_ci([float(stats.max_prob(z).mean()) for z in zs])),
            "float32 softmax = 1.0 (%)": fmt(stats.mean_ci([100 * saturated_fraction(z) for z in zs])),
        }
    return pd.DataFrame(rows).T


def _unit(u: Mapping[str, Any]) -> str:
    return "/".join(str(v) for k, v in u.items() if k != "value") + f": {u['value']:.3f}"


def comparison_table(comps: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per comparison: mean over units ± 95% t half-width, and the per-unit values."""
    rows = {}
    for key, c in comps.items():
        iv = interval_of(c)
        rows[key.replace("_", " ")] = {
            "mean over units": fmt_pairs(iv),
            "95% CI": "–" if iv.n < 2 else f"[{iv.low:.3f}, {iv.high:.3f}]",
            "per unit": ", ".join(_unit(u) for u in c["units"]),
        }
    return pd.DataFrame(rows).T


def jaccard_table(an: Analysis) -> pd.DataFrame:
    rows = {}
    for k, sides in an.jaccard.items():
        for side, comps in sides.items():
            rows[f"{side}-{k}"] = {key.replace("_", " "): fmt_pairs(interval_of(c))
                                   for key, c in comps.items()}
    return pd.DataFrame(rows).T


def group_table(measures: Mapping[str, Mapping[str, stats.Interval]]) -> pd.DataFrame:
    return pd.DataFrame({g: {m: fmt(iv) for m, iv in ms.items()} for g, ms in measures.items()}).T


def class_table(rows: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame({c: {k: fmt_pairs(v, 2) if isinstance(v, stats.Interval) else v
                             for k, v in r.items()} for c, r in rows.items()}).T


def calibration_table(an: Analysis) -> pd.DataFrame:
    """Every n the calibration evaluated: the matched models' selection accuracy per calibration seed and mean."""
    c = an.matched.calibration
    rows = {}
    for n, accs in c.evaluated.items():
        rows[f"n = {n}" + (" (chosen)" if n == c.n else "")] = {
            "selection acc per seed (%)": ", ".join(f"{100 * a:.1f}" for a in accs),
            "mean (%)": f"{100 * c.mean_acc(n):.2f}", "distance to AT (pp)": f"{100 * (c.mean_acc(n) - c.target):+.2f}"}
    return pd.DataFrame(rows).T


def matched_table(an: Analysis) -> pd.DataFrame:
    """Per seed: the main AT, matched and early-stopped models' clean accuracy on the whole test set."""
    m, rows = an.matched, {}
    for s in an.seeds:
        e = an.early[s]
        rows[f"seed {s}"] = {
            "AT (%)": f"{100 * m.at_test_acc[s]:.2f}", f"matched, n = {m.calibration.n} (%)": f"{100 * m.test_acc[s]:.2f}",
            "early-stopped (%)": f"{100 * e.test_acc[e.epoch - 1]:.2f}",
            "early epoch (lr at its end)": f"{e.epoch} of {len(e.select_acc)} ({e.lr_at_epoch_end:.3g})"}
    return pd.DataFrame(rows).T


def findings_text(an: Analysis, v: Mapping[str, Any], gm: Mapping[str, Mapping[str, stats.Interval]],
                  pc: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown list of what the numbers of this run say (every number computed, none typed)."""
    c, m = an.correlations["spearman"], an.matched
    lines = [f"- By the stated rule ({an.ctx.data.name}, {an.at_spec.label} vs standard, seeds "
             f"{', '.join(map(str, an.seeds))}, all {len(an.labels)} test images): **{v['outcome']}** "
             f"((a) {v['a_differs_from_nulls']}, (c) {v['c_control_usable']}, (b) {v['b_not_explained_by_accuracy']}). "
             f"Spearman ρ std vs AT {fmt_pairs(interval_of(c['std_vs_at']))}; nulls std vs std "
             f"{fmt_pairs(interval_of(c['std_vs_std']))}, AT vs AT {fmt_pairs(interval_of(c['at_vs_at']))}; std vs "
             f"matched {fmt_pairs(interval_of(c['std_vs_matched']))}, matched vs matched "
             f"{fmt_pairs(interval_of(c['matched_vs_matched']))}; Δ {fmt_pairs(interval_of(c[DELTA[0]]))}.",
             f"- The matched control (n = {m.calibration.n} training images, {m.calibration.epochs} epochs) is "
             f"{100 * m.gap:+.2f} pp from the AT models' clean accuracy on the test set: "
             f"{'matched' if rules.RULE.matched(m) else 'not matched'} (limit ±{pp(rules.RULE.max_gap)} pp)."]
    key = "Spearman std vs at"
    if pc:
        worst = min(pc, key=lambda k: pc[k][key].mean)
        best = max(pc, key=lambda k: pc[k][key].mean)
        lines.append(f"- Within a class, standard and AT models agree least on **{worst}** (ρ "
                     f"{fmt_pairs(pc[worst][key], 2)}, null std vs std "
                     f"{fmt_pairs(pc[worst]['Spearman std vs std'], 2)}) "
                     f"and most on **{best}** (ρ {fmt_pairs(pc[best][key], 2)}).")
    groups = [g for g in ("AT ≫ std", "std ≫ AT") if g in gm and "random" in gm]
    for g in groups:
        parts = []
        for m, iv in gm[g].items():
            r = gm["random"][m]
            rel = ("above" if iv.low > r.high else "below" if iv.high < r.low else "overlapping")
            parts.append(f"{m} {fmt(iv)} vs random {fmt(r)} ({rel})")
        lines.append(f"- {g} group: " + "; ".join(parts) + ".")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ figures
def density_scatter(an: Analysis) -> plt.Figure:
    """Hexbin density of per-sample confidence, standard (x) vs AT (y), same-seed pairs pooled; the
    std-vs-std null (different seeds) alongside."""
    s = an.seeds
    panels = [("top-class log-odds", "log_odds", [("std", i, "at", i) for i in s]),
              ("logit gap", "gap", [("std", i, "at", i) for i in s])]
    if len(s) > 1:
        panels.append(("top-class log-odds (null)", "log_odds", [("std", s[0], "std", s[1])]))
    fig, axes = panel_grid(len(panels), 2, 3.2)
    for ax, (title, kind, pairs) in zip(axes, panels):
        xs = torch.cat([confidence_score(an.logits[fa][i], kind) for fa, i, _, _ in pairs]).numpy()
        ys = torch.cat([confidence_score(an.logits[fb][j], kind) for _, _, fb, j in pairs]).numpy()
        hb = ax.hexbin(xs, ys, gridsize=30, bins="log", cmap="viridis", mincnt=1)
        cb = fig.colorbar(hb, ax=ax)
        cb.set_label("samples (log)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
        fa, i, fb, j = pairs[0]
        seeds_txt = "same-seed pairs pooled" if len(pairs) > 1 else f"seeds {i} and {j}"
        ax.set_xlabel(f"{LABELS[fa]}: {kind.replace('_', '-')}", fontsize=8)
        ax.set_ylabel(f"{LABELS[fb]}: {kind.replace('_', '-')}", fontsize=8)
        rho = np.mean([spearman(confidence_score(an.logits[a][p], kind), confidence_score(an.logits[b][q], kind))
                       for a, p, b, q in pairs])
        ax.set_title(f"{title}\n{seeds_txt}; mean Spearman ρ = {rho:.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def _image(ax: plt.Axes, img: torch.Tensor) -> None:
    x = img.permute(1, 2, 0).numpy()
    ax.imshow(x.squeeze(-1) if x.shape[-1] == 1 else x, cmap="gray" if x.shape[-1] == 1 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _caption(an: Analysis, i: int, fa: str, sa: int, fb: str, sb: int) -> str:
    cls = an.ctx.data.classes
    y = int(an.labels[i])
    za, zb = an.logits[fa][sa][i], an.logits[fb][sb][i]
    pa, pb = torch.softmax(za.double(), 0), torch.softmax(zb.double(), 0)
    short = {"std": "std", "at": "AT", "matched": "M", "early": "early"}
    return (f"true {cls[y][:9]}\n{short[fa]}{sa}: {cls[int(za.argmax())][:9]} {pa.max():.2f}\n"
            f"{short[fb]}{sb}: {cls[int(zb.argmax())][:9]} {pb.max():.2f}")


def difference_grid(an: Analysis, a: tuple[str, int], b: tuple[str, int], n: int | None = None) -> plt.Figure:
    """Top block: the ``n`` samples where model b is most confident relative to model a (largest rank
    difference); bottom block: the reverse. Captions: true label, both predictions and top probabilities."""
    n = n or an.settings.n_show
    d = an.rank_difference(a, b)
    order = torch.sort(d, descending=True, stable=True).indices
    rows = {f"{LABELS[b[0]]} s{b[1]} ≫ {LABELS[a[0]]} s{a[1]}": order[:n],
            f"{LABELS[a[0]]} s{a[1]} ≫ {LABELS[b[0]]} s{b[1]}": order.flip(0)[:n]}
    per_dir = math.ceil(n / 5)  # at most five images a row, the rows filled evenly
    cols = math.ceil(n / per_dir)
    fig = plt.figure(figsize=(BOOK_WIDTH, 2 * per_dir * 1.75 + 0.5), layout="constrained")
    for sub, (title, idx) in zip(fig.subfigures(2, 1), rows.items()):
        sub.suptitle(title, fontsize=9)
        axes = list(sub.subplots(per_dir, cols, squeeze=False).flat)
        for ax, i in zip(axes, idx.tolist()):
            _image(ax, an.images[i])
            ax.set_title(_caption(an, i, a[0], a[1], b[0], b[1]), fontsize=7)
        for ax in axes[len(idx):]:
            ax.axis("off")
    fig.suptitle("rank difference of top-class log-odds (normalised ranks)", fontsize=9)
    return fig


def browser_figure(an: Analysis, direction: str = "AT ≫ std", ranks: tuple[int, int] = BROWSER_RANKS,
                   cls: int | None = None, seed: int | None = None, max_show: int = 8) -> plt.Figure:
    """The browser's view: samples ranked by the confidence difference in ``direction`` (same-seed pair),
    optionally one class, ranks ``ranks[0]..ranks[1]`` (at most ``max_show``), each with its image and
    both models' full softmax."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    seed = an.seeds[0] if seed is None else seed
    fa, fb = DIRECTIONS[direction]
    d = an.rank_difference((fa, seed), (fb, seed))
    order = torch.sort(d, descending=True, stable=True).indices
    if cls is not None:
        order = order[an.labels[order] == cls]
    lo, hi = max(0, ranks[0]), min(len(order) - 1, ranks[1])
    idx = order[lo:hi + 1][:max_show].tolist()
    n = max(1, len(idx))
    classes = an.ctx.data.classes
    cols = min(n, 4)
    blocks = math.ceil(n / cols)
    fig, grid = plt.subplots(2 * blocks, cols, figsize=(BOOK_WIDTH, 2.9 * blocks), squeeze=False,
                             gridspec_kw={"height_ratios": [0.75, 1] * blocks})
    k = np.arange(len(classes))
    for c, i in enumerate(idx):
        img_ax, ax = grid[2 * (c // cols)][c % cols], grid[2 * (c // cols) + 1][c % cols]
        _image(img_ax, an.images[i])
        img_ax.set_title(f"rank {lo + c} · test #{int(an.test_index[i])}\ntrue: {classes[int(an.labels[i])]}",
                         fontsize=8)
        for off, fam, col in ((-0.2, "std", "#1f77b4"), (0.2, "at", "#d62728")):
            p = torch.softmax(an.logits[fam][seed][i].double(), 0).numpy()
            ax.barh(k + off, p, height=0.4, color=col, label=LABELS[fam])
        ax.set_yticks(k)
        ax.set_yticklabels([c_[:10] for c_ in classes] if c % cols == 0 else [], fontsize=7)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)
    for c in range(len(idx), blocks * cols):
        grid[2 * (c // cols)][c % cols].axis("off")
        grid[2 * (c // cols) + 1][c % cols].axis("off")
    if not idx:
        grid[0][0].text(0.5, 0.5, "no sample in this range", ha="center", va="center")
    else:
        grid[1][0].legend(fontsize=7, loc="lower right")
    cname = "all classes" if cls is None else classes[cls]
    fig.suptitle(f"{direction}, {cname}, seed {seed}: softmax of the standard (blue) and AT (red) model",
                 fontsize=9)
    fig.tight_layout()
    return fig


def browser(an: Analysis):
    """An ipywidgets browser around ``browser_figure`` (live in JupyterLab; the book shows a static view)."""
    import ipywidgets as w
    from IPython.display import display

    n = len(an.labels)
    direction = w.Dropdown(options=list(DIRECTIONS), description="direction")
    ranks = w.IntRangeSlider(value=BROWSER_RANKS, min=0, max=n - 1, description="ranks")
    cls = w.Dropdown(options=[("all", -1)] + [(c, i) for i, c in enumerate(an.ctx.data.classes)], value=-1,
                     description="class")
    seed = w.Dropdown(options=an.seeds, description="seed")
    out = w.Output()

    def draw(*_: Any) -> None:
        out.clear_output(wait=True)
        with out:
            fig = browser_figure(an, direction.value, ranks.value, None if cls.value < 0 else cls.value, seed.value)
            display(fig)
            plt.close(fig)

    for ctl in (direction, ranks, cls, seed):
        ctl.observe(draw, names="value")
    draw()
    return w.VBox([w.HBox([direction, cls, seed]), ranks, out])


__all__ = ["FAMILY_NAMES", "browser", "browser_figure", "calibration_table", "class_table", "comparison_table",
           "density_scatter", "difference_grid", "findings_text", "fmt_pairs", "group_table", "jaccard_table",
           "matched_table", "score_table"]


def summary(an: Analysis) -> dict[str, Any]:
    """Chapter 03's part of summary.json (``confidence``): every comparison with its units, the control, the
    verdict."""
    def pick(c: Mapping[str, Any]) -> dict[str, Any]:
        return {k: {f: c[k][f] for f in ("value", "ci", "n", "units")} for k in (*KEYS, DELTA[0]) if k in c}

    return {"confidence": _clean({
        "n_test": len(an.labels), "seeds": an.seeds,
        "spearman": pick(an.correlations["spearman"]),
        "kendall": pick(an.correlations["kendall"]),
        "matched_control": rules.RULE.control_record(an.matched),
        "early_stopped": {str(s): {"epoch": e.epoch, "test_acc": e.test_acc[e.epoch - 1], "lr": e.lr_at_epoch_end}
                          for s, e in an.early.items()},
        "effect_size": {m: rules.effect_sizes(an, m) for m in CORRELATIONS},
        "topk_jaccard": {k: {side: pick(c) for side, c in v.items()} for k, v in an.jaccard.items()},
        "verdict": rules.verdict(an),
        "shown_indices": shown_samples(an),
    })}
