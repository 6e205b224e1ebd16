"""Per-epoch training checkpoints, written atomically, so a killed run resumes where it stopped.

A checkpoint holds the model, optimiser and schedule states, the finished epochs' history and every
random state training draws from (the shuffle generator, the attack generator, torch's global RNG and
CUDA's), so a resumed run ends bitwise-identical to an uninterrupted one (on the CPU). It also holds a
fingerprint of the run (training config, seed, data size, parameter shapes, precision): a checkpoint of another
run is ignored with a warning instead of being resumed.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlib.core.store import atomic_write

FORMAT = 1


def fingerprint(cfg: Any, seed: int, n: int, model: nn.Module, precision: str = "fp32") -> str:
    """Hash of what determines a run: config, seed, number of samples, parameter names and shapes, precision."""
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return hashlib.sha256(repr((FORMAT, asdict(cfg), seed, n, shapes, precision)).encode()).hexdigest()


def save(path: str | Path, state: dict) -> None:
    """``torch.save`` written atomically (:func:`atlib.core.store.atomic_write`): a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def load(path: str | Path, fp: str) -> dict | None:
    """The checkpoint at ``path`` if it exists and belongs to the run ``fp``; None (with a warning on mismatch) else."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable checkpoint only costs a fresh start
        warnings.warn(f"checkpoint {path} is unreadable ({e}); starting fresh", stacklevel=3)
        return None
    if state.get("fingerprint") != fp:
        warnings.warn(f"checkpoint {path} belongs to another run (config, seed, data or model differ); "
                      "starting fresh", stacklevel=3)
        return None
    return state


def rng_states(*generators: torch.Generator) -> dict:
    """The states of ``generators`` and of torch's global CPU and CUDA RNGs."""
    out = {"generators": [g.get_state() for g in generators], "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict, *generators: torch.Generator) -> None:
    """Restore what :func:`rng_states` recorded."""
    for g, s in zip(generators, states["generators"], strict=True):
        g.set_state(s)
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
