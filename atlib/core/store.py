"""Content-addressed artifact cache: trained models, histories and logits, keyed by their full config.

A key hashes the config (dataset, model, attack, schedule, seed, ...), a code version (a hash of the
source of every atlib module in the import closure of the functions that produce the artifact,
:func:`code_version_of`) and the data fingerprint, so a fix to the training code or the data never
serves a stale artifact. Each file carries a magic line and the SHA-256 of its
payload: a truncated or corrupt file is detected, moved aside (``*.corrupt``, kept for inspection) and
recomputed, never served. Writes go to a temp file in the same folder, then ``os.replace``.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import io
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch

from atlib.core.runtime import rank_world

MAGIC = b"ATLIB-ARTIFACT v1\n"
T = TypeVar("T")


class CacheMiss(LookupError):
    """Raised by :meth:`Store.get_or_compute` inside :meth:`Store.probing` instead of computing a missing artifact."""


class CorruptArtifactWarning(UserWarning):
    """A cache file failed its checksum or could not be read; it was moved aside and will be recomputed."""


def default_cache_dir() -> Path:
    """``$ATLIB_CACHE`` if set, else ``~/.cache/atlib``."""
    return Path(os.environ.get("ATLIB_CACHE") or Path.home() / ".cache" / "atlib")


CODE_PACKAGE = "atlib"  # only this package's modules enter a code version; third-party code is pinned apart
_ROOT = Path(__file__).resolve().parent.parent  # the imported atlib folder: names resolve here, never hashed


def _module_file(name: str) -> Path | None:
    """Source file of the atlib module ``name`` (``x/y.py`` or ``x/y/__init__.py``); None if it is no module.

    Resolved against this checkout's ``atlib`` folder, whose path never enters a hash."""
    parts = name.split(".")
    if parts[0] != CODE_PACKAGE:
        return None
    folder = _ROOT.joinpath(*parts[1:])
    candidates = [folder / "__init__.py"] if len(parts) == 1 else [folder.parent / f"{parts[-1]}.py",
                                                                   folder / "__init__.py"]
    return next((p for p in candidates if p.is_file()), None)


def _imported_names(name: str, is_package: bool, tree: ast.AST) -> set[str]:
    """Every dotted name the module imports anywhere (function bodies too), relative imports made absolute.

    ``from a.b import c`` yields ``a.b`` and ``a.b.c``: the latter counts only where ``c`` is a module."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return found


@functools.lru_cache(maxsize=None)
def _module_info(name: str) -> tuple[str, tuple[str, ...]]:
    """``(sha256 of the source, atlib modules it imports or sits in)`` of one atlib module, read once per process.

    Line endings are normalised, so a CRLF checkout hashes as an LF one."""
    path = _module_file(name)
    if path is None:
        raise ValueError(f"{name!r} is not a module of the {CODE_PACKAGE} package")
    source = path.read_bytes().replace(b"\r\n", b"\n")
    names = _imported_names(name, path.name == "__init__.py", ast.parse(source))
    parts = name.split(".")
    names.update(".".join(parts[:i]) for i in range(1, len(parts)))  # its packages' __init__ run on import
    deps = sorted(n for n in names if n != name and _module_file(n) is not None)
    return hashlib.sha256(source).hexdigest(), tuple(deps)


def _target_module(target: Any) -> str:
    """The module name of a target: a module, a module's dotted name, or a function/class (``__module__``)."""
    if isinstance(target, ModuleType):
        return target.__name__
    if isinstance(target, str):
        return target
    name = getattr(target, "__module__", None)
    if not isinstance(name, str):
        raise TypeError(f"cannot tell which module defines {target!r}")
    return name


@functools.lru_cache(maxsize=None)
def _closure(roots: tuple[str, ...]) -> tuple[str, ...]:
    """The sorted transitive atlib imports of the modules ``roots``, these included (memoised per root set)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_module_info(name)[1])
    return tuple(sorted(seen))


def import_closure(*targets: Any) -> tuple[str, ...]:
    """Sorted names of every atlib module that the targets' defining modules import, transitively (themselves too).

    Read from the source with :mod:`ast`, not from ``sys.modules``: what a module imports inside a function
    counts although it may not have run yet."""
    if not targets:
        raise ValueError("import_closure needs at least one function or module")
    return _closure(tuple(sorted({_target_module(t) for t in targets})))


def code_version_of(*targets: Any) -> str:
    """Short hash of the source of every module in :func:`import_closure` of ``targets``: the code version of
    an artifact that these functions/modules produce. Names and contents only, sorted: the same in every
    process and checkout; any edit to a module they (transitively) import changes it."""
    h = hashlib.sha256()
    for name in import_closure(*targets):
        h.update(f"{name}\0{_module_info(name)[0]}\n".encode())
    return h.hexdigest()[:12]


def package_version() -> str:
    """Short hash of every module of the atlib package (names and sources): any edit anywhere changes it."""
    names = sorted(".".join((CODE_PACKAGE, *p.relative_to(_ROOT).with_suffix("").parts)).removesuffix(".__init__")
                   for p in _ROOT.rglob("*.py"))
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{_module_info(name)[0]}\n".encode())
    return h.hexdigest()[:12]


def _canonical(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _canonical(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return f"float:{obj!r}"  # exact (0.1 != 0.10000001) and never equal to the string "0.1"
    return obj


def artifact_key(kind: str, config: Any, code: str, data_fingerprint: str) -> str:
    """Deterministic key: ``<kind>-<sha256 of the canonical JSON of everything that determines it>``."""
    blob = json.dumps({"kind": kind, "config": _canonical(config), "code": code, "data": data_fingerprint},
                      sort_keys=True, ensure_ascii=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


class Store:
    """A folder of checksummed artifacts."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # probing and recording are per thread: planners share one store

    @contextlib.contextmanager
    def probing(self) -> Iterator[None]:
        """Within this block (this thread) a missing artifact raises :class:`CacheMiss` instead of being computed."""
        before, self._local.probing = getattr(self._local, "probing", False), True
        try:
            yield
        finally:
            self._local.probing = before

    @contextlib.contextmanager
    def recording(self, reads: list[str]) -> Iterator[None]:
        """Within this block (this thread) the key of every artifact found by :meth:`load` is appended to ``reads``."""
        before, self._local.reads = getattr(self._local, "reads", None), reads
        try:
            yield
        finally:
            self._local.reads = before

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def save(self, key: str, obj: Any, meta: Mapping[str, Any] | None = None, seconds: float | None = None) -> Path:
        """Atomically write ``obj`` (tensors, dicts, lists, numbers, strings) under ``key``; ``seconds``, what it cost
        to compute, goes in a header line inside the checksummed payload (:func:`costs` reads it back on load).

        Under ``torchrun`` only rank 0 writes: every rank computed the same artifact (DDP keeps the
        replicas equal), so one copy is written, once, instead of N racing ones."""
        if rank_world()[0] != 0:
            return self.path(key)
        buf = io.BytesIO()
        if seconds is not None:
            buf.write(b"#" + json.dumps({"seconds": round(float(seconds), 3)}).encode() + b"\n")
        torch.save(obj, buf)
        payload = buf.getvalue()
        _record_cost(key, seconds)
        blob = MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
        atomic_write(self.path(key), blob)
        if meta is not None:
            atomic_write(self.root / f"{key}.json", json.dumps(_canonical(meta), indent=1).encode())
        return self.path(key)

    def load(self, key: str) -> Any | None:
        """The artifact, or None if absent; a corrupt file is moved aside with a warning."""
        p = self.path(key)
        if not p.exists():
            return None
        try:
            blob = p.read_bytes()
            if not blob.startswith(MAGIC):
                raise ValueError("missing header")
            digest, payload = blob[len(MAGIC):len(MAGIC) + 64], blob[len(MAGIC) + 65:]
            if hashlib.sha256(payload).hexdigest().encode() != digest:
                raise ValueError("checksum mismatch (truncated or modified)")
            seconds = None
            if payload.startswith(b"#{"):  # the cost header (artifacts written without one have none)
                header, payload = payload.split(b"\n", 1)
                seconds = json.loads(header[1:])["seconds"]
            found = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as e:  # noqa: BLE001 - anything unreadable is corrupt
            aside = p.with_suffix(".corrupt")
            os.replace(p, aside)
            warnings.warn(f"cache file {p} is corrupt ({e}); moved to {aside} and recomputing",
                          CorruptArtifactWarning, stacklevel=2)
            return None
        if (reads := getattr(self._local, "reads", None)) is not None:
            reads.append(key)
        _record_cost(key, seconds)
        return found

    def get_or_compute(self, key: str, compute: Callable[[], T], meta: Mapping[str, Any] | None = None) -> tuple[T, bool]:
        """(artifact, hit): load ``key`` or compute, save and return it (``None`` is not a cacheable value)."""
        found = self.load(key)
        if found is not None:
            return found, True
        if getattr(self._local, "probing", False):
            raise CacheMiss(key)
        t0 = time.perf_counter()
        obj = compute()
        self.save(key, obj, meta, seconds=time.perf_counter() - t0)
        return obj, False


# ---------------------------------------------------------------- what the artifacts used here cost to compute

_COSTS: dict[str, float | None] = {}  # key -> recorded compute seconds (None: not recorded), since reset_costs()
_COSTS_LOCK = threading.Lock()


def _record_cost(key: str, seconds: float | None) -> None:
    with _COSTS_LOCK:
        _COSTS[key] = seconds


def touched() -> list[str]:
    """The keys of every artifact loaded or computed in this process since :func:`reset_costs`."""
    with _COSTS_LOCK:
        return list(_COSTS)


def reset_costs() -> None:
    """Forget the artifacts loaded or computed so far in this process (a chapter starts: :func:`costs` is its own)."""
    with _COSTS_LOCK:
        _COSTS.clear()


def costs() -> dict[str, Any]:
    """What the artifacts loaded or computed in this process since :func:`reset_costs` cost to compute, as recorded
    in them when they were computed (each job's own seconds: one thread, or one GPU): their number, the sum of the
    recorded seconds and how many carry no record (written before records were kept)."""
    with _COSTS_LOCK:
        known = [v for v in _COSTS.values() if v is not None]
        return {"artifacts": len(_COSTS), "seconds": round(sum(known), 1), "unrecorded": len(_COSTS) - len(known)}


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then ``os.replace``: a kill never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- identities of tensors and models

def model_hash(model: torch.nn.Module) -> str:
    """Hash of the model's structure (its repr) and every tensor of its state dict."""
    h = hashlib.sha256(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def tensor_hash(*ts: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in ts:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]
