"""The book runner: chapters (jupytext .py) → papermill-executed notebooks → summary.json → HTML.

Chapters are taken in ``_toc.yml`` order; an entry ``NN_name`` is executed from
``chapters/NN_name.py``, ``claims`` is the generated claims ledger, any other entry is a hand-written
page from ``pages/``. Executed notebooks go to the output folder, never beside their ``.py`` sources:
``book/`` (the published book) for the default profile, ``_build/books/<profile>/`` for any other.
A finished build's summary is also recorded as ``results/<profile>/summary.json`` only when asked
(``python -m atlib book --record``), which is what the ledger of every later build reads for that profile.
The chapters' kernel runs with ``ATBOOK_BUILD=1`` (set in its kernelspec): glued values are then not echoed
into cell outputs, as they are when a chapter is run interactively (:func:`atlib.studies.prose.glue`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from atlib.book import claims, knobs, pages
from atlib.book.preflight import BadInputError, BookError, check_out, check_run, default_out  # noqa: F401 (re-exported)
from atlib.book.progress import ChapterProgress
from atlib.core.runtime import device_name, precision_text, train_precision
from atlib.studies.context import COST_SUFFIX
from atlib.studies.profiles import DEFAULT_PROFILE, Profile, PROFILES, get_profile, load_profile, profile_toml
from atlib.training import executor as engines

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
        elif entry not in pages.GENERATED and not (root / "pages" / f"{entry}.md").exists():
            raise BookError(f"_toc.yml lists {entry!r}, but neither chapters/{Path(entry).name}.py nor "
                            f"pages/{entry}.md exists (and the runner does not generate it)")
    return srcs


KERNEL_SETUP = "import pandas; pandas.set_option('display.max_colwidth', None)"  # tables show whole cells


def _kernel_dir(work: Path) -> str:
    """A kernelspec running *this* interpreter, so the chapters see the same environment as the runner; its
    one setup line (``KERNEL_SETUP``) keeps pandas from cutting table cells at 50 characters in the book. Its
    IPython keeps no history database: each chapter restarts the execution count at 1 in the shared kernel, and
    the database's (session, line) key then clashes ("Session/line number was not unique in database"), a line
    that IPython printed into whichever cell's output was running."""
    spec = work / "kernels" / "kernels" / "atbook"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 f"--IPKernelApp.exec_lines={KERNEL_SETUP}",
                 "--HistoryManager.enabled=False"],  # no history database: a chapter restarts the execution count
        "env": {"ATBOOK_BUILD": "1"},  # the book build: prose.glue echoes nothing into the outputs
        "display_name": "atbook (Python 3)", "language": "python"}))
    return str(work / "kernels")


@contextlib.contextmanager
def _kernelspec(work: Path) -> Iterator[None]:
    """``$JUPYTER_PATH`` includes the atbook kernelspec (:func:`_kernel_dir`) while the block runs."""
    env_before = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (_kernel_dir(work), env_before) if p)
    try:
        yield
    finally:
        if env_before is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = env_before


@contextlib.contextmanager
def shared_kernel(out_dir: Path) -> Iterator[Any]:
    """One kernel for all the chapters of a build: torch, atlib and the data are loaded once and
    atlib.training.pool's worker processes started once, not once per chapter (about 8 s a chapter on 2 cores).
    :func:`execute_chapter` clears its user namespace before each chapter, so no chapter sees another's
    variables; only imported modules (and their caches) carry over."""
    from jupyter_client.manager import KernelManager

    work = out_dir / "_executing"
    work.mkdir(parents=True, exist_ok=True)
    with _kernelspec(work):
        km = KernelManager(kernel_name="atbook")
        km.start_kernel(cwd=str(REPO))
        try:
            yield km
        finally:
            km.shutdown_kernel(now=False)


# %reset -f also drops the namespace's dunders (__spec__, ...), which e.g. multiprocessing's spawn reads
RESET = """get_ipython()._atbook_dunders = {k: v for k, v in globals().items() if k.startswith("__")}
%reset -f
globals().update(get_ipython()._atbook_dunders)
get_ipython().execution_count = 1"""


def fresh_namespace(km: Any) -> None:
    """Empty the user namespace of the kernel ``km`` (as a fresh kernel has it) and restart its execution
    count at 1."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive(RESET, store_history=False, timeout=120)
        if reply["content"]["status"] != "ok":
            raise BookError(f"could not reset the chapters' kernel: {reply['content'].get('evalue')}")
    finally:
        kc.stop_channels()


def execute_chapter(src: Path, out_dir: Path, params: dict[str, Any], km: Any = None,
                    progress: ChapterProgress | None = None) -> Path:
    """jupytext → papermill; the executed notebook lands in ``out_dir``; a failure raises BookError.

    ``km``: a started kernel (:func:`shared_kernel`) to run in, its namespace cleared first; default a
    kernel of the chapter's own. ``progress``: where papermill's cell counter goes (none by default)."""
    import jupytext
    import papermill as pm

    work = out_dir / "_executing"
    work.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "atbook", "display_name": "atbook (Python 3)", "language": "python"}
    nb.metadata.pop("jupytext", None)
    src_nb, run_nb = work / f"{src.stem}.in.ipynb", work / f"{src.stem}.ipynb"
    jupytext.write(nb, src_nb)
    if km is not None:
        fresh_namespace(km)
    try:
        with _kernelspec(work):
            pm.execute_notebook(str(src_nb), str(run_nb), parameters=params, kernel_name="atbook", cwd=str(REPO),
                                progress_bar=progress.tqdm_kwargs() if progress is not None else False,
                                log_output=False,
                                **({"km": km} if km is not None else {}))
    except pm.PapermillExecutionError as e:
        failed = out_dir / "_failed" / f"{src.stem}.ipynb"
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(run_nb), failed)
        tb = [ANSI.sub("", line) for line in e.traceback]
        where = next((ln for ln in reversed(tb) if "File " in ln or ln.lstrip().startswith("Cell ")), "")
        raise BookError(f"chapter {src.stem} failed in cell {e.cell_index} (execution count {e.exec_count}):\n"
                        f"  {e.ename}: {e.evalue}\n  {where.strip()[:400]}\n"
                        f"  full notebook with the traceback: {failed}") from None
    final = out_dir / f"{src.stem}.ipynb"
    shutil.move(str(run_nb), final)
    src_nb.unlink(missing_ok=True)
    return final


BOOK_SOURCES = ("atlib", "chapters", "pages", "_config.yml", "_toc.yml", "references.bib", "requirements.txt")


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when the book's sources (``BOOK_SOURCES``) have uncommitted changes."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", *BOOK_SOURCES],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_summary(out: Path, base: dict[str, Any]) -> Path:
    """Merge the chapters' sections (``results/*.json``) into ``summary.json``, with the claims judged on them."""
    summary = dict(base)
    for sec in sorted((out / "results").glob("*.json")):
        summary.update(json.loads(sec.read_text()))
    summary["claims"] = claims.summary_section(summary)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    return path


def build_html(out: Path) -> Path:
    """``jupyter-book build`` with warnings as errors; returns the HTML folder."""
    jb = Path(sys.executable).with_name("jupyter-book")
    # --path-output: else jupyter-book builds next to the nearest _config.yml up the tree (the repository
    # root for book/), not in the book's own folder
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(out), "--config", str(REPO / "_config.yml"),
           "--toc", str(REPO / "_toc.yml"), "--path-output", str(out), "-W", "-n", "--keep-going"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "WARNING" in ln or "ERROR" in ln]
        tail = "\n".join(lines[-15:] or (res.stdout + res.stderr).splitlines()[-15:])
        raise BookError(f"jupyter-book build failed (exit {res.returncode}):\n{tail}")
    return out / "_build" / "html"


def provenance(p: Profile, device: str, commit: str, precision: str, wall_s: float) -> pages.Provenance:
    """The provenance box of one chapter executed for profile ``p`` on ``device`` (a machine, in words), its models
    trained at ``precision`` (``p.precision`` resolved for the device: :func:`atlib.core.runtime.train_precision`)."""
    subsets = ", ".join(f"{what} subset of {n}" for what, n in (("training", p.train_subset), ("evaluation", p.eval_subset))
                        if n is not None)
    return pages.Provenance(p.name, p.description, p.dataset + (f" ({subsets})" if subsets else ""),
                            p.arch + (f", width {p.width}" if p.width else ""), device, tuple(p.seeds), commit,
                            _now(), wall_s, precision, p.precision, profile_toml(p))


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it: no home paths in the book."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _run_chapters(srcs: list[Path], out_dir: Path, params: dict[str, Any], prov_of: tuple[Profile, str, str, str],
                  t0: float) -> dict[str, Any]:
    """Execute the chapters in one kernel, each with a progress line (:class:`ChapterProgress`), and finish their
    notebooks for the book; returns each chapter's provenance. ``prov_of``: (profile, machine, commit, precision)."""
    chapters = {}
    with shared_kernel(out_dir) as km:
        for i, src in enumerate(srcs, 1):
            tc, label, started = time.perf_counter(), f"[{i}/{len(srcs)}] {src.stem}", time.time()
            progress = ChapterProgress(label)
            if not progress.tty:  # on a terminal the progress line says it
                print(f"{label} ...", flush=True)
            try:
                with progress:
                    done = execute_chapter(src, out_dir, params, km, progress)
            except BookError:
                print(f"{label} FAILED after {time.perf_counter() - tc:.0f}s", flush=True)
                raise
            prov = replace(provenance(*prov_of, time.perf_counter() - tc), compute=_chapter_cost(out_dir, started))
            pages.finish_chapter(done, prov, str(src.relative_to(REPO)) if src.is_relative_to(REPO) else src.name)
            chapters[src.stem] = prov.as_dict()
            print(f"{label} done in {time.perf_counter() - tc:.0f}s (total {time.perf_counter() - t0:.0f}s)",
                  flush=True)
    return chapters


def _compute_first(p: Profile, cache_dir: str | None, data_root: str | None, dev: Any, workers: int,
                   engine: str) -> float:
    """Every chapter's cached jobs in one pass before the first chapter (:mod:`atlib.book.compute`), so the chapters
    only load; its wall time. With one worker the chapters compute in their own kernel, as they always could."""
    if engine == engines.LOCAL and workers <= 1:
        return 0.0
    from atlib.book.compute import compute_context
    from atlib.studies import context as cx

    t = time.perf_counter()
    print("[0] every chapter's cached jobs, one pass ...", flush=True)
    done = compute_context(cx.context(p, cache_dir, data_root, str(dev), workers, engine), progress=True)
    print(f"[0] done in {time.perf_counter() - t:.0f}s: {done}", flush=True)
    return time.perf_counter() - t


def _chapter_cost(out_dir: Path, since: float) -> dict[str, Any] | None:
    """What the chapter that started at ``since`` recorded as its results' compute cost (``write_section``)."""
    found = [json.loads(p.read_text()) for p in (out_dir / "results").glob(f"*{COST_SUFFIX}")
             if p.stat().st_mtime >= since]
    if not found:
        return None
    return {k: sum(c[k] for c in found) for k in ("artifacts", "seconds", "unrecorded")}


def run_book(profile: str | os.PathLike | Profile, out: str | os.PathLike | None = None, cache_dir: str | None = None,
             data_root: str | None = None, device: str | None = None, html: bool = True,
             record: bool = False, workers: int | None = None, executor: str | None = None) -> Path:
    """Execute every chapter for ``profile`` (a built-in name, a TOML profile file or a :class:`Profile`) into
    ``out`` and build the HTML; returns summary.json's path. The profile's resolved settings are written to
    ``<out>/profile.toml``; a profile that is not a built-in one reaches the chapters as that file.

    ``record``: after a successful build, also copy summary.json to ``results/<profile>/summary.json``.
    ``workers``: processes for the chapters' cache-filling jobs (``$ATLIB_WORKERS``; see :mod:`atlib.training.pool`).
    ``executor``: where those jobs run, ``local``, ``dask-local:N`` or ``tcp://HOST:PORT`` (``$ATLIB_EXECUTOR``).
    Bad input fails before anything runs or is written (:func:`atlib.book.preflight.check_run`, :func:`check_out`):
    BadInputError, DeviceError, DataNotFoundError, UnknownProfileError.
    """
    p, dev, n_workers, engine = check_run(profile, device, data_root, workers, cache_dir, executor)
    out_dir = Path(out).resolve() if out is not None else default_out(p.name)
    check_out(p, out_dir)
    if workers is not None:
        os.environ["ATLIB_WORKERS"] = str(n_workers)  # the chapters' kernel inherits --workers and --executor
    if executor is not None:
        os.environ["ATLIB_EXECUTOR"] = engine
    out_dir.mkdir(parents=True, exist_ok=True)
    pages.copy_pages(out_dir)
    results = out_dir / "results"
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(out_dir / "_failed", ignore_errors=True)
    settings = out_dir / "profile.toml"
    settings.write_text(profile_toml(p), encoding="utf-8")
    builtin = PROFILES.get(p.name) == p
    params = {"profile": p.name if builtin else str(_shown(settings)), "results_dir": str(_shown(results)), "cache_dir": cache_dir, "data_root": data_root,
              "device": str(dev)}
    os.environ.setdefault("ATLIB_PROGRESS", "0")  # tqdm bars are noise in the rendered book
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(REPO), os.environ.get("PYTHONPATH")) if x)
    srcs = chapter_sources()
    commit, started = git_commit(), _now()
    # the kernel's device; for a CPU the machine's cores (the runner's own torch thread count may differ)
    machine = device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    t0 = time.perf_counter()
    jobs_on = f"{n_workers} worker process(es)" if engine == engines.LOCAL else f"Dask ({engine})"
    precision = train_precision(p.precision, dev, p.fast)  # what the chapters' training runs at on this device
    trains = precision_text(p.precision, precision, machine)
    print(f"atbook: profile {p.name!r} on {device_name(dev)} (training {trains}), {jobs_on} for cached jobs, "
          f"{len(srcs)} chapters → {out_dir}", flush=True)
    computed_s = _compute_first(p, cache_dir, data_root, dev, n_workers, engine)
    chapters = _run_chapters(srcs, out_dir, params, (p, machine, commit, precision), t0)
    shutil.rmtree(out_dir / "_executing", ignore_errors=True)
    summary = write_summary(out_dir, {"profile": p.name, "dataset": p.dataset, "device": machine, "precision": precision,
                                      "git_commit": commit, "executed_at": started, "workers": n_workers,
                                      "elapsed_s": round(time.perf_counter() - t0, 1), "compute_s": round(computed_s, 1),
                                      "chapters": chapters, "settings": asdict(p)})
    print(f"summary: {summary}", flush=True)
    _finish(out_dir, summary, p, html, record)
    return summary


def _finish(out_dir: Path, summary: Path, p: Profile, html: bool, record: bool) -> None:
    """The ledger, the knob sheet, the HTML (``html``) and the record (``record``) of an executed book."""
    pages.write_ledger(out_dir, json.loads(summary.read_text()), tuple(PROFILES))
    knobs.write_knob_sheet(out_dir, p)
    if html:
        tb = time.perf_counter()
        print("building HTML (jupyter-book, warnings are errors) ...", end=" ", flush=True)
        path = build_html(out_dir)
        print(f"done in {time.perf_counter() - tb:.0f}s", flush=True)
        print(f"HTML: {path / 'index.html'}", flush=True)
    if record:
        print(f"recorded: {pages.record_summary(summary, p.name)}", flush=True)


def render_book(out: str | os.PathLike | None = None) -> Path:
    """Build the HTML of an already executed book (default ``book/``) without executing anything: refresh the
    hand-written pages and the claims ledger (from ``results/*/summary.json``), then ``jupyter-book build``."""
    out_dir = Path(out).resolve() if out is not None else REPO / "book"
    missing = [s.stem for s in chapter_sources() if not (out_dir / f"{s.stem}.ipynb").exists()]
    if missing:
        raise BadInputError(f"{out_dir} lacks the executed notebooks of {', '.join(missing)}: run `python -m atlib book` "
                        f"(with --out {out_dir} if it is not the default folder) first")
    pages.copy_pages(out_dir)
    current = out_dir / "summary.json"
    pages.write_ledger(out_dir, json.loads(current.read_text()) if current.exists() else None, tuple(PROFILES))
    settings = out_dir / "profile.toml"  # the resolved profile the book was executed for (run_book writes it)
    knobs.write_knob_sheet(out_dir, load_profile(settings) if settings.exists() else get_profile(DEFAULT_PROFILE))
    return build_html(out_dir)
