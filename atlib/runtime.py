"""Device choice and seeding: CUDA when present, CPU otherwise."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``cpu``, ``cuda``, ``cuda:1``), else ``$ATLIB_DEVICE``, else CUDA if available."""
    name = name or os.environ.get("ATLIB_DEVICE")
    if name:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_name(dev: torch.device) -> str:
    """Human-readable device, e.g. ``cpu (2 threads)`` or ``cuda: NVIDIA H100``."""
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def progress_default() -> bool:
    """Show tqdm bars unless ``$ATLIB_PROGRESS=0`` (the book runner sets it: bars are noise in HTML)."""
    return os.environ.get("ATLIB_PROGRESS", "1") != "0"
