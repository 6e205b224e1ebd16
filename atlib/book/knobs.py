"""The knob sheet: every setting of the resolved profile and every constant of every study's rule, on one page.

A generated page of the book (``knobs.md``, in ``_toc.yml``), in the habit of airbench's one ``hyp`` table and
MadryLab/robustness's defaults table: what a profile runs (:class:`atlib.studies.profiles.Profile`, every field
spelled by the profile, no default applies) and what decides its verdicts (each study's rule object,
``atlib.studies.<study>.rule``), read from the code that runs, never typed.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import math
import textwrap
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from atlib.studies import audit, confidence, distillation, shrinkage, theory
from atlib.studies.profiles import Profile
from atlib.studies.rule import Rule

FILENAME = "knobs.md"
STUDIES = {"theory": theory, "shrinkage": shrinkage, "confidence": confidence, "distillation": distillation,
           "audit": audit}  # in the order of the chapters
SECTIONS = {"": "Models, data and training (chapter 02; every chapter reuses them)",
            "theory.linear": "Chapter 01: linear models on the pixels", "theory.deep": "Chapter 01: the deep nets' checks",
            "theory.gaussian": "Chapter 01: two Gaussian classes", "confidence": "Chapter 03: confidence",
            "distill": "Chapter 04: distillation", "audit": "Chapter 05: the attack audit"}


def field_docs(cls: type) -> dict[str, str]:
    """The comment written after each field of dataclass ``cls`` in its source (``name: type  # what it sets``)."""
    src = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type == tokenize.COMMENT}
    body = ast.parse(src).body[0]
    return {node.target.id: comments.get(node.end_lineno, comments.get(node.lineno, ""))
            for node in getattr(body, "body", []) if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def value_text(v: Any) -> str:
    """A setting or constant as the sheet shows it: 6 significant digits, ``none`` for None, lists in brackets."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}: {value_text(x)}" for k, x in v.items())
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _settings_tables(obj: Any, prefix: str = "") -> list[str]:
    """One table per dataclass of the profile tree (its nested ones after it), each row a field, its value and doc."""
    docs, rows, subs = field_docs(type(obj)), [], []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            subs.append((f"{prefix}.{f.name}" if prefix else f.name, v))
        else:
            rows.append(f"| `{f.name}` | {_cell(value_text(v))} | {_cell(docs.get(f.name, ''))} |")
    out = []
    if rows:
        out += [f"### {SECTIONS.get(prefix, prefix)}" + (f" (`[{prefix}]`)" if prefix else ""), "",
                "| setting | value | what it sets |", "| --- | --- | --- |", *rows, ""]
    for name, v in subs:
        out += _settings_tables(v, name)
    return out


def rule_section(study: str, rule: Rule) -> list[str]:
    """One rule: its title and chapter, its constants with their meanings, and its text with them filled in."""
    meanings = rule.meanings()
    rows = [f"| `{k}` | {_cell(value_text(v))} | {_cell(meanings[k])} |" for k, v in rule.constants().items()]
    ledger = f" The claims ledger maps its outcomes: {rule.ledger_text()}." if rule.LEDGER else ""
    gates = (f" Before it decides, the validity gates (chapter 02's `learned_margin` and `robust_margin`) check "
             f"{rule.GATED}; a failed gate makes its verdict **invalid**.") if rule.GATED else ""
    return [f"### {rule.TITLE}", "",
            f"Chapter {{doc}}`{rule.CHAPTER[:2]} <{rule.CHAPTER}>`; `atlib/studies/{study}/rules.py`.{ledger}{gates}", "",
            "| constant | value | what it means |", "| --- | --- | --- |", *rows, "",
            "```{admonition} The rule, as the chapter states it", ":class: dropdown", "", rule.text(), "```", ""]


def knob_sheet(p: Profile) -> str:
    """The knob sheet of profile ``p`` (MyST Markdown)."""
    out = ["# Every knob", "",
           f"Every setting of profile **`{p.name}`** ({p.description}), the one this book was built for, and every "
           "constant of the rules that decide its verdicts, on one page. It is generated from the code that runs: the "
           "resolved profile (`atlib/studies/profiles.py`, or the profile file given to the build; every built-in "
           "profile spells every setting) and each study's rule object (`atlib/studies/<study>/rules.py`). Change a "
           "value there, and this page, the chapters' text and the claims ledger follow.", "",
           "## The profile", ""]
    out += _settings_tables(p)
    out += ["## The rules", "",
            "Each constant is written once, in its study's rule object; the chapter glues the rule's text from it, and "
            "the ledger reads the same object.", ""]
    for name, study in STUDIES.items():
        out += rule_section(name, study.rule)
    return "\n".join(out)


def write_knob_sheet(out: Path, p: Profile) -> Path:
    """Write ``out/knobs.md`` for profile ``p``."""
    path = out / FILENAME
    path.write_text(knob_sheet(p), encoding="utf-8")
    return path
