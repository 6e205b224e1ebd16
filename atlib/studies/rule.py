"""A pre-registered rule as one object: its constants, its text with them filled in, its decision, its ledger verdict.

Each study's ``rules.py`` defines one subclass of :class:`Rule` and one instance of it, ``RULE`` (also the study's
face: ``atlib.studies.<study>.rule``). Its fields are the rule's constants, each written once with what it means
(:func:`const`); its ``TEXT`` holds the rule in words, with ``{term}`` placeholders that :meth:`Rule.terms` fills
from those fields; its methods decide; ``LEDGER`` maps its outcomes onto the claims ledger's verdicts. The
chapter glues the text and the terms (:func:`atlib.studies.prose.glue_rule`), the ledger (:mod:`atlib.book.claims`)
imports the rule and its mapping, and the knob sheet (:mod:`atlib.book.knobs`) prints the constants: changing a
threshold is one edit of its field, and everything follows.

``GATED`` names the models whose validity gates (:mod:`atlib.studies.validity`, thresholds in chapter 02's rule) a
rule checks before it decides: a failed gate makes its verdict ``invalid``, with the gate's measurement as reason.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from atlib.core import stats

DOC = "doc"  # a constant's field metadata: what it means, for the knob sheet


def const(value: Any, doc: str) -> Any:
    """A rule constant: a dataclass field with its value (mappings are copied per instance) and what it means."""
    if isinstance(value, Mapping):
        return dataclasses.field(default_factory=lambda: dict(value), metadata={DOC: doc})
    return dataclasses.field(default=value, metadata={DOC: doc})


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Base of every study's rule: constants are the subclass's fields, ``TEXT`` its words (one entry per part the
    chapter places; ``{term}`` placeholders filled from :meth:`terms`), ``LEDGER`` its outcome → ledger verdict."""

    TITLE: ClassVar[str] = ""  # what the rule decides, for the knob sheet and the ledger
    CHAPTER: ClassVar[str] = ""  # the chapter that states and applies it (its toc entry)
    TEXT: ClassVar[Mapping[str, str]] = {}  # part -> the rule in words (MyST Markdown), with {term} placeholders
    OUTCOMES: ClassVar[Mapping[str, str]] = {}  # outcome -> when the rule gives it, in words (for the ledger)
    LEDGER: ClassVar[Mapping[str, str]] = {}  # this rule's outcome -> the ledger's verdict (empty: no claim)

    GATED: ClassVar[str] = ""  # the models whose validity gates (atlib.studies.validity) it checks first, in words

    def constants(self) -> dict[str, Any]:
        """Every constant of the rule by name, in the order written."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def meanings(self) -> dict[str, str]:
        """What each constant means (its :func:`const` doc)."""
        return {f.name: f.metadata.get(DOC, "") for f in dataclasses.fields(self)}

    def terms(self) -> dict[str, str]:
        """The strings the rule's text quotes, by placeholder name. Subclasses format their constants here (and
        what derives from them); the chapter glues each under its name."""
        return {}

    def text(self, part: str | None = None) -> str:
        """The rule in words with its constants filled in: one part, or every part (paragraphs)."""
        parts = [part] if part is not None else list(self.TEXT)
        t = self.terms()
        return "\n\n".join(self.TEXT[p].format_map(t) for p in parts)

    def ledger_verdict(self, outcome: str) -> str | None:
        """The ledger's verdict for one of this rule's outcomes; None for an outcome the rule does not give."""
        return self.LEDGER.get(str(outcome))

    def ledger_text(self) -> str:
        """How the ledger maps this rule's outcomes, in words: ``its *a* (when) and *b* (when) → **verdict**``, one
        group per ledger verdict."""
        groups: dict[str, list[str]] = {}
        for outcome, verdict in self.LEDGER.items():
            when = self.OUTCOMES.get(outcome, "").format_map(self.terms())
            groups.setdefault(verdict, []).append(f"*{outcome}*" + (f" ({when})" if when else ""))
        return "; ".join(f"its {', '.join(o[:-1]) + ' and ' if len(o) > 1 else ''}{o[-1]} → **{v}**"
                         for v, o in groups.items())


def book_level() -> str:
    """The level of the book's intervals (``stats.mean_ci``'s default), as the rules' texts quote it: "95%"."""
    return f"{inspect.signature(stats.mean_ci).parameters['level'].default:.0%}"


def pp(x: float) -> str:
    """A fraction as the percentage points the rules' texts quote: 0.015 → "1.5"."""
    return f"{100 * x:g}"
