"""The datasets atlib can load: one registry entry each, the way MadryLab/robustness keeps one ``DataSet`` per dataset.

An entry (:class:`DataSet`) says what a model needs to know of a dataset (its classes, image shape, pixel scale and,
if any, a fixed per-channel mean/std) and where its files are found (folders a system package fills, the Debian or
pip package that provides them, a page to get them from, torchvision's download). Its format class reads them:
:class:`IdxDataSet` (MNIST's idx files, read by torchvision), :class:`CifarDataSet` (CIFAR-10's python pickles, read
by torchvision) and :class:`DigitsDataSet` (scikit-learn's bundled digits). Nothing else in atlib switches on a
dataset's name: adding one is one entry at the end of this module, and a profile (a TOML file too) may then name it
(``dataset = "..."``). A :func:`register` call from a script reaches that process only (the book's chapters run in
a kernel of their own). :mod:`atlib.core.data` turns what an entry reads into tensors.
"""
from __future__ import annotations

import gzip
import math
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from atlib.core.compat import import_torchvision

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train images, train labels, test images, labels
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
READ_ERRORS = (RuntimeError, OSError, EOFError, ValueError, AssertionError)  # what a reader raises on bad files


class DataNotFoundError(FileNotFoundError):
    """The dataset is in none of the places atlib looks, or its files cannot be read; the message's first line
    says what is wrong, the lines after it what atlib reads and how to get the data."""


def problem(first: str, *details: str) -> str:
    """An error message: a short first line, then the details, one per indented line."""
    return "\n".join([first, *(f"  {d}" for d in details)])


def reason(e: BaseException) -> str:
    """An exception in words, its type when its message is empty (an ``assert`` in a reader)."""
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


@dataclass(frozen=True, kw_only=True)
class DataSet:
    """One dataset: what a model needs to know of it and where its files are found.

    Arguments:
        name: what a profile calls it (``dataset = "fashion"``).
        classes: the class names, label ``i`` is ``classes[i]``.
        shape: one image, (C, H, W); every load checks the files against it.
        pixel_max: the raw value of a white pixel: images are divided by it into [0, 1].
        mean, std: fixed per-channel statistics for the model's normalisation; None: the training images' own.
        system_dirs: folders a system package fills, tried after a data root the user named.
        debian_package, pip_package: the package that provides the files, if any.
        url: where to get the files by hand.
    """

    needs_files: ClassVar[bool] = True  # False: the data ships with a Python package, a data root does not matter
    name: str
    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    pixel_max: float = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    system_dirs: tuple[Path, ...] = ()
    debian_package: str | None = None
    pip_package: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1 or len(self.classes) < 2:
            raise ValueError(f"dataset {self.name!r}: shape must be (C, H, W) of sizes >= 1 (got {self.shape}) and "
                             f"there must be at least two classes (got {self.classes})")
        if (self.mean is None) != (self.std is None) or (self.mean is not None and not (
                len(self.mean) == len(self.std) == self.shape[0] and min(self.std) > 0)):
            raise ValueError(f"dataset {self.name!r}: give mean and std together, one per channel, std > 0")

    @property
    def diameter(self) -> float:
        """The largest L2 distance between two images in [0, 1]: black to white, sqrt(C·H·W)."""
        return math.sqrt(math.prod(self.shape))

    # ---- what a format defines
    def layout(self) -> str:
        """What a data root must hold, in words."""
        raise NotImplementedError

    def missing_files(self, root: Path) -> tuple[list[str], int]:
        """The files ``root`` lacks in its most complete layout (empty: it holds the dataset), and how many a
        complete layout has."""
        raise NotImplementedError

    def read_folder(self, root: Path) -> Arrays | None:
        """The dataset from ``root``; None if ``root`` does not hold it, DataNotFoundError if its files are bad."""
        raise NotImplementedError

    def download(self, into: Path) -> Arrays | None:
        """The dataset downloaded into ``into``; None if it cannot be downloaded (no such download, no network)."""
        return None

    @property
    def downloadable(self) -> bool:
        return False

    # ---- shared by every format
    def how_to_get(self) -> list[str]:
        """The ways to get the files, one per line."""
        ways = []
        if self.debian_package:
            where = f" (its files land in {self.system_dirs[0]})" if self.system_dirs else ""
            ways.append(f"install the Debian package: sudo apt-get install {self.debian_package}{where}")
        if self.pip_package:
            ways.append(f"install the pip package: pip install {self.pip_package}")
        if self.needs_files:
            by_hand = f" (from {self.url})" if self.url else ""
            ways.append(f"pass as --data-root (or $ATLIB_DATA) a folder holding {self.layout()}{by_hand}")
        if self.downloadable:
            ways.append("run once with internet access so torchvision can download it (into $ATLIB_DOWNLOADS, "
                        "default ~/.cache/atlib/downloads)")
        return [("- " if i == 0 else "- or ") + w for i, w in enumerate(ways)]

    def read(self, roots: list[Path], download_root: Path | None) -> tuple[Arrays, str]:
        """The dataset from the first of ``roots`` that holds it, else downloaded into ``download_root`` (None: no
        download), with where it came from; checked against this entry (counts, shape, labels)."""
        tried = []
        for root in roots:
            tried.append(str(root))
            if (arrays := self.read_folder(root)) is not None:
                return self.checked(arrays, str(root)), str(root)
        if download_root is not None and self.downloadable:
            tried.append(f"torchvision download into {download_root}")
            if (arrays := self.download(download_root)) is not None:
                source = f"torchvision download ({download_root})"
                return self.checked(arrays, source), source
        raise DataNotFoundError(problem(f"{self.name}: dataset not found (looked in: {'; '.join(tried) or 'nowhere'})",
                                        "to get it:", *self.how_to_get()))

    def checked(self, arrays: Arrays, where: str) -> Arrays:
        """``arrays`` if they are this dataset (as many labels as images, the entry's image shape, labels in
        0..K-1), else DataNotFoundError saying which check failed."""
        xtr, ytr, xte, yte = arrays
        c, h, w = self.shape
        bad = []
        for split, x, y in (("training", xtr, ytr), ("test", xte, yte)):
            hwc = tuple(x.shape[1:]) if x.ndim == 4 else (*x.shape[1:], 1)  # raw images are (N, H, W[, C])
            if len(x) != len(y):
                bad.append(f"{len(x)} {split} images but {len(y)} {split} labels")
            if hwc != (h, w, c):
                bad.append(f"{split} images of {'×'.join(map(str, hwc[-1:] + hwc[:-1]))} (C×H×W), the entry says "
                           f"{c}×{h}×{w}")
            if len(y) and not 0 <= int(np.min(y)) <= int(np.max(y)) < len(self.classes):
                bad.append(f"{split} labels from {int(np.min(y))} to {int(np.max(y))}, the entry has "
                           f"{len(self.classes)} classes (0..{len(self.classes) - 1})")
        if bad:
            raise DataNotFoundError(problem(f"{self.name}: the files in {where} are not this dataset: {'; '.join(bad)}",
                                            "get them again:", *self.how_to_get()))
        return arrays


def _fail(ds: DataSet, where: Path, why: str) -> DataNotFoundError:
    return DataNotFoundError(problem(f"{ds.name}: the files in {where} could not be read: {why}",
                                     "they may be truncated or corrupt; to fix, get them again:", *ds.how_to_get()))


def idx_problem(path: Path, shown: str | None = None) -> str | None:
    """Why ``path`` (called ``shown`` in the message) is not a well-formed idx file of unsigned bytes, its number of
    dimensions read from its name (``...-idx3-...``), judged from its header and size alone; None when it is."""
    ndim, shown = int(path.name.split("-idx")[1][0]), shown or path.name
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    want = 0x800 + ndim  # two zero bytes, 0x08 (unsigned byte), the number of dimensions
    if len(head) < 4:
        return f"{shown}: {size} bytes, too short for an idx header"
    if (magic := int.from_bytes(head[:4], "big")) != want:
        return (f"{shown}: bad magic number 0x{magic:08x} (an idx file of unsigned bytes with {ndim} "
                f"dimension{'s' * (ndim > 1)} starts with 0x{want:08x})")
    if len(head) < 4 + 4 * ndim:
        return f"{shown}: truncated inside its header ({size} bytes)"
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = len(head) + math.prod(dims)
    if size != expected:
        return (f"{shown}: {'truncated' if size < expected else 'too long'}: its header announces "
                f"{'×'.join(map(str, dims))} values ({expected:,} bytes with the header), the file has {size:,} bytes")
    return None


@dataclass(frozen=True, kw_only=True)
class IdxDataSet(DataSet):
    """MNIST's format: the four idx files ``IDX_FILES`` (each may end in .gz) in a folder, read by torchvision.

    Arguments (beyond :class:`DataSet`'s):
        torchvision_class: torchvision's class of this dataset (``"MNIST"``, ``"FashionMNIST"``), if it has one:
            ``<root>/<class>/raw/`` is read too, and torchvision can download the files. None: a flat folder only.

    Examples::

        register(IdxDataSet(name="kmnist", classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
                            shape=(1, 28, 28), torchvision_class="KMNIST"))
    """

    torchvision_class: str | None = None

    @property
    def downloadable(self) -> bool:
        return self.torchvision_class is not None

    def _reader(self) -> type:
        """torchvision's class that reads the files (MNIST's reader for a dataset torchvision does not know)."""
        import_torchvision()
        from torchvision import datasets

        return getattr(datasets, self.torchvision_class or "MNIST")

    def _prefixes(self) -> tuple[str, ...]:
        return ("",) + ((f"{self.torchvision_class}/raw/",) if self.torchvision_class else ())

    def layout(self) -> str:
        where = f"directly in it or in {self._prefixes()[1]} (torchvision's layout)" if self.torchvision_class \
            else "directly in it"
        return f"the four idx files {', '.join(IDX_FILES)} (each may end in .gz), {where}"

    def missing_files(self, root: Path) -> tuple[list[str], int]:
        layouts = [[f"{prefix}{stem}" for stem in IDX_FILES
                    if not ((root / prefix / stem).is_file() or (root / prefix / f"{stem}.gz").is_file())]
                   for prefix in self._prefixes()]
        return min(layouts, key=len), len(IDX_FILES)

    def read_folder(self, root: Path) -> Arrays | None:
        reader = self._reader()
        if self.torchvision_class and (root / self.torchvision_class / "raw").is_dir():
            try:
                return _tv_arrays(reader(str(root), train=True), reader(str(root), train=False))
            except READ_ERRORS:
                pass  # e.g. only .gz files in raw/, or a bad file: staging raw/ below says which
        for folder in (root / prefix for prefix in self._prefixes()):  # flat, or torchvision's raw/ (.gz or not)
            found = {stem: next((c for c in (folder / stem, folder / f"{stem}.gz") if c.is_file()), None)
                     for stem in IDX_FILES}
            if None in found.values():
                continue
            with tempfile.TemporaryDirectory() as tmp:
                return self._read_staged(found, folder, Path(tmp), reader)
        return None

    def _read_staged(self, found: dict[str, Path], folder: Path, tmp: Path, reader: type) -> Arrays:
        """Copy the idx files (decompressed) into torchvision's ``<tmp>/<class>/raw`` layout, check and read them."""
        raw = tmp / reader.__name__ / "raw"
        raw.mkdir(parents=True)
        for stem, src in found.items():
            try:
                with (gzip.open if src.suffix == ".gz" else open)(src, "rb") as fin, open(raw / stem, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            except (OSError, EOFError) as e:
                raise _fail(self, folder, f"{src.name}: {reason(e)}") from e
            if why := idx_problem(raw / stem, src.name + " (decompressed)" * (src.suffix == ".gz")):
                raise _fail(self, folder, why)
        try:
            return _tv_arrays(reader(str(tmp), train=True), reader(str(tmp), train=False))
        except READ_ERRORS as e:
            raise _fail(self, folder, reason(e)) from e

    def download(self, into: Path) -> Arrays | None:
        reader = self._reader()
        try:
            train, test = reader(str(into), train=True, download=True), reader(str(into), train=False, download=True)
            return _tv_arrays(train, test)
        except Exception:  # noqa: BLE001 - any network/IO failure means "not available here"
            return None


def _tv_arrays(train, test) -> Arrays:
    """A torchvision MNIST-like dataset pair as numpy arrays."""
    return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()


@dataclass(frozen=True, kw_only=True)
class CifarDataSet(DataSet):
    """CIFAR-10's python version: ``cifar-10-batches-py/`` with ``CIFAR_FILES``, read (or downloaded) by torchvision."""

    @property
    def downloadable(self) -> bool:
        return True

    def layout(self) -> str:
        return f"{CIFAR_DIR}/ with {', '.join(CIFAR_FILES)}"

    def missing_files(self, root: Path) -> tuple[list[str], int]:
        return [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES if not (root / CIFAR_DIR / f).is_file()], len(CIFAR_FILES)

    def read_folder(self, root: Path) -> Arrays | None:
        if not (root / CIFAR_DIR).is_dir():
            return None
        reader = _local_cifar10()
        try:
            tr, te = reader(str(root), train=True), reader(str(root), train=False)
        except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
            raise _fail(self, root / CIFAR_DIR, reason(e)) from e
        return tr.data, np.array(tr.targets), te.data, np.array(te.targets)

    def download(self, into: Path) -> Arrays | None:
        import_torchvision()
        from torchvision.datasets import CIFAR10

        try:
            tr, te = CIFAR10(str(into), train=True, download=True), CIFAR10(str(into), train=False, download=True)
        except Exception:  # noqa: BLE001
            return None
        return tr.data, np.array(tr.targets), te.data, np.array(te.targets)


def _local_cifar10() -> type:
    """torchvision's CIFAR-10 reader; integrity = files present (atlib's own fingerprint pins the content)."""
    import_torchvision()
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        meta = {**CIFAR10.meta, "md5": None}  # torchvision's _load_meta checks this md5 too: presence only

        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            return all((base / f).is_file() for f, _ in self.train_list + self.test_list)

    return LocalCIFAR10


@dataclass(frozen=True, kw_only=True)
class DigitsDataSet(DataSet):
    """scikit-learn's bundled 8×8 digits (1,797 images), split 80/20 stratified with a fixed seed; no files."""

    needs_files: ClassVar[bool] = False
    source: ClassVar[str] = "sklearn.datasets.load_digits"

    def layout(self) -> str:
        return "nothing: the digits ship with scikit-learn"

    def missing_files(self, root: Path) -> tuple[list[str], int]:
        return [], 0

    def read_folder(self, root: Path) -> Arrays | None:
        return None

    def read(self, roots: list[Path], download_root: Path | None) -> tuple[Arrays, str]:
        try:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split
        except ImportError as e:
            raise DataNotFoundError(problem(f"{self.name}: scikit-learn is not installed ({e})", "to get it:",
                                            *self.how_to_get())) from e
        d = load_digits()
        xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=0.2, stratify=d.target, random_state=0)
        return self.checked((xtr, ytr, xte, yte), self.source), self.source


REGISTRY: dict[str, DataSet] = {}


def register(ds: DataSet, replace: bool = False) -> DataSet:
    """Add ``ds`` to the registry under its name (``replace`` to swap out an entry of the same name)."""
    if ds.name in REGISTRY and not replace:
        raise ValueError(f"dataset {ds.name!r} is already registered (pass replace=True to swap it)")
    REGISTRY[ds.name] = ds
    return ds


def get_dataset(name: str) -> DataSet:
    """The registry entry ``name``; an unknown name raises ValueError listing the registered ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(REGISTRY)}") from None


TEN_DIGITS = tuple(str(i) for i in range(10))
register(DigitsDataSet(name="digits", classes=TEN_DIGITS, shape=(1, 8, 8), pixel_max=16.0, pip_package="scikit-learn"))
register(IdxDataSet(name="fashion", classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                             "Sneaker", "Bag", "Ankle boot"),
                    shape=(1, 28, 28), torchvision_class="FashionMNIST", system_dirs=(DEBIAN_FASHION,),
                    debian_package="dataset-fashion-mnist"))
register(IdxDataSet(name="mnist", classes=TEN_DIGITS, shape=(1, 28, 28), torchvision_class="MNIST"))
register(CifarDataSet(name="cifar10", classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                               "ship", "truck"),
                      shape=(3, 32, 32), url="https://www.cs.toronto.edu/~kriz/cifar.html, the python version"))
