"""Chapter 04's numbers: per-(ablation, T) means with t-intervals, seed-paired differences from ``full``,
the verdict by the rule stated in the chapter, tables and the ``summary.json`` section."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from atlib.core import stats
from atlib.studies.distillation.rules import classify
from atlib.studies.distillation.runs import Grid, StudentRun, eval_attacks
from atlib.studies.distillation.targets import ABLATIONS, properties
from atlib.studies.prose import fmt, glue, glue_setting, t_factor
from atlib.studies.context import Context

# per-student accuracies: summary key -> robustness mask
METRICS = {"clean": "clean", "pgd_ce": "ce", "pgd_margin": "margin", "robust": "robust", "worst": "worst",
           "transfer_at": "transfer_at", "transfer_std": "transfer_std"}
# ARD's released defaults (Goldblum et al. 2020), quoted by the chapter for comparison; never used to train
ARD_T, ARD_LR = 30.0, 0.1
# the peak learning rates of the development pilot that chose ``DistillSettings.lrs`` on ``fashion`` (not re-run)
PILOT_LR_GRID = (0.01, 0.015, 0.02, 0.03, 0.05)


def glue_prose(ctx: Context) -> None:
    """Glue every number chapter 04's prose quotes (settings of this profile, ARD's defaults, the t factor),
    on top of :func:`prose.glue_setting`'s."""
    s, k = ctx.profile.distill, ctx.data.num_classes
    glue_setting(ctx)
    temps = [f"{T:g}" for T in s.temperatures]
    n = len(ctx.profile.side_seed_list)
    for name, value in {"temps": " and ".join(temps), "T_low": temps[0], "T_high": temps[-1],
                        "ard_T": f"{ARD_T:g}", "ard_lr": f"{ARD_LR:g}", "ard_lr_here": f"{ARD_LR / k:.3g}",
                        "lr_grid": ", ".join(f"{x:g}" for x in PILOT_LR_GRID), "n_classes": k,
                        "few_steps": s.few_steps, "many_steps": s.many_steps, "chance_eps": f"{s.sweep_eps[-1]:g}",
                        "t_df": n - 1, "student_width": _width(s.student_width or ctx.profile.width),
                        "teacher_width": _width(ctx.profile.width), "student_epochs": s.epochs,
                        "teacher_epochs": ctx.profile.epochs, "t_n": f"{t_factor(n):.2f}" if n > 1 else "undefined (one seed)"}.items():
        glue(name, value)


def _width(w: int | None) -> int | str:
    return w if w is not None else "the architecture's default"


def config_label(ablation: str, T: float | None) -> str:
    return ablation if T is None else f"{ablation} (T={T:g})"


def student_record(r: StudentRun) -> dict[str, Any]:
    """One student's ``summary.json`` entry."""
    return {"ablation": r.ablation, "T": r.T, "alpha": r.alpha, "seed": r.seed, "clean_acc": r.acc("clean"),
            "robust_acc": {"pgd_ce": r.acc("ce"), "pgd_margin": r.acc("margin"), "both": r.acc("robust"),
                           "worst_case": r.acc("worst")},
            "transfer_acc": {"from_at_teacher": r.acc("transfer_at"), "from_std_teacher": r.acc("transfer_std")},
            "masking_flag": bool(r.flags), "masking_flags": r.flags, "train_seconds": r.train_seconds}


def aggregate(ctx: Context, grid: Grid) -> list[dict[str, Any]]:
    """One row per (ablation, T) (``hard_labels``: its T-free students, compared with ``full`` at each T)."""
    s = ctx.profile.distill
    rows = []
    for T in grid.temperatures:
        full = {r.seed: r for r in grid.runs("full", T)}
        full_flagged = any(r.flags for r in full.values())
        for name, ab in ABLATIONS.items():
            runs = grid.runs(name, T)
            row: dict[str, Any] = {"ablation": name, "T": T, "T_used": None if ab.plain_ce else T,
                                   "alpha": runs[0].alpha, "seeds": [r.seed for r in runs]}
            for key, mask in METRICS.items():
                row[key] = stats.mean_ci([r.acc(mask) for r in runs]).as_dict()
            row["flagged_seeds"] = [r.seed for r in runs if r.flags]
            row["flags"] = sorted({f for r in runs for f in r.flags})
            if name == "full":
                row["diff_vs_full"], row["verdict"] = None, "reference"
            else:
                paired = [r for r in runs if r.seed in full]
                row["diff_vs_full"] = {k: stats.mean_ci([r.acc(METRICS[k]) - full[r.seed].acc(METRICS[k])
                                                         for r in paired]).as_dict()
                                       for k in ("robust", "clean", "pgd_ce", "pgd_margin")}
                d = row["diff_vs_full"]["robust"]
                v = classify(stats.Interval(d["mean"], d["half_width"], d["n"]), s.remove_margin, s.equivalence_margin)
                if full_flagged or (row["flagged_seeds"] and v not in ("removes robustness", "reduces robustness")):
                    v = "flagged: gradient masking"
                row["verdict"] = v
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- tables
def _pct(d: dict[str, Any]) -> str:
    return fmt(stats.Interval(100 * d["mean"], 100 * d["half_width"], d["n"]))


def _pp(d: dict[str, Any]) -> str:
    if d["n"] < 2:
        return f"{100 * d['mean']:+.1f} pp (1 seed)"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] pp"


def student_table(rows: Sequence[dict[str, Any]], steps: int = 20) -> pd.DataFrame:
    """Accuracy (%) per (ablation, T), mean ± 95% t-interval over seeds; paired Δ from ``full``; checks; verdict.
    ``steps``: the evaluation attacks' PGD steps (for the column titles)."""
    out = {}
    for r in rows:
        mark = f" ⚠ {len(r['flagged_seeds'])} flagged" if r["flagged_seeds"] else ""
        d = r["diff_vs_full"]
        out[config_label(r["ablation"], r["T"]) + (" [plain CE]" if r["T_used"] is None else "")] = {
            "clean": _pct(r["clean"]), f"PGD-{steps} CE": _pct(r["pgd_ce"]),
            f"PGD-{steps} margin": _pct(r["pgd_margin"]),
            "robust (CE ∧ margin)": _pct(r["robust"]) + mark,
            "Δ robust vs full": _pp(d["robust"]) if d else "—", "Δ clean vs full": _pp(d["clean"]) if d else "—",
            "masking checks": ", ".join(r["flags"]) or "passed", "verdict": r["verdict"]}
    return pd.DataFrame(out).T


def masking_table(ctx: Context, grid: Grid) -> pd.DataFrame:
    """Per (ablation, T) and the PGD-AT student: mean accuracy (%) under every attack of the checks."""
    s = ctx.profile.distill
    k = ctx.profile.eval_steps
    cols = {"few": f"PGD-{s.few_steps} CE", "ce": f"PGD-{k} CE", "many": f"PGD-{k} ∧ PGD-{s.many_steps}"}
    cols |= {f"eps_{e:g}": f"ε={e:g} (chain)" for e in s.sweep_eps}
    cols |= {"transfer_at": "transfer from AT teacher", "transfer_std": "transfer from std teacher", "worst": "worst case"}
    groups = {config_label(a, T): grid.runs(a, T) for a, T in _configs(grid)} | {"PGD-AT student": grid.ceiling}
    out = {}
    for label, runs in groups.items():
        out[label] = {t: f"{100 * sum(r.acc(k) for r in runs) / len(runs):.1f}" for k, t in cols.items()}
        out[label]["flags (seeds)"] = "; ".join(f"s{r.seed}: {', '.join(r.flags)}" for r in runs if r.flags) or "none"
    return pd.DataFrame(out).T


def _configs(grid: Grid) -> list[tuple[str, float | None]]:
    return [(a, None) if ab.plain_ce else (a, T) for a, ab in ABLATIONS.items()
            for T in ((None,) if ab.plain_ce else grid.temperatures)]


def references(ctx: Context, grid: Grid) -> dict[str, dict[str, Any]]:
    """Teachers (chapter 02's models, on the students' evaluation samples) and the PGD-AT student."""
    n = grid.n_eval
    out: dict[str, dict[str, Any]] = {}
    for kind, label in (("at", f"AT teacher ({ctx.profile.main_at.label})"), ("std", "standard teacher")):
        runs = [grid.teachers[s][kind] for s in grid.seeds]
        y = runs[0].labels[:n]

        def acc(r: Any, key: str) -> float:
            return float((r.logits[key][:n].argmax(1) == y).float().mean())

        both = [float(((r.logits["linf_ce"][:n].argmax(1) == y) & (r.logits["linf_margin"][:n].argmax(1) == y))
                      .float().mean()) for r in runs]
        out[label] = {"clean": stats.mean_ci([acc(r, "clean") for r in runs]).as_dict(),
                      "pgd_ce": stats.mean_ci([acc(r, "linf_ce") for r in runs]).as_dict(),
                      "pgd_margin": stats.mean_ci([acc(r, "linf_margin") for r in runs]).as_dict(),
                      "robust": stats.mean_ci(both).as_dict()}
    out["PGD-AT student (ceiling)"] = {k: stats.mean_ci([r.acc(m) for r in grid.ceiling]).as_dict()
                                       for k, m in METRICS.items() if k in ("clean", "pgd_ce", "pgd_margin", "robust", "worst")}
    out["PGD-AT student (ceiling)"]["flagged_seeds"] = [r.seed for r in grid.ceiling if r.flags]
    return out


def reference_table(refs: dict[str, dict[str, Any]], steps: int = 20) -> pd.DataFrame:
    names = {"clean": "clean", "pgd_ce": f"PGD-{steps} CE", "pgd_margin": f"PGD-{steps} margin",
             "robust": "robust (CE ∧ margin)"}
    return pd.DataFrame({m: {t: _pct(v[k]) for k, t in names.items()} for m, v in refs.items()}).T


def property_table(grid: Grid, seed: int | None = None) -> pd.DataFrame:
    """What each target keeps of the AT teacher, measured on the training set (teachers of one seed)."""
    seed = grid.seeds[0] if seed is None else seed
    t = grid.outputs[seed]
    names = {"argmax_eq_at": "argmax = AT's", "argmax_eq_label": "argmax = label", "mean_top": "mean top p",
             "sd_top": "sd of top p", "rho_top_at": "ρ(top p, AT's)", "rho_top_std": "ρ(top p, std's)",
             "tau_nonmax_at": "non-max τ with AT"}
    out = {}
    for T in grid.temperatures:
        for name, ab in ABLATIONS.items():
            p = properties(ab(t, T, seed), t, T)
            out[config_label(name, T)] = {v: f"{p[k]:.3f}" for k, v in names.items()}
    return pd.DataFrame(out).T


def setting_record(ctx: Context, grid: Grid) -> dict[str, Any]:
    """Everything a reader needs to know about how the students were made and attacked."""
    s, p = ctx.profile.distill, ctx.profile
    A = eval_attacks(ctx)
    return {"dataset": ctx.data.name, "train_images": len(ctx.data.train_y), "eval_samples": grid.n_eval,
            "student": f"{p.arch} width {s.student_width or p.width}", "teacher": f"{p.arch} width {p.width}",
            "epochs": s.epochs, "batch_size": s.batch_size, "weight_decay": p.weight_decay,
            "lr_by_T": {f"{T:g}": s.lr_at(T) for T in s.temperatures}, "alpha": s.alpha,
            "hard_labels_lr": p.lr, "reduction": "batchmean", "seeds": list(grid.seeds),
            "attacks": {k: (c.label if not isinstance(c, list) else [x.label for x in c]) for k, c in A.items()},
            "inputs": "clean, unaugmented training images; targets computed once from the teachers' outputs"}


def summary_section(ctx: Context, grid: Grid, rows: Sequence[dict[str, Any]], verdict: dict[str, Any]) -> dict:
    """The ``distillation`` entry of ``summary.json``."""
    return {"setting": setting_record(ctx, grid),
            "students": [student_record(r) for r in grid.students],
            "pgd_at_students": [student_record(r) for r in grid.ceiling],
            "by_config": list(rows), "references": references(ctx, grid), "verdict": verdict,
            "seconds": grid.seconds}


def verdict_text(verdict: dict[str, Any]) -> str:
    """Markdown lines stating, per T, what the rule gives."""
    lines = []
    for T, v in verdict["by_T"].items():
        per = "; ".join(f"{n}: {o}" for n, o in v["per_ablation"].items())
        lines.append(f"- **T = {T}: claim 3 {v['claim3']}.** (A) robustness distils on clean inputs: "
                     f"{'yes' if v['A_robustness_distils'] else 'no'}; (B) incorrect-class information essential: "
                     f"{v['B_incorrect_classes_essential']}; (C) sample-wise confidence essential: "
                     f"{v['C_sample_confidence_essential']}. Per ablation: {per}.")
    return "\n".join(lines)


def first_sample(t: Any, T: float, quantile: float = 0.5) -> int:
    """A training image that the AT teacher classifies correctly, with its top probability at T at the given
    quantile of those images (for the target figure)."""
    p = torch.softmax(t.at.double() / T, dim=1)
    top = p.max(dim=1).values
    ok = p.argmax(dim=1) == t.labels
    if not ok.any():
        raise ValueError("the AT teacher classifies no training image correctly")
    gap = (top - top[ok].quantile(quantile)).abs().masked_fill(~ok, float("inf"))
    return int(gap.argmin())


def setting_frame(ctx: Context, grid: Grid) -> pd.DataFrame:
    """The students' setting as a table (printed by the chapter, so no number is hand-typed)."""
    s, p = ctx.profile.distill, ctx.profile
    A = eval_attacks(ctx)
    n_cached = sum(r.cached for r in grid.students + grid.ceiling)
    rows = {
        "teachers": f"chapter 02's standard and {p.main_at.label} models ({p.arch}, width {p.width}), seeds "
                    f"{', '.join(map(str, grid.seeds))}",
        "students": f"{p.arch}, width {s.student_width or p.width}; student seed s is distilled from the teachers of "
                    f"seed s",
        "training inputs": f"the {len(ctx.data.train_y)} clean, unaugmented training images; targets computed once",
        "schedule": f"{s.epochs} epochs, batch {s.batch_size}, SGD (Nesterov momentum 0.9, weight decay "
                    f"{p.weight_decay}), one-cycle lr; last-epoch weights",
        "temperature → peak lr": ", ".join(f"T={T:g} → {s.lr_at(T):g}" for T in s.temperatures)
                                 + f"; α = {s.alpha:g}; KL with batchmean reduction",
        "hard_labels control": f"plain cross-entropy (α = 0), peak lr {p.lr:g} (the teachers' recipe)",
        "PGD-AT student (ceiling)": f"student architecture and schedule, {p.train_config(p.main_at).attack.label} "
                                    f"training attack, peak lr {p.lr:g}",
        "evaluation": f"the first {grid.n_eval} images of the fixed evaluation subset; {A['ce'].label} and "
                      f"{A['margin'].label} (the teachers' attacks, random start)",
        "masking checks": f"{A['few'].label}; PGD-{s.many_steps} CE on the PGD-{A['ce'].steps} survivors; L∞ ε = "
                          f"{', '.join(f'{e:g}' for e in s.sweep_eps)} chained on survivors; transfer of both "
                          f"teachers' PGD-{A['ce'].steps} CE examples",
        "margins of the rule": f"removes: mean Δ below −{100 * s.remove_margin:g} pp; keeps: interval within "
                               f"±{100 * s.equivalence_margin:g} pp",
        "this run": f"{len(grid.students)} students and {len(grid.ceiling)} PGD-AT students, {n_cached} loaded from "
                    f"the cache, {grid.seconds:.0f} s",
    }
    return pd.DataFrame({"value": rows}).rename_axis("setting")


def findings_text(rows: Sequence[dict[str, Any]], refs: dict[str, dict[str, Any]]) -> str:
    """Plain statements generated from the numbers: how much robustness the full student keeps of its
    teacher's, and what each information-removing ablation does to it."""
    at_label = next(k for k in refs if k.startswith("AT teacher"))
    at_rob, ceil = refs[at_label]["robust"]["mean"], refs["PGD-AT student (ceiling)"]["robust"]["mean"]
    lines = []
    for T in sorted({r["T"] for r in rows}):
        by = {r["ablation"]: r for r in rows if r["T"] == T}
        full = by["full"]["robust"]["mean"]
        lines.append(f"- T = {T:g}: the full student keeps {100 * full:.1f}% robust accuracy, against "
                     f"{100 * at_rob:.1f}% for its AT teacher and {100 * ceil:.1f}% for a PGD-AT student of the same "
                     f"size and schedule (hard labels: {100 * by['hard_labels']['robust']['mean']:.1f}%).")
        for n in ("uniform_nonmax", "shuffle_nonmax", "uniform_confidence", "smoothed_labels", "swap_confidence"):
            d = by[n]["diff_vs_full"]["robust"]
            lines.append(f"  - {n}: {100 * by[n]['robust']['mean']:.1f}% robust, Δ {_pp(d)} → **{by[n]['verdict']}**")
    kept = [f"{n} at T={r['T']:g} ({r['verdict']})" for r in rows for n in ("uniform_nonmax", "shuffle_nonmax")
            if r["ablation"] == n and r["verdict"] in ("keeps robustness", "raises robustness")]
    if kept:
        lines.append(f"\n**Plainly: on this dataset, removing the teacher's incorrect-class information did not remove "
                     f"the student's robustness** — {'; '.join(kept)}. The paper's claim that this information is "
                     f"essential is not reproduced here.")
    return "\n".join(lines)
