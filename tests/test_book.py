"""End to end: the smoke book executed with papermill and rendered by jupyter-book, plus runner errors."""
import json
import math
import re
from pathlib import Path

import pytest

from atlib import book, experiments
from atlib.book import BookError, REPO


@pytest.fixture(scope="module")
def built(smoke_book):
    return smoke_book


def test_html_pages_exist_with_titles_and_figures(built):
    html = built["out"] / "_build" / "html"
    for page, title in [("intro.html", "atbook"), ("02_training.html", "logit distributions")]:
        text = (html / page).read_text()
        assert title.lower() in text.lower(), page
        assert "Traceback" not in text, page
    chapter = (html / "02_training.html").read_text()
    imgs = re.findall(r'<img[^>]+src="([^"]+\.png)"', chapter)
    assert len(imgs) >= 3, "the training chapter shows at least histograms, curves and the ε sweep"
    for src in imgs:
        assert (html / src).stat().st_size > 5_000, src
    assert "Traceback" not in chapter
    assert "PGD-20" in chapter, "attacks are named in the rendered tables"


def test_executed_notebook_kept_apart_from_sources(built):
    assert (built["out"] / "02_training.ipynb").exists()
    assert not (REPO / "chapters" / "02_training.ipynb").exists()
    nb = json.loads((built["out"] / "02_training.ipynb").read_text())
    tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
    assert ["injected-parameters"] in tags, "papermill injected the profile"
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []


def test_summary_json(built):
    s = json.loads(built["summary"].read_text())
    for key in ("profile", "dataset", "device", "git_commit", "elapsed_s", "models"):
        assert key in s, key
    assert s["profile"] == "smoke" and s["dataset"] == "digits"
    models = s["models"]
    kinds = {(m["kind"], m["norm"]) for m in models}
    assert {("standard", None), ("at", "linf"), ("at", "l2")} <= kinds
    assert len({m["seed"] for m in models}) >= 2
    for m in models:
        assert 0 <= m["clean_acc"] <= 1
        assert set(m["robust_acc"]) == {"pgd_ce", "pgd_margin"}
        assert m["attack"]["steps"] == 20 and m["attack"]["eps"] > 0 and m["attack"]["step_size"] > 0
        assert math.isfinite(m["mean_max_logit"]) and m["mean_logit_gap"] > 0
    std = [m["robust_acc"]["pgd_ce"] for m in models if m["kind"] == "standard"]
    at = [m["robust_acc"]["pgd_ce"] for m in models if m["name"].startswith("at_linf_0.1_")]
    assert min(at) > max(std), "AT models are more robust than standard ones on every seed"
    assert [e["eps"] for e in s["eps_sweep"]] == [0.0, 0.05, 0.1]
    assert "paired_diff" in s["shrinkage"]["clean"]["mean_logit_gap"]


def test_figures_written_for_readme(built):
    figs = {p.name for p in (built["out"] / "results" / "figures").glob("*.png")}
    assert {"logit_histograms.png", "training_curves.png", "eps_sweep.png"} <= figs


def test_tracked_book_untouched_and_cache_reused(built):
    assert built["tracked_book_after"] == built["tracked_book_before"], "a temp-dir build never writes book/"
    ctx = experiments.context("smoke", cache_dir=str(built["cache"]), device="cpu")
    runs = experiments.training_runs(ctx, progress=False)
    assert runs and all(r.cached for r in runs), "a re-run loads every model from the cache"


def test_failing_chapter_reports_the_cell_error(tmp_path):
    src = tmp_path / "09_broken.py"
    src.write_text("# %% tags=['parameters']\nprofile = 'smoke'\n\n# %%\nx = 1\n\n# %%\n"
                   "def f():\n    raise ValueError('boom-4711')\nf()\n")
    with pytest.raises(BookError) as e:
        book.execute_chapter(src, tmp_path / "out", {"profile": "smoke"})
    msg = str(e.value)
    assert "ValueError: boom-4711" in msg and "09_broken" in msg and "cell" in msg
    assert len(msg.splitlines()) <= 6, "a short message, not a wall of traceback"
    assert (tmp_path / "out" / "_failed" / "09_broken.ipynb").exists()
    assert not (tmp_path / "out" / "09_broken.ipynb").exists()


def test_toc_order_and_missing_chapter(tmp_path):
    stems = [p.stem for p in book.chapter_sources()]
    assert "02_training" in stems and stems == sorted(stems, key=book.toc_entries().index)
    entries = book.toc_entries()
    assert entries[0] == "intro"
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: 07_missing\n")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "intro.md").write_text("# x\n")
    with pytest.raises(BookError, match="07_missing"):
        book.chapter_sources(tmp_path)
