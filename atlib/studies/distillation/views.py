"""Chapter 04's numbers: per-(ablation, T) means with t-intervals, seed-paired differences from ``full``, the
property table of the targets, the verdict by the chapter's pre-registered rule, tables and ``summary.json``."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from atlib.core import stats
from atlib.studies import validity
from atlib.studies.distillation import rules
from atlib.studies.distillation.runs import WORST_CASE, Grid, StudentRun, eval_attacks
from atlib.studies.distillation.targets import ABLATIONS, TeacherLogits, property_records, ratio_rescale_inverts, soften
from atlib.studies.prose import fmt
from atlib.studies.context import Context
from atlib.studies.shrinkage.rules import RULE as GATES_RULE  # the validity gates' thresholds, written once there

# per-student accuracies: summary key -> robustness mask (``robust``: the worst case over ``WORST_CASE``)
METRICS = {"clean": "clean", "pgd_ce": "ce", "pgd_margin": "margin", "apgd_ce": "apgd_ce", "apgd_dlr": "apgd_dlr",
           "pgd_both": "pgd", "robust": "robust", "worst": "worst", "transfer_at": "transfer_at",
           "transfer_std": "transfer_std"}


def config_label(ablation: str, T: float | None) -> str:
    return ablation if T is None else f"{ablation} (T={T:g})"


def student_record(r: StudentRun) -> dict[str, Any]:
    """One student's ``summary.json`` entry: its accuracies, checks and (where run) the Square check."""
    return {"ablation": r.ablation, "T": r.T, "alpha": r.alpha, "seed": r.seed, "clean_acc": r.acc("clean"),
            "robust_acc": {"pgd_ce": r.acc("ce"), "pgd_margin": r.acc("margin"), "apgd_ce": r.acc("apgd_ce"),
                           "apgd_dlr": r.acc("apgd_dlr"), "pgd_both": r.acc("pgd"), "worst_case": r.acc("robust"),
                           "worst_case_attacks": list(WORST_CASE), "every_attack": r.acc("worst")},
            "transfer_acc": {"from_at_teacher": r.acc("transfer_at"), "from_std_teacher": r.acc("transfer_std")},
            "square": r.square, "masking_flag": bool(r.flags), "masking_flags": r.flags,
            "train_seconds": r.train_seconds}


def aggregate(grid: Grid) -> list[dict[str, Any]]:
    """One row per (ablation, T) (``hard_labels``: its T-free students, compared with ``full`` at each T):
    every accuracy as a mean with its 95% t-interval, and the seed-paired difference from ``full``."""
    rows = []
    for T in grid.temperatures:
        full = {r.seed: r for r in grid.runs(rules.RULE.full, T)}
        for name, ab in ABLATIONS.items():
            runs = grid.runs(name, T)
            row: dict[str, Any] = {"ablation": name, "T": T, "T_used": None if ab.plain_ce else T,
                                   "alpha": runs[0].alpha, "seeds": [r.seed for r in runs]}
            for key, mask in METRICS.items():
                row[key] = stats.mean_ci([r.acc(mask) for r in runs]).as_dict()
            row["flagged_seeds"] = [r.seed for r in runs if r.flags]
            row["flags"] = sorted({f for r in runs for f in r.flags})
            row["diff_vs_full"] = None if name == rules.RULE.full else {
                k: stats.mean_ci([r.acc(METRICS[k]) - full[r.seed].acc(METRICS[k]) for r in runs]).as_dict()
                for k in ("robust", "clean", "pgd_both")}
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- the verdict
def gates(grid: Grid, labels: torch.Tensor) -> list[validity.Gate]:
    """The validity gates claim 3 reads (thresholds: chapter 02's rule): the teachers' (learned; the AT teachers
    robust) and the ceiling's (each PGD-AT student's worst-case robust accuracy above the constant predictor's on
    the students' evaluation images ``labels``)."""
    runs = [r for s in sorted(grid.teachers) for r in grid.teachers[s].values()]
    at = [r.spec for r in runs if r.spec.kind == "at"]
    out = GATES_RULE.model_gates(runs, tuple(dict.fromkeys(r.spec for r in runs)), at[0]) if at else []
    return out + [validity.above_constant(f"ceiling above chance: {rules.RULE.ceiling}_s{r.seed}", r.acc("robust"),
                                          labels, GATES_RULE.learned_margin, "worst-case robust")
                  for r in sorted(grid.ceiling, key=lambda r: r.seed)]


def claim3(grid: Grid, labels: torch.Tensor) -> dict[str, Any]:
    """``rules.claim3_at_T`` at every T on the worst-case robust accuracies, seeds paired by position, behind the
    validity gates (:func:`gates`): a failed gate makes claim 3 **invalid** at every T, with its reason."""
    checked = gates(grid, labels)
    ceiling = sorted(grid.ceiling, key=lambda r: r.seed)
    by_T = {}
    for T in grid.temperatures:
        runs = {a: grid.runs(a, T) for a in ABLATIONS}
        if any([r.seed for r in v] != [r.seed for r in ceiling] for v in runs.values()):
            raise ValueError(f"T={T:g}: the arms do not share the same seeds; claim 3's rule needs paired seeds")
        robust = {a: [r.acc("robust") for r in v] for a, v in runs.items()}
        flags = {a: [bool(r.flags) for r in v] for a, v in runs.items()} | {
            rules.RULE.ceiling: [bool(r.flags) for r in ceiling]}
        v = rules.claim3_at_T(robust, [r.acc("robust") for r in ceiling], flags)
        g = validity.gated(v["claim3"], checked)
        by_T[f"{T:g}"] = v | {"claim3": g["outcome"], "ceiling": stats.mean_ci([r.acc("robust") for r in ceiling]).as_dict()} | (
            {} if g["valid"] else {"decided_by": [], "invalid_reason": g["invalid_reason"]})
    return {"rule": rules.RULE.text(), "seeds": list(grid.seeds), "measure": "worst-case robust accuracy over "
            + ", ".join(WORST_CASE), "by_T": by_T, "gates": [x.as_dict() for x in checked],
            "valid": not validity.failed(checked)}


# ---------------------------------------------------------------------------------------------- tables
SHOWN_QUANTILE = 0.1  # the target figure shows an image whose AT top probability sits at this quantile (a hard one)


def ablation_markdown() -> str:
    """The ablations as a Markdown table (target, what each keeps and destroys, its role in the rule), then what
    decides the meaning of those with a note (one line per distinct note)."""
    r = rules.RULE
    roles = {r.baseline: "baseline", r.hard: "control", r.teacher_free: "teacher-free control"} | {
        a: f"decisive for {p}" for a, p in r.decisive.items()}
    lines = ["| ablation | target | keeps | destroys |", "| --- | --- | --- | --- |"]
    lines += [f"| `{n}`" + (f" ({roles[n]})" if n in roles else "") + f" | {a.target} | {a.keeps} | {a.destroys} |"
              for n, a in ABLATIONS.items()]
    notes: dict[str, list[str]] = {}
    for n, a in ABLATIONS.items():
        if a.note:
            notes.setdefault(a.note, []).append(f"`{n}`")
    return "\n".join(lines + [""] + [f"- {', '.join(ns)}: {note}." for note, ns in notes.items()])


def ratio_rescale_text(t: TeacherLogits, temperatures: Sequence[float]) -> str:
    """Markdown: how often the ratio-keeping rescaling (not used) would change a training sample's argmax, per T."""
    return "Ratio-keeping rescaling would change the argmax of this share of training samples: " + ", ".join(
        f"T={T:g}: {100 * ratio_rescale_inverts(soften(t.at, T), float(soften(t.at, T).max(1).values.mean())):.2f}%"
        for T in temperatures) + " (the per-sample temperature changes none)."

def _pct(d: dict[str, Any]) -> str:
    return fmt(stats.Interval(100 * d["mean"], 100 * d["half_width"], d["n"]))


def pp(d: dict[str, Any]) -> str:
    """A difference (fractions) as ``+x.x [lo, hi] pp``, one decimal throughout."""
    if d["n"] < 2 or not math.isfinite(d["half_width"]):
        return f"{100 * d['mean']:+.1f} pp ({d['n']} seed)"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] pp"


def student_table(rows: Sequence[dict[str, Any]], steps: int = 20) -> pd.DataFrame:
    """Accuracy (%) per (ablation, T), mean ± 95% t-interval over seeds, and the paired Δ from ``full``.
    ``steps``: the evaluation PGD's steps (for the column titles)."""
    out = {}
    for r in rows:
        mark = f" ⚠ {len(r['flagged_seeds'])} flagged" if r["flagged_seeds"] else ""
        d = r["diff_vs_full"]
        out[config_label(r["ablation"], r["T"]) + (" [plain CE]" if r["T_used"] is None else "")] = {
            "clean": _pct(r["clean"]), f"PGD-{steps} CE ∧ margin": _pct(r["pgd_both"]),
            "APGD-CE": _pct(r["apgd_ce"]), "APGD-DLR": _pct(r["apgd_dlr"]),
            "robust (worst case)": _pct(r["robust"]) + mark,
            "Δ robust vs full (95%)": pp(d["robust"]) if d else "—", "Δ clean vs full": pp(d["clean"]) if d else "—",
            "masking checks": ", ".join(r["flags"]) or "passed"}
    return pd.DataFrame(out).T


def masking_table(ctx: Context, grid: Grid) -> pd.DataFrame:
    """Per (ablation, T) and the PGD-AT student: mean accuracy (%) under every attack of the checks, and Square."""
    s, k = ctx.profile.distill, ctx.profile.eval_steps
    cols = {"few": f"PGD-{s.few_steps} CE", "ce": f"PGD-{k} CE", "pgd": f"PGD-{k} CE ∧ margin",
            "many": f"… ∧ PGD-{s.many_steps}", "robust": "worst case (4 attacks)"}
    cols |= {f"eps_{e:g}": f"ε={e:g} (chain)" for e in s.sweep_eps}
    cols |= {"transfer_at": "transfer from AT teacher", "transfer_std": "transfer from std teacher"}
    groups = {config_label(a, T): grid.runs(a, T) for a, T in _configs(grid)} | {"PGD-AT student": grid.ceiling}
    out = {}
    for label, runs in groups.items():
        out[label] = {t: f"{100 * sum(r.acc(key) for r in runs) / len(runs):.1f}" for key, t in cols.items()}
        sq = [r.square for r in runs if r.square]
        out[label][f"Square vs gradient (first {s.square_subset})"] = (
            f"{100 * sum(q['square_acc'] for q in sq) / len(sq):.1f} vs "
            f"{100 * sum(q['gradient_acc'] for q in sq) / len(sq):.1f}" if sq else "not run")
        out[label]["flags (seeds)"] = "; ".join(f"s{r.seed}: {', '.join(r.flags)}" for r in runs if r.flags) or "none"
    return pd.DataFrame(out).T


def _configs(grid: Grid) -> list[tuple[str, float | None]]:
    return [(a, None) if ab.plain_ce else (a, T) for a, ab in ABLATIONS.items()
            for T in ((None,) if ab.plain_ce else grid.temperatures)]


def references(ctx: Context, grid: Grid) -> dict[str, dict[str, Any]]:
    """Teachers (chapter 02's models on the students' evaluation samples; robust = PGD CE ∧ margin, their APGD
    audit is chapter 05's) and the PGD-AT student (robust = the students' worst case)."""
    n = grid.n_eval
    out: dict[str, dict[str, Any]] = {}
    for kind, label in (("at", f"AT teacher ({ctx.profile.main_at.label})"), ("std", "standard teacher")):
        runs = [grid.teachers[s][kind] for s in grid.seeds]
        y = runs[0].labels[:n]

        def ok(r: Any, key: str) -> torch.Tensor:
            return r.logits[key][:n].argmax(1) == y

        out[label] = {"clean": stats.mean_ci([float(ok(r, "clean").float().mean()) for r in runs]).as_dict(),
                      "pgd_both": stats.mean_ci([float((ok(r, "linf_ce") & ok(r, "linf_margin")).float().mean())
                                                 for r in runs]).as_dict()}
        out[label]["robust"] = out[label]["pgd_both"]
    out["PGD-AT student (ceiling)"] = {k: stats.mean_ci([r.acc(m) for r in grid.ceiling]).as_dict()
                                       for k, m in METRICS.items() if k in ("clean", "pgd_both", "robust")}
    out["PGD-AT student (ceiling)"]["flagged_seeds"] = [r.seed for r in grid.ceiling if r.flags]
    return out


def reference_table(refs: dict[str, dict[str, Any]], steps: int = 20) -> pd.DataFrame:
    return pd.DataFrame({m: {"clean": _pct(v["clean"]), f"PGD-{steps} CE ∧ margin": _pct(v["pgd_both"]),
                             "robust (as used by the rule)": _pct(v["robust"])} for m, v in refs.items()}).T


PROPERTY_COLUMNS = {"mean_top": "mean top p", "mean_runner_up": "mean runner-up p",
                    "mean_gap_logits": "runner-up gap T·ln(p₁/p₂)", "entropy": "entropy (nats)",
                    "rho_top_full": "ρ(top p, full's)", "tau_nonmax_full": "non-max τ with full",
                    "runner_up_eq_full": "runner-up = full's"}


def targets(grid: Grid) -> list[dict[str, Any]]:
    """The property table's records (teachers of the first seed; non-finite values, e.g. the one-hot
    target's infinite gap, as None so the JSON stays standard)."""
    seed = grid.seeds[0]
    recs = property_records(grid.outputs[seed], grid.temperatures, seed)
    return [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()} | {"seed": seed}
            for r in recs]


def property_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """What each target keeps of the full target at its T (one row per ablation and T)."""
    def cell(v: Any) -> str:
        return "—" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return pd.DataFrame({config_label(r["ablation"], r["T"]): {t: cell(r[k]) for k, t in PROPERTY_COLUMNS.items()}
                         for r in records}).T


def rule_a_table(verdict: dict[str, Any]) -> pd.DataFrame:
    """Part A per T: the baseline, D, full − hard labels, the ceiling, E and the outcome."""
    r, out = rules.RULE, {}
    level = f"{1 - r.alpha:.0%}"
    for T, v in verdict["by_T"].items():
        out[f"T={T}"] = {f"baseline b ({r.baseline}), robust %": _pct(v["baseline"]["robust"]),
                         f"D = {r.full} − b ({level})": pp(v["D"]),
                         f"{r.full} − {r.hard} ({level})": pp(v["A"]["full_minus_hard_labels"]),
                         "PGD-AT student, robust %": _pct(v["ceiling"]),
                         f"E = {r.ceiling_fraction:g} × (PGD-AT − b)": f"{100 * v['E']:+.1f} pp", "A": v["A"]["outcome"]}
    return pd.DataFrame(out).T


def ablation_table(verdict: dict[str, Any], records: Sequence[dict[str, Any]], kind: str) -> pd.DataFrame:
    """The ``decisive`` (Bonferroni-adjusted) or ``descriptive`` (unadjusted 95%) ablations per T: Δa, c, the
    outcome, and the target's runner-up gap beside the full target's."""
    gap = {(r["ablation"], f"{r['T']:g}"): r["mean_gap_logits"] for r in records}
    full, out = rules.RULE.full, {}
    for T, v in verdict["by_T"].items():
        for name, e in v[kind].items():
            g = gap.get((name, T))
            out[config_label(name, float(T))] = {
                "level": f"{100 * e['level']:.1f}%", f"Δa = a − {full}": pp(e["delta"]),
                f"c = a − ({full} + b)/2": pp(e["c"]), "outcome": e["outcome"] + (" (flagged arm)" if e["flagged"] else ""),
                f"runner-up gap (logits), {full} → a": f"{gap[(full, T)]:.2f} → " + ("∞" if g is None else f"{g:.2f}")}
    return pd.DataFrame(out).T


# ---------------------------------------------------------------------------------------------- summary
def setting_record(ctx: Context, grid: Grid) -> dict[str, Any]:
    """Everything a reader needs to know about how the students were made and attacked."""
    s, p = ctx.profile.distill, ctx.profile
    A = eval_attacks(ctx)
    return {"dataset": ctx.data.name, "train_images": len(ctx.data.train_y), "eval_samples": grid.n_eval,
            "student": f"{p.arch} width {s.student_width or p.width}", "teacher": f"{p.arch} width {p.width}",
            "epochs": s.epochs, "batch_size": s.batch_size, "weight_decay": p.weight_decay,
            "lr_by_T": {f"{T:g}": s.lr_at(T) for T in s.temperatures}, "alpha": s.alpha,
            "hard_labels_lr": p.lr, "reduction": "batchmean", "seeds": list(grid.seeds),
            "attacks": {k: (c.label if not isinstance(c, list) else [x.label for x in c]) for k, c in A.items()}
            | {"apgd": f"torchattacks APGD-CE and APGD-DLR, {s.apgd_steps} steps, 1 restart, L∞ ε={A['ce'].eps:g}",
               "square": f"torchattacks Square, L∞ ε={A['ce'].eps:g}, {s.square_queries} queries, first "
                         f"{s.square_subset} images, arms {', '.join(rules.RULE.square_arms)}"},
            "robust_measure": "per-sample worst case over " + ", ".join(WORST_CASE),
            "inputs": "clean, unaugmented training images; targets computed once from the teachers' outputs"}


def summary(ctx: Context, grid: Grid, rows: Sequence[dict[str, Any]], verdict: dict[str, Any],
            records: Sequence[dict[str, Any]]) -> dict:
    """Chapter 04's part of ``summary.json`` (``distillation``)."""
    return {"distillation": {"setting": setting_record(ctx, grid),
            "students": [student_record(r) for r in grid.students],
            "pgd_at_students": [student_record(r) for r in grid.ceiling],
            "by_config": list(rows), "targets": list(records), "references": references(ctx, grid),
            "verdict": verdict, "seconds": grid.seconds}}


def first_sample(t: Any, T: float, quantile: float = SHOWN_QUANTILE) -> int:
    """A training image that the AT teacher classifies correctly, with its top probability at T at the given
    quantile of those images (for the target figure)."""
    p = torch.softmax(t.at.double() / T, dim=1)
    top = p.max(dim=1).values
    ok = p.argmax(dim=1) == t.labels
    if not ok.any():
        raise ValueError("the AT teacher classifies no training image correctly")
    gap = (top - top[ok].quantile(quantile)).abs().masked_fill(~ok, float("inf"))
    return int(gap.argmin())
