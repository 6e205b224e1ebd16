"""The claims ledger: each of the paper's three claims, the statistic that tests it, and a verdict per profile.

Reads ``summary.json`` dicts (one per profile that has been run) and never recomputes an experiment: each
chapter already applied its own rule, fixed before its numbers, and wrote the outcome to its section.
The ledger shows the statistic with its interval and maps the chapter's outcome onto one vocabulary by the
study's rule object (``atlib.studies.<study>.rule``: its text, its ledger mapping), printed on the ledger page above
the table; nothing here restates a rule. A missing section, or one written by an older version of its chapter,
gives ``not run`` with the reason, never an exception.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from atlib.core import stats
from atlib.studies import confidence, distillation, shrinkage
from atlib.studies.rule import book_level
from atlib.studies.verdict import LEDGER as VERDICTS

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN, INVALID = VERDICTS  # the ledger's verdicts


@dataclass(frozen=True)
class Entry:
    """One claim judged on one profile's summary."""

    claim: str  # key of CLAIMS
    verdict: str  # one of VERDICTS
    reason: str  # which branch of the rule gave the verdict
    values: dict[str, str] = field(default_factory=dict)  # statistic → "mean [low, high] (n …)"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, where its evidence lives, and how the ledger judges it (its statistic and rule in words
    come from the study's rule object, read each time the page is written)."""

    key: str
    title: str
    statement: str
    chapter: str
    section: str  # top-level key of summary.json
    stating: Callable[[], str]  # the statistic in words
    ruling: Callable[[], str]  # the rule in words
    judge: Callable[[Mapping[str, Any]], Entry]

    @property
    def statistic(self) -> str:
        return self.stating()

    @property
    def rule(self) -> str:
        return self.ruling()


def interval(d: Mapping[str, Any], scale: float = 1.0, unit: str = "", n_key: str = "n", what: str = "seeds",
             signed: bool = True, decimals: int | None = None) -> str:
    """``mean [low, high] (n seeds)`` from a summary interval ``{mean|value, ci, n|pairs}``; one replicate: no interval.
    ``signed``: differences carry their sign (+/−); ``decimals``: fixed decimals (default: 3 significant digits)."""
    mean = d["mean"] if "mean" in d else d["value"]
    n = len(d["pairs"]) if n_key == "pairs" else d[n_key]
    lo, hi = d["ci"]
    f = ("+" if signed else "") + (f".{decimals}f" if decimals is not None else ".3g")
    if n < 2 or lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{scale * mean:{f}}{unit} ({n} {what[:-1] if n == 1 else what}, no interval)"
    return f"{scale * mean:{f}}{unit} [{scale * lo:{f}}, {scale * hi:{f}}] ({n} {what})"


def _missing(key: str, why: str) -> Entry:
    return Entry(key, NOT_RUN, why)


# ------------------------------------------------------------------------------------------------ claim 1
def judge_shrinkage(s: Mapping[str, Any]) -> Entry:
    sec, rule = s.get("shrinkage"), shrinkage.rule
    if not sec:
        return _missing("shrinkage", "no `shrinkage` section (chapter 02 not run)")
    try:
        clean = sec["clean"]
        values = {label: interval(clean[k]["paired_diff"]) for k, label in rule.claim_stats.items()}
        values[f"Δ {stats.stat_label(rule.reference)} (reference)"] = interval(clean[rule.reference]["paired_diff"])
        outcome, why = rule.claim(clean)
        if "claim" in sec:  # chapter 02's own decision, behind the validity gates (older summaries: none)
            outcome, why = sec["claim"]["outcome"], sec["claim"]["reason"]
    except (KeyError, TypeError, ValueError) as e:
        return _missing("shrinkage", f"the `shrinkage` section lacks {e} (written by an older chapter 02?)")
    return Entry("shrinkage", rule.ledger_verdict(outcome), why, values)


# ------------------------------------------------------------------------------------------------ claim 2
CONFIDENCE_ROWS = {"std_vs_at": "ρ std vs AT", "std_vs_std": "ρ std vs std (null)", "at_vs_at": "ρ AT vs AT (null)",
                   "std_vs_matched": "ρ std vs matched", "matched_vs_matched": "ρ matched vs matched (null)",
                   "std_at_minus_std_matched": "Δ = ρ(std, AT) − ρ(std, matched)"}


def judge_confidence(s: Mapping[str, Any]) -> Entry:
    sec = s.get("confidence")
    if not sec:
        return _missing("confidence", "no `confidence` section (chapter 03 not run)")
    try:
        rho = sec["spearman"]
        values = {label: interval(rho[k], what="units", signed=k.startswith("std_at_minus"))
                  for k, label in CONFIDENCE_ROWS.items()}
        outcome = sec["verdict"]["outcome"]
    except (KeyError, TypeError, ValueError) as e:
        return _missing("confidence", f"the `confidence` section lacks {e} (written by an older chapter 03?)")
    verdict = confidence.rule.ledger_verdict(outcome)
    if verdict is None:
        return _missing("confidence", f"chapter 03's outcome {outcome!r} is not one this ledger knows")
    why = sec["verdict"].get("invalid_reason")
    return Entry("confidence", verdict, f"invalid: {why}" if why else f"chapter 03's rule: {outcome}", values)


# ------------------------------------------------------------------------------------------------ claim 3
def _pp(d: Mapping[str, Any]) -> str:
    """A chapter 04 difference (fractions) in pp, one decimal throughout, with its interval's level."""
    level = d.get("level", 1 - distillation.rule.alpha)
    return interval(d, 100, " pp", decimals=1) + ("" if abs(level - (1 - distillation.rule.alpha)) < 1e-9
                                                  else f" at {100 * level:.1f}%")


def _distill_values(T: str, v: Mapping[str, Any]) -> dict[str, str]:
    """The statistics that decided claim 3 at T (chapter 04's ``decided_by``): A's, or the decisive ablations'."""
    r, out = distillation.rule, {}
    for part in v["decided_by"]:
        if part == "A":
            out[f"T={T}: D = {r.full} − {r.baseline}"] = _pp(v["D"])
            out[f"T={T}: {r.full} − {r.hard}"] = _pp(v["A"]["full_minus_hard_labels"])
            out[f"T={T}: E (refutation bound)"] = f"{100 * v['E']:+.1f} pp"
        else:
            name = r.part_ablation(part)
            e = v["decisive"][name]
            out[f"T={T}: {name} − {r.full} ({e['outcome']})"] = _pp(e["delta"])
            out[f"T={T}: c = {name} − ({r.full} + b)/2"] = _pp(e["c"])
    return out


def judge_distillation(s: Mapping[str, Any]) -> Entry:
    sec, rule = s.get("distillation"), distillation.rule
    if not sec:
        return _missing("distillation", "no `distillation` section (chapter 04 not run)")
    try:
        by_T = sec["verdict"]["by_T"]
        outcomes = {T: v["claim3"] for T, v in by_T.items()}
        values: dict[str, str] = {}
        for T, v in by_T.items():
            values |= _distill_values(T, v)
        parts = {T: f"A {v['A']['outcome']}, B {v['B']}, C {v['C']}" for T, v in by_T.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return _missing("distillation", f"the `distillation` section lacks {e} (written by an older chapter 04?)")
    unknown = sorted(o for o in set(outcomes.values()) if rule.ledger_verdict(o) is None)
    if not outcomes or unknown:
        return _missing("distillation", f"chapter 04's outcomes {unknown or 'are empty'} are not ones this ledger knows")
    verdict, how = rule.across_temperatures({T: rule.ledger_verdict(o) for T, o in outcomes.items()})
    if verdict == INVALID:  # the same gates at every T
        return Entry("distillation", verdict, f"invalid: {next(iter(by_T.values()))['invalid_reason']}", values)
    why = "; ".join(f"T={T}: {o} ({parts[T]})" for T, o in outcomes.items())
    return Entry("distillation", verdict, f"{how} ({why})", values)


# -------------------------------------------------------------------------------------------- the claims
def _level() -> str:
    return f"{1 - distillation.rule.alpha:.0%}"


def _statistic_1() -> str:
    r = shrinkage.rule
    return (f"Seed-paired difference main L∞-AT model − standard model (same seed) of the "
            f"{' and of the '.join(stats.stat_label(k) for k in r.claim_stats)} on clean test inputs; mean with a "
            f"{r.terms()['level']} Student-t interval over seeds.")


def _statistic_3() -> str:
    r = distillation.rule
    return ("Worst-case robust accuracy (PGD-CE, PGD-margin, APGD-CE, APGD-DLR) of students distilled on clean "
            f"inputs, at each distillation temperature T, seed-paired: D = {r.full} − {r.baseline} student and "
            f"{r.full} − {r.hard} student ({_level()} Student-t intervals), and for the {len(r.decisive)} decisive "
            f"ablations ({', '.join(r.decisive)}) the difference from {r.full} and the contrast c = a − ({r.full} + "
            f"b)/2 (Bonferroni-adjusted intervals, {r.terms()['bonf_level']}). The cell quotes the statistics that "
            "decided the verdict.")


CLAIMS: dict[str, Claim] = {c.key: c for c in (
    Claim("shrinkage", "1. Shrinkage",
          "Adversarial training lowers, on average, the max logit and the logit gap.",
          "02_training", "shrinkage", _statistic_1, lambda: shrinkage.rule.text("claim"), judge_shrinkage),
    Claim("confidence", "2. Confidence differences",
          "Standard and AT models differ significantly in which samples are confident.",
          "03_confidence", "confidence",
          lambda: ("Spearman's ρ between two models' per-sample confidence (top-class log-odds) on the whole test set, "
                   f"mean with a {book_level()} Student-t interval over units in which each model "
                   "appears once: standard vs AT against the seed-to-seed nulls, and against standard models trained "
                   "to convergence on fewer images to AT's clean accuracy (the matched control)."),
          lambda: f"chapter 03's rule, fixed before its numbers, mapped: {confidence.rule.ledger_text()}.",
          judge_confidence),
    Claim("distillation", "3. Distillation",
          "Some robustness distils from an AT teacher on clean inputs, and the teacher's information about the "
          "incorrect classes (and its sample-wise confidence) is essential to it.",
          "04_distillation", "distillation", _statistic_3,
          lambda: (f"chapter 04's rule, fixed before its numbers, gives per T {distillation.rule.ledger_text()}. "
                   f"{distillation.rule.text('across')}"),
          judge_distillation),
)}


def judge(summary: Mapping[str, Any]) -> list[Entry]:
    """Every claim judged on one profile's summary, in the paper's order."""
    return [c.judge(summary) for c in CLAIMS.values()]


def summary_section(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``claims`` entry of summary.json: per claim its statistic, rule, values and verdict."""
    return [{"claim": e.claim, "title": CLAIMS[e.claim].title, "statement": CLAIMS[e.claim].statement,
             "statistic": CLAIMS[e.claim].statistic, "rule": CLAIMS[e.claim].rule, "values": e.values,
             "verdict": e.verdict, "reason": e.reason} for e in judge(summary)]


# ---------------------------------------------------------------------------------------------- the page
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _when(s: Mapping[str, Any]) -> str:
    return str(s.get("executed_at", "unknown"))


def ledger_markdown(summaries: Mapping[str, Mapping[str, Any]], origins: Mapping[str, str]) -> str:
    """The ledger page (MyST Markdown): the rules, the table (one row per claim, one column per profile), the
    numbers behind each verdict, and where each profile's summary came from. ``origins[profile]`` names the
    file a summary was read from."""
    judged = {p: {e.claim: e for e in judge(s)} for p, s in summaries.items()}
    head = {p: f"{p} · {s.get('dataset', '?')}" for p, s in summaries.items()}
    out = ["# Claims ledger", "",
           "The paper {cite:p}`seguin2021understanding` makes three claims. This page judges each of them on every profile "
           "whose results are in the repository, from the profile's `summary.json`, by the rules below: they were "
           "written before the table and are applied by `atlib/book/claims.py`. Each rule maps the outcome of the "
           "chapter's own rule, itself fixed in the chapter before its numbers. A verdict holds for that dataset, "
           "model and schedule only; a claim whose chapter did not run on a profile shows *not run*.", "",
           "## The rules", ""]
    for c in CLAIMS.values():
        out += [f"**{c.title}.** *{c.statement}* Statistic ({{doc}}`chapter {c.chapter[:2]} <{c.chapter}>`): "
                f"{c.statistic} Verdict: {c.rule}", ""]
    out += [shrinkage.rule.text("gates") + " A claim whose models failed a gate shows ⚠ **invalid** with the failed "
            "gate, whatever its statistics say.", ""]
    out += ["## The ledger", ""]
    if not summaries:
        return "\n".join(out + ["No profile has a committed summary yet: run `python -m atlib book`.", ""])
    out += ["| claim | " + " | ".join(head.values()) + " |", "| --- |" + " --- |" * len(head)]
    for c in CLAIMS.values():
        cells = []
        for p in summaries:
            e = judged[p][c.key]
            first = next(iter(e.values.items()), None)
            if e.verdict == INVALID:  # shown apart: no statistic is read from a model that failed a gate
                cells.append(f"⚠ **{e.verdict}** — {e.reason}")
                continue
            cells.append(f"**{e.verdict}**" + (f" — {first[0]} {first[1]}" if first else f" — {e.reason}"))
        out.append(f"| **{c.title}** | " + " | ".join(_cell(x) for x in cells) + " |")
    out += ["", "## The numbers behind each verdict", "",
            f"Mean [{book_level()} interval] (replicates) of every statistic a verdict rests on.", ""]
    for c in CLAIMS.values():
        rows: list[str] = []
        for p in summaries:
            rows += [k for k in judged[p][c.key].values if k not in rows]
        out += [f"### {c.title}", "", "| statistic | " + " | ".join(head.values()) + " |", "| --- |" + " --- |" * len(head)]
        for k in rows:
            out.append(f"| {_cell(k)} | " + " | ".join(_cell(judged[p][c.key].values.get(k, "—")) for p in summaries) + " |")
        out.append("| **verdict** | " + " | ".join(f"**{judged[p][c.key].verdict}**: {_cell(judged[p][c.key].reason)}"
                                                  for p in summaries) + " |")
        out.append("")
    out += ["## Where the numbers come from", "",
            "| profile | summary | git commit | executed (UTC) | device | wall time |", "| --- | --- | --- | --- | --- | --- |"]
    for p, s in summaries.items():
        wall = s.get("elapsed_s")
        commit = str(s.get("git_commit", "unknown"))
        short = f"`{commit[:12]}`" + (" (uncommitted changes)" if commit.endswith("-dirty") else "")
        out.append(f"| {_cell(head[p])} | {_cell(origins.get(p, '?'))} | {short} | {_when(s)} | "
                   f"{_cell(str(s.get('device', '?')))} | {'?' if wall is None else f'{wall:.0f} s'} |")
    return "\n".join(out + [""])
