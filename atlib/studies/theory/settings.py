"""Chapter 01's settings: the Gaussian two-class problem, the linear models on pixels, and the deep-net checks."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GaussianSettings:
    """Two Gaussian classes N(±μ, σ²I) in ``dim`` dimensions, ‖μ‖ = ``mu_norm``, an L2 adversary."""

    dim: int  # dimensions of x
    mu_norm: float  # ‖μ‖: the classes are N(±μ, σ²I)
    sigma: float  # σ
    n_train: int  # training points per seed
    n_test: int  # test points per seed
    steps: int  # full-batch gradient-descent steps (momentum 0.9)
    lr: float  # stable only while lr·(ε/‖w‖) stays small: the ‖w‖ term's curvature grows as the scale shrinks
    eps_sweep: tuple[float, ...]  # L2 ε of the sweep


@dataclass(frozen=True)
class LinearSettings:
    """Linear softmax models on flattened pixels: training subset, schedule, L∞ ε sweep, PGD steps."""

    n_train: int  # the first N training images of the profile's subset
    epochs: int
    batch_size: int
    lr: float  # peak learning rate (SGD with momentum, linear decay)
    weight_decay: float
    eps_sweep: tuple[float, ...]  # training L∞ ε of the sweep (0: plain CE)
    pgd_steps: int  # PGD-AT's inner steps (step 2.5·ε/steps, random start)
    check_n: int  # evaluation images of the closed-form checks (section 3)
    check_steps: int  # sign-step PGD of the closed form vs PGD check (no random start)
    bound_steps: int  # PGD-CE steps (random start) of the shifted-logit bound check


@dataclass(frozen=True)
class DeepSettings:
    """Flip-radius sizes and the control grids of one profile."""

    n_flip: int  # correctly classified evaluation samples per model for the flip radius
    flip_steps: int  # PGD steps (margin loss, L∞, step 2.5·ε/steps, random start) per bisection probe
    bisect_iters: int  # bisection steps on [0, eps_max]
    eps_max: float  # upper end of the bisection; samples not flipped there are censored at it
    n_calib: int  # training images on which the controls' clean logit gap is matched to the AT model's
    grids: tuple[tuple[str, tuple[float, ...]], ...]  # per control, the strengths the calibration tries

    def grid(self, kind: str) -> tuple[float, ...]:
        return dict(self.grids)[kind]


@dataclass(frozen=True)
class TheorySettings:
    """Everything chapter 01 runs besides chapter 02's models."""

    linear: LinearSettings
    deep: DeepSettings
    gaussian: GaussianSettings
