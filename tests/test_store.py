"""The content-addressed cache: keys, hits, corruption handling, atomic writes."""
import dataclasses
import os
import types
import warnings
from pathlib import Path

import pytest
import torch

import atlib.core.store
from atlib.core.attacks import AttackConfig
from atlib.core.store import MAGIC, CorruptArtifactWarning, Store, artifact_key, code_version_of


def artifact():
    return {"state": {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2])},
            "history": [{"epoch": 1, "loss": 0.5}], "name": "m", "n": 3}


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert torch.equal(a["state"]["w"], b["state"]["w"]) and torch.equal(a["state"]["b"], b["state"]["b"])
    assert a["state"]["b"].dtype == b["state"]["b"].dtype
    assert a["history"] == b["history"] and a["name"] == b["name"] and a["n"] == b["n"]


def leftovers(folder: Path, key: str) -> list[str]:
    """Files other than the artifact itself and its meta/corrupt siblings: stray temp files."""
    return sorted(p.name for p in folder.iterdir() if p.name not in {f"{key}.pt", f"{key}.json", f"{key}.corrupt"})


# ---------------------------------------------------------------- hits and misses

def test_miss_then_hit(tmp_path):
    store = Store(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return artifact()

    first, hit1 = store.get_or_compute("k-1", compute, meta={"lr": 0.1})
    second, hit2 = store.get_or_compute("k-1", compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert_same(first, artifact())
    assert_same(second, artifact())
    assert store.path("k-1").read_bytes().startswith(MAGIC)
    assert (tmp_path / "k-1.json").read_text().count("0.1") == 1
    assert store.load("absent") is None
    assert leftovers(tmp_path, "k-1") == []


def test_store_none_uses_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLIB_CACHE", str(tmp_path / "from-env"))
    store = Store(None)
    assert store.root == tmp_path / "from-env" and store.root.is_dir()
    store.save("x", {"a": 1})
    assert (tmp_path / "from-env" / "x.pt").is_file()
    monkeypatch.delenv("ATLIB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Store().root == tmp_path / "home" / ".cache" / "atlib"


# ---------------------------------------------------------------- keys

@dataclasses.dataclass(frozen=True)
class Cfg:
    arch: str
    lr: float
    attack: AttackConfig | None
    widths: tuple = (1, 2)


BASE = Cfg("mlp", 0.1, AttackConfig("linf", 0.1, 5, 0.05))


def test_key_is_deterministic():
    k = artifact_key("model", BASE, "code1", "fp1")
    assert k == artifact_key("model", Cfg("mlp", 0.1, AttackConfig("linf", 0.1, 5, 0.05)), "code1", "fp1")
    assert k.startswith("model-") and len(k) == len("model-") + 20
    assert artifact_key("m", {"a": 1, "b": 2}, "c", "d") == artifact_key("m", {"b": 2, "a": 1}, "c", "d")


@pytest.mark.parametrize("change", [
    dict(config=dataclasses.replace(BASE, lr=0.1000001)),
    dict(config=dataclasses.replace(BASE, arch="small_cnn")),
    dict(config=dataclasses.replace(BASE, attack=AttackConfig("linf", 0.1, 5, 0.05, restarts=2))),
    dict(config=dataclasses.replace(BASE, attack=AttackConfig("linf", 0.1, 5, 0.05, keep_best=False))),
    dict(config=dataclasses.replace(BASE, attack=None)),
    dict(config=dataclasses.replace(BASE, widths=(1, 3))),
    dict(config=dataclasses.replace(BASE, widths=(2, 1))),
    dict(code="code2"),
    dict(data="fp2"),
    dict(kind="history"),
])
def test_key_changes(change):
    args = dict(kind="model", config=BASE, code="code1", data="fp1")
    base = artifact_key(args["kind"], args["config"], args["code"], args["data"])
    args.update(change)
    assert artifact_key(args["kind"], args["config"], args["code"], args["data"]) != base


def test_key_float_precision_and_types():
    assert artifact_key("k", {"lr": 0.1}, "c", "d") != artifact_key("k", {"lr": 0.1000001}, "c", "d")
    assert artifact_key("k", {"lr": 0.1}, "c", "d") != artifact_key("k", {"lr": 0.1 + 2 ** -56}, "c", "d")
    assert artifact_key("k", {"n": 1}, "c", "d") != artifact_key("k", {"n": 1.0}, "c", "d")
    assert artifact_key("k", {"n": 1}, "c", "d") != artifact_key("k", {"n": True}, "c", "d")


@pytest.fixture
def fake_atlib(tmp_path, monkeypatch):
    """A tiny ``atlib`` tree that ``code_version_of`` resolves names against (its memos cleared around the test)."""
    root = tmp_path / "atlib"
    root.mkdir()
    for name, source in {"__init__": "", "a": "from atlib import b\nX = 1\n", "b": "def f():\n    return 2\n"}.items():
        (root / f"{name}.py").write_text(source)
    store = atlib.core.store
    store._module_info.cache_clear(), store._closure.cache_clear()
    monkeypatch.setattr(store, "_ROOT", root)
    yield root
    store._module_info.cache_clear(), store._closure.cache_clear()


def test_code_version_tracks_source(fake_atlib):
    store = atlib.core.store
    v1 = code_version_of("atlib.a")
    assert v1 == code_version_of("atlib.b", "atlib.a") == code_version_of(types.ModuleType("atlib.a")) and len(v1) == 12
    assert code_version_of("atlib.b") != v1  # a imports b: b's closure is a strict subset
    b = fake_atlib / "b.py"
    b.write_text("def f():\n    return 3\n")
    store._module_info.cache_clear(), store._closure.cache_clear()  # sources are read once per process
    assert code_version_of("atlib.a") != v1
    b.write_text("def f():\n    return 2\n")
    store._module_info.cache_clear(), store._closure.cache_clear()
    assert code_version_of("atlib.a") == v1  # content, not mtime
    with pytest.raises(ValueError):
        code_version_of("atlib.missing")


def test_code_version_of_real_modules_is_stable():
    assert code_version_of(atlib.core.store) == code_version_of(atlib.core.store) == code_version_of(Store)


# ---------------------------------------------------------------- corruption

def _truncate(b: bytes) -> bytes:
    return b[: len(b) - 40]


def _flip_payload_byte(b: bytes) -> bytes:
    i = len(MAGIC) + 65 + (len(b) - len(MAGIC) - 65) // 2
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]


def _flip_digest_byte(b: bytes) -> bytes:
    i = len(MAGIC) + 3
    return b[:i] + (b"0" if b[i:i + 1] != b"0" else b"1") + b[i + 1:]


@pytest.mark.parametrize("damage", [_truncate, _flip_payload_byte, _flip_digest_byte,
                                    lambda b: b"garbage" * 100, lambda b: b"", lambda b: MAGIC])
def test_corrupt_file_is_moved_aside_and_recomputed(tmp_path, damage):
    store = Store(tmp_path)
    p = store.save("key", artifact())
    bad = damage(p.read_bytes())
    p.write_bytes(bad)
    with pytest.warns(CorruptArtifactWarning, match="corrupt"):
        assert store.load("key") is None
    assert not p.exists()
    assert (tmp_path / "key.corrupt").read_bytes() == bad  # kept for inspection, byte for byte
    calls = []
    with pytest.warns(CorruptArtifactWarning):
        p.write_bytes(bad)
        obj, hit = store.get_or_compute("key", lambda: calls.append(1) or artifact())
    assert not hit and calls == [1]
    assert_same(obj, artifact())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recomputed artifact is valid: no warning now
        again, hit = store.get_or_compute("key", lambda: pytest.fail("recomputed a valid artifact"))
    assert hit
    assert_same(again, artifact())


def test_unpicklable_payload_with_valid_checksum(tmp_path):
    """A file whose checksum matches but whose payload is not a torch archive is corrupt too."""
    import hashlib

    store = Store(tmp_path)
    payload = b"not a torch file"
    store.path("key").write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.warns(CorruptArtifactWarning):
        assert store.load("key") is None
    assert (tmp_path / "key.corrupt").exists()


def test_the_json_beside_an_artifact_is_never_read(tmp_path, monkeypatch):
    """``<key>.json`` is a readable copy of an artifact's settings for a person browsing the cache (README, "The
    cache"): the store never opens it (the checksummed ``.pt`` holds everything), so a damaged one cannot be served;
    the artifact loads and the file is left as it is."""
    import builtins
    import io

    store = Store(tmp_path)
    store.save("key", artifact(), meta={"lr": 0.1})
    side = tmp_path / "key.json"
    side.write_bytes(b"\x00 not json {")
    opened = []
    for mod, name in ((builtins, "open"), (io, "open"), (os, "open")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda f, *a, _real=real, **kw: opened.append(str(f)) or _real(f, *a, **kw))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj, hit = store.get_or_compute("key", lambda: pytest.fail("recomputed a valid artifact"), meta={"lr": 0.1})
    monkeypatch.undo()
    assert hit and any(f.endswith("key.pt") for f in opened), opened  # the spy saw the artifact being read
    assert not [f for f in opened if f.endswith(".json")]
    assert_same(obj, artifact())
    assert side.read_bytes() == b"\x00 not json {"


# ---------------------------------------------------------------- atomic writes

def test_failed_replace_keeps_previous_artifact(tmp_path, monkeypatch):
    store = Store(tmp_path)
    p = store.save("key", artifact())
    good = p.read_bytes()
    seen = {}

    def boom(src, dst):
        seen["src"], seen["dst"] = Path(src), Path(dst)
        seen["src_size"] = Path(src).stat().st_size
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(atlib.core.store.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        store.save("key", {"new": torch.zeros(1000)})
    monkeypatch.undo()
    assert seen["dst"] == p and seen["src"].parent == tmp_path and seen["src"] != p
    assert seen["src_size"] > len(good)  # the complete new blob was in the temp file, not in key.pt
    assert p.read_bytes() == good
    assert leftovers(tmp_path, "key") == []
    assert_same(store.load("key"), artifact())


def test_no_partial_artifact_ever_visible(tmp_path, monkeypatch):
    store = Store(tmp_path)
    target = store.path("fresh")
    states = []
    real_fsync = os.fsync

    def watching_fsync(fd):
        states.append(target.exists())  # data is written, not yet renamed: key.pt must not exist
        real_fsync(fd)

    def failing_fsync(fd):
        raise OSError("I/O error (simulated)")

    monkeypatch.setattr(atlib.core.store.os, "fsync", watching_fsync)
    store.save("fresh", artifact())
    assert states == [False] and target.exists()

    monkeypatch.setattr(atlib.core.store.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="simulated"):
        store.save("other", artifact())
    assert not store.path("other").exists()
    assert leftovers(tmp_path, "fresh") == []


def test_an_artifact_carries_what_it_cost_and_a_tampered_record_is_corrupt(tmp_path):
    from atlib.core.store import costs, reset_costs

    store = Store(tmp_path)
    reset_costs()
    store.get_or_compute("slow-1", lambda: {"x": torch.ones(3)})  # computed: its own time is recorded
    store.save("old-1", {"x": 1})  # written without a record (as before records were kept)
    reset_costs()
    assert store.load("slow-1") is not None and store.load("old-1") == {"x": 1}
    c = costs()
    assert c["artifacts"] == 2 and c["unrecorded"] == 1 and c["seconds"] >= 0
    blob = store.path("slow-1").read_bytes()
    at = blob.index(b'{"seconds"')
    store.path("slow-1").write_bytes(blob[:at] + b'{"seconds": 9' + blob[at + 12:])  # the record edited
    with pytest.warns(CorruptArtifactWarning):
        assert store.load("slow-1") is None
