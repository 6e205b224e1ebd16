"""Standard and PGD adversarial training (Madry et al. 2018) with SGD and a one-cycle schedule.

The training set lives on the compute device as one tensor; each epoch is a seeded permutation
sliced into batches (no DataLoader, no host→device copies). Under AT each batch is replaced by its
PGD adversarial examples (the attack runs in eval mode, the update in train mode). Each epoch logs
the loss, accuracy and the logit statistics of a fixed monitor set, which is how the book shows the
max logit and gap evolving over training.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from atlib.core import stats
from atlib.core.attacks import PGD, AttackConfig, Shard, make_attack
from atlib.core.data import augment
from atlib.core.runtime import check_precision
from atlib.training import checkpoint as ckpt, distributed as ddp

Tensor = torch.Tensor


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and (optionally) the training attack."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False
    attack: AttackConfig | None = None
    label_smoothing: float = 0.0
    logit_squeeze: float = 0.0  # λ of a λ·mean‖z‖² penalty on the logits (Shafahi et al.'s logit squeezing)
    loss_temperature: float = 1.0  # CE on z / T: T < 1 trains the raw logits to be smaller
    warmup_frac: float = 0.2  # one-cycle: linear 0 → lr over this fraction of steps, then linear → 0
    eps_fadein_epochs: int = 0  # AT: ε and the PGD step ramp linearly from 0 to the target over these epochs

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not (self.lr > 0):
            raise ValueError(f"bad training config: epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}")
        if int(self.eps_fadein_epochs) != self.eps_fadein_epochs or not 0 <= self.eps_fadein_epochs <= self.epochs:
            raise ValueError(f"bad eps_fadein_epochs={self.eps_fadein_epochs!r}: a whole number of epochs in "
                             f"[0, epochs={self.epochs}]")
        if self.logit_squeeze < 0 or not (self.loss_temperature > 0) or not (0 <= self.label_smoothing < 1):
            raise ValueError(f"bad regulariser: logit_squeeze={self.logit_squeeze}, loss_temperature="
                             f"{self.loss_temperature}, label_smoothing={self.label_smoothing}")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; nothing from this run is cached."""


def eps_ramp(step: int, ramp_steps: int) -> float:
    """AT's ε multiplier at optimiser step ``step`` (0-based): linear from 1/ramp_steps up to 1 over the first
    ``ramp_steps`` steps, then 1 (no ramp when ``ramp_steps`` is 0). Large-ε AT that starts at full ε can fall
    into the constant predictor before the model has learned any feature; the ramp lets it learn first."""
    return 1.0 if step >= ramp_steps else (step + 1) / ramp_steps


def one_cycle(step: int, total: int, warmup_frac: float) -> float:
    """Learning-rate multiplier: linear warm-up then linear decay to zero."""
    w = max(1, int(total * warmup_frac))
    return step / w if step < w else max(0.0, (total - step) / max(1, total - w))


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Logits of ``model`` on ``x`` in eval mode, float32 on the CPU."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> Tensor:
    """Per-sample bool (CPU): does ``model`` classify ``x`` correctly?"""
    return predict(model, x, batch_size).argmax(1) == y.cpu()


def autocast(precision: str, dev: torch.device) -> contextlib.AbstractContextManager:
    """The training steps' precision on ``dev``: under "bf16", bf16 autocast (matmuls and convolutions in bf16,
    weights and optimiser float32); under "fp32" nothing changes. Evaluation never runs under it."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


@dataclass
class _Run:
    """What every epoch of one :func:`train` call shares: data, the forward module, optimiser, RNGs, ranks."""

    cfg: TrainConfig
    name: str
    x: Tensor
    y: Tensor
    net: nn.Module  # what the batches go through: the DDP wrapper, the compiled model or the model itself
    opt: torch.optim.SGD
    sched: torch.optim.lr_scheduler.LambdaLR
    shuffle_gen: torch.Generator
    attack_gen: torch.Generator
    attack: PGD | None
    precision: str  # the training steps' ("fp32" or "bf16"); the CUDA fast path is always "bf16"
    rank: int
    world: int

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.cfg.batch_size)


def _setup(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, seed: int, name: str, fast: bool,
           compile_model: bool | None, precision: str) -> _Run:
    """Layout, optimiser, one-cycle schedule, compiled forward, seeded generators, attack and DDP wrapper."""
    dev = x.device
    fast = fast and dev.type == "cuda"
    precision = "bf16" if fast else check_precision(precision)
    if fast and x.ndim == 4:
        model.to(memory_format=torch.channels_last)  # channels_last: the NHWC layout tensor-core convolutions use
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True, **({"fused": True} if fast else {}))  # fused SGD: one kernel per step
    if compile_model is None:
        compile_model = os.environ.get("ATLIB_COMPILE", "1") != "0"
    fwd = torch.compile(model) if fast and compile_model else model  # torch.compile: fused kernels, fewer launches
    n, bs = len(y), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: one_cycle(s, total, cfg.warmup_frac))
    shuffle_gen = torch.Generator().manual_seed(seed)
    attack_gen = torch.Generator(device=dev).manual_seed(seed + 10_000)
    attack = make_attack(fwd, cfg.attack) if cfg.attack is not None and cfg.attack.eps > 0 else None
    rank, world = ddp.rank_world()
    if world > 1 and min(bs, n - (steps_per_epoch - 1) * bs) < world:
        raise ValueError(f"{name}: every global batch needs at least one sample per rank ({world} ranks)")
    net = ddp.wrap(model, dev) if world > 1 else fwd  # DDP averages the update's gradients over ranks
    return _Run(cfg, name, x, y, net, opt, sched, shuffle_gen, attack_gen, attack, precision, rank, world)


def _resume(run: _Run, model: nn.Module, state: dict) -> tuple[int, list[dict]]:
    """Restore model, optimiser, schedule and RNGs from a checkpoint; the epoch to start at and the history so far."""
    model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    ckpt.set_rng_states(state["rng"], run.shuffle_gen, run.attack_gen)
    return state["epoch"], state["history"]


def _attack_now(run: _Run) -> Callable | None:
    """The training attack for the next optimiser step: the configured one, or under the ε warm-up a copy with
    ε and step size scaled by :func:`eps_ramp` (the same random-start draws, so the ramp changes nothing else)."""
    f = eps_ramp(run.sched.last_epoch, run.cfg.eps_fadein_epochs * run.steps_per_epoch)
    if run.attack is None or f == 1.0:
        return run.attack
    a = run.cfg.attack
    return make_attack(run.attack.model, replace(a, eps=a.eps * f, step_size=a.step_size * f))


def _batch_loss(run: _Run, xb: Tensor, yb: Tensor, part: Shard | None) -> tuple[Tensor, Tensor]:
    """(logits, loss) of one batch: PGD examples under AT, then the regularised CE; the attack and the forward at
    the run's precision, the loss from float32 logits (an identity under fp32)."""
    cfg = run.cfg
    with autocast(run.precision, xb.device):
        if (attack := _attack_now(run)) is not None:
            xb = attack(xb, yb, run.attack_gen, part)  # the attack runs per rank, on its shard only
        logits = run.net(xb).float()
        loss = F.cross_entropy(logits / cfg.loss_temperature, yb, label_smoothing=cfg.label_smoothing)
        if cfg.logit_squeeze:
            loss = loss + cfg.logit_squeeze * logits.pow(2).sum(1).mean()
    return logits, loss


def _epoch(run: _Run) -> tuple[Tensor, Tensor, Tensor]:
    """One pass over a seeded permutation of the data: (summed loss, number correct, first non-finite batch or -1).

    The three are device tensors, summed over ranks under DDP.
    """
    x, y, bs, dev = run.x, run.y, run.cfg.batch_size, run.x.device
    run.net.train()
    perm = torch.randperm(run.n, generator=run.shuffle_gen).to(dev)
    loss_sum = torch.zeros((), device=dev)  # accumulated on device: no per-batch host sync
    n_correct = torch.zeros((), device=dev)
    first_bad = torch.full((), -1, device=dev)  # first batch with a non-finite loss, recorded without a sync
    for b in range(run.steps_per_epoch):
        idx = perm[b * bs:(b + 1) * bs]
        xb, yb = x[idx], y[idx]
        if run.cfg.augment:
            xb = augment(xb, run.shuffle_gen)
        part = ddp.shard(len(idx), run.rank, run.world) if run.world > 1 else None
        if part is not None:  # this rank's rows; every rank drew the global batch's augmentation above
            xb, yb = xb[part.start:part.stop], yb[part.start:part.stop]
        logits, loss = _batch_loss(run, xb, yb, part)
        run.opt.zero_grad(set_to_none=True)
        # DDP averages per-rank means: weighting by shard size makes that the global batch's mean
        (loss * (len(yb) * run.world / part.total) if part is not None else loss).backward()
        run.opt.step()
        run.sched.step()
        loss_sum += loss.detach() * len(yb)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), b, first_bad)
        n_correct += (logits.argmax(1) == yb).sum()
    if run.world > 1:
        first_bad = _reduce_over_ranks(run, loss_sum, n_correct, first_bad)
    return loss_sum, n_correct, first_bad


def _reduce_over_ranks(run: _Run, loss_sum: Tensor, n_correct: Tensor, first_bad: Tensor) -> Tensor:
    """Sum ``loss_sum`` and ``n_correct`` over ranks in place; the earliest bad batch of any rank (or -1)."""
    ddp.all_reduce(loss_sum)
    ddp.all_reduce(n_correct)
    never = torch.full_like(first_bad, run.steps_per_epoch)
    first_bad = ddp.all_reduce(torch.where(first_bad < 0, never, first_bad), "min")
    return torch.where(first_bad == run.steps_per_epoch, -1, first_bad)


def _check_finite(run: _Run, train_loss: float, first_bad: Tensor, epoch: int) -> None:
    """Raise :class:`TrainingDiverged` (naming the model, epoch and first bad batch) on a non-finite loss."""
    if not math.isfinite(train_loss):
        bad = int(first_bad)
        where = f", first at batch {bad + 1} of {run.steps_per_epoch}" if bad >= 0 else ""
        raise TrainingDiverged(f"{run.name}: training loss is {train_loss} at epoch {epoch + 1}{where}; "
                               f"lower the learning rate (lr={run.cfg.lr}) or check the data")


def _record(run: _Run, model: nn.Module, epoch: int, train_loss: float, n_correct: Tensor, t0: float,
            monitor: tuple[Tensor, Tensor] | None) -> dict:
    """The epoch's history entry: loss, accuracy, peak lr, seconds and the monitor set's logit statistics."""
    rec = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": float(n_correct) / run.n,
           "lr_peak": run.cfg.lr, "seconds": time.perf_counter() - t0}
    if monitor is not None:
        z = predict(model, monitor[0])
        rec.update({f"monitor_{k}": v for k, v in stats.logit_summary(z, monitor[1].cpu()).items()})
    return rec


def _save(run: _Run, model: nn.Module, checkpoint: str | Path, fp: str, epoch: int, history: list[dict]) -> None:
    """Write the checkpoint after ``epoch`` (0-based): everything :func:`_resume` needs to carry on."""
    ckpt.save(checkpoint, {"fingerprint": fp, "epoch": epoch + 1, "history": history,
                           "model": model.state_dict(), "optimizer": run.opt.state_dict(),
                           "scheduler": run.sched.state_dict(),
                           "rng": ckpt.rng_states(run.shuffle_gen, run.attack_gen)})


def train(model: nn.Module, x: Tensor, y: Tensor, cfg: TrainConfig, seed: int,
          monitor: tuple[Tensor, Tensor] | None = None, name: str = "model", progress: bool = True,
          on_epoch_end: Callable[[int, nn.Module, dict], None] | None = None,
          checkpoint: str | Path | None = None, fast: bool = False,
          compile_model: bool | None = None, precision: str = "fp32") -> list[dict]:
    """Train ``model`` in place on (x, y) and return the per-epoch history.

    ``on_epoch_end(epoch, model, record)`` is called after each epoch (e.g. to keep snapshots).
    ``checkpoint``: a file written atomically after every epoch (after ``on_epoch_end``); if it exists and
    belongs to this run (same config, seed, data size and model shapes), training resumes after its last
    epoch and ends bitwise-identical to an uninterrupted run on the CPU. A NaN or infinite loss raises
    :class:`TrainingDiverged` naming the model, epoch and first bad batch, before anything is saved.

    In an initialised ``torch.distributed`` process group (``torchrun``; see :mod:`atlib.training.distributed`) each
    rank trains on its shard of every global batch of ``cfg.batch_size`` under DDP; only rank 0 writes
    the checkpoint. Without one, nothing changes.

    ``fast`` turns on CUDA-only speed-ups (bf16 autocast, channels_last, fused SGD, and ``torch.compile``
    unless ``compile_model`` is False or ``$ATLIB_COMPILE=0``); on the CPU it changes nothing (float32, eager).
    ``precision``: "fp32", or "bf16" for bf16 autocast of the training steps on any device (the forward, the loss
    and the PGD inner attack of AT; gradients flow back through the same casts); weights, optimiser, monitor and
    every evaluation stay float32. Whether the device has native bf16 is the caller's question
    (:func:`atlib.core.runtime.train_precision`).
    """
    run = _setup(model, x, y, cfg, seed, name, fast, compile_model, precision)
    start = 0
    history: list[dict] = []
    fp = ckpt.fingerprint(cfg, seed, run.n, model, run.precision) if checkpoint is not None else ""
    if checkpoint is not None and (state := ckpt.load(checkpoint, fp)) is not None:
        start, history = _resume(run, model, state)
    bar = tqdm(range(start, cfg.epochs), desc=name, disable=not progress, leave=False,
               initial=start, total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        loss_sum, n_correct, first_bad = _epoch(run)
        train_loss = float(loss_sum) / run.n
        _check_finite(run, train_loss, first_bad, epoch)
        rec = _record(run, model, epoch, train_loss, n_correct, t0, monitor)
        history.append(rec)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, rec)
        if checkpoint is not None and run.rank == 0:
            _save(run, model, checkpoint, fp, epoch, history)
        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{rec['train_acc']:.3f}")
    model.eval()
    return history
