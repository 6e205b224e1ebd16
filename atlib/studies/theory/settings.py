"""Chapter 01's settings: the Gaussian two-class problem, the linear models on pixels, and the deep-net checks."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GaussianSettings:
    """Two Gaussian classes N(±μ, σ²I) in ``dim`` dimensions, ‖μ‖ = ``mu_norm``, an L2 adversary."""

    dim: int = 10
    mu_norm: float = 1.0
    sigma: float = 0.75
    n_train: int = 10_000
    n_test: int = 10_000
    steps: int = 700
    lr: float = 1.0  # stable only while lr·(ε/‖w‖) stays small: the ‖w‖ term's curvature grows as the scale shrinks
    eps_sweep: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class LinearSettings:
    """Linear softmax models on flattened pixels: training subset, schedule, L∞ ε sweep, PGD steps."""

    n_train: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    eps_sweep: tuple[float, ...]
    pgd_steps: int  # PGD-AT's inner steps (step 2.5·ε/steps, random start)
    check_steps: int = 20  # sign-step PGD used by the closed-form checks (no random start)


@dataclass(frozen=True)
class DeepSettings:
    """Flip-radius sizes and the control grids of one profile."""

    n_flip: int  # correctly classified evaluation samples per model for the flip radius
    flip_steps: int  # PGD steps (margin loss, L∞, step 2.5·ε/steps, random start) per bisection probe
    bisect_iters: int
    eps_max: float  # upper end of the bisection; samples not flipped there are censored at it
    n_calib: int  # training images on which the controls' clean logit gap is matched to the AT model's
    grids: tuple[tuple[str, tuple[float, ...]], ...] = (
        ("label_smoothing", (0.1, 0.25, 0.5)), ("logit_squeeze", (0.005, 0.02, 0.08)),
        ("loss_temperature", (0.3, 0.5, 0.7)))

    def grid(self, kind: str) -> tuple[float, ...]:
        return dict(self.grids)[kind]


@dataclass(frozen=True)
class TheorySettings:
    """Everything chapter 01 runs besides chapter 02's models."""

    linear: LinearSettings
    deep: DeepSettings
    gaussian: GaussianSettings = GaussianSettings()
