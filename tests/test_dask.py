"""Cached jobs on Dask distributed (``--executor dask-local:N``): the smoke profile's compute equal to one thread
in-process and a book that then trains nothing, artifacts shipped back and written by the client alone, dead
workers, workers with other data or code, warm stores, bad executor values."""
import dataclasses
import math
import os
import socket
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from atlib.book import cli
from atlib.book.compute import compute_all
from atlib.book.runner import run_book
from atlib.core.data import load_dataset
from atlib.core.store import Store, code_version_of
from atlib.studies import context as cx
from atlib.studies.profiles import get_profile
from atlib.studies.shrinkage import runs as ex
from atlib.training import executor as engine
from atlib.training import pool

TINY = dataclasses.replace(get_profile("smoke"), epochs=3, seeds=(0, 1), linf_sweep=(0.0, 0.1))
DASK = "dask-local:2"
WALL_CLOCK = frozenset({"seconds", "train_seconds"})  # wall times: the only fields two equal runs may differ in


@pytest.fixture(scope="module", autouse=True)
def _one_cluster():
    yield  # the tests share one local cluster (started by the first fill); closed at the end
    engine.shutdown()


@pytest.fixture(autouse=True)
def _no_executor_from_env(monkeypatch):
    monkeypatch.delenv("ATLIB_EXECUTOR", raising=False)


def files(store: Store) -> list[str]:
    return sorted(p.name for p in store.root.iterdir())


def differences(a, b, where: str = "") -> list[str]:
    """Where two loaded artifacts differ (tensors bit for bit, floats exactly), wall-clock fields aside."""
    if isinstance(a, torch.Tensor):
        bits = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        same = isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape) and torch.equal(*bits)
        return [] if same else [where]
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return [f"{where} (keys)"]
        return [d for k in a if k not in WALL_CLOCK for d in differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return [f"{where} (length)"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if type(a) is type(b) and a == b else [f"{where}: {a!r} != {b!r}"]


def tiny_mnist(folder: Path, altered: bool = False) -> Path:
    """A 40-image MNIST in idx files (30 train, 10 test); ``altered``: one pixel differs."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), (np.arange(40) % 10).astype(np.uint8)
    x[0, 0, 0] ^= int(altered)
    folder.mkdir(parents=True)
    for prefix, part in (("train", slice(0, 30)), ("t10k", slice(30, 40))):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 10 if prefix == "t10k" else 30,
                                                                         28, 28) + x[part].tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y[part])) + y[part].tobytes())
    return folder


# ------------------------------------------------------------------------------------------ jobs (module-level)
def record(ctx, tag: str) -> None:
    ctx.store.get_or_compute(f"rec-{tag}", lambda: {"threads": torch.get_num_threads(), "pid": os.getpid()},
                             meta={"tag": tag})


def reader(ctx, tag: str) -> None:
    """A job that reads an artifact the client already has (as a student reads its teacher)."""
    base, hit = ctx.store.get_or_compute("base", lambda: {"by": "worker"})
    ctx.store.get_or_compute(f"reader-{tag}", lambda: {"base": base["by"], "hit": hit})


def late_reader(ctx, tag: str) -> None:
    """Reads an artifact the client has only while computing its own (after the probe's first miss)."""
    ctx.store.get_or_compute(f"late-{tag}",
                             lambda: {"base": ctx.store.get_or_compute("base", lambda: {"by": "worker"})})


def die_once(ctx, tag: str, marker: str) -> None:
    """Stores a first artifact, then (the first time only) its worker process dies before the second."""
    ctx.store.get_or_compute(f"first-{tag}", lambda: {"tag": tag})
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    ctx.store.get_or_compute(f"second-{tag}", lambda: {"tag": tag})


def always_die(ctx, tag: str) -> None:
    ctx.store.get_or_compute(f"first-{tag}", lambda: {"tag": tag})
    os._exit(1)


def _diverge(tag: str) -> None:
    raise FloatingPointError(f"job {tag} diverged")


def fail(ctx, tag: str) -> None:
    ctx.store.get_or_compute(f"fail-{tag}", lambda: _diverge(tag))


# ------------------------------------------------------------------------------------------ tests
def _count_submitted(monkeypatch) -> list:
    """Every job handed to :func:`engine.run` from now on is appended to the returned list."""
    submitted, run = [], engine.run

    def counting(store, todo, *args, **kwargs):
        submitted.extend(job for job, _ in todo)
        return run(store, todo, *args, **kwargs)
    monkeypatch.setattr(engine, "run", counting)
    return submitted


@pytest.mark.slow  # starts a Dask cluster, computes the smoke profile twice and executes the smoke book
def test_smoke_compute_on_dask_equals_one_thread_in_process_and_the_book_then_trains_nothing(tmp_path, monkeypatch):
    submitted = _count_submitted(monkeypatch)
    on_dask, in_process = Store(tmp_path / "dask"), Store(tmp_path / "serial")
    got = compute_all("smoke", str(on_dask.root), device="cpu", executor=DASK)
    kinds = Counter(fn.__name__ for fn, _ in submitted)  # every model and student was trained on the cluster
    assert kinds["model_run"] == got.model_runs > 0 and kinds["student_run"] + kinds["ceiling_run"] == got.students > 0
    names = files(on_dask)
    assert not [n for n in names if n.startswith(".") or not n.endswith((".pt", ".json"))]  # no temp file, no resume point

    assert torch.get_num_threads() == 1  # (tests/conftest.py) the reference: everything in-process on one thread
    compute_all("smoke", str(in_process.root), device="cpu", workers=1, executor="local")
    assert len(submitted) == sum(kinds.values())  # the local executor hands nothing to Dask
    assert names == [n for n in files(in_process) if n != "checkpoints"]
    for n in names:
        if n.startswith("receipt-"):  # the pass's own record (what it touched, how much was cached): not a result
            continue
        a, b = (on_dask.root / n).read_bytes(), (in_process.root / n).read_bytes()
        if a != b:  # the same artifact but for the wall times in its history
            assert n.endswith(".pt") and differences(on_dask.load(n[:-3]), in_process.load(n[:-3]), n) == []

    engine.shutdown()  # a warm store: a second compute through Dask submits no job and starts no cluster
    monkeypatch.setattr(engine, "_client", lambda spec: pytest.fail(f"a warm store started a Dask client ({spec})"))
    again = compute_all("smoke", str(on_dask.root), device="cpu", executor=DASK)
    assert len(submitted) == sum(kinds.values()) and (again.model_runs_cached, again.students_cached) == (
        again.model_runs, again.students)

    before = {p.name: p.stat().st_mtime_ns for p in on_dask.root.iterdir()}
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # the runner sets it for the kernel
    run_book("smoke", out=tmp_path / "book", cache_dir=str(on_dask.root), device="cpu", html=False)
    after = {p.name: p.stat().st_mtime_ns for p in on_dask.root.iterdir()}
    assert {n: after.get(n) for n in before} == before  # every artifact of compute loaded, none rewritten
    made = {n.rsplit("-", 1)[0] for n in names}
    # nothing of a kind that compute makes was made (chapter 01's models and checks and chapter 05's diagnosis
    # are the chapters' own: compute leaves them out)
    assert [n for n in after.keys() - before.keys() if n.rsplit("-", 1)[0] in made] == []


@pytest.mark.slow
def test_a_job_gets_the_client_artifacts_it_reads_and_runs_on_one_thread(tmp_path):
    ctx = cx.context(TINY, tmp_path, workers=1, executor=DASK)
    ctx.store.get_or_compute("base", lambda: {"by": "client"})
    assert pool.probe(ctx.store, ctx, [(reader, ("a",))]) == [((reader, ("a",)), ["base"])]
    assert pool.probe(ctx.store, ctx, [(late_reader, ("c",))]) == [((late_reader, ("c",)), [])]
    assert cx.fill(ctx, [(reader, ("a",)), (record, ("b",)), (late_reader, ("c",))], "jobs") == 3
    assert ctx.store.load("reader-a") == {"base": "client", "hit": True}  # shipped, not recomputed
    assert ctx.store.load("late-c") == {"base": ({"by": "client"}, True)}  # fetched on demand, not recomputed
    assert ctx.store.load("base") == {"by": "client"}  # and not written back
    rec = ctx.store.load("rec-b")
    assert rec["threads"] == 1 and rec["pid"] != os.getpid()
    assert (ctx.store.root / "rec-b.json").exists()  # the meta comes along
    assert cx.fill(ctx, [(reader, ("a",)), (record, ("b",)), (late_reader, ("c",))], "jobs") == 0


@pytest.mark.slow
def test_a_dead_worker_leaves_nothing_half_written_and_its_job_runs_again(tmp_path):
    ctx = cx.context(TINY, tmp_path / "store", workers=1, executor=DASK)
    marker = tmp_path / "died-once"
    assert cx.fill(ctx, [(die_once, ("x", str(marker)))], "jobs") == 1
    assert marker.exists()  # the first run died ...
    assert files(ctx.store) == ["first-x.pt", "second-x.pt"]  # ... the retry stored both, nothing else
    with pytest.raises(RuntimeError, match=r"job always_die\('y'\): its Dask worker died .* again"):
        cx.fill(ctx, [(always_die, ("y",))], "jobs")
    assert files(ctx.store) == ["first-x.pt", "second-x.pt"]  # what a dead job wrote stayed on its worker
    assert cx.fill(ctx, [(record, ("after",))], "jobs") == 1  # the cluster goes on


@pytest.mark.slow
def test_a_failing_job_is_reported_with_host_and_traceback_after_the_others(tmp_path):
    ctx = cx.context(TINY, tmp_path, workers=1, executor=DASK)
    with pytest.raises(FloatingPointError, match="job x diverged") as info:
        cx.fill(ctx, [(fail, ("x",)), (record, ("ok",))], "jobs")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"on Dask worker {socket.gethostname()}" in notes and "_diverge" in notes and "in job fail('x')" in notes
    assert ctx.store.load("rec-ok")["threads"] == 1 and ctx.store.load("fail-x") is None


@pytest.mark.slow
def test_a_worker_with_other_data_is_refused_naming_both_fingerprints_and_its_host(tmp_path, monkeypatch):
    profile = dataclasses.replace(TINY, dataset="mnist")
    monkeypatch.setenv("ATLIB_DATA", str(tiny_mnist(tmp_path / "client-data")))
    cx._load_data.cache_clear()  # memoised by (name, data_root=None, device): the root came from $ATLIB_DATA
    try:
        ctx = cx.context(profile, tmp_path / "store", executor=DASK)  # data_root None: each worker uses its own
        engine.shutdown()  # a fresh cluster, whose worker processes start with this environment:
        monkeypatch.setenv("ATLIB_DATA", str(tiny_mnist(tmp_path / "worker-data", altered=True)))
        with pytest.raises(engine.DataMismatchError) as info:
            cx.fill(ctx, [(record, ("a",))], "jobs")
    finally:
        engine.shutdown()
        cx._load_data.cache_clear()
    theirs = load_dataset("mnist", tmp_path / "worker-data").fingerprint
    assert theirs != ctx.data.fingerprint
    msg = str(info.value)
    assert f"{theirs} on the worker" in msg and f"{ctx.data.fingerprint} on the client" in msg
    assert f"host {socket.gethostname()}" in msg
    assert files(ctx.store) == []  # the job never ran


def test_a_worker_with_other_code_is_refused(tmp_path):
    spec = TINY.model_specs()[0]
    assert engine.code_version(ex.model_run) == code_version_of(ex.model_run) and engine.code_version(record) is None
    with pytest.raises(engine.CodeMismatchError) as info:  # work() as a worker runs it, before anything is loaded
        engine.work(cx.worker_context, (TINY, None, "cpu"), ex.model_run, (spec, 0), [], "any-data", "0ther-code",
                    "no-queue")
    msg = str(info.value)
    assert f"{code_version_of(ex.model_run)} of atlib.studies.shrinkage.runs.model_run on the worker" in msg
    assert "0ther-code on the client" in msg and f"host {socket.gethostname()}" in msg


def test_store_files_checks_every_checksum_and_never_doubles(tmp_path):
    store = Store(tmp_path / "client")
    store.save("k", {"v": 1}, meta={"m": 1})
    other = Store(tmp_path / "worker")
    other.save("k", {"v": 2})
    other.save("j", {"v": 3}, meta={"m": 3})
    theirs = {p.name: (p.read_bytes(), engine.digest(p.read_bytes())) for p in other.root.iterdir()}
    damaged = dict(theirs, **{"j.pt": (theirs["j.pt"][0][:-1], theirs["j.pt"][1])})
    with pytest.raises(OSError, match="j.pt .*checksum mismatch"):
        engine.store_files(store, damaged, "test")
    assert store.load("j") is None
    assert engine.store_files(store, theirs, "test") == ["j"]
    assert store.load("k") == {"v": 1} and store.load("j") == {"v": 3}  # k kept: never doubled
    assert files(store) == ["j.json", "j.pt", "k.json", "k.pt"]


def test_parse_executor_and_bad_values(monkeypatch, capsys):
    for good in ("local", "dask-local:1", "dask-local:12", "tcp://10.0.0.5:8786", "tcp://sched.example:8786"):
        assert engine.parse_executor(good) == good
    for bad in ("", "dask", "dask-local:0", "dask-local:x", "tcp://host", "tcp://host:0", "http://h:1", None):
        with pytest.raises(engine.ExecutorError, match=r"--executor=.*dask-local:N"):
            engine.parse_executor(bad)
    assert engine.default_executor() == "local"
    monkeypatch.setenv("ATLIB_EXECUTOR", "dask-local:3")
    assert engine.default_executor() == "dask-local:3" and cx.context("smoke", None).executor == "dask-local:3"
    monkeypatch.setenv("ATLIB_EXECUTOR", "many")
    with pytest.raises(ValueError, match="ATLIB_EXECUTOR"):
        cx.context("smoke", None)
    for cmd in ("compute", "book"):
        with pytest.raises(SystemExit) as e:
            cli.main([cmd, "--profile", "smoke", "--executor", "dask-local:0"])
        assert e.value.code == 2 and "--executor" in capsys.readouterr().err


def _closed_port() -> int:
    """A loopback port that nothing listens on (bound, then closed: a connection to it is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_bad_input_before_anything_is_written(tmp_path, capsys):
    """A refused connection fails at once (the connect timeout, 20 s, is for silence), for book and compute."""
    port = _closed_port()
    out = tmp_path / "book"
    for argv in (["book", "--profile", "smoke", "--out", str(out)], ["compute", "--profile", "smoke", "--cache-dir",
                                                                      str(tmp_path / "c")]):
        t0 = time.perf_counter()
        assert cli.main([*argv, "--executor", f"tcp://127.0.0.1:{port}"]) == 2
        assert time.perf_counter() - t0 < 5, "a refused connection is not waited out"
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: --executor tcp://127.0.0.1:{port}: connection refused" in err
        assert "dask scheduler" in err
    assert not out.exists() and not (tmp_path / "c").exists() and engine._CLIENT is None
    assert engine.CONNECT_TIMEOUT_S == 20


def test_a_silent_scheduler_address_still_gets_the_timeout_and_a_real_one_connects(monkeypatch):
    """Something accepts the connection but never speaks Dask (an HTTP port, say): the client waits
    CONNECT_TIMEOUT_S, then says so (Dask's own client waited for ever). A real scheduler still connects."""
    from distributed import LocalCluster

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        t0 = time.perf_counter()
        with pytest.raises(engine.ExecutorError, match="no Dask scheduler answered within 2 s"):
            engine.check_reachable(f"tcp://127.0.0.1:{s.getsockname()[1]}")
        assert 2 <= time.perf_counter() - t0 < 10
    assert engine._CLIENT is None
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None) as cluster:
        engine.check_reachable(cluster.scheduler_address)  # connects, then disconnects
    assert engine._CLIENT is None
