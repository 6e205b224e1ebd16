"""A small Sphinx extension for the book (loaded by ``sphinx.local_extensions`` in ``_config.yml``).

1. **Repository-relative assets.** The book's source folder is wherever the runner wrote the executed
   notebooks (``book/`` or any ``--out``), and Sphinx resolves ``html_static_path`` and
   ``bibtex_bibfiles`` against that folder. The assets (vendored MathJax, the book's CSS and JS,
   ``references.bib``) live once at the repository root, so an entry that does not exist in the
   source folder but does at the repository root is resolved there (also ``html_favicon``, ``html_logo``).
2. **Inline scripts added twice.** Sphinx 7.4 registers an inline script added after the builder
   started (``filename=None``) a second time as ``filename=''`` when it prepares writing; for
   sphinx-thebe's ``const THEBE_JS_URL = ...`` that is a SyntaxError on every page. Each page's
   script list is de-duplicated here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def resolve_path(entry: str, srcdir: Path, repo: Path = REPO) -> str:
    """``entry`` as given if it exists under ``srcdir`` (or is absolute), else under ``repo`` if it exists there."""
    p = Path(entry)
    if p.is_absolute() or (srcdir / p).exists() or not (repo / p).exists():
        return entry
    return str(repo / p)


def _resolve_assets(app: Any, config: Any) -> None:
    src = Path(app.srcdir)
    config.html_static_path = [resolve_path(e, src) for e in config.html_static_path]
    if getattr(config, "bibtex_bibfiles", None):
        config.bibtex_bibfiles = [resolve_path(e, src) for e in config.bibtex_bibfiles]
    for name in ("html_favicon", "html_logo"):
        if getattr(config, name, None) and "://" not in getattr(config, name):
            setattr(config, name, resolve_path(getattr(config, name), src))


def dedupe_scripts(scripts: list[Any]) -> list[Any]:
    """Scripts in order, each (file or inline body, priority, attributes) once; ``None`` and ``''`` are one file."""
    seen, out = set(), []
    for js in scripts:
        key = (str(js.filename or ""), js.priority, tuple(sorted(js.attributes.items())))
        if key not in seen:
            seen.add(key)
            out.append(js)
    return out


def _dedupe_page(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if scripts:
        scripts[:] = dedupe_scripts(scripts)


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _resolve_assets)
    app.connect("html-page-context", _dedupe_page, priority=900)  # after extensions that add page scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
