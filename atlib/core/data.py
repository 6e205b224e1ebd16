"""Datasets as tensors resident on the compute device, with their provenance and a fingerprint.

Which datasets exist, what they hold and where their files are found is the registry's
(:mod:`atlib.core.datasets`, one :class:`~atlib.core.datasets.DataSet` entry each); this module turns an entry's
files into tensors. Sources, in order: an explicit root (``data_root`` argument, else ``$ATLIB_DATA``), the
entry's system folders (Debian's for Fashion-MNIST), then torchvision's download. An explicit root must exist and
hold the dataset (else DataNotFoundError, listing the files looked for): a typo never falls back silently to
another copy. Images are float32 in [0, 1], NCHW; the per-channel mean/std travel with the data so the model
normalises *inside* itself (attacks work in pixel space). Augmentation (random crop with padding, horizontal
flip) runs as batched tensor ops.
"""
from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from atlib.core.datasets import DEBIAN_FASHION, IDX_FILES  # noqa: F401 (re-exported)
from atlib.core.datasets import REGISTRY, DataNotFoundError, DataSet, get_dataset, problem

Tensor = torch.Tensor
DATASETS = REGISTRY  # name -> DataSet, every dataset a profile may name (atlib.core.datasets)


def check_data_root(name: str, data_root: str | os.PathLike | None = None) -> Path | None:
    """The data root the user named for dataset ``name`` (``data_root``, else ``$ATLIB_DATA``), checked: it must
    exist and hold the dataset in a layout atlib reads, else DataNotFoundError says what was looked for. None
    when none was named, or for a dataset without files (``digits``, bundled with scikit-learn)."""
    ds = get_dataset(name)
    via = "--data-root" if data_root else "$ATLIB_DATA"
    named = data_root or os.environ.get("ATLIB_DATA")
    if not named or not ds.needs_files:
        return None
    root = Path(named).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
    else:
        missing, total = ds.missing_files(root)
        if not missing:
            return root
        what = f"holds none of the {name} files" if len(missing) == total else f"lacks {', '.join(missing)}"
    raise DataNotFoundError(problem(f"{name}: the data root {root} ({via}) {what}",
                                    f"leave out {via} to use the default places, or get the data:", *ds.how_to_get()))


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


def _make(ds: DataSet, arrays: tuple[np.ndarray, ...], source: str) -> Data:
    """Build a Data from raw images (N, H, W[, C]) of values 0..``ds.pixel_max`` and integer labels."""
    xtr, ytr, xte, yte = arrays
    fp = _fingerprint(xtr, ytr, xte, yte)

    def img(a: np.ndarray, scale: float) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).float().div_(scale)
        return t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()

    train_x, test_x = img(xtr, ds.pixel_max), img(xte, ds.pixel_max)
    mean = ds.mean if ds.mean is not None else tuple(float(v) for v in train_x.mean(dim=(0, 2, 3)))
    std = ds.std if ds.std is not None else tuple(float(v) for v in train_x.std(dim=(0, 2, 3)))
    label = functools.partial(torch.as_tensor, dtype=torch.long)
    return Data(ds.name, train_x, label(ytr), test_x, label(yte), ds.classes, mean, std, source, fp)


def load_digits_data() -> Data:
    """scikit-learn's bundled 8x8 digits (1,797 images), split 80/20 stratified with a fixed seed."""
    return load_dataset("digits")


def default_download_root() -> Path:
    return Path(os.environ.get("ATLIB_DOWNLOADS", Path.home() / ".cache" / "atlib" / "downloads"))


def load_dataset(name: str, data_root: str | os.PathLike | None = None, download: bool | None = None) -> Data:
    """Load a dataset by name from the first source that has it (see module docstring).

    ``data_root`` (else ``$ATLIB_DATA``), when given, must hold the dataset (:func:`check_data_root`); ``digits``
    ignores it. ``download`` defaults to True unless ``$ATLIB_NO_DOWNLOAD`` is set.
    """
    ds = get_dataset(name)  # an unknown name: ValueError listing the registered ones
    root = check_data_root(name, data_root)  # a named root that lacks the data is an error, never skipped
    roots = ([root] if root is not None else []) + list(ds.system_dirs)
    if download is None:
        download = not os.environ.get("ATLIB_NO_DOWNLOAD")
    arrays, source = ds.read(roots, default_download_root() if download else None)
    return _make(ds, arrays, source)


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
