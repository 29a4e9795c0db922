"""load_cifar10 on a tiny archive in the CIFAR-10 python format that the test writes."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from dagmm.datasets import cifar10
from dagmm.datasets.cifar10 import load_cifar10


def _batch(rng, n):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: 1024 red, 1024 green, 1024 blue
    labels = rng.integers(0, 10, size=n).tolist()
    return {b"batch_label": b"test", b"labels": labels, b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _write_archive(path, rng, sizes=(3, 2, 2, 2, 1), n_test=4, payload=None):
    batches = {f"data_batch_{i + 1}": _batch(rng, n) for i, n in enumerate(sizes)}
    batches["test_batch"] = _batch(rng, n_test)
    batches["batches.meta"] = {b"label_names": [n.encode() for n in cifar10.CIFAR10_LABELS]}
    if payload is not None:
        batches["test_batch"] = payload
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in batches.items():
            raw = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return batches


def test_download_verify_extract_and_read(tmp_path, rng, monkeypatch):
    src = tmp_path / "server" / "cifar-10-python.tar.gz"
    src.parent.mkdir()
    batches = _write_archive(src, rng)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", src.as_uri())
    monkeypatch.setattr(cifar10, "CIFAR10_SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    home = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=r"Call load_cifar10\(download=True\) to fetch it from file:"):
        load_cifar10(data_home=home)
    (X_train, y_train), (X_test, y_test) = load_cifar10(data_home=home, download=True)
    assert X_train.shape == (10, 32, 32, 3) and X_train.dtype == np.uint8 and X_test.shape == (4, 32, 32, 3)
    first = batches["data_batch_1"]
    # channel c of pixel (i, j) is entry c * 1024 + i * 32 + j of the row
    assert X_train[0, 5, 7, 2] == first[b"data"][0, 2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(X_train[:3].transpose(0, 3, 1, 2).reshape(3, -1), first[b"data"])
    np.testing.assert_array_equal(y_train[:3], first[b"labels"])
    np.testing.assert_array_equal(y_test, batches["test_batch"][b"labels"])
    assert (home / "cifar-10-python.tar.gz").is_file()
    # cached now: reading again needs no download, and DAGMM_DATA picks the folder
    monkeypatch.setattr(cifar10, "CIFAR10_URL", "http://unreachable.invalid/x.tar.gz")
    monkeypatch.setenv("DAGMM_DATA", str(home))
    (X2, _), _ = load_cifar10()
    np.testing.assert_array_equal(X2, X_train)


def test_bad_checksum_is_refused(tmp_path, rng, monkeypatch):
    src = tmp_path / "a.tar.gz"
    _write_archive(src, rng)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", src.as_uri())
    home = tmp_path / "cache"
    with pytest.raises(OSError, match=r"has SHA-256 [0-9a-f]{64}, expected 6d958be0"):
        load_cifar10(data_home=home, download=True)
    assert not any(home.iterdir())  # the bad download was deleted
    (home / "cifar-10-python.tar.gz").write_bytes(src.read_bytes())
    with pytest.raises(OSError, match=r"does not have the SHA-256 of CIFAR-10"):
        load_cifar10(data_home=home)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_batch_that_names_other_code_is_not_run(tmp_path, rng):
    home = tmp_path
    folder = home / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(rng, 1), protocol=4))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=4))
    with pytest.raises(pickle.UnpicklingError, match=r"refers to (posix|nt|os)\.system, which a CIFAR batch never"):
        load_cifar10(data_home=home)
    (folder / "test_batch").write_bytes(pickle.dumps({b"labels": [1]}, protocol=4))
    with pytest.raises(ValueError, match=r"is not a CIFAR-10 batch: no 'data' entry"):
        load_cifar10(data_home=home)
