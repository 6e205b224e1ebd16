"""The layered house: an atlib module imports only modules of its own layer or below."""
import ast
from pathlib import Path

import atlib

LAYERS = {
    0: {"stats", "compat", "runtime", "__init__"},
    1: {"attacks", "models", "data", "store", "plots"},
    2: {"pool", "train", "checkpoint", "distributed", "evaluate", "distill", "distill_targets", "masking"},
    3: {"profiles", "experiments", "report", "theory", "confidence", "confidence_matched", "confidence_plots",
        "audit", "audit_report", "controls", "theory_views", "audit_report",
        "distill_runs", "distill_report", "distill_plots", "claims"},
    4: {"book", "__main__", "pages", "sphinx_ext", "compute", "bench"},
}
LEVEL = {m: lvl for lvl, mods in LAYERS.items() for m in mods}
PKG = Path(atlib.__file__).parent


def _atlib_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith("atlib."):
                found.add(node.module.split(".")[1])
            elif node.module == "atlib":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("atlib."))
    return found


def test_every_module_has_a_layer():
    missing = {p.stem for p in PKG.glob("*.py")} - set(LEVEL)
    assert not missing, f"assign these atlib modules a layer in tests/test_layers.py: {sorted(missing)}"


def test_no_module_imports_upwards():
    bad = []
    for p in PKG.glob("*.py"):
        for dep in _atlib_imports(p):
            if dep in LEVEL and LEVEL[dep] > LEVEL.get(p.stem, -1):
                bad.append(f"{p.stem} (layer {LEVEL.get(p.stem)}) imports {dep} (layer {LEVEL[dep]})")
    assert not bad, "\n".join(bad)


def test_checker_catches_an_upward_import(tmp_path):
    f = tmp_path / "stats.py"
    f.write_text("from .experiments import context\nfrom atlib import book\n")
    assert _atlib_imports(f) == {"experiments", "book"}


def test_modules_stay_small():
    big = {p.name: n for p in PKG.glob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not big, f"modules past ~400 lines, split them: {big}"
