"""Distillation on clean inputs (ARD's loss without its adversarial student inputs) and survivor attacks.

The loss, for student logits z_s, target probabilities p_t at temperature T and labels y, is

    L = α · T² · KL(p_t ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, y)

with ``batchmean`` reduction: the KL summed over classes, averaged over the batch. ARD's code uses
``nn.KLDivLoss()``, whose default element-wise mean also divides by the K classes: its loss (and its
gradient) is K times smaller for the same T, so ARD's learning rate corresponds to ours divided by K.
Per sample, ∂L/∂z_s = α · T · (softmax(z_s/T) − p_t); as T grows this tends to the centred logit
difference ((z_s − mean z_s) − (z_t − mean z_t)) / K, which is unbounded: T and the learning rate are
chosen together.

Targets are computed once from the teachers' outputs on the *unaugmented* training images and kept for
every epoch (a shuffled target is the same permutation in every epoch); the student sees the same
unaugmented images, so augmentation is never applied here.

Survivor attacks: robust accuracy is a minimum over attacks (a sample is robust only if every attack
fails on it), so a further attack only needs to run on the samples that survived the earlier ones;
counting the others as broken is exact for the combined attack, not an approximation.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from atlib.core.attacks import AttackConfig, make_attack
from atlib.training.train import TrainingDiverged, autocast, correct, one_cycle

Tensor = torch.Tensor
REDUCTIONS = ("batchmean", "mean")


def distill_loss(student_logits: Tensor, target_probs: Tensor, labels: Tensor | None, T: float, alpha: float = 1.0,
                 reduction: str = "batchmean") -> Tensor:
    """α·T²·KL(target ‖ softmax(z_s/T)) + (1 − α)·CE(z_s, y); ``reduction="mean"`` is ARD's element-wise mean
    (the batchmean divided by K). Zero-probability targets contribute 0 (x log x → 0)."""
    if not (0 <= alpha <= 1):
        raise ValueError(f"bad alpha={alpha!r}: the KL weight must lie in [0, 1]")
    if not (isinstance(T, (int, float)) and 0 < T < math.inf):
        raise ValueError(f"bad temperature T={T!r}: a finite number > 0")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if student_logits.shape != target_probs.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and targets {tuple(target_probs.shape)} differ")
    loss = student_logits.new_zeros(())
    if alpha > 0:
        log_q = F.log_softmax(student_logits / T, dim=1)
        p = target_probs.to(log_q.dtype)
        kl = (torch.xlogy(p, p) - p * log_q).sum(dim=1).mean()
        if reduction == "mean":
            kl = kl / student_logits.shape[1]
        loss = loss + alpha * T * T * kl
    if alpha < 1:
        if labels is None:
            raise ValueError("alpha < 1 mixes in cross-entropy: labels are needed")
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


@dataclass(frozen=True)
class DistillConfig:
    """One student's training: temperature, KL weight and the optimiser/schedule (as ``train.train``)."""

    T: float
    alpha: float
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_frac: float = 0.2
    reduction: str = "batchmean"

    def __post_init__(self) -> None:
        if not (0 < self.T < math.inf) or not (0 <= self.alpha <= 1):
            raise ValueError(f"bad distillation config: T={self.T!r} (finite, > 0), alpha={self.alpha!r} (in [0, 1])")
        if self.epochs < 1 or self.batch_size < 1 or not (self.lr > 0):
            raise ValueError(f"bad distillation config: epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; valid: {', '.join(REDUCTIONS)}")


def distill(model: nn.Module, x: Tensor, targets: Tensor, y: Tensor, cfg: DistillConfig, seed: int,
            name: str = "student", progress: bool = True, precision: str = "fp32") -> list[dict]:
    """Train ``model`` in place on clean (x, targets, y) with :func:`distill_loss`; the per-epoch history.

    The optimiser and schedule are ``train.train``'s: SGD with Nesterov momentum, one-cycle learning rate
    (``train.one_cycle``), a seeded permutation of the training set per epoch. ``precision`` as ``train.train``'s:
    under "bf16" the forward runs under bf16 autocast and the loss takes its logits as float32.
    """
    if not (len(x) == len(targets) == len(y)):
        raise ValueError(f"{len(x)} inputs, {len(targets)} targets and {len(y)} labels")
    dev = x.device
    targets = targets.to(device=dev, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)
    n, bs = len(y), cfg.batch_size
    steps = math.ceil(n / bs)
    total = cfg.epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total, cfg.warmup_frac))
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    for epoch in tqdm(range(cfg.epochs), desc=name, disable=not progress, leave=False):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        loss_sum = torch.zeros((), device=dev)
        agree = torch.zeros((), device=dev)
        for b in range(steps):
            idx = perm[b * bs:(b + 1) * bs]
            with autocast(precision, dev):
                z = model(x[idx]).float()  # an identity under fp32
                loss = distill_loss(z, targets[idx], y[idx], cfg.T, cfg.alpha, cfg.reduction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            agree += (z.argmax(1) == targets[idx].argmax(1)).sum()
        train_loss = float(loss_sum) / n
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"{name}: distillation loss is {train_loss} at epoch {epoch + 1} (T={cfg.T}, "
                                   f"lr={cfg.lr}); lower the learning rate: at large T the gradient grows with the logits")
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "target_argmax_agreement": float(agree) / n,
                        "seconds": time.perf_counter() - t0})
    model.eval()
    return history


# ----------------------------------------------------------------------------------- survivor attacks
def survivors(model: nn.Module, x: Tensor, y: Tensor, alive: Tensor, cfg: AttackConfig, seed: int,
              batch_size: int = 500, source: nn.Module | None = None) -> Tensor:
    """``alive`` AND "the attack ``cfg`` (crafted on ``source``, default the model itself) fails", computed by
    attacking only the alive samples; an empty ``alive`` returns at once."""
    alive = alive.cpu().bool()
    out = alive.clone()
    idx = alive.nonzero().squeeze(1)
    if len(idx) == 0:
        return out
    attack = make_attack(source if source is not None else model, cfg)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    keep = []
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size].to(x.device)
        keep.append(correct(model, attack(x[j], y[j], gen), y[j]))
    out[idx] = torch.cat(keep)
    return out
