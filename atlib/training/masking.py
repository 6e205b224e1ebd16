"""Gradient-masking sanity checks: is a model's robust accuracy real, or an artefact of bad gradients?

Each check compares two accuracies on one fixed subset against a noise threshold of two binomial
standard errors (at least three samples, :func:`noise_threshold`); the rules are fixed here, before any
number is seen, and chapter 05 states them in prose:

- ``eps_not_monotone``: accuracy under L∞ PGD rises from one ε of the grid to the next;
- ``above_chance_at_eps_0.5``: accuracy at L∞ ε = 0.5 above chance (every [0, 1] image can be moved to
  the uniform grey image there, so a sound attack drives accuracy to chance or below);
- ``more_steps_raise_acc`` / ``restarts_raise_acc``: PGD-many (or PGD-few with restarts) leaves *more*
  samples robust than PGD-few;
- ``transfer_stronger``: PGD crafted on another model (same kind, another seed) beats white-box PGD.

``atlib.studies.audit.runs`` runs them next to its oracle cross-checks; ``atlib.studies.distillation.runs`` reuses the threshold.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any, Protocol

import torch
from torch import nn

from atlib.core import attacks
from atlib.core.attacks import AttackConfig
from atlib.core.store import Store, artifact_key, code_version_of, model_hash, tensor_hash
from atlib.training.train import correct



class MaskingSettings(Protocol):
    """The fields of ``audit.MaskingSettings`` (a frozen dataclass) that the checks read; typed here so this
    layer does not import the audit above it."""
    linf_grid: tuple[float, ...]
    sweep_steps: int
    few_steps: int
    many_steps: int
    restarts: int
    batch_size: int

Tensor = torch.Tensor
SCHEMA = 1  # bump when a payload layout changes
CHANCE_EPS = 0.5  # L∞ radius at which every [0, 1] image reaches the grey image


def noise_threshold(p: float, n: int) -> float:
    """Two binomial standard errors of an accuracy ``p`` on ``n`` samples, and at least 3 samples' worth.

    Two runs of a randomly started attack on the same samples disagree on a few samples by chance; an
    increase of accuracy within this threshold is noise, beyond it a flag.
    """
    if n < 1 or not 0 <= p <= 1:
        raise ValueError(f"noise_threshold needs 0 <= p <= 1 and n >= 1 (got p={p!r}, n={n!r})")
    return max(2 * math.sqrt(p * (1 - p) / n), 3 / n)

def _cached(store: Store | None, cfg: dict[str, Any], data_fp: str, fn: Callable[[], dict]) -> tuple[dict, bool]:
    """``fn()``, through ``store`` when one is given; the key covers this module and the attack code."""
    if store is None:
        return fn(), False
    code = code_version_of(__name__)  # this module's import closure: the checks, attacks, train
    return store.get_or_compute(artifact_key("masking", cfg, code, data_fp), fn, meta=cfg)


def masking_checks(model: nn.Module, x: Tensor, y: Tensor, threat: AttackConfig, settings: MaskingSettings, seed: int,
                   num_classes: int, surrogate: nn.Module | None = None, store: Store | None = None,
                   data_fp: str = "") -> dict[str, Any]:
    """The gradient-masking sanity checks of the module docstring on (x, y); ``surrogate`` for transfer.

    Returns the raw accuracies, one record per check (``passed``, the numbers, the threshold) and the
    list of flags.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}: at least 2")
    n = len(y)
    cfg = {"schema": SCHEMA, "model": model_hash(model), "data": tensor_hash(x, y), "threat": asdict(threat),
           "settings": asdict(settings), "seed": seed,
           "surrogate": model_hash(surrogate) if surrogate is not None else None}

    def acc_of(m: nn.Module, c: AttackConfig, src: nn.Module | None = None) -> float:
        xa = torch.cat([attacks.make_attack(src or m, c)(x[i:i + settings.batch_size], y[i:i + settings.batch_size],
                                                         torch.Generator(device=x.device).manual_seed(seed + i))
                        for i in range(0, n, settings.batch_size)])
        return float(correct(m, xa, y).float().mean())

    def compute() -> dict[str, Any]:
        sweep = [acc_of(model, same_family(threat, "linf", e, settings.sweep_steps)) if e > 0
                 else float(correct(model, x, y).float().mean()) for e in settings.linf_grid]
        few = same_family(threat, threat.norm, threat.eps, settings.few_steps)
        out: dict[str, Any] = {"linf_grid": list(settings.linf_grid), "sweep": sweep,
                               "few": acc_of(model, few),
                               "many": acc_of(model, same_family(threat, threat.norm, threat.eps, settings.many_steps)),
                               "restarts": acc_of(model, replace(few, restarts=settings.restarts)),
                               "whitebox": acc_of(model, threat)}
        out["transfer"] = acc_of(model, threat, surrogate) if surrogate is not None else None
        return out

    raw, hit = _cached(store, cfg, data_fp, compute)
    checks = _judge(raw, n, num_classes, settings, threat)
    return {"raw": raw, "checks": checks, "flags": [c["flag"] for c in checks if not c["passed"]], "cached": hit}


def same_family(threat: AttackConfig, norm: str, eps: float, steps: int) -> AttackConfig:
    """PGD-CE at another norm/ε/step count with the step rule of ``threat`` (cosine or Madry's fixed step)."""
    make = AttackConfig.cosine if threat.schedule == "cosine" else AttackConfig.madry
    return make(norm, eps, steps)


def _judge(raw: Mapping[str, Any], n: int, num_classes: int, s: MaskingSettings, threat: AttackConfig) -> list[dict]:
    """Apply the masking rules to the raw accuracies: one record per check."""
    sym = "L∞" if threat.norm == "linf" else "L2"
    checks = []
    grid, sweep = raw["linf_grid"], raw["sweep"]
    rises = [(grid[i], grid[i + 1], sweep[i + 1] - sweep[i], noise_threshold(sweep[i], n))
             for i in range(len(grid) - 1)]
    worst = max(rises, key=lambda r: r[2] - r[3])
    checks.append({"flag": "eps_not_monotone", "check": "accuracy non-increasing in L∞ ε",
                   "value": worst[2], "threshold": worst[3], "passed": all(d <= t for _, _, d, t in rises),
                   "detail": f"largest rise {100 * worst[2]:+.1f} pp (ε {worst[0]:.3g}→{worst[1]:.3g})"})
    chance = 1 / num_classes
    thr = noise_threshold(chance, n)
    checks.append({"flag": "above_chance_at_eps_0.5", "check": f"L∞ ε={CHANCE_EPS}: accuracy at or below chance",
                   "value": sweep[-1] - chance, "threshold": thr, "passed": sweep[-1] <= chance + thr,
                   "detail": f"{100 * sweep[-1]:.1f}% vs chance {100 * chance:.0f}%"})
    for flag, key, what in (("more_steps_raise_acc", "many", f"PGD-{s.many_steps}"),
                            ("restarts_raise_acc", "restarts", f"PGD-{s.few_steps} ×{s.restarts} restarts")):
        thr = noise_threshold(raw["few"], n)
        checks.append({"flag": flag, "check": f"{sym}: {what} no better for the model than PGD-{s.few_steps}",
                       "value": raw[key] - raw["few"], "threshold": thr, "passed": raw[key] - raw["few"] <= thr,
                       "detail": f"{100 * raw['few']:.1f}% → {100 * raw[key]:.1f}%"})
    if raw.get("transfer") is not None:
        thr = noise_threshold(raw["whitebox"], n)
        checks.append({"flag": "transfer_stronger", "check": f"{sym}: transfer PGD-{threat.steps} weaker than white-box",
                       "value": raw["whitebox"] - raw["transfer"], "threshold": thr,
                       "passed": raw["transfer"] >= raw["whitebox"] - thr,
                       "detail": f"white-box {100 * raw['whitebox']:.1f}%, transfer {100 * raw['transfer']:.1f}%"})
    return checks
