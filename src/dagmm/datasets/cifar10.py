"""CIFAR-10 (Krizhevsky, 2009): download, verify, cache and read the python version.

The python version of CIFAR-10 is a tar of pickled batches, so reading it
means unpickling.  Plain ``pickle.load`` can run arbitrary code from a
tampered file, so :class:`_BatchUnpickler` resolves only the globals a
CIFAR batch needs (numpy array reconstruction); dicts, lists, bytes, str and
ints are built by pickle opcodes that call no global.  The archive is also
checked against its published SHA-256 before it is used.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
from pathlib import Path
from typing import Union

import numpy as np

from ._fetch import data_home as _data_home
from ._fetch import download as _download
from ._fetch import sha256 as _sha256

__all__ = ["CIFAR10_LABELS", "CIFAR10_SHA256", "CIFAR10_URL", "load_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ARCHIVE = "cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = ("test_batch",)

#: The only globals a CIFAR batch may name (module, attribute); numpy moved
#: ``multiarray`` to ``numpy._core`` in 2.0, and old pickles name either.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "bytes"), ("builtins", "str"), ("builtins", "int"),
    ("__builtin__", "dict"), ("__builtin__", "list"), ("__builtin__", "str"), ("__builtin__", "int"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Refuses every global outside :data:`_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"CIFAR-10 batch refers to {module}.{name}, which a CIFAR batch never needs; "
                "the file is not a genuine CIFAR-10 batch and was not loaded."
            )
        if module == "numpy.core.multiarray":
            # numpy >= 2 warns on the old path; resolve it to where _reconstruct lives now
            try:
                from numpy._core import multiarray
            except ImportError:  # numpy < 2
                from numpy.core import multiarray
            return multiarray._reconstruct
        return super().find_class(module, name)


def _extract(archive: Path, home: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).parts[:1] == (_FOLDER,)
                   and ".." not in Path(m.name).parts]
        for m in members:
            target = home / _FOLDER / Path(m.name).name
            with tar.extractfile(m) as src, open(target.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            target.with_suffix(".part").replace(target)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int64 labels of one batch file."""
    with open(path, "rb") as f:
        d = _BatchUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict):
        raise ValueError(f"{path} is not a CIFAR-10 batch (expected a dict, got {type(d).__name__}).")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    try:
        data, labels = np.asarray(d["data"], dtype=np.uint8), np.asarray(d["labels"], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"{path} is not a CIFAR-10 batch: no {err} entry.") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path} is not a CIFAR-10 batch: data has shape {data.shape}, labels {labels.shape}.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return np.ascontiguousarray(images), labels


def load_cifar10(data_home: Union[None, str, os.PathLike] = None, download: bool = False,
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load CIFAR-10 as ``(X_train, y_train), (X_test, y_test)``.

    Parameters
    ----------
    data_home : path, optional
        Cache folder; default ``$DAGMM_DATA`` or ``~/.cache/dagmm``.  The
        batches are read from ``data_home/cifar-10-batches-py``, extracted
        from ``data_home/cifar-10-python.tar.gz`` when absent.
    download : bool, default False
        Fetch the archive from :data:`CIFAR10_URL` (163 MiB) when it is not
        cached; it is checked against :data:`CIFAR10_SHA256`.

    Returns
    -------
    (X_train, y_train), (X_test, y_test)
        ``X`` uint8 of shape (50000, 32, 32, 3) and (10000, 32, 32, 3),
        channels last; ``y`` int64 class indices into :data:`CIFAR10_LABELS`.
        Scale with ``X.astype('float32') / 255`` for the detectors.

    Raises
    ------
    FileNotFoundError
        If the data are not cached and ``download`` is False.
    """
    home = _data_home(data_home)
    folder, archive = home / _FOLDER, home / _ARCHIVE
    names = _TRAIN + _TEST
    if not all((folder / n).is_file() for n in names):
        if not archive.is_file():
            if not download:
                raise FileNotFoundError(
                    f"CIFAR-10 is not in {home}. Call load_cifar10(download=True) to fetch it from {CIFAR10_URL}, "
                    f"or put {_ARCHIVE} there (set data_home or DAGMM_DATA to use another folder)."
                )
            _download(CIFAR10_URL, archive, CIFAR10_SHA256)
        elif _sha256(archive) != CIFAR10_SHA256:
            raise OSError(f"{archive} does not have the SHA-256 of CIFAR-10 ({CIFAR10_SHA256}); delete it and "
                          "download again.")
        folder.mkdir(parents=True, exist_ok=True)
        _extract(archive, home)
    train = [_read_batch(folder / n) for n in _TRAIN]
    X_test, y_test = _read_batch(folder / _TEST[0])
    X_train = np.concatenate([b[0] for b in train])
    y_train = np.concatenate([b[1] for b in train])
    return (X_train, y_train), (X_test, y_test)
