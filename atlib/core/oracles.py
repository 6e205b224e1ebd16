"""Attacks atlib did not write, as oracles: torchattacks' PGD, APGD-CE/-DLR and the gradient-free Square attack.

atlib's batched PGD is the book's fast core; these are the independent attacks it is checked against (chapter
05's audit) and that enter chapter 04's worst case. torchattacks draws its random starts from torch's *global*
generator (APGD and Square even re-seed it), so :func:`run_oracle` runs inside ``fork_rng``: reproducible for a
``seed`` and leaving the caller's random state untouched.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from atlib.core import compat
from atlib.core.attacks import AttackConfig, madry_step

Tensor = torch.Tensor
ORACLES = ("ta_pgd", "apgd_ce", "apgd_dlr", "square")


def _torchattacks() -> Any:
    compat.import_torchvision()  # torchattacks imports torchvision: go through atlib's shim first
    import torchattacks

    return torchattacks


def torchattacks_version() -> str:
    return str(_torchattacks().__version__)


def oracle(name: str, model: nn.Module, cfg: AttackConfig, apgd_steps: int, apgd_restarts: int, seed: int,
           queries: int = 1000) -> Any:
    """A torchattacks attack for ``name`` in :data:`ORACLES` at ``cfg``'s threat model (``queries``: Square's budget)."""
    ta = _torchattacks()
    norm = "Linf" if cfg.norm == "linf" else "L2"
    if name == "ta_pgd":  # torchattacks has a fixed step only: the evaluated one, or Madry's for a cosine schedule
        cls = ta.PGD if cfg.norm == "linf" else ta.PGDL2
        alpha = cfg.step_size if cfg.schedule == "constant" else madry_step(cfg.eps, cfg.steps)
        return cls(model, eps=cfg.eps, alpha=alpha, steps=cfg.steps, random_start=cfg.random_start)
    if name in ("apgd_ce", "apgd_dlr"):
        return ta.APGD(model, norm=norm, eps=cfg.eps, steps=apgd_steps, n_restarts=apgd_restarts, seed=seed,
                       loss=name.removeprefix("apgd_"))
    if name == "square":  # gradient-free: immune to masked gradients, the check a masking model fails
        return ta.Square(model, norm=norm, eps=cfg.eps, n_queries=queries, n_restarts=1, seed=seed, loss="margin")
    raise ValueError(f"unknown oracle {name!r}; valid: {', '.join(ORACLES)}")


def run_oracle(name: str, model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, apgd_steps: int,
               apgd_restarts: int, seed: int, batch_size: int = 500, queries: int = 1000) -> Tensor:
    """Adversarial inputs from a torchattacks oracle, the model in eval mode on [0, 1] inputs (see the module doc)."""
    was = model.training
    model.eval()
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    out = []
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(seed)
            atk = oracle(name, model, cfg, apgd_steps, apgd_restarts, seed, queries)
            for i in range(0, len(x), batch_size):
                out.append(atk(x[i:i + batch_size], y[i:i + batch_size]).detach())
    finally:
        model.train(was)
    return torch.cat(out) if out else x[:0].clone()
