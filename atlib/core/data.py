"""Datasets as tensors resident on the compute device, with their provenance and a fingerprint.

Sources, in order: an explicit root (``data_root`` argument, else ``$ATLIB_DATA``), the Debian package
path for Fashion-MNIST, then torchvision's download. An explicit root must exist and hold the dataset (else
DataNotFoundError, listing the files looked for): a typo never falls back silently to another copy. Images are float32 in [0, 1], NCHW; the
per-channel mean/std travel with the data so the model normalises *inside* itself (attacks work in
pixel space). Augmentation (random crop with padding, horizontal flip) runs as batched tensor ops.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from atlib.core.compat import import_torchvision

Tensor = torch.Tensor
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DATASETS = ("digits", "fashion", "mnist", "cifar10")

_CLASSES = {
    "digits": tuple(str(i) for i in range(10)),
    "mnist": tuple(str(i) for i in range(10)),
    "fashion": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
_HOW_TO_GET = {
    "fashion": "install the Debian package (`sudo apt-get install dataset-fashion-mnist`, files land in "
    f"{DEBIAN_FASHION}), or pass --data-root / set ATLIB_DATA to a folder holding the four idx files "
    f"({', '.join(IDX_FILES)}, optionally .gz), or run once with internet access so torchvision can download it",
    "mnist": "pass --data-root / set ATLIB_DATA to a folder holding the four MNIST idx files "
    f"({', '.join(IDX_FILES)}, optionally .gz) or torchvision's MNIST/raw layout, or run once with internet access "
    "so torchvision can download it",
    "cifar10": "pass --data-root / set ATLIB_DATA to a folder holding `cifar-10-batches-py/` (the python version "
    "from https://www.cs.toronto.edu/~kriz/cifar.html), or run once with internet access so torchvision can download it",
}


class DataNotFoundError(FileNotFoundError):
    """The dataset is in none of the places atlib looks; the message says how to get it."""


_TV_CLASS = {"fashion": "FashionMNIST", "mnist": "MNIST"}  # torchvision's folder names (<root>/<Class>/raw)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _layouts(name: str) -> str:
    """What a data root must hold for ``name``, in words."""
    if name == "cifar10":
        return f"{CIFAR_DIR}/ with {', '.join(CIFAR_FILES)}"
    return (f"the four idx files {', '.join(IDX_FILES)} (each may end in .gz), directly in it or in "
            f"{_TV_CLASS[name]}/raw/ (torchvision's layout)")


def _missing_files(name: str, root: Path) -> list[str]:
    """The files of ``name`` that ``root`` lacks, in its most complete layout (empty: it holds the dataset)."""
    if name == "cifar10":
        return [f"{CIFAR_DIR}/{f}" for f in CIFAR_FILES if not (root / CIFAR_DIR / f).is_file()]
    layouts = [[f"{prefix}{stem}" for stem in IDX_FILES
                if not ((root / prefix / stem).is_file() or (root / prefix / f"{stem}.gz").is_file())]
               for prefix in ("", f"{_TV_CLASS[name]}/raw/")]
    return min(layouts, key=len)


def check_data_root(name: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """The data root the user named for dataset ``name`` (``data_root``, else ``$ATLIB_DATA``), checked: it must
    exist and hold the dataset in a layout atlib reads, else DataNotFoundError says what was looked for. None
    when none was named, or for ``digits`` (bundled with scikit-learn: a data root does not matter)."""
    via = "--data-root" if data_root else "$ATLIB_DATA"
    named = data_root or os.environ.get("ATLIB_DATA")
    if not named or name == "digits":
        return None
    root = Path(named).expanduser()
    if not root.is_dir():
        problem = "does not exist" if not root.exists() else "is not a folder"
    elif missing := _missing_files(name, root):
        found = len(IDX_FILES if name != "cifar10" else CIFAR_FILES) - len(missing)
        problem = (f"holds none of the {name} files" if not found else
                   f"lacks {', '.join(missing)}")
    else:
        return root
    raise DataNotFoundError(f"{name}: the data root {root} ({via}) {problem}. atlib reads {_layouts(name)}. "
                            f"Leave out {via} to use the default places, or to get the data: {_HOW_TO_GET[name]}.")


@dataclass(frozen=True)
class Data:
    """A train/test split as tensors in [0, 1] with everything needed to reproduce it."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    fingerprint: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> "Data":
        return replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                       test_x=self.test_x.to(device), test_y=self.test_y.to(device))

    def subset(self, n_train: int | None) -> "Data":
        """The first ``n_train`` training samples of a fixed permutation (seed 0), test set unchanged."""
        if n_train is None or n_train >= len(self.train_y):
            return self
        idx = fixed_permutation(len(self.train_y), seed=0)[:n_train].to(self.train_x.device)
        return replace(self, train_x=self.train_x[idx], train_y=self.train_y[idx],
                       fingerprint=f"{self.fingerprint}:train{n_train}")


def fixed_permutation(n: int, seed: int) -> Tensor:
    """A permutation of range(n) that depends only on ``seed`` (CPU generator, device-independent)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def eval_indices(n_test: int, n_eval: int | None) -> Tensor:
    """The fixed evaluation subset of the test set: first ``n_eval`` of a seed-1 permutation, sorted."""
    if n_eval is None or n_eval >= n_test:
        return torch.arange(n_test)
    return fixed_permutation(n_test, seed=1)[:n_eval].sort().values


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _make(name: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, source: str) -> Data:
    """Build a Data from uint8-range images (N, H, W[, C]) and integer labels."""
    fp = _fingerprint(xtr, ytr, xte, yte)

    def img(a: np.ndarray, scale: float) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).float().div_(scale)
        return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()

    scale = 16.0 if name == "digits" else 255.0
    train_x, test_x = img(xtr, scale), img(xte, scale)
    mean = tuple(float(v) for v in train_x.mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in train_x.std(dim=(0, 2, 3)))
    return Data(name, train_x, torch.as_tensor(ytr, dtype=torch.long), test_x, torch.as_tensor(yte, dtype=torch.long),
                _CLASSES[name], mean, std, source, fp)


def load_digits_data() -> Data:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=0.2, stratify=d.target, random_state=0)
    return _make("digits", xtr, ytr, xte, yte, "sklearn.datasets.load_digits")


def _stage_flat_idx(folder: Path, cls_name: str, staging: Path) -> Path | None:
    """Copy a flat folder of idx files (.gz or raw) into torchvision's <root>/<Class>/raw layout."""
    raw = staging / cls_name / "raw"
    found = {}
    for stem in IDX_FILES:
        for cand in (folder / stem, folder / f"{stem}.gz"):
            if cand.is_file():
                found[stem] = cand
                break
    if len(found) != len(IDX_FILES):
        return None
    raw.mkdir(parents=True, exist_ok=True)
    for stem, src in found.items():
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(raw / stem, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return staging


def _load_idx_dataset(name: str, roots: list[Path], download_root: Path | None) -> Data:
    import_torchvision()
    from torchvision import datasets

    cls = {"fashion": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]
    tried = []
    for root in roots:
        tried.append(str(root))
        if (root / cls.__name__ / "raw").is_dir():
            try:
                tr, te = cls(str(root), train=True), cls(str(root), train=False)
                return _make(name, tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy(), str(root))
            except (RuntimeError, OSError, EOFError, ValueError, AssertionError):
                pass  # e.g. only .gz files in raw/, or a corrupt file: staging raw/ below says which
        for folder in (root, root / cls.__name__ / "raw"):  # a flat folder, or torchvision's raw/ (.gz or not)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    staged = _stage_flat_idx(folder, cls.__name__, Path(tmp))
                    if staged is None:
                        continue
                    tr, te = cls(tmp, train=True), cls(tmp, train=False)
                except (RuntimeError, OSError, EOFError, ValueError, AssertionError) as e:
                    raise DataNotFoundError(f"{name}: the idx files in {folder} could not be read ({e}); "
                                            f"they may be truncated or corrupt. To fix: {_HOW_TO_GET[name]}.") from e
                return _make(name, tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy(),
                             str(root))
    if download_root is not None:
        tried.append(f"torchvision download into {download_root}")
        try:
            tr = cls(str(download_root), train=True, download=True)
            te = cls(str(download_root), train=False, download=True)
            return _make(name, tr.data.numpy(), tr.targets.numpy(), te.data.numpy(), te.targets.numpy(),
                         f"torchvision download ({download_root})")
        except Exception:  # noqa: BLE001 - any network/IO failure means "not available here"
            pass
    raise DataNotFoundError(f"{name}: dataset not found (looked in: {'; '.join(tried) or 'nowhere'}). "
                            f"To get it: {_HOW_TO_GET[name]}.")


def _load_cifar10(roots: list[Path], download_root: Path | None) -> Data:
    import_torchvision()
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR-10 reader; integrity = files present (our own fingerprint pins content)."""

        meta = {**CIFAR10.meta, "md5": None}  # torchvision's _load_meta checks this md5 too: presence only

        def _check_integrity(self) -> bool:
            base = Path(self.root) / self.base_folder
            return all((base / f).is_file() for f, _ in self.train_list + self.test_list)

    tried = []
    for root in roots:
        tried.append(str(root))
        if (root / CIFAR10.base_folder).is_dir():
            try:
                tr, te = LocalCIFAR10(str(root), train=True), LocalCIFAR10(str(root), train=False)
            except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
                raise DataNotFoundError(f"cifar10: the files in {root / CIFAR10.base_folder} could not be read ({e}); "
                                        f"they may be truncated or corrupt. To fix: {_HOW_TO_GET['cifar10']}.") from e
            return _make("cifar10", tr.data, np.array(tr.targets), te.data, np.array(te.targets), str(root))
    if download_root is not None:
        tried.append(f"torchvision download into {download_root}")
        try:
            tr = CIFAR10(str(download_root), train=True, download=True)
            te = CIFAR10(str(download_root), train=False, download=True)
            return _make("cifar10", tr.data, np.array(tr.targets), te.data, np.array(te.targets),
                         f"torchvision download ({download_root})")
        except Exception:  # noqa: BLE001
            pass
    raise DataNotFoundError(f"cifar10: dataset not found (looked in: {'; '.join(tried) or 'nowhere'}). "
                            f"To get it: {_HOW_TO_GET['cifar10']}.")


def default_download_root() -> Path:
    return Path(os.environ.get("ATLIB_DOWNLOADS", Path.home() / ".cache" / "atlib" / "downloads"))


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool | None = None) -> Data:
    """Load a dataset by name from the first source that has it (see module docstring).

    ``data_root`` (else ``$ATLIB_DATA``), when given, must hold the dataset (:func:`check_data_root`); ``digits``
    ignores it. ``download`` defaults to True unless ``$ATLIB_NO_DOWNLOAD`` is set.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_data()
    root = check_data_root(name, data_root)  # a named root that lacks the data is an error, never skipped
    roots = [root] if root is not None else []
    if name == "fashion":
        roots.append(DEBIAN_FASHION)
    if download is None:
        download = not os.environ.get("ATLIB_NO_DOWNLOAD")
    dl = default_download_root() if download else None
    if name == "cifar10":
        return _load_cifar10(roots, dl)
    return _load_idx_dataset(name, roots, dl)


def augment(x: Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> Tensor:
    """Random crop with zero padding and random horizontal flip, batched on x's device.

    One random translation per image via a padded gather (no per-image Python loop).
    """
    n, c, h, w = x.shape
    dev = x.device
    if pad:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        sx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(dev)
        sy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device="cpu").to(dev)
        rows = (sy[:, None] + torch.arange(h, device=dev)[None])  # (n, h)
        cols = (sx[:, None] + torch.arange(w, device=dev)[None])  # (n, w)
        x = xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        f = (torch.rand(n, generator=generator, device="cpu") < 0.5).to(dev)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x
