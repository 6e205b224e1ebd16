"""The worker side of :mod:`atlib.training.executor`: one cached job run on a Dask worker.

:func:`work` runs the job in a private scratch store (:class:`FetchingStore`, a temp folder in the worker's Dask
directory) seeded with the artifacts the client shipped; an artifact the job looks up that the store lacks is
asked of the client (a request on the client's Dask queue, the answer a future of its files in a Dask
Variable). The worker must run the client's atlib code (else :class:`CodeMismatchError`) and its job's context
must have the client's data fingerprint (else :class:`DataMismatchError`); both errors name the two values and
the worker's host. What the job wrote comes back as bytes with their SHA-256; the worker writes nothing else
anywhere.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import socket
import tempfile
import traceback
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from atlib.core.store import CODE_PACKAGE, Store, atomic_write, code_version_of

Files = dict[str, tuple[bytes, str]]  # file name in a store -> (bytes, sha256 hex)
FETCH_TIMEOUT_S = 600  # a worker waits this long for an artifact from the client


class DataMismatchError(RuntimeError):
    """A Dask worker loaded other data than the client (another data fingerprint)."""


class CodeMismatchError(RuntimeError):
    """A Dask worker runs other atlib code than the client (another code version of the job's function)."""


def code_version(fn: Callable[..., Any]) -> str | None:
    """The code version of the job function ``fn`` (what its artifacts' keys hash); None for one outside atlib."""
    module = getattr(fn, "__module__", None) or ""
    return code_version_of(fn) if module.split(".")[0] == CODE_PACKAGE else None


def digest(blob: bytes) -> str:
    """SHA-256 of ``blob``, hex: what travels with every artifact file."""
    return hashlib.sha256(blob).hexdigest()


def _scratch_parent() -> str | None:
    """The Dask worker's own directory (purged by Dask when a dead worker left a scratch store), else the default."""
    try:
        from distributed import get_worker

        return get_worker().local_directory
    except (ImportError, ValueError):
        return None


@functools.cache
def _undo_malloc_trim() -> None:
    """Give glibc's malloc back its large-allocation behaviour in a Dask worker process (once per process).

    A Dask nanny starts its worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``),
    which also switches off glibc's adaptive mmap threshold: every tensor above 128 KiB is then mmap'ed and
    unmapped anew: a PGD-AT epoch of the fashion CNN on one thread took about 2.4x as long. The thresholds that
    glibc's adaptation tends to (mmap above 32 MiB, trim above 64 MiB) are set here instead."""
    if not os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


def _put(root: Path, files: Files, where: str) -> None:
    """Write an artifact's files into the scratch store ``root`` (meta first), every checksum checked."""
    for name in sorted(files, key=lambda n: n.endswith(".pt")):
        blob, sha = files[name]
        if digest(blob) != sha:
            raise OSError(f"artifact {name} arrived damaged on {where} (checksum mismatch)")
        atomic_write(root / name, blob)


class FetchingStore(Store):
    """A worker's scratch store: an artifact it lacks is asked of the client (``ask(key)``: its files, or none)."""

    def __init__(self, root: str | os.PathLike, ask: Callable[[str], Files], host: str):
        super().__init__(root)
        self.ask, self.host, self.received = ask, host, set()

    def receive(self, files: Files) -> None:
        _put(self.root, files, f"worker {self.host}")
        self.received.update(files)

    def load(self, key: str) -> Any | None:
        if not self.path(key).exists():
            self.receive(self.ask(key))
        return super().load(key)


def _asker(queue: str) -> Callable[[str], Files]:
    """``ask(key)`` on a worker: a request on the client's queue, the answer (a future of the files) in a Variable."""
    from distributed import Queue, Variable

    def ask(key: str) -> Files:
        reply, requests = Variable(f"{queue}-{uuid.uuid4().hex}"), Queue(queue)
        requests.put((key, reply.name))
        requests.close()  # this handle only; the client's keeps the queue
        try:
            got = reply.get(timeout=FETCH_TIMEOUT_S)
            return got.result() if not isinstance(got, str) else {}
        finally:
            reply.delete()
    return ask


def _written(store: FetchingStore) -> Files:
    """The artifact files (``.pt``, ``.json``) the job wrote into its scratch store, with checksums."""
    out = {}
    for p in sorted(store.root.iterdir()):
        if p.is_file() and p.suffix in (".pt", ".json") and not p.name.startswith(".") and p.name not in store.received:
            blob = p.read_bytes()
            out[p.name] = (blob, digest(blob))
    return out


def work(factory: Callable[..., Any], factory_args: tuple, fn: Callable[..., Any], args: tuple,
         shipped: Sequence[Files], fingerprint: str, code: str | None, queue: str) -> Files:
    """Run one job on a Dask worker in a private scratch store; returns the files it wrote (see module doc).

    ``factory(store, *factory_args)`` builds the job's context (with ``.data.fingerprint``) on ``store``;
    ``code``: the client's :func:`code_version` of ``fn`` (None: not checked)."""
    host = socket.gethostname()
    if code is not None and (mine := code_version(fn)) != code:
        raise CodeMismatchError(
            f"the Dask worker on host {host} runs other atlib code than the client: code version {mine} of "
            f"{fn.__module__}.{fn.__name__} on the worker, {code} on the client. Every worker needs the client's "
            f"commit of atlib and its requirements (README, 'Several machines')")
    torch.set_num_threads(1)  # one thread per job, as in the process pool: the floats do not depend on the cluster
    os.environ["ATLIB_PROGRESS"] = "0"  # the client shows one bar over the jobs
    _undo_malloc_trim()
    try:
        with tempfile.TemporaryDirectory(prefix="atlib-job-", dir=_scratch_parent()) as tmp:
            store = FetchingStore(tmp, _asker(queue), host)
            for files in shipped:
                store.receive(files)
            ctx = factory(store, *factory_args)
            if ctx.data.fingerprint != fingerprint:
                raise DataMismatchError(
                    f"the Dask worker on host {host} loaded other data than the client: data fingerprint "
                    f"{ctx.data.fingerprint} on the worker (loaded from {getattr(ctx.data, 'source', '?')}), "
                    f"{fingerprint} on the client. Every worker needs the same dataset files under its data root")
            fn(ctx, *args)
            return _written(store)
    except Exception as e:
        e.add_note(f"on Dask worker {host}; the worker's traceback:\n{traceback.format_exc()}")
        raise
