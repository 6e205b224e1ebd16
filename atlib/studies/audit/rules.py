"""Chapter 05's pre-registered flags: when atlib's PGD counts as weaker than an attack it did not write.

One rule object, :data:`RULE` (:class:`AuditRule`), fixed before any number was seen (the chapter glues its text):
``pgd_ce_vs_torchattacks`` if atlib PGD-CE's accuracy exceeds torchattacks PGD's by more than ``torchattacks_gap``;
``pgd_ce_vs_apgd`` / ``pgd_margin_vs_apgd`` if an atlib PGD's accuracy exceeds min(APGD-CE, APGD-DLR) by more than
``apgd_gap``; and how a flag's diagnosis tells a real weakness from noise. The gradient-masking checks' rules live
in :mod:`atlib.training.masking` (chapter 04 applies them too). The audit decides no claim of the paper.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from atlib.studies.rule import Rule, const, pp


@dataclass(frozen=True, kw_only=True)
class AuditRule(Rule):
    """The attack audit's flags and the diagnosis of a flag."""

    TITLE = "Chapter 05: when atlib's PGD counts as weaker than the oracles"
    CHAPTER = "05_evaluation"
    TEXT = {
        "flags": ("1. atlib PGD-CE reports more than **{ta_gap} pp** above torchattacks PGD with the same "
                  "$\\varepsilon$ and steps, or\n"
                  "2. atlib PGD-CE or atlib PGD-margin reports more than **{apgd_gap} pp** above "
                  "$\\min(\\text{{APGD-CE}}, \\text{{APGD-DLR}})$."),
        "diagnosis": ("Noise is two-sided (both counts similar); a weaker attack is one-sided: the samples a variant "
                      "leaves robust although an APGD breaks them are at least {one_sided} times the reverse."),
    }

    torchattacks_gap: float = const(0.01, "flag 1: atlib PGD-CE may not exceed torchattacks PGD by more than this "
                                          "(accuracy)")
    apgd_gap: float = const(0.02, "flag 2: an atlib PGD may not exceed the APGD minimum by more than this (accuracy)")
    one_sided: float = const(3, "a flag's diagnosis: a shortfall is one-sided (a real weakness of that loss, not "
                                "noise) if it is at least this many times its reverse")

    def terms(self) -> dict[str, str]:
        return {"ta_gap": pp(self.torchattacks_gap), "apgd_gap": pp(self.apgd_gap), "one_sided": f"{self.one_sided:g}"}

    def flags(self, acc: Mapping[str, float]) -> list[str]:
        """The main-table flags from accuracies in [0, 1]."""
        flags = []
        if acc["atlib_pgd_ce"] > acc["ta_pgd"] + self.torchattacks_gap + 1e-9:
            flags.append("pgd_ce_vs_torchattacks")
        apgd = min(acc["apgd_ce"], acc["apgd_dlr"])
        for k in ("atlib_pgd_ce", "atlib_pgd_margin"):
            if acc[k] > apgd + self.apgd_gap + 1e-9:
                flags.append(f"{k.removeprefix('atlib_')}_vs_apgd")
        return flags

    def one_sided_shortfall(self, up: int, down: int) -> bool:
        """Whether ``up`` samples left robust against ``down`` broken the other way is a real weakness, not noise."""
        return down * self.one_sided <= up


RULE = AuditRule()

