"""The rendered book in a real browser: the test suite's one `smoke` build, served on localhost and loaded
page by page in headless Chromium (Debian's `chromium`, driven by Playwright without downloading a browser).

Each page must show its title, load every figure (natural width > 0), render its math with the book's own
MathJax (no CDN: the test blocks every request that leaves localhost and fails on it), show no MyST source
that the build left unparsed (a fence, a directive option, a role) in its visible text, and raise no
JavaScript error, console error or failed request. A screenshot of each page's top is saved to a temp folder;
with ``$ATBOOK_SCREENSHOTS`` set, full-page screenshots go there, for a person to look at.
"""
import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from atlib.book import runner as book

pytestmark = pytest.mark.slow  # drives headless Chromium over the smoke book

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FULL_PAGE = bool(os.environ.get("ATBOOK_SCREENSHOTS"))  # whole pages for a person to look at; else the top only


def chromium_path() -> str | None:
    """``$ATBOOK_CHROMIUM`` if set, else the first Chromium on PATH."""
    return os.environ.get("ATBOOK_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def page_title(entry: str) -> str:
    """The ``# title`` of a toc entry, from its source (chapter .py, hand-written page, or the ledger)."""
    if entry in book.pages.GENERATED:
        return {"claims": "Claims ledger", "knobs": "Every knob"}[entry]
    src = book.REPO / "chapters" / f"{entry}.py"
    lines = (src if src.exists() else book.REPO / "pages" / f"{entry}.md").read_text().splitlines()
    head = "# # " if src.exists() else "# "  # a chapter's markdown is commented out in py:percent
    return next(ln.removeprefix(head) for ln in lines if ln.startswith(head))


# MyST that a reader must never see: fences (```{admonition}, ~~~~), directive options (:class:), roles ({glue:text}`x`)
UNPARSED_MYST = re.compile(r"```|~~~|:class:|^:[a-z-]+:\s|\{glue:|\{[a-z-]+(?::[a-z-]+)?\}`", re.MULTILINE)


def plain(text: str) -> str:
    """Text as a browser shows it: curly apostrophes, no Markdown emphasis, no permalink sign, one case."""
    return re.sub(r"[*`#¶]", "", text.replace("’", "'")).strip().lower()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D102 - keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def served(smoke_book):
    html = smoke_book["out"] / "_build" / "html"
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", html
    srv.shutdown()


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found (install Debian's `chromium`, as .ci/run does, or set $ATBOOK_CHROMIUM): "
                    "the rendered book was not checked in a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b.new_context(viewport={"width": 1280, "height": 900})  # one context: pages share the HTTP cache
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    out = Path(os.environ.get("ATBOOK_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def load(browser, base: str, name: str, shot: Path) -> dict:
    """Open one page; return what the checks need: title, images, math, errors, off-host requests."""
    page = browser.new_page()
    errors, offhost = [], []
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})")
            if r.url.startswith(base) else None)
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)

    def route(r):
        if r.request.url.startswith(base) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            offhost.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{base}/{name}", wait_until="load")  # every image and script has loaded or failed
    page.wait_for_function("() => !window.MathJax || (window.MathJax.startup && window.MathJax.startup.promise)")
    page.evaluate("() => Promise.all([window.MathJax && window.MathJax.startup.promise, document.fonts.ready])")
    info = page.evaluate("""() => ({
        title: document.title,
        h1: (document.querySelector('article h1') || {}).textContent || '',
        images: Array.from(document.querySelectorAll('article img')).map(i => [i.currentSrc, i.complete, i.naturalWidth]),
        mathSpans: document.querySelectorAll('article .math').length,
        mathUnrendered: Array.from(document.querySelectorAll('article .math')).filter(m => !m.querySelector('mjx-container')).length,
        mjx: document.querySelectorAll('article mjx-container').length,
        mjxErrors: document.querySelectorAll('mjx-merror').length,
        mathjaxSrc: Array.from(document.scripts).map(s => s.src).filter(s => /mathjax/i.test(s)),
        text: (document.querySelector('article') || document.body).innerText,
    })""")
    info["myst"] = sorted({m.group(0) for m in UNPARSED_MYST.finditer(info.pop("text"))})
    page.screenshot(path=str(shot / f"{Path(name).stem}.png"), full_page=FULL_PAGE)
    page.close()
    return info | {"errors": errors, "offhost": offhost}


def test_every_page_renders_in_chromium(served, browser, shots):
    base, html = served
    entries = book.toc_entries()
    results = {e: load(browser, base, f"{e}.html", shots) for e in entries}
    problems = []
    for entry, r in results.items():
        title = page_title(entry)
        if plain(title) not in plain(r["title"]) or plain(title) != plain(r["h1"]):
            problems.append(f"{entry}: title {r['title']!r} / h1 {r['h1']!r} lacks {title!r}")
        problems += [f"{entry}: figure not loaded: {src}" for src, done, width in r["images"] if not (done and width > 0)]
        if r["mathSpans"] and (r["mjx"] == 0 or r["mathUnrendered"]):
            problems.append(f"{entry}: {r['mathUnrendered']} of {r['mathSpans']} math elements not rendered by MathJax")
        if r["mjxErrors"]:
            problems.append(f"{entry}: {r['mjxErrors']} MathJax errors")
        if any(not s.startswith(base) for s in r["mathjaxSrc"]):
            problems.append(f"{entry}: MathJax not served by the book itself: {r['mathjaxSrc']}")
        if r["myst"]:
            problems.append(f"{entry}: unparsed MyST in the visible text: {r['myst']}")
        problems += [f"{entry}: {e}" for e in r["errors"]]
        problems += [f"{entry}: request leaves the book: {u}" for u in r["offhost"]]
    assert not problems, f"screenshots in {shots}\n" + "\n".join(problems)
    # the checks saw something: figures on the chapters, math where the sources have it, the ledger's table
    chapters = [e for e in entries if (book.REPO / "chapters" / f"{e}.py").exists()]
    assert all(results[e]["images"] for e in chapters), "every chapter shows at least one figure"
    assert sum(results[e]["mjx"] for e in chapters) > 50, "the chapters' math is rendered"
    assert {p.stem for p in shots.glob("*.png")} >= set(entries)


def test_browser_check_fails_on_a_broken_page(served, browser, shots, tmp_path):
    """The checks can fail: a page with a missing figure, a script error and a CDN request is caught."""
    base, html = served
    bad = html / "_broken_test_page.html"
    bad.write_text("<html><head><title>broken</title><script src='https://cdn.example.org/x.js'></script></head>"
                   "<body><article><h1>broken</h1><img src='missing.png'><script>undefinedFunction()</script>"
                   "<p>```{admonition} Every setting</p><p>:class: dropdown</p><p>{glue:text}`n_eval`</p>"
                   "<p hidden>```{hidden} is not visible</p></article></body></html>")
    try:
        r = load(browser, base, bad.name, tmp_path)
    finally:
        bad.unlink()
    assert any("undefinedFunction" in e for e in r["errors"])
    assert any("HTTP 404" in e and "missing.png" in e for e in r["errors"])
    assert r["offhost"] == ["https://cdn.example.org/x.js"]
    assert [w for _, _, w in r["images"]] == [0]
    assert r["myst"] == [":class:", "```", "{glue:"]
