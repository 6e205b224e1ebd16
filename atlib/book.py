"""The book runner: chapters (jupytext .py) → papermill-executed notebooks → summary.json → HTML.

Chapters are taken in ``_toc.yml`` order; an entry ``NN_name`` is executed from
``chapters/NN_name.py``, any other entry (the intro) is a static page copied from ``book/``. Executed
notebooks go to the output folder (default ``book/``), never beside their ``.py`` sources.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .profiles import get_profile
from .runtime import device_name, pick_device

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class BookError(RuntimeError):
    """A chapter or the HTML build failed; the message says which and why, briefly."""


def toc_entries(root: Path = REPO) -> list[str]:
    """Every ``file`` of ``_toc.yml`` in reading order (the root page first)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    out = [toc["root"]]

    def walk(items: list[dict[str, Any]]) -> None:
        for it in items or []:
            if "file" in it:
                out.append(it["file"])
            walk(it.get("chapters", []) or it.get("sections", []))
            for part in it.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return out


def chapter_sources(root: Path = REPO) -> list[Path]:
    """The ``chapters/*.py`` behind the toc entries that are chapters, in toc order."""
    srcs = []
    for entry in toc_entries(root):
        src = root / "chapters" / f"{Path(entry).name}.py"
        if src.exists():
            srcs.append(src)
        elif not (root / "book" / f"{entry}.md").exists():
            raise BookError(f"_toc.yml lists {entry!r}, but neither chapters/{Path(entry).name}.py nor "
                            f"book/{entry}.md exists")
    return srcs


def _kernel_dir(work: Path) -> str:
    """A kernelspec running *this* interpreter, so the chapters see the same environment as the runner."""
    spec = work / "kernels" / "kernels" / "atbook"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "atbook (Python 3)", "language": "python"}))
    return str(work / "kernels")


def execute_chapter(src: Path, out_dir: Path, params: dict[str, Any]) -> Path:
    """jupytext → papermill; the executed notebook lands in ``out_dir``; a failure raises BookError."""
    import jupytext
    import papermill as pm

    work = out_dir / "_executing"
    work.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "atbook", "display_name": "atbook (Python 3)", "language": "python"}
    nb.metadata.pop("jupytext", None)
    src_nb, run_nb = work / f"{src.stem}.in.ipynb", work / f"{src.stem}.ipynb"
    jupytext.write(nb, src_nb)
    env_before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (_kernel_dir(work), env_before) if p)
    try:
        pm.execute_notebook(str(src_nb), str(run_nb), parameters=params, kernel_name="atbook", cwd=str(REPO),
                            progress_bar=sys.stderr.isatty(), log_output=False)
    except pm.PapermillExecutionError as e:
        failed = out_dir / "_failed" / f"{src.stem}.ipynb"
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_nb), failed)
        tb = [ANSI.sub("", line) for line in e.traceback]
        where = next((ln for ln in reversed(tb) if "File " in ln or ln.lstrip().startswith("Cell ")), "")
        raise BookError(f"chapter {src.stem} failed in cell {e.cell_index} (execution count {e.exec_count}):\n"
                        f"  {e.ename}: {e.evalue}\n  {where.strip()[:400]}\n"
                        f"  full notebook with the traceback: {failed}") from None
    finally:
        if env_before is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = env_before
    final = out_dir / f"{src.stem}.ipynb"
    shutil.move(str(run_nb), final)
    src_nb.unlink(missing_ok=True)
    return final


def _copy_static(out: Path) -> None:
    """Copy the book's hand-written pages (intro, bibliography, images) into a non-default output."""
    for f in (REPO / "book").iterdir():
        if f.is_file() and f.suffix in (".md", ".bib", ".png", ".svg", ".css"):
            shutil.copy2(f, out / f.name)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "atlib", "chapters"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_summary(out: Path, base: dict[str, Any]) -> Path:
    """Merge the chapters' sections (``results/*.json``) into ``summary.json``."""
    summary = dict(base)
    for sec in sorted((out / "results").glob("*.json")):
        summary.update(json.loads(sec.read_text()))
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path


def build_html(out: Path) -> Path:
    """``jupyter-book build`` with warnings as errors; returns the HTML folder."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(out), "--config", str(REPO / "_config.yml"),
           "--toc", str(REPO / "_toc.yml"), "-W", "-n", "--keep-going"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "WARNING" in ln or "ERROR" in ln]
        tail = "\n".join(lines[-15:] or (res.stdout + res.stderr).splitlines()[-15:])
        raise BookError(f"jupyter-book build failed (exit {res.returncode}):\n{tail}")
    return out / "_build" / "html"


def run_book(profile: str, out: str | os.PathLike | None = None, cache_dir: str | None = None,
             data_root: str | None = None, device: str | None = None, html: bool = True) -> Path:
    """Execute every chapter for ``profile`` into ``out`` and build the HTML; returns summary.json's path."""
    p = get_profile(profile)
    out_dir = Path(out).resolve() if out is not None else REPO / "book"
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir != REPO / "book":
        _copy_static(out_dir)
    results = out_dir / "results"
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(out_dir / "_failed", ignore_errors=True)
    dev = pick_device(device)
    shown = results.relative_to(REPO) if results.is_relative_to(REPO) else results  # no home paths in the book
    params = {"profile": p.name, "results_dir": str(shown), "cache_dir": cache_dir, "data_root": data_root,
              "device": str(dev)}
    os.environ.setdefault("ATLIB_PROGRESS", "0")  # tqdm bars are noise in the rendered book
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)
    srcs = chapter_sources()
    t0 = time.perf_counter()
    print(f"atbook: profile {p.name!r} on {device_name(dev)}, {len(srcs)} chapters → {out_dir}", flush=True)
    for i, src in enumerate(srcs, 1):
        tc = time.perf_counter()
        print(f"[{i}/{len(srcs)}] {src.stem} ...", end=" ", flush=True)
        try:
            execute_chapter(src, out_dir, params)
        except BookError:
            print(f"FAILED after {time.perf_counter() - tc:.0f}s", flush=True)
            raise
        print(f"done in {time.perf_counter() - tc:.0f}s (total {time.perf_counter() - t0:.0f}s)", flush=True)
    shutil.rmtree(out_dir / "_executing", ignore_errors=True)
    summary = write_summary(out_dir, {"profile": p.name, "dataset": p.dataset, "device": device_name(dev),
                                      "git_commit": git_commit(), "elapsed_s": round(time.perf_counter() - t0, 1)})
    print(f"summary: {summary}", flush=True)
    if html:
        tb = time.perf_counter()
        print("building HTML (jupyter-book, warnings are errors) ...", end=" ", flush=True)
        path = build_html(out_dir)
        print(f"done in {time.perf_counter() - tb:.0f}s", flush=True)
        print(f"HTML: {path / 'index.html'}", flush=True)
    return summary
