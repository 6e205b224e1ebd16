"""Chapter 05's pre-registered flags: when atlib's PGD counts as weaker than an attack it did not write.

Fixed before any number was seen (the chapter states them in prose): ``pgd_ce_vs_torchattacks`` if atlib
PGD-CE's accuracy exceeds torchattacks PGD's by more than ``TORCHATTACKS_GAP``; ``pgd_ce_vs_apgd`` /
``pgd_margin_vs_apgd`` if an atlib PGD's accuracy exceeds min(APGD-CE, APGD-DLR) by more than ``APGD_GAP``.
The gradient-masking checks' rules live in :mod:`atlib.training.masking`.
"""
from __future__ import annotations

from collections.abc import Mapping

TORCHATTACKS_GAP = 0.01  # atlib PGD-CE may not exceed torchattacks PGD by more than 1 pp
APGD_GAP = 0.02  # an atlib PGD may not exceed the APGD minimum by more than 2 pp


def attack_flags(acc: Mapping[str, float]) -> list[str]:
    """The main-table flags (see the module docstring) from accuracies in [0, 1]."""
    flags = []
    if acc["atlib_pgd_ce"] > acc["ta_pgd"] + TORCHATTACKS_GAP + 1e-9:
        flags.append("pgd_ce_vs_torchattacks")
    apgd = min(acc["apgd_ce"], acc["apgd_dlr"])
    for k in ("atlib_pgd_ce", "atlib_pgd_margin"):
        if acc[k] > apgd + APGD_GAP + 1e-9:
            flags.append(f"{k.removeprefix('atlib_')}_vs_apgd")
    return flags
