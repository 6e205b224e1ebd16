"""Chapter 02's settings: the kinds of model the book trains. Their schedule, data and threat models are the
profile's top-level fields (:class:`atlib.studies.profiles.Profile`), which every chapter reuses."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    """One kind of model the book trains: standard (ε = 0) or PGD-AT under a norm and ε."""

    kind: str  # "standard" | "at"
    norm: str | None = None
    eps: float = 0.0

    @property
    def name(self) -> str:
        return "standard" if self.kind == "standard" else f"at_{self.norm}_{self.eps:.4g}"

    @property
    def label(self) -> str:
        if self.kind == "standard":
            return "standard"
        return f"AT {'L∞' if self.norm == 'linf' else 'L2'} ε={self.eps:.4g}"
