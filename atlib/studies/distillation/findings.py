"""Chapter 04's generated prose: the numbers its text quotes (glue), the setting table, the verdict in words
and the findings, each explanation stated as a hypothesis next to the number that bears on it."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from atlib.core import stats
from atlib.studies.context import Context
from atlib.studies.distillation import rules
from atlib.studies.distillation.runs import Grid, eval_attacks
from atlib.studies.distillation.settings import PILOT_LR_GRID
from atlib.studies.distillation.targets import ABLATIONS
from atlib.studies.distillation.views import pp
from atlib.studies.prose import glue, glue_setting, t_factor
from atlib.studies.rule import pp as pp_text
from atlib.studies.shrinkage import rules as shrinkage_rules
from atlib.studies.shrinkage.convergence import pilot_record, stale_fields, student_key

# ARD's released defaults (Goldblum et al. 2020), quoted by the chapter for comparison; never used to train
ARD_T, ARD_LR = 30.0, 0.1


def glue_prose(ctx: Context) -> None:
    """Glue every number chapter 04's prose quotes (settings of this profile, ARD's defaults, the t factors of
    the rule), on top of :func:`prose.glue_setting`'s; the rule's own terms are glued by :func:`prose.glue_rule`."""
    s, k, n = ctx.profile.distill, ctx.data.num_classes, len(ctx.profile.seeds)
    glue_setting(ctx)
    temps = [f"{T:g}" for T in s.temperatures]
    for name, value in {"temps": " and ".join(temps), "T_low": temps[0], "T_high": temps[-1],
                        "ard_T": f"{ARD_T:g}", "ard_lr": f"{ARD_LR:g}", "ard_lr_here": f"{ARD_LR / k:.3g}",
                        "lr_grid": ", ".join(f"{x:g}" for x in PILOT_LR_GRID), "n_classes": k,
                        "few_steps": s.few_steps, "many_steps": s.many_steps, "chance_eps": f"{s.sweep_eps[-1]:g}",
                        "t_df": n - 1, "student_width": _width(s.student_width or ctx.profile.width),
                        "teacher_width": _width(ctx.profile.width), "student_epochs": s.epochs,
                        "teacher_epochs": ctx.profile.epochs, "t_n": _t_text(n),
                        "t_adj": _t_text(n, rules.RULE.bonferroni_level), "apgd_steps": s.apgd_steps,
                        "square_queries": s.square_queries, "square_subset": s.square_subset,
                        "n_student_seeds": n,
                        "student_criterion": pp_text(shrinkage_rules.RULE.student_convergence)}.items():
        glue(name, value)


def _t_text(n: int, level: float | None = None) -> str:
    """The Student-t factor over ``n`` seeds at ``level`` (default: the book's), as the prose quotes it."""
    return f"{t_factor(n, level):.2f}" if n > 1 else "undefined (one seed)"


def _width(w: int | None) -> int | str:
    return w if w is not None else "the architecture's default"


def setting_frame(ctx: Context, grid: Grid) -> pd.DataFrame:
    """The students' setting as a table (printed by the chapter, so no number is hand-typed)."""
    s, p = ctx.profile.distill, ctx.profile
    A = eval_attacks(ctx)
    n_cached = sum(r.cached for r in grid.students + grid.ceiling)
    rows = {
        "teachers": f"chapter 02's standard and {p.main_at.label} models ({p.arch}, width {p.width}), seeds "
                    f"{', '.join(map(str, grid.seeds))}",
        "students": f"{p.arch}, width {s.student_width or p.width}; student seed s is distilled from the teachers of "
                    f"seed s ({len(grid.seeds)} paired seeds)",
        "training inputs": f"the {len(ctx.data.train_y)} clean, unaugmented training images; targets computed once",
        "schedule": f"{s.epochs} epochs, batch {s.batch_size}, SGD (Nesterov momentum 0.9, weight decay "
                    f"{p.weight_decay}), one-cycle lr; last-epoch weights",
        "temperature → peak lr": ", ".join(f"T={T:g} → {s.lr_at(T):g}" for T in s.temperatures)
                                 + f"; α = {s.alpha:g}; KL with batchmean reduction",
        "hard_labels control": f"plain cross-entropy (α = 0), peak lr {p.lr:g} (the teachers' recipe)",
        "PGD-AT student (ceiling)": f"student architecture and schedule, {p.train_config(p.main_at).attack.label} "
                                    f"training attack, peak lr {p.lr:g}",
        "robust accuracy": f"the first {grid.n_eval} images of the fixed evaluation subset; a sample is robust if it "
                           f"survives {A['ce'].label}, {A['margin'].label}, APGD-CE and APGD-DLR (torchattacks, "
                           f"{s.apgd_steps} steps); the APGDs attack the PGD survivors, exact for the minimum",
        "masking checks": f"{A['few'].label}; PGD-{s.many_steps} CE on the PGD-{A['ce'].steps} survivors; L∞ ε = "
                          f"{', '.join(f'{e:g}' for e in s.sweep_eps)} chained on survivors; transfer of both "
                          f"teachers' PGD-{A['ce'].steps} CE examples; Square ({s.square_queries} queries, first "
                          f"{s.square_subset} images) on {', '.join(rules.RULE.square_arms)}",
        "this run": f"{len(grid.students)} students and {len(grid.ceiling)} PGD-AT students, {n_cached} loaded from "
                    f"the cache, {grid.seconds:.0f} s",
    }
    return pd.DataFrame({"value": rows}).rename_axis("setting")


def student_convergence_text(ctx: Context) -> str:
    """Markdown: what the committed convergence pilot says about the full students (chapter 02 quotes the rest)."""
    p = ctx.profile
    rec, cmd = pilot_record(p), f"`python -m atlib pilot convergence --profile {p.name}`"
    if rec is None:
        return f"**No convergence pilot is recorded for `{p.name}`**: the students' convergence is not shown ({cmd})."
    stale = stale_fields(rec, p)
    keys = {T: student_key(T) for T in p.distill.temperatures}
    if stale or any(k not in rec["deltas"] for k in keys.values()):
        why = f"differs in {', '.join(stale)}" if stale else "it has no students"
        return (f"**The recorded pilot (commit `{rec['commit'][:12]}`) does not cover these students** ({why}): "
                f"their convergence is not shown. Re-run {cmd}.")
    parts = [f"T = {T:g}: {100 * rec['deltas'][k]:+.2f} pp ({'met' if rec['criterion_met'][k] else '**not met**'})"
             for T, k in keys.items()]
    ok = all(rec["criterion_met"][k] for k in keys.values())
    return (f"Convergence pilot ({cmd}, commit `{rec['commit'][:12]}`, {rec['date']}): doubling the students' epochs "
            f"({rec['schedule']['student_epochs']} → {2 * rec['schedule']['student_epochs']}) moves the full students' "
            f"worst-case robust accuracy (mean of {len(rec['seeds'])} seeds) by " + "; ".join(parts) + ". "
            + (f"The students **converge** by the pilot's criterion "
               f"(< {pp_text(shrinkage_rules.RULE.student_convergence)} pp)." if ok else
               "The students do **not** converge by the pilot's criterion: they are not trained to convergence."))


def decided_by(v: dict[str, Any]) -> str:
    """The statistic that decided claim 3 at one T, in words (the claims ledger quotes it)."""
    parts = []
    for part in v["decided_by"]:
        if part == "A":
            r = rules.RULE
            parts.append(f"A {v['A']['outcome']}: D = {r.full} − {r.baseline} {pp(v['D'])}, {r.full} − {r.hard} "
                         f"{pp(v['A']['full_minus_hard_labels'])}, E = {100 * v['E']:+.1f} pp")
        else:
            name = rules.RULE.part_ablation(part)
            e = v["decisive"][name]
            parts.append(f"{part} {v[part]}: {name} {e['outcome']}, Δa {pp(e['delta'])}, c {pp(e['c'])} "
                         f"({100 * e['level']:.1f}%)")
    return "; ".join(parts)


def verdict_text(verdict: dict[str, Any]) -> str:
    """Markdown lines stating, per T, what the rule gives and which statistic decided it."""
    lines = []
    for T, v in verdict["by_T"].items():
        if "invalid_reason" in v:
            lines.append(f"- **T = {T}: claim 3 {v['claim3']}** ({v['invalid_reason']}); what the rule would read "
                         f"from these students is not evidence: (A) {v['A']['outcome']}, (B) {v['B']}, (C) {v['C']}.")
            continue
        lines.append(f"- **T = {T}: claim 3 {v['claim3']}.** (A) robustness distils: {v['A']['outcome']}; "
                     f"(B) incorrect-class information essential: {v['B']}; (C) sample-wise confidence essential: "
                     f"{v['C']}. Decided by: {decided_by(v)}."
                     + (f" Flagged arms (never credited): {', '.join(v['flagged'])}." if v["flagged"] else ""))
    return "\n".join(lines)


def _gap(records: Sequence[dict[str, Any]], name: str, T: str) -> float | None:
    return next(r["mean_gap_logits"] for r in records if r["ablation"] == name and f"{r['T']:g}" == T)


def findings_text(verdict: dict[str, Any], rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]]) -> str:
    """Statements generated from the numbers: where the full student stands, what the descriptive ablations that
    keep the top class and change the incorrect classes do beside their runner-up gap, the teacher-free control,
    and the margin hypothesis with the number behind it."""
    r, lines = rules.RULE, []
    probes = [n for n, ab in ABLATIONS.items() if ab.group == "incorrect classes" and n not in r.decisive]
    for T, v in verdict["by_T"].items():
        by = {x["ablation"]: x for x in rows if f"{x['T']:g}" == T}
        full, gap_full = by[r.full]["robust"]["mean"], _gap(records, r.full, T)
        lines.append(f"- **T = {T}.** Full student {100 * full:.1f}% robust (worst case), baseline "
                     f"`{r.baseline}` {100 * by[r.baseline]['robust']['mean']:.1f}%, `{r.hard}` "
                     f"{100 * by[r.hard]['robust']['mean']:.1f}%, PGD-AT student {100 * v['ceiling']['mean']:.1f}%. "
                     f"Teacher-free control beside A: `{r.teacher_free}` − {r.full} "
                     f"{pp(by[r.teacher_free]['diff_vs_full']['robust'])}.")
        for name in probes:
            e, g = v["descriptive"][name], _gap(records, name, T)
            lines.append(f"  - `{name}` (descriptive): {e['outcome']}, Δa {pp(e['delta'])}, with a runner-up gap of "
                         f"{'∞' if g is None else f'{g:.2f}'} logit units against {gap_full:.2f} for `{r.full}`.")
        lines.append("  - " + margin_hypothesis(v, records, T))
    return "\n".join(lines)


def margin_hypothesis(v: dict[str, Any], records: Sequence[dict[str, Any]], T: str) -> str:
    """Hypothesis: the runner-up gap of the target, not the identity of the rivals, sets the student's
    robustness. The number that bears on it: Spearman ρ, over the distilled ablations at T, between the
    target's mean runner-up gap and the student's mean Δ robust (descriptive, no interval)."""
    arms = {**v["decisive"], **v["descriptive"]}
    pairs = [(_gap(records, n, T), e["delta"]["mean"]) for n, e in arms.items()
             if n != rules.RULE.hard and _gap(records, n, T) is not None]
    if len(pairs) < 3:
        return "Margin hypothesis: too few distilled ablations to relate gap and Δ."
    rho = stats.spearman([g for g, _ in pairs], [d for _, d in pairs])
    rivals = rules.RULE.part_ablation("B")  # B's ablation keeps every value, so every gap, and moves the rivals
    return (f"*Hypothesis (margin):* a wider runner-up gap in the target, rather than which classes are the rivals, "
            f"raises the student's robustness. Across the {len(pairs)} distilled ablations at T = {T}, Spearman ρ "
            f"between the target's runner-up gap and Δa is {rho:+.2f} (descriptive: one value per ablation, no "
            f"interval); `{rivals}`, which keeps every gap but moves the rivals, reads "
            f"*{v['decisive'][rivals]['outcome']}*.")
