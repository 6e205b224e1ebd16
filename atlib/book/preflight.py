"""Bad input, caught before anything runs or is written (``python -m atlib`` then prints one ``error: ...`` line and
exits 2): the profile's name, the output and cache folders, the device, workers, executor and data root.

The published folders belong to the built-in profiles: only the default profile itself writes ``book/``, no
build writes into ``results/`` (``--record`` copies one summary to ``results/<profile>/``), and a profile of
one's own may not take a built-in's name (:func:`atlib.studies.profiles.check_own_name`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from atlib.core.data import check_data_root
from atlib.core.runtime import pick_device
from atlib.core.store import default_cache_dir
from atlib.studies.profiles import DEFAULT_PROFILE, PROFILES, Profile, check_own_name, get_profile
from atlib.training import executor as engines
from atlib.training import pool

REPO = Path(__file__).resolve().parents[2]
# the repository's own folders: no --out may lie inside one (book/: the default profile's published book alone)
SOURCE_FOLDERS = ("atlib", "chapters", "pages", "results", "tests", "_static", ".git", ".github", ".ci", "book")


class BookError(RuntimeError):
    """A chapter or the HTML build failed; the message says which and why, briefly."""


class BadInputError(BookError):
    """A bad argument or setting, caught before anything was executed or written (the CLI exits 2 for it)."""


def default_out(profile: str) -> Path:
    """``book/`` (the published book) for the default profile, ``_build/books/<profile>/`` for any other."""
    return REPO / "book" if profile == DEFAULT_PROFILE else REPO / "_build" / "books" / profile


def check_writable(path: Path, what: str) -> None:
    """``path`` (a folder, created later if missing) can be written by this process: it, or its nearest existing
    parent, is a folder in which a file can be created (tried with a temporary file, removed at once)."""
    existing = next(a for a in (path, *path.parents) if a.exists())
    if not existing.is_dir():
        where = f"{path} is" if existing == path else f"{path} cannot be created: {existing} is"
        raise BadInputError(f"{what} {where} a file, not a folder. Pass a folder (it is created if missing).")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        where = "" if existing == path else f" (it would be created in {existing})"
        raise BadInputError(f"{what} {path} is not writable{where}: {e.strerror or e}. Pass a folder you can "
                            f"write to.") from None


def check_out(profile: str | Profile, out: Path) -> None:
    """The output folder can be written, and a book never lands in the repository's own folders: ``book/`` only for
    the built-in default profile itself, never the repository root or a folder inside ``results/``, ``chapters/``..."""
    p = get_profile(profile)
    out = out.resolve()
    check_writable(out, "the output folder (--out)")
    if out == REPO or REPO.is_relative_to(out):
        raise BadInputError(f"the output folder (--out) {out} contains the repository; a build would replace its "
                            f"results/ and pages. Leave out --out (the default is {default_out(p.name)}) or pass "
                            f"a folder of its own.")
    inside = next((f for f in SOURCE_FOLDERS if out.is_relative_to(REPO / f)), None)
    if inside == "book" and out == REPO / "book" and p == PROFILES[DEFAULT_PROFILE]:
        return  # the default profile (re)publishes its book
    if inside == "book":
        raise BadInputError(f"book/ holds the published {DEFAULT_PROFILE!r} book; refusing to write the {p.name!r} "
                            f"profile into {out}. Leave out --out (the {p.name!r} book then goes to "
                            f"{default_out(p.name).relative_to(REPO)}/) or pass another folder.")
    if inside is not None:
        raise BadInputError(f"the output folder (--out) {out} is inside the repository's {inside}/ folder; pass a "
                            f"folder of its own (default {default_out(p.name).relative_to(REPO)}/).")


def check_executor(executor: str | None) -> str:
    """The executor (``--executor`` or ``$ATLIB_EXECUTOR``), checked: a ``tcp://`` scheduler must answer."""
    try:
        spec = engines.default_executor() if executor is None else engines.parse_executor(executor)
        engines.check_reachable(spec)
    except engines.ExecutorError as e:
        raise BadInputError(str(e)) from None
    return spec


def check_run(profile: str | os.PathLike | Profile, device: str | None, data_root: str | None, workers: Any,
              cache_dir: str | os.PathLike | None, executor: str | None) -> tuple[Profile, Any, int, str]:
    """What every profile command checks before it starts: (profile, device, worker count, executor).

    The profile (a Python-derived one too) has a name of its own, the device exists, ``workers`` (else
    ``$ATLIB_WORKERS``) is a whole number >= 1, the cache folder is writable, a named data root holds the data
    and the executor is usable."""
    p = get_profile(profile)
    check_own_name(p)
    dev = pick_device(device)
    try:
        n_workers = pool.parse_workers(workers) if workers is not None else pool.default_workers(dev, p.pool_jobs)
    except ValueError as e:  # a bad --workers or $ATLIB_WORKERS
        raise BadInputError(str(e)) from None
    via = "--cache-dir" if cache_dir is not None else "$ATLIB_CACHE" if os.environ.get("ATLIB_CACHE") else \
        "the default; --cache-dir or $ATLIB_CACHE choose another"
    check_writable(Path(cache_dir) if cache_dir is not None else default_cache_dir(), f"the cache folder ({via})")
    check_data_root(p.dataset, data_root)  # a named data root that lacks the data fails now, not in chapter 01
    return p, dev, n_workers, check_executor(executor)
