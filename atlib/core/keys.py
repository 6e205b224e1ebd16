"""Code versions that leave out the loaders: for artifacts whose config already records what the loaders deliver.

:func:`atlib.core.store.code_version_of` hashes a producer's whole import closure. A study module that takes a
``Context`` imports the context and the profiles, and through them every study's settings and the executors,
so any edit there would recompute its artifacts although their config records every setting they use.
:func:`code_version_without` reads the same sources the same way but neither includes nor follows ``exclude``.
(A separate module: ``store`` itself sits in the training closure, and editing it would retrain every model.)
"""
from __future__ import annotations

import hashlib
from typing import Any

from atlib.core.store import _module_info, _target_module

# Modules that hand an experiment its settings and data, never compute it: configs record what they deliver.
LOADERS = ("atlib.studies.context", "atlib.studies.profiles")


def closure_without(*targets: Any, exclude: tuple[str, ...] = LOADERS) -> tuple[str, ...]:
    """Sorted atlib modules the targets' modules import, transitively (themselves too), not entering ``exclude``."""
    if not targets:
        raise ValueError("closure_without needs at least one function or module")
    seen: set[str] = set()
    todo = [m for m in {_target_module(t) for t in targets} if m not in exclude]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(d for d in _module_info(name)[1] if d not in exclude)
    return tuple(sorted(seen))


def code_version_without(*targets: Any, exclude: tuple[str, ...] = LOADERS) -> str:
    """Short hash of the sources of :func:`closure_without` (names and contents, sorted), like ``code_version_of``."""
    h = hashlib.sha256()
    for name in closure_without(*targets, exclude=exclude):
        h.update(f"{name}\0{_module_info(name)[0]}\n".encode())
    return h.hexdigest()[:12]
