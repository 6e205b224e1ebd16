"""Import torchvision safely on a CPU-only torch.

PyPI's torchvision 0.28.0 wheel is CUDA-linked. On the CPU build of torch 2.13.0 its C extension
does not load, so the ops ``torchvision::nms`` and ``torchvision::qnms`` are never defined, and
``import torchvision`` dies when its meta registrations refer to them. Defining the two schemas
(no kernels: atlib never calls them) before the first import is enough. A CUDA torch loads the
extension itself and is left untouched.
"""
from __future__ import annotations

import sys
from types import ModuleType

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: torch.library.Library | None = None  # kept alive: a Library frees its defs when collected


def needs_schema_shim() -> bool:
    """True when torch is a CPU build and torchvision has not been imported yet."""
    return torch.version.cuda is None and torch.version.hip is None and "torchvision" not in sys.modules


def _op_defined(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def define_missing_schemas() -> list[str]:
    """Define the torchvision op schemas that are missing; return the names defined."""
    global _LIBRARY
    missing = [name for name in _SCHEMAS if not _op_defined(name)]
    if missing:
        _LIBRARY = _LIBRARY or torch.library.Library("torchvision", "DEF")
        for name in missing:
            _LIBRARY.define(_SCHEMAS[name])
    return missing


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, shimming its op schemas first on a CPU-only torch."""
    if needs_schema_shim():
        define_missing_schemas()
    import torchvision

    return torchvision
