"""Chapter 02's rule for claim 1 (shrinkage), and the convergence pilot's rule that chapter 02 quotes.

One rule object, :data:`RULE` (:class:`ShrinkageRule`). Per logit statistic, stated in the chapter before the
numbers: the seed-paired interval of AT − standard lies entirely below 0 → "shrinks", entirely above 0 → "grows",
else "no clear change". Claim 1 (the ledger) reads two of the statistics: supported if both shrink, not supported
if either grows, else inconclusive. The convergence pilot (``python -m atlib pilot convergence``) counts a schedule
as converged when doubling the epochs moves each of its seed means by less than its limit.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atlib.core import stats
from atlib.studies import validity
from atlib.studies.shrinkage.settings import ModelSpec
from atlib.studies.rule import Rule, book_level, const, pp
from atlib.studies.shrinkage.runs import LOGIT_STATS, ModelRun, runs_of
from atlib.studies.verdict import Verdict


@dataclass(frozen=True, kw_only=True)
class ShrinkageRule(Rule):
    """Claim 1: adversarial training lowers, on average, the max logit and the logit gap."""

    TITLE = "Claim 1: adversarial training lowers the max logit and the logit gap"
    CHAPTER = "02_training"
    TEXT = {
        "statistic": (
            "if the {level} t-interval of the seed-paired difference AT − standard lies entirely below zero, AT "
            "**shrinks** the statistic on this dataset; entirely above zero, it **grows**; otherwise the data show "
            "no clear change."),
        "claim": (
            "**supported** if the intervals of {claim_stats} both lie entirely below 0; **not supported** if either "
            "lies entirely above 0 (AT raises it); **inconclusive** otherwise, including a single seed. The "
            "{reference} (the shift-invariant version, see chapter 01) is shown for reference and does not enter "
            "the verdict."),
        "convergence": (
            "the schedule **converges** if doubling the epochs moves the standard model's clean accuracy (whole test "
            "set) by less than {standard_clean} pp, the matched model's by less than {matched_clean} pp, and the "
            "main AT model's robust accuracy (evaluation subset) under PGD-CE and PGD-margin by less than "
            "{at_robust_linf_ce} and {at_robust_linf_margin} pp, seed means; chapter 04's full students converge if "
            "their worst-case robust accuracy moves by less than {student_convergence} pp at each temperature."),
        "gates": (
            "**Validity gates**, checked before any rule of the book reads a model (a failed gate makes that verdict "
            "**invalid**, with the gate's measurement as its reason): every model the rule reads *learned* (its clean "
            "accuracy exceeds the best constant predictor's on the same images, the largest class's share, by at "
            "least {learned_margin} pp; it predicts more than one class; its logits vary), and every main AT model is "
            "*robust* (its robust accuracy under the profile's L∞ PGD-CE evaluation attack exceeds both the standard "
            "models' mean and the constant predictor's accuracy by at least {robust_margin} pp)."),
    }
    OUTCOMES = {Verdict.INVALID: validity.INVALID_WHEN}
    LEDGER = {Verdict.SUPPORTED: Verdict.SUPPORTED, Verdict.NOT_SUPPORTED: Verdict.NOT_SUPPORTED,
              Verdict.INCONCLUSIVE: Verdict.INCONCLUSIVE, Verdict.INVALID: Verdict.INVALID}
    GATED = "the standard and main AT models of every seed (learned), and the main AT models (robust)"

    claim_stats: Mapping[str, str] = const({"mean_logit_gap": "Δ logit gap", "mean_max_logit": "Δ max logit"},
                                           "the statistics claim 1 reads (summary key -> the ledger's label)")
    reference: str = const("mean_centred_max_logit", "shown beside claim 1 for reference, never part of its verdict")
    convergence: Mapping[str, float] = const(
        {"standard_clean": 0.01, "at_robust_linf_ce": 0.02, "at_robust_linf_margin": 0.02, "matched_clean": 0.01},
        "the pilot's limits: doubling the epochs moves each of these seed means (accuracy, 0–1) by less than this")
    student_convergence: float = const(0.02, "the pilot's limit for chapter 04's full students (worst-case robust "
                                             "accuracy), at each distillation temperature")
    learned_margin: float = const(0.10, (
        "validity gate *learned*: a model's clean accuracy must exceed the best constant predictor's on the same images "
        "by this (0–1); over 6 binomial standard errors on 1,000 images (SE ≤ 1.6 pp), far below any model that "
        "learned, while a collapsed model sits within noise of the constant predictor"))
    robust_margin: float = const(0.10, (
        "validity gate *robust*: a main AT model's robust accuracy (the profile's L∞ PGD-CE attack) must exceed the "
        "standard models' mean and the constant predictor's accuracy by this (0–1): more than evaluation noise before "
        "it can stand for AT (the paper's CIFAR-10 setting differs by ~45 pp)"))

    def model_gates(self, runs: Sequence[ModelRun], read: Sequence[ModelSpec], main_at: ModelSpec,
                    standard: ModelSpec = ModelSpec("standard")) -> list[validity.Gate]:
        """The gates of every model of ``read`` (learned, on its evaluation images) and of the main AT models (robust:
        against the standard models' mean under the L∞ PGD-CE attack on the same images, or the constant predictor's
        accuracy there if higher: no attack moves a constant, so it is "robust" at that level)."""
        gates = [validity.learned(r.name, r.logits["clean"], r.labels, self.learned_margin)
                 for spec in read for r in runs_of(runs, spec)]
        std = [r.acc("linf_ce") for r in runs_of(runs, standard)]
        for r in runs_of(runs, main_at):
            ref, what = (sum(std) / len(std) if std else 0.0), "standard"
            if (const_acc := validity.constant_accuracy(r.labels)) > ref:
                ref, what = const_acc, "constant predictor"
            gates.append(validity.robust(r.name, r.acc("linf_ce"), ref, self.robust_margin, what))
        return gates

    def terms(self) -> dict[str, str]:
        return {"level": book_level(), "claim_stats": " and ".join(
                    stats.stat_label(k) for k in self.claim_stats),
                "reference": stats.stat_label(self.reference),
                **{k: pp(v) for k, v in self.convergence.items()}, "student_convergence": pp(self.student_convergence),
                "learned_margin": pp(self.learned_margin), "robust_margin": pp(self.robust_margin)}

    def decide(self, clean: Mapping[str, Mapping[str, Any]], gates: Sequence[validity.Gate]) -> dict[str, Any]:
        """Claim 1 behind its validity gates: ``{outcome, reason, gates, valid[, invalid_reason]}``."""
        outcome, why = self.claim(clean)
        out = validity.gated(outcome, gates)
        return out | {"reason": why if out["valid"] else f"invalid: {out['invalid_reason']}"}

    def claim(self, clean: Mapping[str, Mapping[str, Any]]) -> tuple[str, str]:
        """Claim 1 from chapter 02's per-statistic results (``paired_shrinkage`` on clean inputs): outcome, reason."""
        grows = [k for k in self.claim_stats if clean[k]["grows"]]
        if grows:
            return Verdict.NOT_SUPPORTED, "AT raises " + " and ".join(
                self.claim_stats[k].removeprefix("Δ ") for k in grows) + " (interval above 0)"
        if all(clean[k]["shrinks"] for k in self.claim_stats):
            return Verdict.SUPPORTED, "both intervals lie below 0"
        return Verdict.INCONCLUSIVE, "not both intervals lie below 0, neither above"


RULE = ShrinkageRule()



def paired_shrinkage(runs: Sequence[ModelRun], base: ModelSpec, treated: ModelSpec,
                     key: str = "clean") -> dict[str, dict[str, Any]]:
    """Per statistic: base and treated means over seeds, and the seed-paired difference treated − base."""
    b, t = {r.seed: r for r in runs_of(runs, base)}, {r.seed: r for r in runs_of(runs, treated)}
    seeds = sorted(set(b) & set(t))
    out = {}
    for name in LOGIT_STATS:
        bv = [b[s].logit_stats(key)[name] for s in seeds]
        tv = [t[s].logit_stats(key)[name] for s in seeds]
        diff = stats.mean_ci([x - y for x, y in zip(tv, bv)])
        out[name] = {"base": stats.mean_ci(bv).as_dict(), "treated": stats.mean_ci(tv).as_dict(),
                     "paired_diff": diff.as_dict(), "per_seed_diff": [x - y for x, y in zip(tv, bv)],
                     "shrinks": bool(diff.n > 1 and diff.high < 0), "grows": bool(diff.n > 1 and diff.low > 0)}
    return out


def shrinkage_text(result: dict[str, dict[str, Any]], base: str, treated: str) -> str:
    """A Markdown paragraph stating, per statistic, what the numbers say by the rule (:data:`RULE`'s text)."""
    lines = []
    for name, r in result.items():
        d = r["paired_diff"]
        verdict = "**shrinks**" if r["shrinks"] else "**grows**" if r["grows"] else "shows **no clear change**"
        lines.append(f"- {stats.stat_label(name)}: {base} {r['base']['mean']:.3g}, "
                     f"{treated} {r['treated']['mean']:.3g}; paired difference {d['mean']:+.3g} "
                     f"[{d['ci'][0]:+.3g}, {d['ci'][1]:+.3g}] ({d['n']} seeds) → {verdict}")
    return "\n".join(lines)
