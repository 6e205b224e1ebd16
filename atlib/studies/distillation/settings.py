"""Chapter 04's settings: the students, their schedule and the evaluation budget of distillation on clean inputs."""
from __future__ import annotations

from dataclasses import dataclass

# The peak learning rates the development pilot tried on ``fashion`` when it chose that profile's ``lrs`` (the
# chapter states the choice; the pilot is not re-run, and the other profiles' lrs were not chosen from it).
PILOT_LR_GRID = (0.01, 0.015, 0.02, 0.03, 0.05)


@dataclass(frozen=True)
class DistillSettings:
    """Chapter 04 (distillation on clean inputs): the students, their schedule and the evaluation budget.

    ``lrs[i]`` is the peak learning rate at ``temperatures[i]``: T and lr are chosen together (the
    batchmean KL's gradient grows with T up to the centred logit difference / K). Students use the
    profile's architecture at ``student_width``, SGD as in ``train.train`` and the profile's weight decay. One
student per main seed of the profile (``Profile.seeds``), distilled from that seed's teachers: the paired seeds.
    """

    temperatures: tuple[float, ...]  # distillation temperatures T
    lrs: tuple[float, ...]  # the peak learning rate at each T
    alpha: float  # KL weight (ARD's default 1); the hard-label control is alpha = 0 (plain CE)
    student_width: int | None  # None: the teachers' width
    epochs: int  # the students' epochs (fashion: 4 moved the full students' robust accuracy by +2.1 pp on doubling)
    batch_size: int  # the students' batch size
    eval_subset: int  # the first N of the profile's evaluation subset
    few_steps: int  # PGD-CE steps of the "fewer steps" check
    many_steps: int  # PGD-CE steps run on the PGD survivors
    sweep_eps: tuple[float, ...]  # L∞ ε above the main one, attacked on survivors; ends at 0.5
    apgd_steps: int  # APGD-CE and APGD-DLR iterations (torchattacks), in every student's worst case
    square_queries: int  # Square (L∞, gradient-free) queries per image, on the masking-check arms
    square_subset: int  # ... on the first N of the students' evaluation images, the same for every student

    def __post_init__(self) -> None:
        if not self.temperatures or len(self.lrs) != len(self.temperatures):
            raise ValueError(f"need one lr per temperature: temperatures={self.temperatures}, lrs={self.lrs}")
        if any(not 0 < t < float("inf") for t in self.temperatures) or any(not lr > 0 for lr in self.lrs):
            raise ValueError(f"temperatures and lrs must be finite and > 0: {self.temperatures}, {self.lrs}")
        if not 0 <= self.alpha <= 1 or self.epochs < 1 or self.batch_size < 1 or self.eval_subset < 1:
            raise ValueError("bad distillation settings: alpha in [0, 1], epochs, batch_size, eval_subset >= 1")
        if not 0 < self.few_steps < self.many_steps:
            raise ValueError(f"need 0 < few_steps ({self.few_steps}) < many_steps ({self.many_steps})")
        if not self.sweep_eps or self.sweep_eps[-1] != 0.5 or list(self.sweep_eps) != sorted(set(self.sweep_eps)):
            raise ValueError(f"sweep_eps={self.sweep_eps!r} must increase and end at L∞ 0.5 (where accuracy must be at chance)")
        if self.apgd_steps < 1 or self.square_queries < 1 or not 1 <= self.square_subset <= self.eval_subset:
            raise ValueError(f"need apgd_steps >= 1 ({self.apgd_steps}), square_queries >= 1 ({self.square_queries}) "
                             f"and 1 <= square_subset ({self.square_subset}) <= eval_subset ({self.eval_subset})")

    def lr_at(self, T: float) -> float:
        """The learning rate chosen for temperature ``T``."""
        for t, lr in zip(self.temperatures, self.lrs):
            if t == T:
                return lr
        raise ValueError(f"T={T!r} is not one of this profile's temperatures {self.temperatures}")
