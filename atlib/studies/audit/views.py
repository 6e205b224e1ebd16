"""The attack audit for readers: tables, figure, verdict, summary entry, and the diagnosis of a flag.

``atlib.studies.audit.runs`` computes (oracles, worst case, flags, masking checks); this module presents, and, for a
model that APGD beats by more than the margin, reruns atlib's PGD in variants to find out why.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

import pandas as pd
import torch
from torch import nn

from atlib.core import attacks, stats
from atlib.core.attacks import AttackConfig
from atlib.studies.audit import rules
from atlib.core.oracles import torchattacks_version
from atlib.core.store import model_hash, tensor_hash
from atlib.studies.audit.runs import ATTACKS, SCHEMA, Target, _cached, student_targets, training_targets
from atlib.studies.audit.settings import AuditSettings
from atlib.training.train import correct
from atlib.core.store import Store
from atlib.studies.prose import fmt

Tensor = torch.Tensor

# ---------------------------------------------------------------- diagnosing a flag

def diagnose(model: nn.Module, x: Tensor, y: Tensor, threat: AttackConfig, robust: Mapping[str, Tensor],
             settings: AuditSettings, seed: int, store: Store | None = None, data_fp: str = "") -> pd.DataFrame:
    """Why does APGD beat atlib's PGD on this model? atlib PGD variants against the APGD minimum.

    Per variant: its accuracy and the paired counts of samples that it leaves robust but an APGD breaks,
    and the other way round (a real gap is one-sided; noise is two-sided).
    """
    cos = AttackConfig.cosine(threat.norm, threat.eps, threat.steps)
    variants = {
        f"PGD-{threat.steps} ×{settings.restarts} restarts (CE)": replace(threat, restarts=settings.restarts),
        f"PGD-{threat.steps}, cosine step ε/2→0 (CE)": cos,
        f"PGD-{threat.steps}, cosine step ε/2→0 (margin)": replace(cos, loss="margin"),
        f"PGD-{threat.steps}, cosine step ×{settings.restarts} restarts (margin)":
            replace(cos, loss="margin", restarts=settings.restarts),
    }
    cfg = {"schema": SCHEMA, "model": model_hash(model), "data": tensor_hash(x, y), "threat": asdict(threat),
           "settings": asdict(settings), "seed": seed}

    def compute() -> dict[str, Any]:
        out = {}
        for name, c in variants.items():
            atk = attacks.make_attack(model, c)
            gen = torch.Generator(device=x.device).manual_seed(seed)
            xa = torch.cat([atk(x[i:i + settings.batch_size], y[i:i + settings.batch_size], gen)
                            for i in range(0, len(x), settings.batch_size)])
            out[name] = correct(model, xa, y)
        return out

    found, _ = _cached(store, "diagnose", cfg, data_fp, compute, extra=[sys.modules[__name__]])
    apgd = robust["apgd_ce"] & robust["apgd_dlr"]
    rows = {}
    for name, r in {f"atlib {threat.label} (as evaluated)": robust["atlib_pgd_ce"],
                    f"atlib {replace(threat, loss='margin').label} (as evaluated)": robust["atlib_pgd_margin"],
                    **found, "min(APGD-CE, APGD-DLR)": apgd}.items():
        rows[name] = {"accuracy (%)": round(100 * float(r.float().mean()), 1),
                      "robust here, broken by an APGD": int((r & ~apgd).sum()),
                      "broken here, robust to both APGD": int((~r & apgd).sum())}
    return pd.DataFrame.from_dict(rows, orient="index")


def diagnose_flagged(records: Sequence[Mapping[str, Any]], targets: Sequence[Target], x: Tensor, y: Tensor,
                     settings: AuditSettings, store: Store | None = None, data_fp: str = "") -> dict[str, pd.DataFrame]:
    """:func:`diagnose` for the first ``settings.diagnose_max`` models flagged against APGD."""
    by_name = {t.name: t for t in targets}
    out = {}
    for r in records:
        if len(out) >= settings.diagnose_max:
            break
        if any(f.endswith("_vs_apgd") for f in r["flags"]):
            t = by_name[r["name"]]
            out[r["name"]] = diagnose(t.model, x[:r["n"]], y[:r["n"]], t.threat, r["robust"], settings, t.seed,
                                      store, data_fp)
    return out


def diagnose_runs(ctx: Any, runs: Sequence[Any], records: Sequence[Mapping[str, Any]],
                  settings: AuditSettings | None = None) -> dict[str, pd.DataFrame]:
    """:func:`diagnose_flagged` for chapter 02's models (as audited by :func:`audit_runs`)."""
    s = settings or ctx.profile.audit
    return diagnose_flagged(records, training_targets(ctx, runs), ctx.eval_x, ctx.eval_y, s, ctx.store,
                            ctx.data.fingerprint)


def diagnose_students(ctx: Any, grid: Any, records: Sequence[Mapping[str, Any]],
                      settings: AuditSettings | None = None) -> dict[str, pd.DataFrame]:
    """:func:`diagnose_flagged` for chapter 04's students (as audited by ``audit.audit_students``)."""
    s = settings or ctx.profile.audit
    targets = student_targets(ctx, grid, sorted({r["seed"] for r in records}))
    return diagnose_flagged(records, targets, ctx.eval_x, ctx.eval_y, s, ctx.store, ctx.data.fingerprint)


def quoted_vs_apgd(records: Sequence[Mapping[str, Any]], diagnoses: Mapping[str, pd.DataFrame]) -> str:
    """Markdown, per model flagged against APGD: which atlib loss falls short, whether the shortfall is
    one-sided (a real weakness) or two-sided (noise) in the diagnosis, and the robust accuracy the book
    quotes from atlib (robust only if both PGD-CE and PGD-margin fail) against the per-sample APGD minimum."""
    lines = []
    for r in records:
        flagged = [f.removesuffix("_vs_apgd") for f in r["flags"] if f.endswith("_vs_apgd")]
        if not flagged:
            continue
        rb = r["robust"]
        apgd = rb["apgd_ce"] & rb["apgd_dlr"]
        both = float((rb["atlib_pgd_ce"] & rb["atlib_pgd_margin"]).float().mean())
        parts = []
        for k in flagged:
            mine = rb[f"atlib_{k}"]
            up, down = int((mine & ~apgd).sum()), int((~mine & apgd).sum())
            kind = ("one-sided: a real weakness of this loss here" if rules.RULE.one_sided_shortfall(up, down)
                    else "two-sided: noise")
            parts.append(f"atlib {k.replace('pgd_', 'PGD-').replace('ce', 'CE')} leaves {up} samples robust that an "
                         f"APGD breaks, and breaks {down} that both APGD leave robust ({kind})")
        apgd_acc = float(apgd.float().mean())
        lines.append(f"- **{r['name']}**: {'; '.join(parts)}. Quoted (PGD-CE ∧ PGD-margin): {100 * both:.1f}% vs "
                     f"APGD-CE ∧ APGD-DLR {100 * apgd_acc:.1f}% → "
                     f"{'within' if both <= apgd_acc + rules.RULE.apgd_gap else '**more than**'} "
                     f"{rules.RULE.terms()['apgd_gap']} pp"
                     + (f"; restarts {'close' if _restarts_close(diagnoses.get(r['name'])) else 'do not close'} the gap."
                        if r["name"] in diagnoses else "."))
    return "\n".join(lines)


def _variants(table: pd.DataFrame) -> tuple[float, dict[str, tuple[float, bool]]]:
    """A diagnosis table's APGD minimum (%) and, per rerun variant, its accuracy (%) and whether that is
    within the APGD margin (the rows between the two "as evaluated" ones and the APGD row)."""
    apgd = float(table.loc["min(APGD-CE, APGD-DLR)", "accuracy (%)"])
    acc = {v: float(table.loc[v, "accuracy (%)"]) for v in table.index[2:-1]}
    return apgd, {v: (a, a <= apgd + 100 * rules.RULE.apgd_gap) for v, a in acc.items()}


def _restarts_close(table: pd.DataFrame | None) -> bool:
    return table is not None and all(ok for v, (_, ok) in _variants(table)[1].items() if "restarts" in v)


def diagnosis_text(name: str, table: pd.DataFrame) -> str:
    """Markdown: does a cosine step schedule or do restarts bring atlib's PGD within the APGD margin?"""
    apgd, variants = _variants(table)
    return "\n".join(f"- {name}, {v}: {a:.1f}% vs APGD minimum {apgd:.1f}% → "
                     f"{'within' if ok else '**still more than**'} {rules.RULE.terms()['apgd_gap']} pp"
                     for v, (a, ok) in variants.items())


def show_diagnoses(diagnoses: Mapping[str, pd.DataFrame], n: int, noun: str = "model") -> None:
    """Display each flagged model's diagnosis table and its verdicts (or that nothing was flagged)."""
    from IPython.display import Markdown, display

    if not diagnoses:
        display(Markdown(f"No {noun} is flagged against APGD: nothing to diagnose."))
    for name, table in diagnoses.items():
        display(Markdown(f"**{name}**: atlib PGD variants against APGD on the same {n} samples"))
        display(table)
        display(Markdown(diagnosis_text(name, table)))


# ---------------------------------------------------------------- tables, text, summary

def _fmt_iv(vals: Sequence[float]) -> str:
    return fmt(stats.mean_ci(vals))


def attack_table(records: Sequence[Mapping[str, Any]], settings: AuditSettings) -> pd.DataFrame:
    """What each column of the main table ran, per threat model present."""
    rows = {}
    for rec in records:
        t = rec["threat"]
        sym = "L∞" if t["norm"] == "linf" else "L2"
        tag = f"{sym} ε={t['eps']:.4g}"
        if any(r.startswith(tag) for r in rows):
            continue
        step = f"{t['step_size']:.3g}"
        rows[f"{tag}: atlib PGD-CE"] = (f"atlib, CE loss, {t['steps']} steps, step {step}, random start, best iterate", rec["n"])
        rows[f"{tag}: atlib PGD-margin"] = (f"atlib, margin loss max_j≠y z_j − z_y, {t['steps']} steps, step {step}, random start", rec["n"])
        rows[f"{tag}: torchattacks PGD"] = (f"torchattacks {'PGD' if t['norm'] == 'linf' else 'PGDL2'} "
                                            f"{torchattacks_version()}, CE, {t['steps']} steps, step {step}, random start, last iterate", rec["n"])
        rows[f"{tag}: APGD-CE"] = (f"torchattacks APGD, CE, {settings.apgd_steps} steps, {settings.apgd_restarts} restart(s)", rec["n"])
        rows[f"{tag}: APGD-DLR"] = (f"torchattacks APGD, DLR loss, {settings.apgd_steps} steps, {settings.apgd_restarts} restart(s)", rec["n"])
    return pd.DataFrame.from_dict(rows, orient="index", columns=["attack", "samples"])


def group_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Accuracy (%) per group of models: mean ± 95% t-interval over seeds, worst case last."""
    cols = {"clean": "clean"} | ATTACKS | {"worst_case": "worst case (all attacks)"}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    table = {}
    for g, rs in groups.items():
        t = rs[0]["threat"]
        row = {"threat": f"{'L∞' if t['norm'] == 'linf' else 'L2'} ε={t['eps']:.4g}"}
        row |= {title: _fmt_iv([100 * r["acc"][k] for r in rs]) for k, title in cols.items()}
        row["flagged models"] = f"{sum(bool(r['flags']) for r in rs)} of {len(rs)}"
        table[g] = row
    return pd.DataFrame.from_dict(table, orient="index")


def model_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model: every accuracy (%), atlib PGD-CE minus the worst case (pp), the flags."""
    rows = {}
    for r in records:
        row = {t: round(100 * r["acc"][k], 1) for k, t in ({"clean": "clean"} | ATTACKS).items()}
        row["worst case"] = round(100 * r["acc"]["worst_case"], 1)
        row["PGD-CE − worst (pp)"] = round(100 * (r["acc"]["atlib_pgd_ce"] - r["acc"]["worst_case"]), 1)
        row["flags"] = ", ".join(r["flags"]) or "none"
        rows[r["name"]] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def masking_table(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model, check) for the models that had masking checks."""
    rows = []
    for r in records:
        if not r["masking"]:
            continue
        for c in r["masking"]["checks"]:
            rows.append({"model": r["name"], "check": c["check"], "measured": c["detail"],
                         "noise threshold (pp)": round(100 * c["threshold"], 1),
                         "result": "pass" if c["passed"] else "FLAG"})
    return pd.DataFrame(rows).set_index(["model", "check"])


def sweep_figure(records: Sequence[Mapping[str, Any]], num_classes: int):
    """Accuracy under L∞ PGD-CE against ε for every model with masking checks; chance as a line."""
    import matplotlib.pyplot as plt

    from atlib.core.plots import COLORS

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, r in enumerate(x for x in records if x["masking"]):
        raw = r["masking"]["raw"]
        ax.plot(raw["linf_grid"], [100 * a for a in raw["sweep"]], marker="o", color=COLORS[i % len(COLORS)],
                label=r["name"])
    ax.axhline(100 / num_classes, color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("L∞ ε of PGD-CE")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def verdict_text(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: which models are flagged and by which rule, and the largest PGD-vs-worst-case gap."""
    flagged = [r for r in records if r["flags"]]
    gap = max(records, key=lambda r: r["acc"]["atlib_pgd_ce"] - r["acc"]["worst_case"])
    g = 100 * (gap["acc"]["atlib_pgd_ce"] - gap["acc"]["worst_case"])
    lines = [f"- Models audited: {len(records)}; flagged: **{len(flagged)}**."]
    lines += [f"- **{r['name']}**: {', '.join(r['flags'])}" for r in flagged]
    lines.append(f"- Largest drop from atlib PGD-CE to the worst case: {g:.1f} pp ({gap['name']}).")
    if not flagged:
        lines.append("- No rule fired: on these models atlib's PGD is as strong as the oracles within the stated "
                     "margins, and no masking check failed.")
    return "\n".join(lines)


def section(records: Sequence[Mapping[str, Any]], settings: AuditSettings) -> dict[str, Any]:
    """The ``evaluation`` entry of ``summary.json`` (no per-sample tensors)."""
    models = []
    for r in records:
        m = {k: r[k] for k in ("name", "group", "seed", "meta", "threat", "n", "flags")}
        m["robust_acc"] = {k: r["acc"][k] for k in ATTACKS}
        m["clean_acc"] = r["acc"]["clean"]
        m["worst_case"] = r["acc"]["worst_case"]
        if r["masking"]:
            m["masking"] = {"n": r["masking"]["n"], "raw": r["masking"]["raw"],
                            "checks": [{k: c[k] for k in ("flag", "check", "value", "threshold", "passed")}
                                       for c in r["masking"]["checks"]]}
        models.append(m)
    groups = {}
    for g in dict.fromkeys(r["group"] for r in records):
        rs = [r for r in records if r["group"] == g]
        groups[g] = {k: stats.mean_ci([r["acc"][k] for r in rs]).as_dict() for k in ("clean", *ATTACKS, "worst_case")}
    return {"settings": asdict(settings) | {"torchattacks": torchattacks_version(),
                                            "rules": {"torchattacks_gap": rules.RULE.torchattacks_gap, "apgd_gap": rules.RULE.apgd_gap,
                                                      "noise": "max(2·sqrt(p(1−p)/n), 3/n)"}},
            "models": models, "groups": groups, "flagged": [r["name"] for r in records if r["flags"]]}


def summary(records: Sequence[Mapping[str, Any]], diagnoses: Mapping[str, pd.DataFrame],
            student_records: Sequence[Mapping[str, Any]], student_diagnoses: Mapping[str, pd.DataFrame],
            settings: AuditSettings) -> dict[str, Any]:
    """Chapter 05's part of ``summary.json`` (``evaluation``): the teachers' audit with its diagnoses, and the
    students' (:func:`section` each)."""
    def tables(d: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
        return {name: table.to_dict(orient="index") for name, table in d.items()}

    return {"evaluation": section(records, settings) | {"diagnoses": tables(diagnoses), "students": section(
        student_records, settings) | {"diagnoses": tables(student_diagnoses)}}}
