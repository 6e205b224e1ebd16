"""Chapter 05's settings: how much attacking the audit does (subsets, APGD budget, masking sweep, students)."""
from __future__ import annotations

from dataclasses import dataclass

from atlib.training.masking import CHANCE_EPS


@dataclass(frozen=True)
class AuditSettings:
    """How much attacking the audit does on one profile."""

    main_subset: int | None  # samples of the main table: the first N of the evaluation subset (None: all)
    masking_subset: int  # the first N of those for the masking checks
    apgd_steps: int  # iterations of APGD-CE and APGD-DLR (AutoAttack uses 100)
    apgd_restarts: int  # restarts of APGD-CE and APGD-DLR
    linf_grid: tuple[float, ...]  # masking sweep, must end at 0.5 (where every [0, 1] image reaches grey)
    sweep_steps: int  # PGD-CE steps at each ε of the sweep
    few_steps: int  # PGD-few of the more-steps and restart checks
    many_steps: int  # PGD-many of the more-steps check
    restarts: int  # random restarts of PGD-few in the restart check
    diagnose_max: int  # flagged models (at most) whose gap to APGD is diagnosed
    student_seeds: int | None  # chapter 04's students of the first N seeds are audited (None: all)
    batch_size: int  # samples per attack batch

    def __post_init__(self) -> None:
        if self.main_subset is not None and self.main_subset < 1:
            raise ValueError(f"bad main_subset={self.main_subset!r}: at least 1 (or None for all)")
        if self.masking_subset < 1:
            raise ValueError(f"bad masking_subset={self.masking_subset!r}: at least 1")
        if not self.linf_grid or self.linf_grid[0] != 0 or self.linf_grid[-1] != CHANCE_EPS \
                or list(self.linf_grid) != sorted(set(self.linf_grid)):
            raise ValueError(f"bad linf_grid={self.linf_grid!r}: increasing, from 0 to {CHANCE_EPS}")
        if not 0 < self.few_steps < self.many_steps:
            raise ValueError(f"bad steps: need 0 < few_steps ({self.few_steps}) < many_steps ({self.many_steps})")
        if self.student_seeds is not None and self.student_seeds < 1:
            raise ValueError(f"bad student_seeds={self.student_seeds!r}: at least 1 (or None for all)")
        if self.restarts < 2 or self.apgd_steps < 1 or self.apgd_restarts < 1 or self.sweep_steps < 1:
            raise ValueError("restarts must be >= 2, apgd_steps, apgd_restarts and sweep_steps >= 1")
