"""Batched PGD in pixel space: L∞ and L2, random start, CE or margin (CW) loss, restarts, a fixed or
cosine-decayed step size.

One small class per attack over a tiny base, in the torchattacks style. Gradients are taken with
respect to the perturbation only (``torch.autograd.grad``), so no weight gradients are computed or
accumulated. Attacks run the model in eval mode (BatchNorm uses running statistics, as in MadryLab's
robustness) and restore its mode afterwards. The loop has no host syncs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")
SCHEDULES = ("constant", "cosine")


MADRY_STEP = 2.5  # Madry et al. 2018: PGD steps of 2.5·ε/steps, enough to cross the ball from any start


def madry_step(eps: float | Tensor, steps: int) -> float | Tensor:
    """The step size 2.5·ε/steps of Madry et al.'s PGD (``eps`` a number or a per-sample tensor)."""
    return MADRY_STEP * eps / max(steps, 1)


@dataclass(frozen=True)
class AttackConfig:
    """A PGD threat model and its optimiser settings (pixel space, inputs in [0, 1])."""

    norm: str
    eps: float
    steps: int
    step_size: float
    loss: str = "ce"
    random_start: bool = True
    restarts: int = 1
    keep_best: bool = True  # return, per sample, the iterate with the highest loss (evaluation)
    schedule: str = "constant"  # step size per iteration: constant, or a half cosine from step_size to 0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown step schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown attack loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if not isinstance(self.eps, (int, float)) or not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"bad ε={self.eps!r}: it must be a finite number >= 0 (pixel scale [0, 1])")
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"bad ε={self.eps!r} for L∞: pixels live in [0, 1], so ε > 1 is meaningless "
                             "(did you mean 8/255 rather than 8?)")
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"bad steps={self.steps!r}: a non-negative integer is needed")
        if self.steps > 0 and (not math.isfinite(self.step_size) or self.step_size <= 0):
            raise ValueError(f"bad step_size={self.step_size!r}: it must be a finite number > 0")
        if self.restarts < 1:
            raise ValueError(f"bad restarts={self.restarts!r}: at least 1")
        if self.restarts > 1 and not self.keep_best:
            raise ValueError("restarts > 1 needs keep_best=True: without it only the last restart would count")

    @classmethod
    def madry(cls, norm: str, eps: float, steps: int, **kw: object) -> "AttackConfig":
        """Step size 2.5·ε/steps (Madry et al. 2018), enough to cross the ball from any start."""
        return cls(norm, eps, steps, madry_step(eps, steps), **kw)  # type: ignore[arg-type]

    @classmethod
    def cosine(cls, norm: str, eps: float, steps: int, **kw: object) -> "AttackConfig":
        """Step size decayed from ε/2 to 0 on a half cosine: big early steps cross the ball, small late
        steps settle in a local maximum that a fixed step overshoots (the evaluation attack)."""
        return cls(norm, eps, steps, eps / 2, schedule="cosine", **kw)  # type: ignore[arg-type]

    def step_at(self, t: int) -> float:
        """The step size of iteration ``t`` (0-based) of ``steps``."""
        if self.schedule == "constant":
            return self.step_size
        return self.step_size * 0.5 * (1 + math.cos(math.pi * t / max(self.steps, 1)))

    @property
    def label(self) -> str:
        sym = "L∞" if self.norm == "linf" else "L2"
        rs = f", {self.restarts} restarts" if self.restarts > 1 else ""
        sc = ", cosine step" if self.schedule == "cosine" else ""
        return f"PGD-{self.steps} {self.loss.upper() if self.loss == 'ce' else 'margin'}, {sym} ε={self.eps:.4g}{sc}{rs}"


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of a global batch of ``total`` rows: this process's part in data-parallel training.

    Random starts are drawn for the whole global batch and then sliced, so each sample's start does not
    depend on how the batch is split across processes.
    """

    start: int
    stop: int
    total: int


def attack_loss(logits: Tensor, y: Tensor, kind: str) -> Tensor:
    """Per-sample loss the attacker maximises: cross-entropy or the margin max_{j≠y} z_j - z_y."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


class Attack:
    """Base: holds the model and config; ``attack(x, y)`` returns adversarial inputs in [0, 1]."""

    def __init__(self, model: nn.Module, cfg: AttackConfig):
        self.model, self.cfg = model, cfg

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                 shard: Shard | None = None) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                return self.perturb(x.detach(), y, generator, shard)
        finally:
            self.model.train(was_training)

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator | None, shard: Shard | None = None) -> Tensor:
        raise NotImplementedError


class PGD(Attack):
    """Projected gradient ascent on the loss; subclasses define the start, step and projection."""

    def init_delta(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def step(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        raise NotImplementedError

    def project(self, delta: Tensor) -> Tensor:
        raise NotImplementedError

    def start(self, x: Tensor, generator: torch.Generator | None, shard: Shard | None) -> Tensor:
        """The random start for ``x``; with a ``shard``, drawn for the global batch and sliced."""
        if shard is None:
            return self.init_delta(x, generator)
        full = x.new_empty((shard.total, *x.shape[1:]))  # init_delta reads only its shape, device and dtype
        return self.init_delta(full, generator)[shard.start:shard.stop]

    def perturb(self, x: Tensor, y: Tensor, generator: torch.Generator | None, shard: Shard | None = None) -> Tensor:
        cfg = self.cfg
        if cfg.eps == 0:
            return x.clone()
        best_x, best_loss = x.clone(), torch.full(y.shape, float("-inf"), device=x.device)
        for _ in range(cfg.restarts):
            delta = self.start(x, generator, shard) if cfg.random_start else torch.zeros_like(x)
            delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)  # stay in the pixel box
            for t in range(cfg.steps):
                loss = attack_loss(self.model(x + delta), y, cfg.loss)
                if cfg.keep_best:
                    best_x, best_loss = _keep_best(best_x, best_loss, x + delta.detach(), loss.detach())
                (grad,) = torch.autograd.grad(loss.sum(), delta)  # input-only gradient: no weight grads
                with torch.no_grad():
                    delta = self.project(self.step(delta, grad, cfg.step_at(t)))
                    delta = (x + delta).clamp_(0, 1) - x  # clamp into [0, 1] after projecting on the ball
                delta.requires_grad_(True)
            if not cfg.keep_best:
                return (x + delta).detach()
            with torch.no_grad():
                loss = attack_loss(self.model(x + delta), y, cfg.loss)
            best_x, best_loss = _keep_best(best_x, best_loss, (x + delta).detach(), loss)
        return best_x


def _keep_best(best_x: Tensor, best_loss: Tensor, x_new: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
    better = loss > best_loss
    mask = better.view(-1, *([1] * (x_new.ndim - 1)))
    return torch.where(mask, x_new, best_x), torch.where(better, loss, best_loss)


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


class PGDLinf(PGD):
    """Sign-gradient steps, projection by clamping each coordinate to [-ε, ε]."""

    def init_delta(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * self.cfg.eps

    def step(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return delta + alpha * grad.sign()

    def project(self, delta: Tensor) -> Tensor:
        return delta.clamp(-self.cfg.eps, self.cfg.eps)


class PGDL2(PGD):
    """Normalised-gradient steps, projection onto the L2 ball.

    With the [0, 1] box, "project on the ball, then clamp" is not the exact projection on the
    intersection; it is the standard practice (MadryLab, torchattacks) and what atlib does.
    """

    def init_delta(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), generator=generator, device=x.device, dtype=x.dtype)
        return d / _per_sample_norm(d) * r * self.cfg.eps

    def step(self, delta: Tensor, grad: Tensor, alpha: float) -> Tensor:
        return delta + alpha * grad / _per_sample_norm(grad)

    def project(self, delta: Tensor) -> Tensor:
        return delta * (self.cfg.eps / _per_sample_norm(delta)).clamp(max=1.0)


def make_attack(model: nn.Module, cfg: AttackConfig) -> PGD:
    """The PGD class for ``cfg.norm``."""
    return (PGDLinf if cfg.norm == "linf" else PGDL2)(model, cfg)


def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float | None = None,
             loss: str = "ce", generator: torch.Generator | None = None, **kw: object) -> Tensor:
    """L∞ PGD; ``step_size`` defaults to 2.5·ε/steps."""
    cfg = AttackConfig("linf", eps, steps, step_size if step_size is not None else madry_step(eps, steps), loss, **kw)  # type: ignore[arg-type]
    return PGDLinf(model, cfg)(x, y, generator)


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float | None = None,
           loss: str = "ce", generator: torch.Generator | None = None, **kw: object) -> Tensor:
    """L2 PGD; ``step_size`` defaults to 2.5·ε/steps."""
    cfg = AttackConfig("l2", eps, steps, step_size if step_size is not None else madry_step(eps, steps), loss, **kw)  # type: ignore[arg-type]
    return PGDL2(model, cfg)(x, y, generator)
