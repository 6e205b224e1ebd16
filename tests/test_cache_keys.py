"""Cache keys from imports: an artifact's code version is the source of its producers' import closure.

The versions are computed in fresh processes on copies of the package, so an edit to a copy (never to the
checkout) shows what a key would do; the copies sit at different paths, to show a key ignores where it lives.
"""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import atlib
from atlib.core import data, models
from atlib.core.store import code_version_of, import_closure
from atlib.training import evaluate, train

PROBE = """
import json, atlib
from atlib.studies.shrinkage import runs
print(json.dumps({"file": atlib.__file__, "train": runs.TRAIN_CODE, "eval": runs.EVAL_CODE}))
"""


def _edit_function_body(path: Path) -> None:
    """Add a statement to the body of the module's first function: behaviour-neutral, source-visible."""
    src = path.read_text()
    fn = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef))
    first = fn.body[0]
    lines = src.splitlines(keepends=True)
    lines.insert(first.end_lineno, " " * first.col_offset + "_edited = None  # an edit of the body\n")
    path.write_text("".join(lines))


def _start(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, "-c", PROBE], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Chapter 02's training and evaluation versions of four package copies, each in its own process:
    ``base``, ``moved`` (the same files at another path), ``stats`` (core/stats.py edited) and ``targets``
    (studies/distillation/targets.py edited). All copies derive from one snapshot of the checkout."""
    tmp = tmp_path_factory.mktemp("keys")
    roots = {"base": tmp / "one", "moved": tmp / "two" / "deeper", "stats": tmp / "three", "targets": tmp / "four"}
    shutil.copytree(Path(atlib.__file__).parent, roots["base"] / "atlib", ignore=shutil.ignore_patterns("__pycache__"))
    for k in ("moved", "stats", "targets"):
        shutil.copytree(roots["base"] / "atlib", roots[k] / "atlib")
    _edit_function_body(roots["stats"] / "atlib" / "core" / "stats.py")
    _edit_function_body(roots["targets"] / "atlib" / "studies" / "distillation" / "targets.py")
    runs = {k: _start(r) for k, r in roots.items()}  # concurrently: each pays for importing torch
    out = {}
    for k, p in runs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out[k] = json.loads(stdout.strip().splitlines()[-1])
        assert Path(out[k]["file"]).is_relative_to(roots[k]), "the probe imported the checkout, not its copy"
    return out


@pytest.mark.slow  # four fresh Python processes import torch (~30 s)
def test_editing_a_module_train_imports_changes_the_training_version(versions):
    assert versions["stats"]["train"] != versions["base"]["train"]
    assert versions["stats"]["eval"] != versions["base"]["eval"]  # evaluate imports train's predict


@pytest.mark.slow  # four fresh Python processes import torch (~30 s)
def test_a_chapter_04_module_does_not_touch_chapter_02_versions(versions):
    assert versions["targets"]["train"] == versions["base"]["train"]
    assert versions["targets"]["eval"] == versions["base"]["eval"]


@pytest.mark.slow  # four fresh Python processes import torch (~30 s)
def test_versions_are_stable_across_processes_and_paths(versions):
    base = versions["base"]
    assert len(base["train"]) == 12 and base["train"] != base["eval"]
    # two processes, two absolute paths, one version
    assert versions["moved"]["train"] == base["train"] and versions["moved"]["eval"] == base["eval"]


def test_training_closure_holds_what_training_uses_and_nothing_above():
    closure = import_closure(train.train, models.build_model, data.load_dataset)
    assert {"atlib.core.stats", "atlib.core.attacks", "atlib.core.data", "atlib.core.models",
            "atlib.training.train", "atlib.training.checkpoint"} <= set(closure)
    assert not [m for m in closure if m.startswith(("atlib.studies", "atlib.book"))]
    assert "atlib.training.evaluate" not in closure  # an evaluation change never retrains
    assert "atlib.training.evaluate" in import_closure(evaluate.evaluate)
    assert list(closure) == sorted(closure)


def test_targets_are_functions_modules_or_names():
    assert code_version_of(train.train) == code_version_of(train) == code_version_of("atlib.training.train")
    assert code_version_of(train.train, evaluate.evaluate) == code_version_of(evaluate.evaluate, train.train)
    with pytest.raises(ValueError):
        code_version_of(json.dumps)  # not an atlib module: it would never change, so it is refused


def test_loaders_are_left_out_where_the_config_records_what_they_deliver():
    """Chapter 01's controls and chapter 03's snapshots record their settings in the key's config, so editing the
    profiles (or the context, the executors) never recomputes them; the code that computes them still counts."""
    from atlib.core.keys import LOADERS, closure_without, code_version_without
    from atlib.studies.confidence import early
    from atlib.studies.theory import controls

    for mod in (early, controls):
        closure = closure_without(mod)
        assert not set(closure) & {*LOADERS, "atlib.studies.distillation.settings", "atlib.training.dask_worker"}
        assert {mod.__name__, "atlib.training.train", "atlib.studies.shrinkage.runs"} <= set(closure)
        assert set(LOADERS) <= set(import_closure(mod)), "without exclude the loaders are followed"
    assert code_version_without(early) != code_version_of(early)
    assert closure_without(early, exclude=()) == import_closure(early), "the same reading of the sources"
    assert "atlib.core.keys" not in import_closure(train.train), "keys is outside the training closure"


def test_closure_without_needs_a_target():
    from atlib.core.keys import closure_without

    with pytest.raises(ValueError, match="needs at least one function or module"):
        closure_without()
