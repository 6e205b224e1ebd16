"""End to end: the smoke book executed with papermill and rendered by jupyter-book, plus runner errors."""
import json
import math
import os
import re
from pathlib import Path

import pytest

from atlib.book import runner as book
from atlib.studies.shrinkage import runs as experiments
from atlib.studies import context as cx
from atlib.book.runner import BookError, REPO
from atlib.studies.profiles import get_profile


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
    assert ["injected-parameters", "remove-cell"] in tags, "papermill injected the profile (hidden in the book)"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all({"hide-input", "remove-cell"} & set(c["metadata"].get("tags", [])) for c in code), "code is folded"
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []


def test_summary_json(built):
    s = json.loads(built["summary"].read_text())
    for key in ("profile", "dataset", "device", "git_commit", "elapsed_s", "models"):
        assert key in s, key
    assert s["profile"] == "smoke" and s["dataset"] == "digits"
    assert s["workers"] == 1  # smoke's jobs run in the chapters' own processes (Profile.pool_jobs)
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
    ctx = cx.context("smoke", cache_dir=str(built["cache"]), device="cpu")
    runs = experiments.training_runs(ctx, progress=False)
    assert runs and all(r.cached for r in runs), "a re-run loads every model from the cache"


@pytest.mark.slow  # executes a chapter in a Jupyter kernel
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
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: 07_missing\n"
                                       "  - file: claims\n")
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "intro.md").write_text("# x\n")
    with pytest.raises(BookError, match="07_missing"):
        book.chapter_sources(tmp_path)
    (tmp_path / "pages" / "07_missing.md").write_text("# y\n")
    assert book.chapter_sources(tmp_path) == [], "hand-written pages and the generated ledger are not chapters"


def test_non_default_profile_never_overwrites_the_published_book(tmp_path):
    from atlib.studies.profiles import DEFAULT_PROFILE

    assert book.default_out(DEFAULT_PROFILE) == REPO / "book"
    assert book.default_out("smoke") == REPO / "_build" / "books" / "smoke"
    with pytest.raises(BookError, match="published"):
        book.run_book("smoke", out=REPO / "book", html=False)
    book.check_out(DEFAULT_PROFILE, REPO / "book")  # the default profile may (re)publish
    book.check_out("smoke", tmp_path)


def test_render_without_executed_notebooks_says_what_to_run(tmp_path):
    with pytest.raises(BookError, match="python -m atlib book"):
        book.render_book(tmp_path)


def test_provenance_under_every_chapter_title(built):
    summary = json.loads(built["summary"].read_text())
    html = built["out"] / "_build" / "html"
    for src in book.chapter_sources():
        nb = json.loads((built["out"] / f"{src.stem}.ipynb").read_text())
        first = "".join(nb["cells"][0]["source"])
        assert first.startswith("# ") and "Provenance" in first.split("\n", 3)[2], src.stem
        prov = nb["metadata"]["atbook"]["provenance"]
        assert prov == summary["chapters"][src.stem]
        assert prov["profile"] == "smoke" and prov["seeds"] == list(get_profile("smoke").seeds) and prov["wall_s"] > 0
        # what its results cost to compute, from the artifacts it loaded (their own recorded times)
        assert prov["compute"]["artifacts"] > 0 and prov["compute"]["unrecorded"] == 0, src.stem
        assert prov["git_commit"] == summary["git_commit"] and prov["device"].startswith("cpu")
        assert "widgets" not in nb["metadata"], "widget state would make the page load widget JS from a CDN"
        page = (html / f"{src.stem}.html").read_text()
        assert "atbook-provenance" in page and "mlp, width 64" in page and prov["git_commit"][:12] in page
        assert "{glue" not in page and "Traceback" not in page and "PosixPath(" not in page


def test_claims_ledger_and_bibliography_in_the_book(built):
    summary = json.loads(built["summary"].read_text())
    assert [c["claim"] for c in summary["claims"]] == ["shrinkage", "confidence", "distillation"]
    assert all(c["verdict"] in ("supported", "not supported", "inconclusive", "not run") for c in summary["claims"])
    html = built["out"] / "_build" / "html"
    ledger = (html / "claims.html").read_text()
    assert "The rules" in ledger and ledger.index("The rules") < ledger.index("smoke · digits")
    for c in summary["claims"]:
        assert f"<strong>{c['verdict']}</strong>" in ledger, c["claim"]
    refs = (html / "references.html").read_text()
    for name in ("Seguin", "Goldblum", "Shafahi", "Madry", "Rice", "Wong", "Croce", "Soudry"):
        assert name in refs, name
    assert 'href="references.html#id' in (html / "02_training.html").read_text(), "chapters cite into the bibliography"


def test_knob_sheet_and_glued_rules_in_the_book(built):
    """The generated knob sheet is a page of the book, and each chapter shows its rule glued from the rule object."""
    from atlib.studies import confidence, distillation

    html = built["out"] / "_build" / "html"
    sheet = (html / "knobs.html").read_text()
    assert "Every knob" in sheet and "smoke" in sheet and "max_gap" in sheet and "ceiling_fraction" in sheet
    assert "knobs.html" in (html / "intro.html").read_text(), "the intro points to the knob sheet"
    ch3 = (html / "03_confidence.html").read_text()
    assert "The control is usable:" in ch3 and f"within {confidence.rule.terms()['max_gap']} pp" in ch3
    ch4 = (html / "04_distillation.html").read_text()
    assert "Bonferroni-adjusted over the" in ch4 and distillation.rule.terms()["bonf_level"] in ch4
    assert "decisive for B" in ch4, "the ablation table is generated with the rule's roles"


def test_tests_never_record_into_the_repository(built):
    assert built["results_after"] == built["results_before"], "a test build must not write results/<profile>/"


def test_finishing_a_notebook_for_the_book():
    """Provenance under the title, widgets replaced by a note and their state dropped, code folded."""
    import nbformat

    from atlib.book import pages

    nb = nbformat.v4.new_notebook(metadata={"widgets": {"application/vnd.jupyter.widget-state+json": {}}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\nText."),
                nbformat.v4.new_code_cell("profile = 'x'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("slider", outputs=[nbformat.v4.new_output(
                    "display_data", data={pages.WIDGET_MIME: {"model_id": "abc"}, "text/plain": "VBox(...)"})]),
                nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["remove-input"]})]
    prov = pages.Provenance("smoke", "digits, tests", "digits", "mlp, width 64", "cpu (2 cores)", (0, 1),
                            "0123456789abcdef-dirty", "2026-01-01 00:00", 12.3, "fp32", "fp32",
                            compute={"artifacts": 40, "seconds": 1234.5, "unrecorded": 2})
    pages.add_provenance(nb, prov)
    assert pages.static_widgets(nb, "chapters/01_theory.py") == 1
    pages.fold_code(nb)
    first = nb.cells[0].source
    assert first.startswith("# Title\n\n```{admonition} Provenance") and first.endswith("Text.")
    assert "`0123456789ab` (with uncommitted changes)" in first and "**this build** 12 s" in first
    assert "**computing its results** 20.6 min of single-thread jobs (40 cached artifacts, their own recorded " \
           "times; 2 without a record)" in first
    assert "widgets" not in nb.metadata
    assert nb.cells[2].outputs[0]["data"] == {"text/markdown": nb.cells[2].outputs[0]["data"]["text/markdown"]}
    assert "chapters/01_theory.py" in nb.cells[2].outputs[0]["data"]["text/markdown"]
    assert [c.metadata.get("tags") for c in nb.cells[1:]] == [["parameters", "remove-cell"], ["hide-input"],
                                                               ["remove-input"]]


def test_provenance_box_parses_as_myst_with_the_settings_folded_inside():
    """The provenance box and the settings dropdown nested in it are both directives to MyST: no fence, option or
    TOML line is left as paragraph text (a backtick in the inner box's title once kept it from being parsed)."""
    from docutils import nodes
    from docutils.core import publish_doctree
    from myst_parser.parsers.docutils_ import Parser

    from atlib.book import pages
    from atlib.studies.profiles import PROFILES, profile_toml

    prov = pages.Provenance("smoke", "digits, tests", "digits", "mlp, width 64", "cpu (2 cores)", (0, 1), "0123abc",
                            "2026-01-01 00:00", 12.3, "fp32", "fp32", profile_toml(PROFILES["smoke"]))
    doc = publish_doctree(prov.markdown(), parser=Parser(), settings_overrides={"report_level": 5})
    outer = [n for n in doc.findall(nodes.admonition) if "atbook-provenance" in n["classes"]]
    assert len(outer) == 1
    inner = [n for n in outer[0].findall(nodes.admonition) if "dropdown" in n["classes"]]
    assert len(inner) == 1 and inner[0].next_node(nodes.title).astext().startswith("Every setting of this profile")
    assert inner[0].next_node(nodes.literal_block).astext().strip() == profile_toml(PROFILES["smoke"]).strip()
    prose = "\n".join(p.astext() for p in doc.findall(nodes.paragraph))
    assert "```" not in prose and "~~~" not in prose and ":class:" not in prose and "name =" not in prose


def test_html_lands_in_the_books_own_folder(monkeypatch, tmp_path):
    """jupyter-book 1.x builds next to the nearest _config.yml up the tree unless told otherwise; for
    book/ that is the repository root, so the runner must pass --path-output."""
    import subprocess

    from atlib.book import runner as book

    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        (tmp_path / "_build" / "html").mkdir(parents=True)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(book.subprocess, "run", fake_run)
    assert book.build_html(tmp_path) == tmp_path / "_build" / "html"
    cmd = seen["cmd"]
    assert cmd[cmd.index("--path-output") + 1] == str(tmp_path)


@pytest.mark.slow  # executes chapters in a Jupyter kernel
def test_shared_kernel_gives_each_chapter_a_fresh_namespace(tmp_path):
    """The runner executes every chapter in one kernel (imports paid once), but no chapter sees another's names."""
    a, b, out = tmp_path / "01_a.py", tmp_path / "02_b.py", tmp_path / "out"
    a.write_text("# %% tags=['parameters']\nprofile = 'smoke'\n\n# %%\nleak = 4711\nimport json\n")
    b.write_text("# %% tags=['parameters']\nprofile = 'smoke'\n\n# %%\nimport sys\n"
                 "assert 'leak' not in globals() and 'json' not in globals()\nassert 'json' in sys.modules\n"
                 "# %%\nimport multiprocessing as mp\nfrom concurrent.futures import ProcessPoolExecutor\n"
                 "with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn')) as ex:\n"
                 "    assert ex.submit(abs, -3).result() == 3  # atlib.training.pool needs __main__ intact\n")
    with book.shared_kernel(out) as km:
        book.execute_chapter(a, out, {"profile": "smoke"}, km)
        done = book.execute_chapter(b, out, {"profile": "smoke"}, km)
        assert km.is_alive()
    assert not km.is_alive(), "the kernel is shut down with the build"
    nb = json.loads(done.read_text())
    counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), "each chapter's execution count starts at 1"


@pytest.mark.slow  # executes chapters in a Jupyter kernel
def test_restarting_the_execution_count_prints_no_history_clash(tmp_path):
    """Each chapter restarts the count at 1 in the shared kernel; with IPython's history database the second
    chapter's lines clashed with the first's ("Session/line number was not unique in database": the history
    moves to a new session), a line IPython printed into the published chapters' outputs. The book kernel keeps
    no history database."""
    a, b, out, session = tmp_path / "01_a.py", tmp_path / "02_b.py", tmp_path / "out", tmp_path / "session"
    head = "# %% tags=['parameters']\nprofile = 'smoke'\n\n# %%\nx = 1\n\n# %%\nhm = get_ipython().history_manager\n"
    a.write_text(head + f"hm.writeout_cache()  # what IPython's saving thread does\nopen({str(session)!r}, 'w')"
                        ".write(str(hm.session_number))\n")
    b.write_text(head + f"hm.writeout_cache()\nassert hm.session_number == int(open({str(session)!r}).read()), "
                        "'the history moved to a new session'\n")
    with book.shared_kernel(out) as km:
        done = [book.execute_chapter(f, out, {"profile": "smoke"}, km) for f in (a, b)]
    outputs = [json.dumps(c.get("outputs", [])) for nb in done for c in json.loads(nb.read_text())["cells"]]
    assert [o for o in outputs if "not unique" in o] == []


def test_bad_workers_fail_before_the_output_folder_is_touched(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "earlier.json").write_text("{}")
    with pytest.raises(BookError, match="workers=0"):
        book.run_book("smoke", out, cache_dir=str(tmp_path / "c"), workers=0, html=False)
    assert "ATLIB_WORKERS" not in os.environ
    monkeypatch.setenv("ATLIB_WORKERS", "two")
    with pytest.raises(BookError, match="ATLIB_WORKERS='two'"):
        book.run_book("smoke", out, cache_dir=str(tmp_path / "c"), html=False)
    assert (out / "results" / "earlier.json").exists(), "an earlier build's results survive a bad setting"


COLLAPSED = """# smoke with PGD-AT at L∞ ε = 0.4 from the first step: the main AT models fall into a near-constant predictor
extends = "smoke"
linf_eps = 0.4
linf_sweep = [0.0, 0.4]
eps_fadein_epochs = 0

[distill]
sweep_eps = [0.45, 0.5]
"""


@pytest.mark.slow
def test_a_book_whose_at_models_collapse_publishes_no_verdict(tmp_path):
    """Issue 25: a profile whose main AT models did not learn must not publish supported / not supported. Every
    claim that reads them is invalid, with the failed gate, in summary.json and in the ledger."""
    from atlib.book import claims
    from atlib.book.runner import run_book

    toml = tmp_path / "collapsed_smoke.toml"
    toml.write_text(COLLAPSED)
    summary = json.loads(Path(run_book(str(toml), out=tmp_path / "book", cache_dir=str(tmp_path / "cache"),
                                       device="cpu", html=False)).read_text())
    at = [m for m in summary["models"] if m["name"].startswith("at_linf_0.4")]
    assert at and all(m["clean_acc"] < 0.25 for m in at), "the planted collapse happened"
    entries = {e.claim: e for e in claims.judge(summary)}
    assert {k: e.verdict for k, e in entries.items()} == dict.fromkeys(entries, claims.INVALID)
    assert all("learned: at_linf_0.4_s" in e.reason for e in entries.values()), {k: e.reason for k, e in entries.items()}
    assert summary["shrinkage"]["claim"]["valid"] is False and summary["confidence"]["verdict"]["valid"] is False
    assert summary["distillation"]["verdict"]["valid"] is False
