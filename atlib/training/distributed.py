"""Data-parallel training with ``torch.distributed`` (DDP), launched by ``torchrun``.

Under ``torchrun --nproc_per_node N`` each process calls :func:`init_from_env` once (gloo on the CPU,
NCCL on GPUs); :func:`atlib.training.train.train` then sees an initialised process group and gives each rank a
contiguous shard of every global batch: the same seeded permutation, augmentation draws and attack
starts on every rank (drawn for the global batch, then sliced), the attack run per rank on its shard,
gradients averaged by DDP. Without a process group nothing here is used and training is unchanged.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from atlib.core.attacks import Shard
from atlib.core.runtime import rank_world  # noqa: F401 (re-exported: atlib.training.distributed.rank_world)


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment; False when not launched by it.

    Picks NCCL for a CUDA ``device`` (and makes it the current device), gloo otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


def shard(total: int, rank: int, world: int) -> Shard:
    """This rank's contiguous rows of a global batch of ``total`` (sizes differ by at most one)."""
    base, extra = divmod(total, world)
    start = rank * base + min(rank, extra)
    return Shard(start, start + base + (rank < extra), total)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP (gradients all-reduced and averaged in backward)."""
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over ranks in place (``sum`` or ``min``)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MIN)
    return t
