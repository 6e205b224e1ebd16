"""The face every study package shows from its ``__init__``: the same few names, so a chapter reads its study one way.

``settings`` (the study's frozen dataclass, in its profile), ``runs`` (cached experiments), ``rules`` and ``rule``
(the pre-registered rule object, :class:`atlib.studies.rule.Rule`), ``views`` (tables, figures, glued prose and
``summary``: the chapter's part of ``summary.json``). A study's other modules are reached by their names the same
way (``theory.controls``). Every name is imported when first used, not with the package: a study's artifacts are
keyed by their import closure (:mod:`atlib.core.store`), which includes this package, and a cached experiment must
not depend on its chapter's tables.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

FACE = ("settings", "runs", "rules", "rule", "views")


def face(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the study package ``package`` (PEP 562): the face's names, loaded when used."""

    def __getattr__(name: str) -> Any:
        if name == "rule":
            return importlib.import_module(f"{package}.rules").RULE
        if name.startswith("_"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r} (its face: {', '.join(FACE)})") from None

    def __dir__() -> list[str]:
        return sorted(FACE)

    return __getattr__, __dir__
