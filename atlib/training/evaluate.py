"""Clean and adversarial evaluation on a fixed test subset: logits, accuracies, named attacks."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from atlib.core.attacks import AttackConfig, make_attack
from atlib.training.train import predict

Tensor = torch.Tensor


def adversarial_logits(model: nn.Module, x: Tensor, y: Tensor, cfg: AttackConfig, seed: int,
                       batch_size: int = 500, desc: str | None = None) -> Tensor:
    """Logits (float32, CPU) of ``model`` on PGD adversarial examples of (x, y) under ``cfg``."""
    attack = make_attack(model, cfg)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    chunks = range(0, len(x), batch_size)
    out = []
    for i in tqdm(chunks, desc=desc, disable=desc is None, leave=False):
        xa = attack(x[i:i + batch_size], y[i:i + batch_size], gen)
        out.append(predict(model, xa, batch_size))
    return torch.cat(out)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, attacks: Mapping[str, AttackConfig], seed: int,
             desc: str | None = None) -> dict[str, Tensor]:
    """``{"clean": logits, <attack name>: logits, ...}`` on the same samples."""
    out = {"clean": predict(model, x)}
    for name, cfg in attacks.items():
        out[name] = adversarial_logits(model, x, y, cfg, seed, desc=f"{desc}: {name}" if desc else None)
    return out


def accuracies(logits: Mapping[str, Tensor], y: Tensor) -> dict[str, float]:
    """Accuracy per entry of an ``evaluate`` result."""
    y = y.cpu()
    return {k: float((z.argmax(1) == y).float().mean()) for k, z in logits.items()}
