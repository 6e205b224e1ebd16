"""Every data source of atlib.core.data, with tiny files written into tmp_path."""
import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import atlib.core.data
from atlib.core.data import DATASETS, DataNotFoundError, augment, eval_indices, load_dataset
from atlib.core.datasets import IdxDataSet, register

N_TRAIN, N_TEST = 20, 10


def system_dirs(monkeypatch, name: str, *dirs: Path) -> None:
    """The registry's entry ``name`` looks in ``dirs`` instead of its system folders (Debian's, for fashion)."""
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], system_dirs=dirs))


# ---------------------------------------------------------------- helpers: idx files

def idx_images(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8 and a.ndim == 3
    return struct.pack(">IIII", 2051, *a.shape) + a.tobytes()


def idx_labels(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8 and a.ndim == 1
    return struct.pack(">II", 2049, len(a)) + a.tobytes()


def make_idx_arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
    xte = rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8)
    ytr = (np.arange(N_TRAIN) % 10).astype(np.uint8)
    yte = rng.integers(0, 10, N_TEST, dtype=np.uint8)
    xtr[0, 0, 0], xtr[0, 0, 1] = 0, 255  # the extremes must round-trip too
    return xtr, ytr, xte, yte


def write_idx(folder: Path, arrays, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = arrays
    blobs = {"train-images-idx3-ubyte": idx_images(xtr), "train-labels-idx1-ubyte": idx_labels(ytr),
             "t10k-images-idx3-ubyte": idx_images(xte), "t10k-labels-idx1-ubyte": idx_labels(yte)}
    for stem, blob in blobs.items():
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return folder


CLASS_DIR = {"mnist": "MNIST", "fashion": "FashionMNIST"}
LAYOUTS = ("flat-gz", "flat-raw", "torchvision-raw", "torchvision-raw-gz")


def write_layout(root: Path, name: str, layout: str, arrays) -> None:
    if layout.startswith("flat"):
        write_idx(root, arrays, gz=layout == "flat-gz")
    else:
        write_idx(root / CLASS_DIR[name] / "raw", arrays, gz=layout.endswith("gz"))


# ---------------------------------------------------------------- digits

def test_digits(digits):
    d = digits
    assert d.name == "digits" and d.num_classes == 10
    assert d.train_x.shape == (1437, 1, 8, 8) and d.test_x.shape == (360, 1, 8, 8)
    assert d.train_x.dtype == torch.float32
    for x in (d.train_x, d.test_x):
        assert x.min() >= 0 and x.max() <= 1
    assert d.train_x.max() == 1.0  # scaled by 16, the digits' maximum, not by 255
    assert d.train_y.dtype == torch.long and len(d.train_y) == 1437 and len(d.test_y) == 360
    # stratified: each class's share of the test set matches its share overall (within one sample)
    all_y = torch.cat([d.train_y, d.test_y])
    for c in range(10):
        expected = 360 * float((all_y == c).float().mean())
        assert abs(int((d.test_y == c).sum()) - expected) <= 1
    assert len(d.mean) == len(d.std) == 1 and 0 < d.mean[0] < 1 and d.std[0] > 0
    again = load_dataset("digits")
    assert again.fingerprint == d.fingerprint and len(d.fingerprint) == 16
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)


# ---------------------------------------------------------------- idx (MNIST, Fashion-MNIST)

@pytest.mark.parametrize("name", ["mnist", "fashion"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_idx_round_trip(tmp_path, name, layout, monkeypatch):
    system_dirs(monkeypatch, "fashion", tmp_path / "nope")
    arrays = make_idx_arrays()
    write_layout(tmp_path / "root", name, layout, arrays)
    d = load_dataset(name, data_root=tmp_path / "root", download=False)
    xtr, ytr, xte, yte = arrays
    assert d.name == name and d.shape == (1, 28, 28) and d.num_classes == 10
    assert d.train_x.shape == (N_TRAIN, 1, 28, 28) and d.test_x.shape == (N_TEST, 1, 28, 28)
    assert d.train_x.dtype == torch.float32
    assert torch.equal((d.train_x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(xtr))
    assert torch.equal((d.test_x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(xte))
    assert torch.allclose(d.train_x[:, 0] * 255, torch.from_numpy(xtr).float(), atol=1e-4)
    assert torch.equal(d.train_y, torch.from_numpy(ytr).long()) and torch.equal(d.test_y, torch.from_numpy(yte).long())
    assert d.train_y.dtype == torch.long
    assert str(tmp_path / "root") in d.source
    assert d.mean[0] == pytest.approx(xtr.mean() / 255, rel=1e-5)


def test_idx_fingerprint_tracks_content(tmp_path):
    arrays = make_idx_arrays()
    write_idx(tmp_path / "a", arrays, gz=True)
    write_idx(tmp_path / "b", arrays, gz=False)  # same content, other container: same fingerprint
    changed = tuple(a.copy() for a in arrays)
    changed[2][3, 10, 10] ^= 1  # one test pixel, one bit
    write_idx(tmp_path / "c", changed, gz=True)
    fa, fb, fc = (load_dataset("mnist", data_root=tmp_path / k, download=False).fingerprint for k in "abc")
    assert fa == fb
    assert fa != fc


def test_data_root_env_var(tmp_path, monkeypatch):
    write_idx(tmp_path / "env", make_idx_arrays(), gz=True)
    monkeypatch.setenv("ATLIB_DATA", str(tmp_path / "env"))
    d = load_dataset("mnist", download=False)
    assert len(d.train_y) == N_TRAIN and str(tmp_path / "env") in d.source


# ---------------------------------------------------------------- CIFAR-10 (python format)

def write_cifar(root: Path, n_per_batch: int = 4, n_test: int = 6, seed: int = 0):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        batches.append((data, labels))
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"batch_label": b"training batch", "data": data, "labels": labels}, f)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test[:, :1024] = 7     # red plane of every test image: a value used nowhere else
    test[:, 1024:2048] = 100  # green
    test[:, 2048:] = 200      # blue
    test_labels = [int(v) for v in rng.integers(0, 10, n_test)]
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": test, "labels": test_labels}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": n_per_batch}, f)
    return batches, test, test_labels


def test_cifar10(tmp_path):
    batches, test, test_labels = write_cifar(tmp_path)
    d = load_dataset("cifar10", data_root=tmp_path, download=False)
    assert d.name == "cifar10" and d.shape == (3, 32, 32) and d.classes[0] == "airplane"
    assert d.train_x.shape == (20, 3, 32, 32) and d.test_x.shape == (6, 3, 32, 32)
    assert d.train_x.dtype == torch.float32 and d.train_x.is_contiguous()
    # channel order: R, G, B planes land in channels 0, 1, 2
    assert torch.all(d.test_x[:, 0] == 7 / 255) and torch.all(d.test_x[:, 1] == 100 / 255)
    assert torch.all(d.test_x[:, 2] == 200 / 255)
    # values: row-major 32x32 planes, batches in order 1..5
    train_raw = np.concatenate([b[0] for b in batches]).reshape(-1, 3, 32, 32)
    assert torch.equal((d.train_x * 255).round().to(torch.uint8), torch.from_numpy(train_raw))
    assert d.train_y.tolist() == [y for b in batches for y in b[1]] and d.test_y.tolist() == test_labels
    assert len(d.mean) == 3


def test_cifar10_corrupt_batch(tmp_path):
    write_cifar(tmp_path)
    p = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataNotFoundError, match="truncated or corrupt"):
        load_dataset("cifar10", data_root=tmp_path, download=False)


# ---------------------------------------------------------------- the real Debian Fashion-MNIST

@pytest.mark.skipif(not atlib.core.data.DEBIAN_FASHION.is_dir(),
                    reason=f"{atlib.core.data.DEBIAN_FASHION} absent (apt-get install dataset-fashion-mnist)")
def test_debian_fashion():
    d = load_dataset("fashion", download=False)
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert d.source == str(atlib.core.data.DEBIAN_FASHION)
    assert sorted(d.train_y.unique().tolist()) == list(range(10))
    assert int((d.train_y == 0).sum()) == 6000  # Fashion-MNIST is balanced
    assert d.train_x.min() == 0 and d.train_x.max() == 1
    assert d.classes[9] == "Ankle boot"


# ---------------------------------------------------------------- missing, corrupt, unknown

def test_missing_mnist(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("mnist", data_root=tmp_path / "empty", download=False)
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg
    assert "ATLIB_DATA" in msg and "train-images-idx3-ubyte" in msg and "internet" in msg
    assert "download into" not in msg  # download=False: no download was tried
    assert isinstance(e.value, FileNotFoundError)


def test_missing_cifar10(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("cifar10", data_root=tmp_path / "empty", download=False)
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "cifar-10-batches-py" in msg and "cs.toronto.edu" in msg


def test_missing_fashion(tmp_path, monkeypatch):
    system_dirs(monkeypatch, "fashion", tmp_path / "nope")
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion")  # no data root named; ATLIB_NO_DOWNLOAD is set by conftest
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "apt-get install dataset-fashion-mnist" in msg


def test_named_data_root_must_hold_the_data(tmp_path, monkeypatch):
    """An explicit data root (argument or $ATLIB_DATA) that is missing or empty is an error naming what was looked
    for; it never falls back silently to the Debian copy or a download."""
    write_idx(tmp_path / "debian", make_idx_arrays(), gz=True)
    system_dirs(monkeypatch, "fashion", tmp_path / "debian")  # a fallback that would work
    with pytest.raises(DataNotFoundError, match="does not exist") as e:
        load_dataset("fashion", "/nonexistent")
    assert "/nonexistent (--data-root)" in str(e.value) and "t10k-labels-idx1-ubyte" in str(e.value)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ATLIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataNotFoundError, match="holds none of the fashion files") as e:
        load_dataset("fashion")
    msg = str(e.value)
    assert str(tmp_path / "empty") in msg and "$ATLIB_DATA" in msg and "FashionMNIST/raw/" in msg
    assert all(stem in msg for stem in atlib.core.data.IDX_FILES) and "looked in" not in msg
    assert all(str(tmp_path / "debian") not in line or "apt-get install" in line for line in msg.splitlines())
    (tmp_path / "empty" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataNotFoundError, match="lacks train-labels-idx1-ubyte, t10k-images"):
        load_dataset("fashion")
    monkeypatch.delenv("ATLIB_DATA")
    assert load_dataset("fashion").source == str(tmp_path / "debian"), "without a named root: the default places"
    assert load_dataset("digits", "/nonexistent").name == "digits", "digits ship with scikit-learn"
    with pytest.raises(DataNotFoundError, match=r"cifar-10-batches-py/ with data_batch_1.*batches\.meta"):
        load_dataset("cifar10", tmp_path / "empty", download=False)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("layout", ["flat-gz", "flat-raw", "torchvision-raw", "torchvision-raw-gz"])
def test_corrupt_idx(tmp_path, layout, damage):
    """A bad idx file is an error that gives the reason: never an empty "could not be read ()"."""
    write_layout(tmp_path, "mnist", layout, make_idx_arrays())
    folder = tmp_path if layout.startswith("flat") else tmp_path / "MNIST" / "raw"
    p = next(folder.glob("train-images-idx3-ubyte*"))
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2] if damage == "truncate" else bytes(range(256)) * 4)
    with pytest.raises(DataNotFoundError, match="truncated or corrupt") as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"mnist: the files in {folder} could not be read: {p.name}"), first
    gz = layout.endswith("gz")
    reason = {("truncate", False): "truncated: its header announces 20×28×28 values (15,696 bytes with the header), "
                                    "the file has 7,848 bytes",
              ("garbage", False): "bad magic number 0x00010203 (an idx file of unsigned bytes with 3 dimensions "
                                  "starts with 0x00000803)",
              ("truncate", True): "EOFError: Compressed file ended before the end-of-stream marker was reached",
              ("garbage", True): "BadGzipFile: Not a gzipped file"}[damage, gz]
    assert reason in first, first


@pytest.mark.parametrize("damage, reason", [
    ("short", "train-images-idx3-ubyte.gz (decompressed): truncated: its header announces 20×28×28 values"),
    ("long", "t10k-labels-idx1-ubyte.gz (decompressed): too long: its header announces 10 values (18 bytes with the "
             "header), the file has 21 bytes"),
    ("labels", "20 training images but 5 training labels"),
    ("class", "test labels from 0 to 12, the entry has 10 classes (0..9)"),
    ("shape", "training images of 1×28×27 (C×H×W), the entry says 1×28×28")])
def test_idx_files_that_are_not_the_dataset(tmp_path, damage, reason):
    """Well-compressed idx files whose content is wrong: cut short or too long (torchvision's reader raises an empty
    AssertionError), or consistent files that are not this dataset (torchvision reads them without a word)."""
    xtr, ytr, xte, yte = make_idx_arrays()
    blobs = {"train-images-idx3-ubyte": idx_images(xtr), "train-labels-idx1-ubyte": idx_labels(ytr),
             "t10k-images-idx3-ubyte": idx_images(xte), "t10k-labels-idx1-ubyte": idx_labels(yte)}
    if damage == "short":
        blobs["train-images-idx3-ubyte"] = blobs["train-images-idx3-ubyte"][:-100]
    elif damage == "long":
        blobs["t10k-labels-idx1-ubyte"] += b"abc"
    elif damage == "labels":
        blobs["train-labels-idx1-ubyte"] = idx_labels(ytr[:5])
    elif damage == "class":
        blobs["t10k-labels-idx1-ubyte"] = idx_labels(np.where(yte == yte.max(), 12, yte).astype(np.uint8))
    else:
        blobs["train-images-idx3-ubyte"] = idx_images(np.ascontiguousarray(xtr[:, :, :27]))
    tmp_path.mkdir(exist_ok=True)
    for stem, blob in blobs.items():
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(blob))
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("mnist", data_root=tmp_path, download=False)
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"mnist: the files in {tmp_path} ") and reason in first, first


def test_a_data_root_without_the_data_says_so_on_a_short_first_line(tmp_path):
    """What is wrong on the first line; what atlib reads and how to get the data on the lines after it."""
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion", tmp_path / "nowhere")
    first, *details = str(e.value).splitlines()
    assert first == f"fashion: the data root {tmp_path / 'nowhere'} (--data-root) does not exist"
    assert len(details) >= 3 and all(line.startswith("  ") for line in details)
    assert any("apt-get install dataset-fashion-mnist" in line for line in details)
    assert any("FashionMNIST/raw/" in line and "train-images-idx3-ubyte" in line for line in details)


@pytest.fixture
def registry():
    """The dataset registry, restored after the test (which registers datasets of its own)."""
    saved = dict(DATASETS)
    yield DATASETS
    DATASETS.clear()
    DATASETS.update(saved)


def test_a_new_dataset_through_the_registry_alone(tmp_path, registry):
    """Adding a dataset is one registry entry: idx files of three classes of 12×12 images, written here, load by the
    entry's name from its own folder or from a data root, with its classes, shape and fixed mean/std; a TOML profile
    names it, and chapter 02's models train and are attacked on it (nothing else in atlib knows it)."""
    from atlib.studies import context as cx
    from atlib.studies.profiles import load_profile
    from atlib.studies.shrinkage import runs

    rng = np.random.default_rng(3)
    xtr, xte = rng.integers(0, 256, (30, 12, 12), dtype=np.uint8), rng.integers(0, 256, (9, 12, 12), dtype=np.uint8)
    arrays = (xtr, (np.arange(30) % 3).astype(np.uint8), xte, (np.arange(9) % 3).astype(np.uint8))
    write_idx(tmp_path / "shapes", arrays, gz=True)
    entry = register(IdxDataSet(name="shapes", classes=("circle", "square", "triangle"), shape=(1, 12, 12),
                                mean=(0.5,), std=(0.25,), system_dirs=(tmp_path / "shapes",)))
    d = load_dataset("shapes")
    assert (d.name, d.classes, d.shape, d.mean, d.std) == ("shapes", entry.classes, (1, 12, 12), (0.5,), (0.25,))
    assert d.source == str(tmp_path / "shapes") and d.num_classes == 3
    assert torch.equal((d.test_x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(xte))
    assert torch.equal(d.train_y, torch.arange(30) % 3)
    write_idx(tmp_path / "copy", arrays, gz=False)
    assert load_dataset("shapes", tmp_path / "copy").fingerprint == d.fingerprint
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("shapes", tmp_path / "empty")
    assert str(e.value).splitlines()[0] == f"shapes: the data root {tmp_path / 'empty'} (--data-root) holds none of " \
                                           "the shapes files"
    assert "internet" not in str(e.value) and "raw/" not in str(e.value)  # no torchvision class: no download, flat only
    with pytest.raises(ValueError, match="'shapes' is already registered"):
        register(entry)
    register(dataclasses.replace(entry, shape=(1, 32, 32)), replace=True)
    with pytest.raises(DataNotFoundError, match=r"training images of 1×12×12 \(C×H×W\), the entry says 1×32×32"):
        load_dataset("shapes")
    register(entry, replace=True)
    with pytest.raises(ValueError, match="give mean and std together, one per channel"):
        IdxDataSet(name="bad", classes=("a", "b"), shape=(1, 12, 12), mean=(0.5, 0.5), std=(0.2, 0.2))

    profile = tmp_path / "shapes.toml"
    profile.write_text('extends = "smoke"\ndataset = "shapes"\nepochs = 2\nseeds = [0]\nside_seeds = 1\n')
    p = load_profile(profile)
    ctx = cx.context(p, str(tmp_path / "cache"), device="cpu", workers=1)
    assert ctx.data.fingerprint == d.fingerprint and len(ctx.eval_y) == 9
    run = runs.model_run(ctx, p.main_at, 0, progress=False)
    assert run.logits["clean"].shape == (9, 3) and run.logits["linf_ce"].shape == (9, 3)
    assert run.history[-1]["epoch"] == 2


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as e:
        load_dataset("imagenet")
    for name in ("digits", "fashion", "mnist", "cifar10"):
        assert name in str(e.value)


# ---------------------------------------------------------------- augmentation, subsets

def test_augment_crop_and_flip():
    x = torch.rand(64, 3, 8, 8) * 0.9 + 0.1  # no zeros in the input: zeros in the output are padding
    out = augment(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    allowed = set(x.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= allowed
    assert (out == 0).any() and (out != x).any()  # some images were actually shifted
    for i in range(len(x)):  # each image's values come from that image only
        assert set(out[i].flatten().tolist()) <= set(x[i].flatten().tolist()) | {0.0}
    again = augment(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    assert torch.equal(out, again)
    other = augment(x, torch.Generator().manual_seed(1), pad=2, flip=True)
    assert not torch.equal(out, other)


def test_augment_flip_only():
    x = torch.rand(64, 1, 5, 7)
    out = augment(x, torch.Generator().manual_seed(3), pad=0, flip=True)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert torch.all(same | flipped)
    assert same.any() and flipped.any()
    assert torch.equal(augment(x, torch.Generator().manual_seed(3), pad=0, flip=False), x)


def test_augment_shift_only_is_a_translation():
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5).repeat(40, 1, 1, 1)
    out = augment(x, torch.Generator().manual_seed(0), pad=1, flip=False)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(len(x)):  # every output is one of the 9 crops of the padded image
        crops = [xp[i, :, r:r + 5, c:c + 5] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], c) for c in crops)


def test_subset_and_eval_indices(digits):
    s1, s2 = digits.subset(100), digits.subset(100)
    assert len(s1.train_y) == 100 and s1.train_x.shape == (100, 1, 8, 8)
    assert torch.equal(s1.train_x, s2.train_x) and torch.equal(s1.train_y, s2.train_y)
    assert torch.equal(s1.test_x, digits.test_x)
    assert s1.fingerprint != digits.fingerprint and s1.fingerprint == s2.fingerprint
    assert not torch.equal(s1.train_y, digits.train_y[:100])  # a permutation, not the first 100
    assert digits.subset(None) is digits and digits.subset(10_000) is digits
    assert torch.equal(digits.subset(50).train_x, s1.train_x[:50])  # nested: prefixes of one permutation
    e1, e2 = eval_indices(360, 100), eval_indices(360, 100)
    assert torch.equal(e1, e2) and len(e1) == 100 and len(e1.unique()) == 100
    assert torch.equal(e1, e1.sort().values) and e1.min() >= 0 and e1.max() < 360
    assert not torch.equal(e1, torch.arange(100))
    assert torch.equal(eval_indices(360, None), torch.arange(360))
    assert torch.equal(eval_indices(360, 500), torch.arange(360))
