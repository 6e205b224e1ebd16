"""The layered house: each package of atlib imports only the packages below it.

Rules (README, "Layout"): ``core`` → ``training`` → ``studies`` → ``book``, each importing only its own layer
or lower ones; ``core/stats.py`` (pure logit statistics) imports nothing of atlib; a study package imports only
itself, the shared ``studies/*.py`` modules and the studies it declares as its inputs (``STUDY_INPUTS``); the
shared ``studies/*.py`` modules import only the studies' ``settings`` modules. Module and function sizes are
kept small (~400 and ~60 lines).
"""
import ast
from pathlib import Path

import atlib

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
