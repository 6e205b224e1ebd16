"""The layered house: each package of atlib imports only the packages below it.

Rules (README, "Layout"): ``core`` → ``training`` → ``studies`` → ``book``, each importing only its own layer
or lower ones; ``core/stats.py`` (pure logit statistics) imports nothing of atlib; a study package imports only
itself, the shared ``studies/*.py`` modules and the studies it declares as its inputs (``STUDY_INPUTS``); the
shared ``studies/*.py`` modules import only the studies' ``settings`` modules. Module and function sizes are
kept small (~400 and ~60 lines). Every study shows the same face from its ``__init__`` (``atlib.studies.face``:
``settings``, ``runs``, ``rules`` / ``rule``, ``views``), every chapter imports its own study one way
(``from atlib.studies import <study> as study``, other studies by their names), and no module re-exports names.
"""
import ast
import importlib
from pathlib import Path

import jupytext

import atlib
from atlib.studies.face import FACE
from atlib.studies.rule import Rule

PKG = Path(atlib.__file__).parent
LAYERS = ("core", "training", "studies", "book")  # bottom to top; atlib/__init__ and __main__ sit on top
STUDY_INPUTS = {  # a chapter's study package and the studies whose runs it reuses
    "shrinkage": set(), "theory": {"shrinkage"}, "confidence": {"shrinkage"},
    "distillation": {"shrinkage"}, "audit": {"shrinkage", "distillation"},
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def module_name(path: Path, root: Path = PKG) -> str:
    """``atlib.core.stats`` for ``<root>/core/stats.py``; packages by their ``__init__``'s folder."""
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("atlib",) + parts)


def atlib_imports(path: Path, root: Path = PKG) -> set[str]:
    """Every ``atlib.*`` module that ``path`` imports (absolute or relative), as dotted names."""
    me = module_name(path, root).split(".")
    here = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module.split(".") if node.module else []
            if node.level:
                base = here[:len(here) - node.level + 1] + base
            if base[:1] != ["atlib"]:
                continue
            found.add(".".join(base))
            found.update(".".join(base + [a.name]) for a in node.names if a.name != "*")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "atlib")
    return {f for f in found if f != "atlib"}


def layer(mod: str) -> int:
    parts = mod.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def violations(path: Path, root: Path = PKG) -> list[str]:
    """What ``path`` imports against the rules above."""
    me = module_name(path, root)
    bad = []
    for dep in sorted(atlib_imports(path, root)):
        if not (root / Path(*dep.split(".")[1:])).with_suffix(".py").exists() and \
                not (root / Path(*dep.split(".")[1:]) / "__init__.py").exists():
            continue  # a name imported from a module (from atlib.core.stats import spearman), checked as its module
        if layer(dep) > layer(me):
            bad.append(f"{me} imports {dep}: {LAYERS[layer(me)] if layer(me) < len(LAYERS) else 'top'} "
                       f"may not import the higher layer {LAYERS[layer(dep)] if layer(dep) < len(LAYERS) else 'top'}")
        if me == "atlib.core.stats":
            bad.append(f"{me} imports {dep}: the logit statistics are pure (nothing of atlib)")
        bad += _study_violations(me, dep)
    return bad


def _study_violations(me: str, dep: str) -> list[str]:
    m, d = me.split("."), dep.split(".")
    if m[1:2] != ["studies"] or d[1:2] != ["studies"] or len(d) < 3:
        return []
    dep_study = d[2] if d[2] in STUDY_INPUTS else None
    if len(m) == 3 and m[2] not in STUDY_INPUTS:  # a shared studies module (profiles, glue, verdict)
        ok = dep_study is None or (len(d) == 4 and d[3] == "settings")
        return [] if ok else [f"{me} imports {dep}: a shared studies module imports only the studies' settings"]
    study = m[2]
    if dep_study is None or dep_study == study or dep_study in STUDY_INPUTS.get(study, set()):
        return []
    return [f"{me} imports {dep}: study {study!r} may use only {sorted(STUDY_INPUTS[study]) or 'no other study'}"]


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in PKG.glob("*.py") if p.stem not in {"__init__", "__main__"}]
    assert not loose, f"put these modules into a layer's package ({', '.join(LAYERS)}): {loose}"
    studies = {p.name for p in (PKG / "studies").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert studies == set(STUDY_INPUTS), f"declare every study's inputs in STUDY_INPUTS: {studies}"


def test_no_module_breaks_the_rules():
    bad = [v for p in PKG.rglob("*.py") for v in violations(p)]
    assert not bad, "\n".join(bad)


def test_checker_catches_planted_imports(tmp_path):
    root = tmp_path / "atlib"
    for rel, text in {"core/stats.py": "from ..core import data\n", "core/data.py": "",
                      "core/models.py": "from atlib.book import runner\nfrom ..training.train import train\n",
                      "book/runner.py": "", "training/train.py": "",
                      "studies/theory/runs.py": "from atlib.studies.audit import runs\nfrom ..shrinkage import runs\n",
                      "studies/audit/runs.py": "", "studies/shrinkage/runs.py": "",
                      "studies/profiles.py": "from atlib.studies.audit import runs\nfrom .audit import settings\n",
                      "studies/audit/settings.py": ""}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    found = {rel: violations(root / rel, root) for rel in ("core/stats.py", "core/models.py", "studies/theory/runs.py",
                                                          "studies/profiles.py")}
    assert len(found["core/stats.py"]) == 1 and "pure" in found["core/stats.py"][0]
    assert len(found["core/models.py"]) == 2  # an upward import to book and one to training
    assert found["studies/theory/runs.py"] == [
        "atlib.studies.theory.runs imports atlib.studies.audit.runs: study 'theory' may use only ['shrinkage']"]
    assert len(found["studies/profiles.py"]) == 1 and "audit.runs" in found["studies/profiles.py"][0]


def test_modules_and_functions_stay_small():
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules past {MAX_MODULE_LINES} lines, split them: {big}"
    long = [f"{p.relative_to(PKG)}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for p in PKG.rglob("*.py")
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions past {MAX_FUNCTION_LINES} lines, split them: {long}"


# ------------------------------------------------------------------------------------------ the study face
FACE_MODULES = ("settings", "runs", "rules", "views")
CHAPTERS = Path(atlib.__file__).resolve().parents[1] / "chapters"


def chapter_study() -> dict[str, str]:
    """Chapter (toc entry) -> its study, from each study's rule object (``rule.CHAPTER``)."""
    return {importlib.import_module(f"atlib.studies.{s}").rule.CHAPTER: s for s in STUDY_INPUTS}


def test_every_study_shows_the_same_face():
    for study in STUDY_INPUTS:
        folder = PKG / "studies" / study
        missing = [m for m in FACE_MODULES if not (folder / f"{m}.py").exists()]
        assert not missing, f"study {study!r} lacks {missing}: every study has {', '.join(FACE_MODULES)}"
        pkg = importlib.import_module(f"atlib.studies.{study}")
        assert dir(pkg) == sorted(FACE) and tuple(pkg.__all__) == FACE, f"{study}: the face is {FACE}"
        assert isinstance(pkg.rule, Rule) and pkg.rule is pkg.rules.RULE
        assert callable(pkg.views.summary), f"{study}.views.summary builds the chapter's part of summary.json"
        eager = atlib_imports(folder / "__init__.py") - {"atlib.studies.face", "atlib.studies.face.FACE",
                                                          "atlib.studies.face.face"}
        assert not eager, f"{study}/__init__.py imports {eager}: the face loads a module when it is first used"
    assert sorted(chapter_study().values()) == sorted(STUDY_INPUTS), "one chapter per study"


def chapter_import_violations(source: str, study: str) -> list[str]:
    """How a chapter's code imports the studies against the rule: ``from atlib.studies import <study> as study``
    (its own), other studies by their own names, never a study's modules directly."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("atlib.studies."):
            if node.module.split(".")[2] in STUDY_INPUTS:
                bad.append(f"from {node.module} import ...: import the study package (from atlib.studies import ...)")
        elif isinstance(node, ast.Import):
            bad += [f"import {a.name}: use from atlib.studies import ..." for a in node.names
                    if a.name.startswith("atlib.studies.")]
        elif isinstance(node, ast.ImportFrom) and node.module == "atlib.studies":
            for a in node.names:
                if a.name == study and a.asname != "study":
                    bad.append(f"its own study {study!r} is imported as {a.asname or a.name!r}, not 'study'")
                elif a.name != study and a.name in STUDY_INPUTS and a.asname not in (None, a.name):
                    bad.append(f"another study {a.name!r} is renamed {a.asname!r}: use its own name")
    own = [a for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module == "atlib.studies"
           for a in n.names if a.name == study]
    if not own:
        bad.append(f"the chapter does not import its study {study!r} as 'study'")
    return bad


def _chapter_code(path: Path) -> str:
    cells = [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]
    return "\n".join(ln for c in cells for ln in c.splitlines() if not ln.lstrip().startswith(("%", "!")))


def test_every_chapter_imports_its_study_one_way():
    for chapter, study in chapter_study().items():
        bad = chapter_import_violations(_chapter_code(CHAPTERS / f"{chapter}.py"), study)
        assert not bad, f"chapters/{chapter}.py: " + "; ".join(bad)


def test_checker_catches_a_chapter_importing_its_study_another_way():
    old = "from atlib.studies.theory import runs as theory, views as V\nfrom atlib.studies import shrinkage as ex\n"
    assert len(chapter_import_violations(old, "theory")) == 3  # a module import, a renamed study, no `as study`
    assert chapter_import_violations("from atlib.studies import theory as study, shrinkage\n", "theory") == []
    assert chapter_import_violations("from atlib.studies import theory as T\n", "theory") == [
        "its own study 'theory' is imported as 'T', not 'study'"]


def test_no_study_module_re_exports_names_for_other_callers():
    marked = [str(p.relative_to(PKG)) for p in (PKG / "studies").rglob("*.py") if "re-export" in p.read_text()]
    assert not marked, f"import names where they are defined, not through these modules: {marked}"
