"""Device choice and seeding: CUDA when present, CPU otherwise."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``cpu``, ``cuda``, ``cuda:1``), else ``$ATLIB_DEVICE``, else CUDA if available
    (under ``torchrun``: ``cuda:$LOCAL_RANK``), else the CPU."""
    name = name or os.environ.get("ATLIB_DEVICE")
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
        return dev
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one GPU per local rank
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda")


def rank_world() -> tuple[int, int]:
    """(rank, world size) in an initialised ``torch.distributed`` process group (``torchrun``); (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def strict_determinism(on: bool | None = None) -> bool:
    """Opt in to bitwise-reproducible CUDA runs (``on``, else ``$ATLIB_DETERMINISTIC=1``); returns the state.

    CPU runs are already bitwise reproducible for a fixed seed and thread count (jobs in worker processes,
    :mod:`atlib.training.pool`, run on one thread each). On CUDA, cuDNN's
    autotuned convolution algorithms and atomics-based kernels (e.g. scatter-add in backward passes)
    vary from run to run; this switches to deterministic kernels (slower, and an op that has none
    raises an error naming it) and sets the cuBLAS workspace that deterministic matmuls need.
    """
    on = os.environ.get("ATLIB_DETERMINISTIC", "0") == "1" if on is None else on
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # must be set before the first cuBLAS call
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on  # autotuning picks algorithms by timing: not reproducible
    torch.backends.cudnn.deterministic = on
    return on


def device_name(dev: torch.device) -> str:
    """Human-readable device, e.g. ``cpu (2 threads)`` or ``cuda: NVIDIA H100``."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def progress_default() -> bool:
    """Show tqdm bars unless ``$ATLIB_PROGRESS=0`` (the book runner sets it: bars are noise in HTML)."""
    return os.environ.get("ATLIB_PROGRESS", "1") != "0"
