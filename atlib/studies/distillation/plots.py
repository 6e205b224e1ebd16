"""Chapter 04's figures: the targets of one image under every ablation, the students' accuracies against
the references, and the gradient-masking curves."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from atlib.core.plots import COLORS
from atlib.studies.distillation import rules
from atlib.studies.distillation.runs import Grid
from atlib.studies.distillation.targets import ABLATIONS, TeacherLogits


def targets_figure(t: TeacherLogits, index: int, T: float, classes: Sequence[str], seed: int = 0) -> plt.Figure:
    """One bar chart per ablation: the target probabilities of training image ``index`` at temperature T
    (the label's bar outlined in black, the AT teacher's top class in red)."""
    names = list(ABLATIONS)
    cols = 3
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.2 * rows), sharey=True, squeeze=False)
    full = ABLATIONS[rules.RULE.full](t, T, seed)[index].numpy()
    label = int(t.labels[index])
    # every ablation runs on the whole training set (population means, the shuffle's seed), then one row is shown
    for ax, name in zip(axes.flat, names):
        p = ABLATIONS[name](t, T, seed)[index].numpy()
        colors = ["#d62728" if k == int(full.argmax()) else "#7f7f7f" for k in range(len(p))]
        ax.bar(range(len(p)), p, color=colors, edgecolor=["black" if k == label else "none" for k in range(len(p))],
               linewidth=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(p)))
        ax.set_xticklabels([c[:8] for c in classes], rotation=90, fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"targets at T={T:g} for training image {index} (label {classes[label]}, outlined); "
                 f"red: the AT teacher's top class", fontsize=9)
    fig.tight_layout()
    return fig


def robustness_figure(rows: Sequence[dict[str, Any]], refs: dict[str, dict[str, Any]],
                      temperatures: Sequence[float], steps: int = 20) -> plt.Figure:
    """Per T, each ablation's robust (filled) and clean (hollow) accuracy, mean ± 95% t-interval over seeds,
    with the AT teacher and the PGD-AT student as reference lines."""
    fig, axes = plt.subplots(1, len(temperatures), figsize=(5.2 * len(temperatures), 0.42 * len(ABLATIONS) + 1.4),
                             sharey=True, squeeze=False)
    names = list(ABLATIONS)
    ypos = np.arange(len(names))[::-1]
    ref_style = [(k, c) for k, c in zip(refs, ("#d62728", "#1f77b4", "#2ca02c"))]
    for ax, T in zip(axes[0], temperatures):
        at = {r["ablation"]: r for r in rows if r["T"] == T}
        for key, marker, fill in (("robust", "o", True), ("clean", "s", False)):
            m = np.array([100 * at[n][key]["mean"] for n in names])
            h = np.nan_to_num(np.array([100 * at[n][key]["half_width"] for n in names]))
            ax.errorbar(m, ypos, xerr=h, fmt=marker, color="black", mfc="black" if fill else "white", capsize=3,
                        label=f"robust (worst case: PGD-{steps} CE, margin, APGD-CE, -DLR)" if fill else "clean")
        for n, y in zip(names, ypos):
            if at[n]["flagged_seeds"]:
                ax.annotate("⚠ masking", (100 * at[n]["robust"]["mean"], y), fontsize=7, color="#d62728",
                            xytext=(4, 4), textcoords="offset points")
        full = rules.RULE.full
        ax.axvline(100 * at[full]["robust"]["mean"], color="black", ls=":", lw=1, label=f"{full} student: robust (mean)")
        for (label, col) in ref_style:
            v = refs[label]["robust"]["mean"]
            ax.axvline(100 * v, color=col, ls="--", lw=1, label=f"{label}: robust")
        ax.set_title(f"students distilled at T = {T:g}", fontsize=10)
        ax.set_xlabel("accuracy (%)")
        ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels([n + (" (plain CE)" if ABLATIONS[n].plain_ce else "") for n in names], fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, bbox_to_anchor=(0.5, -0.02 - 0.03 * len(refs)))
    fig.tight_layout()
    return fig


def masking_figure(grid: Grid, eps: float, sweep: Sequence[float], steps: Sequence[int], num_classes: int) -> plt.Figure:
    """Every student's accuracy against L∞ ε (each ε attacked on the survivors of the smaller ones) and against
    PGD steps; one thin line per student (colour: T), the PGD-AT students in black, chance dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    xs = [0.0, eps, *sweep]
    tcol = {T: COLORS[i % len(COLORS)] for i, T in enumerate(grid.temperatures)}
    for r in grid.students + grid.ceiling:
        col = "black" if r.ablation == "pgd_at" else tcol.get(r.T, "#7f7f7f")
        lw, alpha = (1.6, 0.9) if r.ablation == "pgd_at" else (0.7, 0.45)
        ys = [r.acc("clean"), r.acc("pgd"), *[r.acc(f"eps_{e:g}") for e in sweep]]
        axes[0].plot(xs, [100 * v for v in ys], color=col, lw=lw, alpha=alpha, marker=".", ms=3)
        ss = [r.acc("few"), r.acc("ce"), r.acc("many")]
        axes[1].plot(steps, [100 * v for v in ss], color=col, lw=lw, alpha=alpha, marker=".", ms=3)
    for ax in axes:
        ax.axhline(100 / num_classes, color="grey", ls=":", lw=1)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("L∞ ε")
    axes[0].set_title("accuracy vs ε (chained on survivors; must reach chance at 0.5)", fontsize=9)
    axes[1].set_xlabel(f"PGD-CE steps ({steps[-1]}: on the PGD-{steps[1]} survivors)")
    axes[1].set_xticks(list(steps))
    axes[1].set_title("accuracy vs attack steps at the main ε", fontsize=9)
    handles = [plt.Line2D([], [], color=c, label=f"students, T={T:g}") for T, c in tcol.items()]
    handles += [plt.Line2D([], [], color="#7f7f7f", label="hard_labels (plain CE)"),
                plt.Line2D([], [], color="black", lw=1.6, label="PGD-AT students"),
                plt.Line2D([], [], color="grey", ls=":", label="chance")]
    axes[0].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return fig
