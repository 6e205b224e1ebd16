"""Cache-filling jobs fanned out over Dask distributed: a local cluster of processes or an existing scheduler.

The same jobs as :mod:`atlib.training.pool` (``(fn, args)``, a module-level ``fn(ctx, *args)`` that fills the
store), run by Dask workers that need **no shared filesystem**:

* each job runs in a private scratch store (a temp folder in the worker's own Dask directory), seeded with
  the artifacts its probe read on the client (``pool.probe`` records them: a student's job gets its teacher);
  an artifact the job looks up later that the client has (one read only after the probe's first miss) is
  fetched from the client on demand (a Dask queue that a client thread serves), never recomputed;
* the worker sends back the bytes of every artifact it wrote (``<key>.pt`` and ``<key>.json``), each with its
  SHA-256; the client checks every checksum and only then writes the files into its own store with
  :func:`atlib.core.store.atomic_write`, one writer. A key the client already has is kept, never doubled; a
  job that fails, dies or is duplicated can leave no half-written artifact behind;
* every worker loads the data from its own data root; a job refuses to run when the worker's data
  fingerprint is not the client's (:class:`DataMismatchError` names both and the worker's host), or when the
  code version of its function is not (:class:`CodeMismatchError`: its artifacts would be keyed otherwise);
* a job on CUDA asks for the Dask resource ``GPU=1`` (one job per GPU worker);
* a job that raises is reported, with the worker's host and traceback, after the others finished (their
  artifacts kept); a job whose worker died is started once more elsewhere (``allowed_failures=1`` on the
  scheduler of ``dask-local:N``; an external scheduler uses its own setting), then fails with an error naming it.

This module is the client's side; what runs on a worker is :mod:`atlib.training.dask_worker`.
Executors (``--executor``, ``$ATLIB_EXECUTOR``): ``local`` (the process pool, the default),
``dask-local:N`` (a ``LocalCluster`` of N single-thread worker processes) and ``tcp://HOST:PORT``.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from atlib.core.store import Store, atomic_write
from atlib.training.dask_worker import (CodeMismatchError, DataMismatchError, Files,  # noqa: F401 (re-exported)
                                        code_version, digest, work)

Job = tuple[Callable[..., Any], tuple]  # as atlib.training.pool.Job
LOCAL = "local"
_LOCAL_CLUSTER = re.compile(r"dask-local:(\d+)")
_ADDRESS = re.compile(r"tcp://[^\s:/]+:(\d{1,5})")
CONNECT_TIMEOUT_S = 20


class ExecutorError(ValueError):
    """A bad ``--executor`` / ``$ATLIB_EXECUTOR`` value, or a scheduler that cannot be reached."""


def parse_executor(value: Any, what: str = "--executor") -> str:
    """``value`` checked as an executor: ``local``, ``dask-local:N`` (N >= 1) or ``tcp://HOST:PORT``."""
    text = str(value).strip() if value is not None else ""
    m = _LOCAL_CLUSTER.fullmatch(text)
    if text == LOCAL or (m and int(m.group(1)) >= 1) or (
            (a := _ADDRESS.fullmatch(text)) and 0 < int(a.group(1)) < 65536):
        return text
    raise ExecutorError(f"{what}={value!r}: need 'local' (worker processes on this machine), 'dask-local:N' "
                        f"(a Dask cluster of N single-thread processes here, N >= 1) or 'tcp://HOST:PORT' "
                        f"(the address of a running Dask scheduler)")


def default_executor() -> str:
    """``$ATLIB_EXECUTOR`` if set (checked), else ``local``."""
    raw = os.environ.get("ATLIB_EXECUTOR")
    return parse_executor(raw, "ATLIB_EXECUTOR") if raw else LOCAL


def check_reachable(spec: str) -> None:
    """For ``tcp://`` executors: connect to the scheduler now (ExecutorError if none answers), then disconnect."""
    if spec.startswith("tcp://"):
        _client(spec)
        shutdown()


# ------------------------------------------------------------------------------------------ the client side
_CLIENT: tuple[str, Any, Any] | None = None  # (spec, distributed.Client, LocalCluster or None)


def _client(spec: str) -> Any:
    """The Dask client for ``spec``, started once per process (a local cluster's workers start once too)."""
    global _CLIENT
    if _CLIENT is not None and _CLIENT[0] == spec:
        return _CLIENT[1]
    shutdown()
    from distributed import Client, LocalCluster

    m = _LOCAL_CLUSTER.fullmatch(spec)
    if m:
        # GPU=1 per worker: a CUDA job (resources={"GPU": 1}) runs here too, one per worker process.
        # allowed_failures=1: a job whose worker died is started once more, then reported (KilledWorker).
        cluster = LocalCluster(n_workers=int(m.group(1)), threads_per_worker=1, processes=True,
                               dashboard_address=None, resources={"GPU": 1}, silence_logs=logging.ERROR,
                               scheduler_kwargs={"allowed_failures": 1})
        _CLIENT = (spec, Client(cluster), cluster)
    else:
        _knock(spec)
        try:
            _CLIENT = (spec, Client(spec, timeout=CONNECT_TIMEOUT_S), None)
        except (OSError, TimeoutError) as e:
            raise _unreachable(spec, f"no Dask scheduler answered within {CONNECT_TIMEOUT_S} s ({e})") from None
    return _CLIENT[1]


def _unreachable(spec: str, why: str) -> ExecutorError:
    return ExecutorError(f"--executor {spec}: {why}. Start one with `dask scheduler` and workers with `dask worker "
                         f"{spec} --nthreads 1` (see README, 'Several machines')")


def _knock(spec: str) -> None:
    """Before Dask connects: open a plain TCP connection to the scheduler's address and wait for the first bytes of
    the handshake that a Dask scheduler sends as soon as it accepts, then close it (the scheduler logs that one
    connection as closed before its handshake). A refused connection or a host that does not resolve fails at
    once (Dask's own connect would retry them for ``CONNECT_TIMEOUT_S``), silence after ``CONNECT_TIMEOUT_S``
    (an address that accepts but never speaks, e.g. an HTTP port, would leave Dask's client waiting for ever)."""
    host, port = spec.removeprefix("tcp://").rsplit(":", 1)
    silent, t0 = f"no Dask scheduler answered within {CONNECT_TIMEOUT_S} s", time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(max(0.1, CONNECT_TIMEOUT_S - (time.monotonic() - t0)))  # one timeout for both waits
            if not conn.recv(1):
                raise _unreachable(spec, "the connection was closed without a Dask handshake")
    except ConnectionRefusedError:
        raise _unreachable(spec, f"connection refused: nothing listens on {host}:{port}") from None
    except socket.gaierror as e:
        raise _unreachable(spec, f"unknown host {host!r} ({e.strerror})") from None
    except TimeoutError:
        raise _unreachable(spec, silent) from None
    except OSError as e:  # e.g. no route to the host, a reset connection
        raise _unreachable(spec, f"cannot connect ({e.strerror or e})") from None


def shutdown() -> None:
    """Close the Dask client (and the local cluster's worker processes)."""
    global _CLIENT
    if _CLIENT is not None:
        _, client, cluster = _CLIENT
        _CLIENT = None
        client.close()
        if cluster is not None:
            cluster.close()


atexit.register(shutdown)


def job_name(fn: Callable[..., Any], args: tuple) -> str:
    """``model_run(linf-0.1, 1)``: the job in words (a setting's ``label`` where it has one)."""
    shown = [a.label if isinstance(getattr(a, "label", None), str) else repr(a) for a in args]
    return f"{fn.__name__}({', '.join(shown)})"[:200]


def store_files(store: Store, files: Files, where: str) -> list[str]:
    """Write a job's returned artifacts into ``store`` (every checksum checked first); returns the keys written.

    A key already in the store is left alone (a duplicated job, or two jobs making the same artifact)."""
    for name, (blob, sha) in files.items():
        if digest(blob) != sha:
            raise OSError(f"artifact {name} from {where} arrived damaged (checksum mismatch); nothing of it written")
    written = []
    for name in sorted(n for n in files if n.endswith(".pt")):
        key = name[:-3]
        if store.path(key).exists():
            continue
        if f"{key}.json" in files:  # the meta first: an artifact present always has its meta
            atomic_write(store.root / f"{key}.json", files[f"{key}.json"][0])
        atomic_write(store.path(key), files[name][0])
        written.append(key)
    return written


def artifact_files(store: Store, key: str) -> Files:
    """The files of the stored artifact ``key`` (``.pt`` and, where there is one, ``.json``), or none."""
    out = {}
    for p in (store.path(key), store.root / f"{key}.json"):
        if p.exists():
            blob = p.read_bytes()
            out[p.name] = (blob, digest(blob))
    return out if store.path(key).name in out else {}


class ArtifactServer:
    """The client's side of the workers' artifact requests while jobs run: each stored artifact a job reads is
    sent to the cluster once (:meth:`future`, a Dask future of its files), up front for the keys of the probes,
    on request (a Dask queue served by a thread) for any other."""

    def __init__(self, client: Any, store: Store):
        from distributed import Queue

        self.client, self.store, self.futures = client, store, {}
        self.queue = Queue(f"atlib-artifacts-{uuid.uuid4().hex}", client=client)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="atlib-artifact-server", daemon=True)

    def future(self, key: str) -> Any | None:
        """A Dask future of the stored artifact ``key``'s files (scattered once), or None if the store lacks it."""
        with self._lock:
            if key not in self.futures:
                files = artifact_files(self.store, key)
                if not files:
                    return None  # not stored (yet): never remembered as absent
                self.futures[key] = self.client.scatter([files], hash=False)[0]  # one future for the files
            return self.futures[key]

    def _serve(self) -> None:
        """Answer the workers' requests (``(key, reply variable)``) until ``None`` arrives."""
        from distributed import Variable

        log = logging.getLogger(__name__)
        while True:
            try:
                request = self.queue.get()  # blocks; __exit__ sends None
            except Exception:  # noqa: BLE001 - the client is closing
                return
            if request is None:
                return
            key, reply = request
            try:
                found = self.future(key)
            except Exception:  # noqa: BLE001 - unreadable here: the worker computes it
                log.exception("atlib: could not send artifact %s to a Dask worker", key)
                found = None
            try:
                Variable(reply, client=self.client).set(found if found is not None else "absent")
            except Exception:  # noqa: BLE001 - that worker times out; the others are served
                log.exception("atlib: could not answer a Dask worker's request for %s", key)

    def __enter__(self) -> ArtifactServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)
        self.queue.close()
        self.futures.clear()  # the shipped artifacts leave the cluster's memory


def _check_gpu_workers(client: Any) -> None:
    """ExecutorError if the cluster has workers and none offers the ``GPU`` resource (CUDA jobs would wait forever)."""
    workers = client.scheduler_info().get("workers", {})
    if workers and not any(w.get("resources", {}).get("GPU") for w in workers.values()):
        raise ExecutorError("the jobs need a GPU, but no Dask worker offers one: start each GPU worker with "
                            "`dask worker tcp://HOST:PORT --resources GPU=1 --nthreads 1`")


def run(store: Store, todo: Sequence[tuple[Job, Sequence[str]]], spec: str, factory: Callable[..., Any],
        factory_args: tuple, fingerprint: str, gpu: bool = False, desc: str = "jobs", progress: bool = True) -> None:
    """Run every job of ``todo`` (``(job, keys its probe read)``, from :func:`atlib.training.pool.probe`) on the
    Dask executor ``spec`` and store what they computed; failures are raised after the others finished."""
    if not todo:
        return
    from distributed import as_completed

    client = _client(spec)
    if gpu:
        _check_gpu_workers(client)
    with ArtifactServer(client, store) as server:
        names, futures = {}, []
        for i, ((fn, args), reads) in enumerate(todo):
            shipped = [f for f in map(server.future, reads) if f is not None]
            f = client.submit(work, factory, factory_args, fn, args, shipped, fingerprint, code_version(fn),
                              server.queue.name,
                              key=f"atlib-{fn.__name__}-{uuid.uuid4().hex}", pure=False, priority=len(todo) - i,
                              resources={"GPU": 1} if gpu else None)
            names[f.key] = job_name(fn, args)
            futures.append(f)
        try:
            failed = _collect(store, as_completed(futures), names, f"{desc} (Dask {spec})", len(futures), progress)
        except BaseException:  # an interrupt: drop what has not run, keep what was stored
            client.cancel(futures)
            raise
    if failed:
        _raise(failed)


def _collect(store: Store, done: Any, names: dict[str, str], desc: str, total: int,
             progress: bool) -> list[tuple[str, BaseException]]:
    """Store every finished job's artifacts as it completes; returns the failures (job name, exception)."""
    failed = []
    for f in tqdm(done, total=total, desc=desc, disable=not progress):
        name = names[f.key]
        try:
            if f.status == "error":
                failed.append((name, f.exception()))
            else:
                store_files(store, f.result(), f"job {name}")
        except Exception as e:  # noqa: BLE001 - a damaged transfer is this job's failure, not the others'
            failed.append((name, e))
        f.release()
    return failed


def _raise(failed: list[tuple[str, BaseException]]) -> None:
    from distributed import KilledWorker

    name, exc = failed[0]
    others = f" ({len(failed) - 1} other job(s) failed too)" if len(failed) > 1 else ""
    if isinstance(exc, KilledWorker):
        raise RuntimeError(f"job {name}: its Dask worker died while running it, and again when it was started "
                           f"elsewhere (killed, or out of memory?){others}. What finished is cached: re-run, or "
                           f"use --executor local") from exc
    exc.add_note(f"in job {name}{others}; the other jobs finished and their artifacts are cached")
    raise exc
