"""The bf16 parity table (issue 26's adoption rule): it reads two recorded books and finds a moved model type."""
import copy
import json

import pytest

from atlib.book import parity
from atlib.book.cli import main

from conftest import REPO_ROOT

FASHION = REPO_ROOT / "results" / "fashion" / "summary.json"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FASHION.read_text())


def test_a_book_against_itself_is_at_parity(recorded):
    p = parity.parity(recorded, recorded)
    kinds = {r["model"] for r in p["rows"]}
    assert {"standard", "AT linf ε=0.1", "PGD-AT student", "student full T=4"} <= kinds
    assert any(k.startswith("matched standard") for k in kinds) and any(k.startswith("control:") for k in kinds)
    assert p["all_within"] and p["verdicts_equal"] and all(r["difference"]["mean"] == 0 for r in p["rows"])


def test_a_student_arm_moved_by_two_points_or_a_changed_verdict_fails_it(recorded):
    moved = copy.deepcopy(recorded)
    for st in moved["distillation"]["students"]:
        if st["ablation"] == "hard_labels":
            st["robust_acc"]["worst_case"] += 0.02
    moved["claims"][0]["verdict"] = "inconclusive"
    p = parity.parity(recorded, moved)
    bad = [(r["model"], r["measure"]) for r in p["rows"] if not r["within"]]
    assert bad == [("student hard_labels", "robust (worst case)")]
    assert not p["verdicts_equal"] and "**no**" in parity.markdown(p)


def test_the_cli_writes_the_table_and_refuses_a_missing_file(tmp_path, capsys):
    assert main(["parity", str(FASHION), str(FASHION), "--out", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["all_within"]
    assert "| standard | clean |" in (tmp_path / "p.md").read_text()
    assert main(["parity", str(FASHION), str(tmp_path / "none.json")]) == 2
    assert "no such summary.json" in capsys.readouterr().err
