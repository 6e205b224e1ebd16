"""No hand-typed numbers in the chapters' prose: every number a markdown cell quotes is glued from the run.

A digit in a chapter's markdown must sit inside a ``{glue...}`` role, or be one of the few allowed kinds
below, each with its reason. Everything else fails with the chapter, line and text, so re-running the
book on another profile can never leave a stale number in the prose.
"""
import re
from pathlib import Path

import jupytext
import pytest

CHAPTERS = sorted((Path(__file__).resolve().parents[1] / "chapters").glob("[0-9][0-9]_*.py"))

# Removed before looking for digits: roles whose content is not prose numbers (glue, citations, cross-refs),
# inline code (identifiers, file names), URLs and link targets.
STRIP = [re.compile(p) for p in (
    r"\{glue(:[a-z]+)?\}`[^`]*`",
    r"\{(cite|doc|ref|numref|eq)(:[a-z]+)?\}`[^`]*`",
    r"`[^`]*`",
    r"https?://\S+",
    r"\]\([^)]*\)",
)]
MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.S)
NUMBER = re.compile(r"\d+(?:\.\d+)*")
# Allowed outside math, with why. Inside math only single digits are allowed (indices, exponents,
# [0,1], 1/K: structure, not results); any other number in math must be glued too.
ALLOWED = {
    r"^\s*#{1,6}\s+\d+(\.\d+)*\.?(?=\s)": "section numbers",
    r"^\s*>?\s*\d+\.\s": "numbered-list markers",
    r"\b(19|20)\d\d\b": "years",
    r"\b(?i:chapters?|claims?|rules?|sections?|parts?)\s+\d+(\s*(,|and|–)\s*\d+)*\b|§\s?\d+(\.\d+)*":
        "cross-references by number",
    r"previous version of this book had [^)]*\)": "chapter 03 quotes the previous published book (history the rule "
                                                   "was written against, not this run's result)",
    r"\bCIFAR-10\b|\bResNet-18\b|\bfloat(16|32|64)\b|\btop-\d\b|\bL[12]\b": "names that contain digits",
}
ALLOWED_RE = [re.compile(p, re.M) for p in ALLOWED]


def _blank(m: re.Match) -> str:
    """The match replaced by spaces, its line breaks kept (so findings point at the right line)."""
    return re.sub(r"[^\n]", " ", m.group())


def unglued_numbers(markdown: str) -> list[tuple[int, str, list[str]]]:
    """``(line number in the cell, line, numbers)`` for every line of ``markdown`` quoting a number that is not
    glued or allowed."""
    text = markdown
    for rx in STRIP:
        text = rx.sub(_blank, text)
    found: dict[int, list[str]] = {}

    def in_math(m: re.Match) -> str:
        line = text.count("\n", 0, m.start())
        found.setdefault(line, []).extend(x for x in NUMBER.findall(m.group()) if len(x) > 1)
        return _blank(m)

    text = MATH.sub(in_math, text)
    for rx in ALLOWED_RE:
        text = rx.sub(_blank, text)
    for i, line in enumerate(text.splitlines()):
        found.setdefault(i, []).extend(NUMBER.findall(line))
    lines = markdown.splitlines()
    return [(i, lines[i] if i < len(lines) else "", nums) for i, nums in sorted(found.items()) if nums]


def chapter_findings(path: Path) -> list[str]:
    out = []
    for cell in jupytext.read(path).cells:
        if cell.cell_type != "markdown":
            continue
        for i, line, nums in unglued_numbers(cell.source):
            out.append(f"{path.name}: {', '.join(nums)} in: {line.strip()[:100]}")
    return out


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_prose_quotes_only_glued_numbers(path):
    findings = chapter_findings(path)
    assert not findings, ("numbers typed by hand in the prose; glue them with report.glue(...) and "
                          "{glue:text}`name` (or allow them in tests/test_prose.py, with a reason):\n" + "\n".join(findings))


def test_every_chapter_is_scanned():
    assert len(CHAPTERS) >= 5 and {p.stem[:2] for p in CHAPTERS} >= {"01", "02", "03", "04", "05"}


def test_scanner_flags_hand_typed_numbers():
    md = ("The AT model reaches 83.2% clean accuracy after 6 epochs.\n"
          "The interval is $t_{0.975,2} = 4.30$ wide, and $x^2 + 1$ is fine.\n"
          "PGD-20 is an attack with a hand-typed step count.")
    flagged = {i: nums for i, _, nums in unglued_numbers(md)}
    assert flagged == {0: ["83.2", "6"], 1: ["0.975", "4.30"], 2: ["20"]}


def test_scanner_accepts_glue_and_the_allowed_kinds():
    md = ("## 3. Results\n"
          "1. The AT model reaches {glue:text}`acc:.1f`% after {glue:text}`epochs` epochs (chapter 02, claim 1),\n"
          "as {cite:t}`madry2018towards` found in 2018 on CIFAR-10 with a ResNet-18 in float32; see `atlib/x2.py`.\n"
          "The pixel box $[0,1]^D$, the norm $L_2$ and $\\frac{1}{K}$ are structure; so is the L2 threat model.\n"
          "> 2. a quoted list item")
    assert unglued_numbers(md) == []


def test_the_book_never_sends_a_reader_to_the_developers_notes():
    """The research notes live beside the development checkout, not in the repository: a chapter, a page or the
    README may not point a reader at them (they cannot open them)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [*root.glob("chapters/*.py"), *root.glob("pages/*.md"), root / "README.md"]
    bad = [f"{p.name}: {m.group(0)}" for p in texts
           for m in re.finditer(r"RESEARCH\.md|research notes|\.\./shared", p.read_text(encoding="utf-8"))]
    assert bad == []
