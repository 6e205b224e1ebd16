import os

os.environ.setdefault("ATLIB_NO_DOWNLOAD", "1")  # no test may ever touch the network
# Every process a test starts (kernels, workers) runs torch on one thread: with the suite on 2 xdist processes a
# 2-thread kernel would spin-wait on a core that the other process keeps busy.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tiny models gain nothing from intra-op threads, and with a busy second core OpenMP spin-waits make
# them 100x slower: one thread keeps the suite fast and its timing stable.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs the smoke book, directly or through another fixture, is ``slow``: none can forget it;
    and all of them run in one xdist worker (``--dist loadgroup``), so the session builds the book once."""
    for item in items:
        if "smoke_book" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("smoke_book"))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test sees the user's data folder or cache, and none can download."""
    monkeypatch.delenv("ATLIB_DATA", raising=False)
    monkeypatch.delenv("ATLIB_WORKERS", raising=False)
    monkeypatch.setenv("ATLIB_NO_DOWNLOAD", "1")
    monkeypatch.setenv("ATLIB_CACHE", str(tmp_path / "cache-from-env"))
    monkeypatch.setenv("ATLIB_DOWNLOADS", str(tmp_path / "downloads"))
    monkeypatch.setenv("ATLIB_PROGRESS", "0")


@pytest.fixture(scope="session")
def digits():
    from atlib.core.data import load_digits_data

    return load_digits_data()


@pytest.fixture(scope="session")
def std_digits_mlp(digits):
    """A standard-trained MLP (width 64) on digits: ~97% clean test accuracy, trained in < 2 s."""
    from atlib.core.models import build_model
    from atlib.core.runtime import seed_everything
    from atlib.training.train import TrainConfig, train

    seed_everything(0)
    model = build_model("mlp", digits.shape, 10, digits.mean, digits.std, 64)
    train(model, digits.train_x, digits.train_y, TrainConfig(15, 64, 0.05), seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The `smoke` book, executed and rendered once per test session into a temp dir; later tests share it. Its
    cache is filled first by ``compute`` (every chapter's jobs through one shared queue of 2 workers), so the book's
    chapters only load (tests/test_onepass.py checks that they computed nothing); chapters that compute in their own
    kernel are exercised by the collapsed and derived-profile books (tests/test_book.py, tests/test_profiles.py).

    Returns {"out", "cache", "summary", "seconds", "tracked_book_before", "tracked_book_after", "results_before",
    "results_after"} (the last two: the repository's results/, which a test build must not record into).
    """
    import time

    from atlib.book.compute import compute_all
    from atlib.book.runner import run_book
    from atlib.training import pool

    root = tmp_path_factory.mktemp("smoke-book")
    out, cache = root / "book", root / "cache"
    before, results_before = _tracked_book_state(), _tree_state(REPO_ROOT / "results")
    t0 = time.perf_counter()
    computed = compute_all("smoke", str(cache), device="cpu", workers=2)  # every chapter's jobs, one shared queue
    pool.shutdown()
    artifacts = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    summary = run_book("smoke", out=out, cache_dir=str(cache), device="cpu")  # one worker: the chapters only load
    return {"out": out, "cache": cache, "summary": Path(summary), "seconds": time.perf_counter() - t0,
            "computed": computed, "artifacts_after_compute": artifacts,
            "artifacts_after_book": {p.name: p.stat().st_mtime_ns for p in cache.iterdir()},
            "tracked_book_before": before, "tracked_book_after": _tracked_book_state(),
            "results_before": results_before, "results_after": _tree_state(REPO_ROOT / "results")}


def _tracked_book_state() -> dict:
    """Name, size and mtime of every file under the repository's book/ (outside _build)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (REPO_ROOT / "book").rglob("*")
            if p.is_file() and "_build" not in p.parts}


def _tree_state(root: Path) -> dict:
    """Name, size and mtime of every file under ``root`` (empty if it does not exist)."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
