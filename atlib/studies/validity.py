"""Validity gates: no verdict is read from a model that did not learn, or from an AT model that is not robust.

A rule reads models; before it decides, each model it reads passes its gates or the verdict is **invalid**, with
the failed gates as its reason (never supported / not supported / inconclusive). The gates are pure functions of
a model's predictions and accuracies; their thresholds are not here but in a rule object (chapter 02's,
:data:`atlib.studies.shrinkage.rules.RULE`, which trains the models: ``learned_margin`` and ``robust_margin``, each
with its reason, written once and used by every chapter that reads a model).

Why a margin above the *constant predictor* rather than above 1/K: a model that always answers the evaluation
set's most frequent class scores that class's share, which on a small or unbalanced evaluation set is above 1/K.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from atlib.studies.verdict import Verdict

Tensor = torch.Tensor
INVALID_WHEN = "a model the rule reads failed a validity gate"  # the rules' words for their ``invalid`` outcome


@dataclass(frozen=True)
class Gate:
    """One check of one model: whether it passed and, in words, what was measured."""

    name: str  # e.g. "learned: at_linf_0.1_s0"
    passed: bool
    reason: str  # the measurement, e.g. "clean 10.6% vs constant predictor 11.4% + 10 pp"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def constant_accuracy(labels: Tensor) -> float:
    """The best accuracy a constant predictor reaches on ``labels``: the most frequent class's share."""
    labels = torch.as_tensor(labels).reshape(-1)
    return float(torch.bincount(labels).max()) / len(labels)


def learned(name: str, logits: Tensor, labels: Tensor, margin: float) -> Gate:
    """Did the model behind ``logits`` (N×K, on the evaluation images with ``labels``) learn? Clean accuracy at least
    ``margin`` above the constant predictor's, more than one predicted class, and logits that vary."""
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).reshape(-1).to(torch.long)
    pred = logits.argmax(1)
    acc, const = float((pred == labels).float().mean()), constant_accuracy(labels)
    n_classes = int(pred.unique().numel())
    spread = float((logits - logits.mean(0, keepdim=True)).abs().max()) if len(logits) else 0.0
    passed = acc >= const + margin and n_classes > 1 and spread > 1e-6
    reason = (f"clean {100 * acc:.1f}% vs constant predictor {100 * const:.1f}% + {100 * margin:g} pp, "
              f"{n_classes} predicted class{'es' * (n_classes != 1)}" + ("" if spread > 1e-6 else ", constant logits"))
    return Gate(f"learned: {name}", passed, reason)


def above_constant(name: str, acc: float, labels: Tensor, margin: float, measure: str = "clean") -> Gate:
    """A model known by one accuracy on ``labels`` (``measure``: clean, robust ...) is at least ``margin`` above the
    constant predictor's there (the class count is not checked). E.g. chapter 04's ceiling: a PGD-AT student whose
    robust accuracy sits at chance gives D nothing to be a fraction of."""
    const = constant_accuracy(labels)
    return Gate(name, acc >= const + margin,
                f"{measure} {100 * acc:.1f}% vs constant predictor {100 * const:.1f}% + {100 * margin:g} pp")


def robust(name: str, robust_acc: float, reference_acc: float, margin: float, reference: str = "standard") -> Gate:
    """Is the AT model ``name`` robust? Its robust accuracy at least ``margin`` above ``reference``'s (same attack)."""
    return Gate(f"robust: {name}", robust_acc >= reference_acc + margin,
                f"robust {100 * robust_acc:.1f}% vs {reference} {100 * reference_acc:.1f}% + {100 * margin:g} pp")


def failed(gates: Iterable[Gate]) -> list[Gate]:
    return [g for g in gates if not g.passed]


def invalid_reason(gates: Sequence[Gate]) -> str:
    """One line for the chapter and the ledger: which gates failed and what they measured (first three)."""
    bad = failed(gates)
    more = f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
    return "; ".join(f"{g.name} ({g.reason})" for g in bad[:3]) + more


def gated(outcome: Any, gates: Sequence[Gate]) -> dict[str, Any]:
    """The summary fields of a gated verdict: ``outcome`` if every gate passed, else **invalid** with the reason."""
    bad = failed(gates)
    out = {"gates": [g.as_dict() for g in gates], "valid": not bad}
    if bad:
        return out | {"outcome": Verdict.INVALID, "invalid_reason": invalid_reason(gates)}
    return out | {"outcome": outcome}


def gates_markdown(gates: Sequence[Gate], what: str) -> str:
    """One paragraph for a chapter: every gate passed (how many), or the verdict is invalid and why."""
    bad = failed(gates)
    if not bad:
        return f"**Validity gates:** all {len(gates)} passed ({what})."
    rows = [f"- {g.name}: {g.reason}" for g in bad]
    return "\n".join([f"**Validity gates: {len(bad)} of {len(gates)} failed ({what}), so the verdict is "
                      f"invalid** — nothing below is read from these models as evidence:", *rows])
