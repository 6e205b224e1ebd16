"""Each rule written once: every study's rule object holds its constants, text and ledger mapping; the chapters, the
claims ledger and the knob sheet take them from it, never spell them; every built-in profile spells every setting."""
import ast
import dataclasses
import importlib
import re
from pathlib import Path

import jupytext
import myst_nb
import pytest

from atlib.book import claims, knobs
from atlib.studies import prose
from atlib.studies.distillation.targets import ABLATIONS
from atlib.studies.profiles import PROFILES, Profile, get_profile
from atlib.studies.rule import Rule
from atlib.studies.verdict import LEDGER

REPO = Path(__file__).resolve().parents[1]
STUDIES = tuple(knobs.STUDIES)
# A number in a string written with a decimal point or an exponent, or followed by pp / %: a threshold spelled out
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?:\.\d+)?e-?\d+|\d+(?:\.\d+)?(?=\s*(?:pp|%)))(\s*(?:pp|%))?")
GLUE = re.compile(r"\{glue(:[a-z]+)?\}`[^`]*`|```\{glue:md\}[^`]*```")


def rule_of(study: str) -> Rule:
    return importlib.import_module(f"atlib.studies.{study}").rule


def numbers_of(value) -> set[float]:
    """Every number among a constant's values (tuples and mappings unpacked)."""
    if isinstance(value, bool) or isinstance(value, str):
        return set()
    if isinstance(value, (int, float)):
        return {float(value)}
    items = value.values() if isinstance(value, dict) else value
    return set().union(*(numbers_of(v) for v in items))


def _close(x: float, values: set[float]) -> bool:
    return any(abs(x - v) <= 1e-12 * max(1.0, abs(v)) for v in values)


def text_constants(tree: ast.AST) -> list[str]:
    """The string constants of a module, the format specs of f-strings left out (``.2f`` is no number)."""
    specs = {id(n.format_spec) for n in ast.walk(tree) if isinstance(n, ast.FormattedValue) and n.format_spec}
    inner = {id(c) for n in ast.walk(tree) if id(n) in specs for c in ast.walk(n)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in inner]


def ablation_names_in(text: str) -> list[str]:
    """Ablation names a text spells: in backticks, or (names with an underscore) as a bare word."""
    return [a for a in ABLATIONS if f"`{a}`" in text or ("_" in a and re.search(rf"(?<![\w`]){a}(?![\w`])", text))]


def spelled_constants(tree: ast.AST, own: Rule | None) -> list[str]:
    """What a code module spells that a rule object should give it: numeric literals equal to a rule's fractional
    constant (or an integer constant of ``own``), numbers written in its strings that equal a constant (pp and %
    read as hundredths), and ablation names in its strings."""
    rules = [rule_of(s) for s in STUDIES]
    floats = {x for r in rules for v in r.constants().values() for x in numbers_of(v) if x != int(x)}
    ints = {x for v in (own.constants().values() if own else ()) for x in numbers_of(v) if x == int(x)}
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            if _close(float(n.value), floats | ints):
                found.append(f"line {n.lineno}: the literal {n.value!r}")
    for s in text_constants(tree):
        for m in NUMBER.finditer(s):
            x = float(m.group(1)) / (100 if m.group(2) else 1)
            if _close(x, floats):
                found.append(f"the string {s!r} spells {m.group(0)!r}")
        found += [f"the string {s!r} names the ablation {a!r}" for a in ablation_names_in(s)]
    return found


def chapter_findings(path: Path, own: Rule | None) -> list[str]:
    """:func:`spelled_constants` of a chapter's code cells, and the ablation names its prose spells outside glue."""
    found = []
    for i, cell in enumerate(jupytext.read(path).cells):
        if cell.cell_type == "code":
            src = "\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("%", "!")))
            found += [f"{path.name} cell {i}: {f}" for f in spelled_constants(ast.parse(src), own)]
        elif cell.cell_type == "markdown":
            found += [f"{path.name} cell {i}: the prose names the ablation {a!r} (glue it from the rule object)"
                      for a in ablation_names_in(GLUE.sub("", cell.source))]
    return found


def chapter_of(study: str) -> Path:
    return REPO / "chapters" / f"{rule_of(study).CHAPTER}.py"


# ------------------------------------------------------------------------------------------- the rule objects
@pytest.mark.parametrize("study", STUDIES)
def test_every_study_has_one_rule_object_with_text_constants_and_ledger_mapping(study):
    r = rule_of(study)
    assert isinstance(r, Rule) and r.TITLE and r.TEXT and chapter_of(study).exists()
    assert r.constants() and all(r.meanings().values()), "every constant says what it means"
    for part in r.TEXT:  # every placeholder filled (LaTeX's own braces, \\text{std}, stay)
        assert r.text(part) and not re.search(r"(?<!\\text)\{[a-z_]+\}", r.text(part)), r.text(part)
    assert set(r.LEDGER.values()) <= set(LEDGER), "a ledger verdict"
    assert bool(r.GATED) == bool(r.LEDGER), "every rule the ledger reads checks its models' validity gates first"
    for outcome in r.LEDGER:
        assert r.ledger_verdict(outcome) == r.LEDGER[outcome]
    assert r.ledger_verdict("an outcome nobody gives") is None


def test_the_ledger_maps_every_outcome_through_the_rule_objects():
    assert set(rule_of("confidence").LEDGER) == {"supported", "not supported", "inconclusive",
                                                 "not separated from accuracy", "undecided", "invalid"}
    assert claims.CLAIMS["confidence"].rule.endswith(rule_of("confidence").ledger_text() + ".")
    assert claims.CLAIMS["shrinkage"].rule == rule_of("shrinkage").text("claim")


@pytest.mark.parametrize("study", STUDIES)
def test_the_chapter_spells_no_threshold_and_no_ablation_name(study):
    assert chapter_findings(chapter_of(study), rule_of(study)) == []


def test_the_ledger_spells_no_threshold_and_no_ablation_name():
    assert spelled_constants(ast.parse((REPO / "atlib" / "book" / "claims.py").read_text()), None) == []


def test_the_scan_catches_a_spelled_threshold_and_a_named_ablation(tmp_path):
    planted = tmp_path / "01_planted.py"
    planted.write_text('# %% [markdown]\n# The `uniform_confidence` student.\n\n'
                       '# %%\nTOL = 0.015\nprint("within 2 pp", "E = 0.1 × b", "class_permuted_nonmax")\n')
    found = chapter_findings(planted, rule_of("audit"))
    assert len(found) == 5, found  # the literal, "2 pp", "0.1", the name in code, the name in prose


@pytest.mark.parametrize("study", STUDIES)
def test_the_chapter_glues_its_rule(study):
    """The chapter glues its rule object (every part of its text), so the prose shows what the code applies."""
    src = chapter_of(study).read_text()
    assert "prose.glue_rule(study.rule)" in src
    missing = [p for p in rule_of(study).TEXT if f"rule_{p}" not in src]
    assert not missing, f"{chapter_of(study).name} does not place the rule's parts {missing}"


# ------------------------------------------------------------------------------- one edit moves everything
def _glued(monkeypatch, rule: Rule) -> dict[str, str]:
    """What :func:`prose.glue_rule` glues for ``rule``: name -> Markdown."""
    out: dict[str, str] = {}
    monkeypatch.setenv("ATBOOK_BUILD", "1")
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: out.__setitem__(
        name, getattr(value, "markdown", getattr(value, "data", value))))
    prose.glue_rule(rule)
    return out


def _ledger() -> str:
    return claims.ledger_markdown({"smoke": {"profile": "smoke"}}, {"smoke": "test"})


@pytest.mark.parametrize("study, constant, value, term", [
    ("confidence", "max_gap", 0.02, "2"), ("distillation", "ceiling_fraction", 0.2, "0.2"),
    ("theory", "gauss_tol", 0.2, "20%"), ("audit", "apgd_gap", 0.03, "3"),
    ("shrinkage", "student_convergence", 0.03, "3")])
def test_changing_a_threshold_moves_the_chapter_the_ledger_and_the_knob_sheet(monkeypatch, study, constant, value,
                                                                              term):
    """A threshold is one edit of its rule object (here the object replaced with that one field changed): the
    chapter's glued text, the ledger's text (where it quotes the threshold) and the knob sheet all follow."""
    module = importlib.import_module(f"atlib.studies.{study}.rules")
    p = get_profile("smoke")
    glued, sheet, ledger = _glued(monkeypatch, rule_of(study)), knobs.knob_sheet(p), _ledger()
    monkeypatch.setattr(module, "RULE", dataclasses.replace(module.RULE, **{constant: value}))
    assert rule_of(study).constants()[constant] == value, "the study's face reads the rule object each time"
    glued2 = _glued(monkeypatch, rule_of(study))
    changed = {k for k in glued if glued[k] != glued2[k]}
    assert changed and any(k.startswith("rule_") for k in changed), "the rule's text in the chapter follows"
    assert any(term in glued2[k] for k in changed)
    sheet2 = knobs.knob_sheet(p)
    assert sheet2 != sheet and f"| `{constant}` | {knobs.value_text(value)} |" in sheet2
    quotes = rule_of(study).LEDGER and study in ("confidence", "distillation")  # the ledger quotes their thresholds
    assert (_ledger() != ledger) == bool(quotes)


def test_a_changed_threshold_changes_the_decision(monkeypatch):
    from types import SimpleNamespace

    from atlib.studies.confidence import rules as C
    from atlib.studies.distillation import rules as D

    control = SimpleNamespace(gap=-0.018)
    assert not C.RULE.matched(control)
    monkeypatch.setattr(C, "RULE", dataclasses.replace(C.RULE, max_gap=0.02))
    assert C.RULE.matched(control)
    robust = {"full": [0.20, 0.21, 0.22], "standard_teacher": [0.10, 0.10, 0.11], "hard_labels": [0.05, 0.06, 0.05]}
    e = D.robustness_distils(robust, [0.5, 0.5, 0.5])["E"]
    monkeypatch.setattr(D, "RULE", dataclasses.replace(D.RULE, ceiling_fraction=0.2))
    assert D.robustness_distils(robust, [0.5, 0.5, 0.5])["E"] == pytest.approx(2 * e)


# ------------------------------------------------------------------------------------- every knob, one page
def _tree(obj) -> list:
    return [obj] + [x for f in dataclasses.fields(obj) if dataclasses.is_dataclass(v := getattr(obj, f.name))
                    for x in _tree(v)]


def test_no_setting_of_a_profile_has_a_default():
    """Every built-in profile spells every setting: no dataclass of the profile tree has a default to fall back on."""
    defaults = [f"{type(d).__name__}.{f.name}" for d in _tree(PROFILES["fashion"]) for f in dataclasses.fields(d)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert defaults == []


@pytest.mark.parametrize("name", list(PROFILES))
def test_the_knob_sheet_shows_every_setting_and_every_rule_constant(name):
    p: Profile = PROFILES[name]
    sheet = knobs.knob_sheet(p)
    for d in _tree(p):
        for f in dataclasses.fields(d):
            if not dataclasses.is_dataclass(getattr(d, f.name)):
                shown = knobs.value_text(getattr(d, f.name)).replace("|", "\\|")
                assert f"| `{f.name}` | {shown} |" in sheet, f.name
    for study in STUDIES:
        r = rule_of(study)
        assert r.TITLE in sheet and r.text().splitlines()[0] in sheet
        for k, v in r.constants().items():
            meaning = r.meanings()[k].replace("|", "\\|")
            assert f"| `{k}` | {knobs.value_text(v)} | {meaning} |" in sheet


def test_the_knob_sheet_reads_the_comments_of_the_settings():
    docs = knobs.field_docs(Profile)
    assert docs["linf_eps"] == "the main L∞ threat model, for training and evaluation"
    assert knobs.value_text(None) == "none" and knobs.value_text((0.1, 8 / 255)) == "[0.1, 0.0313725]"
