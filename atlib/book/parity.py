"""Does bf16 training change the results? A parity table of two recorded books (``python -m atlib parity A B``).

Issue 26's adoption rule for bf16 autocast in training, fixed before the bf16 numbers were seen: every model type's
clean and robust accuracy moves by at most 1 pp between an fp32 book and a bf16 book of the same profile (seed
means; each shown with its t-interval over seeds, and the seed-paired difference with its own), and the claims
ledger's verdicts are the same. This module reads the two ``summary.json`` files and applies that rule; the speed
half of the rule (the cold book at least 15% faster) is measured end to end, not here.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from atlib.core import stats

LIMIT = 0.01  # the largest allowed move of a seed mean (1 pp)


def _models(s: dict[str, Any]) -> dict[tuple[str, str], dict[int, float]]:
    """(model type, measure) -> {seed: accuracy} for every kind of trained model the book publishes."""
    out: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for m in s["models"]:  # chapter 02
        kind = "standard" if m["kind"] == "standard" else f"AT {m['norm']} ε={m['eps']:g}"
        out[(kind, "clean")][m["seed"]] = m["clean_acc"]
        out[(kind, "robust (own PGD-CE)")][m["seed"]] = m["robust_acc"]["pgd_ce"]
    mc = s["confidence"]["matched_control"]  # chapter 03
    for seed, acc in mc["test_acc"].items():
        out[("matched standard (its own calibrated n)", "clean")][int(seed)] = acc
    side = s["settings"]["seeds"][:s["settings"]["side_seeds"]]  # the controls' seeds (Profile.side_seed_list)
    for name, rows in s["theory"]["controls"]["rows"].items():  # chapter 01
        if name in ("standard",) or name.startswith("AT"):
            continue
        kind = f"control: {name.split(' = ')[0]} (its own calibrated strength)"
        for seed, row in zip(side, rows["per_seed"]):
            out[(kind, "clean")][seed] = row["clean"]
            out[(kind, "robust (PGD worst)")][seed] = row["worst"]
    for st in s["distillation"]["students"] + s["distillation"]["pgd_at_students"]:  # chapter 04
        kind = "PGD-AT student" if st["ablation"] == "pgd_at" else \
            f"student {st['ablation']}" + (f" T={st['T']:g}" if st["T"] is not None else "")
        out[(kind, "clean")][st["seed"]] = st["clean_acc"]
        out[(kind, "robust (worst case)")][st["seed"]] = st["robust_acc"]["worst_case"]
    return dict(out)


def parity(fp32: dict[str, Any], bf16: dict[str, Any]) -> dict[str, Any]:
    """The parity table of two summaries of one profile: per model type and measure, both seed means with their
    intervals, the seed-paired difference (bf16 − fp32) with its interval, and whether the means moved ≤ 1 pp;
    and every claim's verdict in both."""
    a, b = _models(fp32), _models(bf16)
    rows = []
    for key in a:
        seeds = sorted(set(a[key]) & set(b.get(key, {})))
        if not seeds:
            continue
        x, y = [a[key][s] for s in seeds], [b[key][s] for s in seeds]
        diff = stats.mean_ci([v - u for u, v in zip(x, y)])
        rows.append({"model": key[0], "measure": key[1], "seeds": seeds, "fp32": stats.mean_ci(x).as_dict(),
                     "bf16": stats.mean_ci(y).as_dict(), "difference": diff.as_dict(),
                     "within": abs(diff.mean) <= LIMIT})
    verdicts = {c["claim"]: (c["verdict"], next((d["verdict"] for d in bf16["claims"] if d["claim"] == c["claim"]), None))
                for c in fp32["claims"]}
    return {"limit_pp": 100 * LIMIT, "rows": rows, "verdicts": verdicts,
            "all_within": all(r["within"] for r in rows), "verdicts_equal": all(u == v for u, v in verdicts.values()),
            "fp32_commit": fp32["git_commit"], "bf16_commit": bf16["git_commit"]}


def markdown(p: dict[str, Any]) -> str:
    """The parity table as Markdown (percent), then the verdicts."""
    def iv(d: dict[str, Any]) -> str:
        return f"{100 * d['mean']:.1f} [{100 * d['ci'][0]:.1f}, {100 * d['ci'][1]:.1f}]"

    lines = [f"fp32 book: commit `{p['fp32_commit'][:7]}`; bf16 book: commit `{p['bf16_commit'][:7]}`. Accuracy in "
             f"percent, seed mean with its 95% t-interval; the difference is seed-paired.", "",
             "| model | measure | seeds | fp32 % | bf16 % | bf16 − fp32 (pp, paired) | ≤ 1 pp |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['measure']} | {len(r['seeds'])} | {iv(r['fp32'])} | {iv(r['bf16'])} | "
              f"{100 * r['difference']['mean']:+.2f} [{100 * r['difference']['ci'][0]:+.2f}, "
              f"{100 * r['difference']['ci'][1]:+.2f}] | "
              f"{'yes' if r['within'] else '**no**'} |" for r in p["rows"]]
    lines += ["", "| claim | fp32 | bf16 |", "|---|---|---|"]
    lines += [f"| {c} | {u} | {v} |" for c, (u, v) in p["verdicts"].items()]
    ok = p["all_within"] and p["verdicts_equal"]
    lines += ["", f"**Accuracy half of the rule: {'met' if ok else 'not met'}** (every seed mean within "
                  f"{p['limit_pp']:g} pp: {p['all_within']}; verdicts equal: {p['verdicts_equal']})."]
    return "\n".join(lines)


def compare_files(fp32: str | Path, bf16: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """:func:`parity` of two ``summary.json`` files; written to ``out`` (JSON, and Markdown beside it) if given."""
    p = parity(json.loads(Path(fp32).read_text()), json.loads(Path(bf16).read_text()))
    if out is not None:
        Path(out).write_text(json.dumps(p, indent=1))
        Path(out).with_suffix(".md").write_text(markdown(p) + "\n")
    return p
