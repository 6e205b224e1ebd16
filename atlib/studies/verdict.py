"""The outcomes a pre-registered rule can give, one vocabulary for the chapters and the claims ledger.

A chapter's rule object (``studies/<chapter>/rules.py``, :mod:`atlib.studies.rule`) writes one of these to
``summary.json``; its ``LEDGER`` maps it onto the ledger's four verdicts (:mod:`atlib.book.claims`). A ``StrEnum``: each member is its string,
so summaries stay plain JSON and read back as the same values.
"""
from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """Outcomes of the book's verdict rules; the first four are the ledger's vocabulary."""

    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    INCONCLUSIVE = "inconclusive"
    NOT_RUN = "not run"
    CONTRADICTED = "contradicted"  # the data go against the claim (chapter 04's B and C)
    UNDECIDED = "undecided"  # too few replicates for an interval
    NOT_SEPARATED = "not separated from accuracy"  # chapter 03: (a) holds, the accuracy control does not separate
    INVALID = "invalid"  # a model the rule reads failed a validity gate (atlib.studies.validity): nothing is read




LEDGER = (Verdict.SUPPORTED, Verdict.NOT_SUPPORTED, Verdict.INCONCLUSIVE, Verdict.NOT_RUN, Verdict.INVALID)
